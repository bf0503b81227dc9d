"""A sandbox in a process of its own, tied to the life of the process that started it.

``%vydra sandbox`` used to run the server as a thread of the kernel, so rendering media (PyAV,
Pillow) and holding every job's record grew the user's kernel. :func:`spawn` runs
``python -m vydra_nb.sandbox`` instead and returns a :class:`SandboxProcess` with the interface the
session and the magics use on an in-process :class:`~vydra_nb.sandbox.server.Sandbox`: ``url``,
``api_key``, ``speed``, ``flavor``, ``root``, ``state()``, ``set_faults()``, ``set_price()``,
``add_key()``, ``stop()`` and the context manager. ``state()``, ``set_faults()`` and ``set_price()`` go over the server's
``/_sandbox`` routes; ``add_key()`` over the control pipe, so no other local process can mint keys.

Lifetime: the child reads a pipe whose write end only the parent holds (``--exit-with-stdin``):
when the parent exits, however it dies (SIGKILL included), the operating system closes that end
and the child stops at once. It also polls its parent pid (``--parent-pid``), for a pipe end some
forked grandchild might have inherited. The parent stops its children at interpreter exit
(``atexit``), and the child runs in its own session, so interrupting the kernel (SIGINT to its
process group) does not stop the sandbox with the cell.

Stdlib only, like the rest of :mod:`vydra_nb.sandbox`.
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from typing import IO, Any

from .faults import FaultSpec

#: How long :func:`spawn` waits for the child to say where it listens.
START_TIMEOUT = 30.0
#: How long ``stop()`` lets the child shut down cleanly (it deletes its media folder) before SIGKILL.
STOP_TIMEOUT = 5.0

_live: weakref.WeakSet[SandboxProcess] = weakref.WeakSet()
_live_lock = threading.Lock()


class SandboxStartError(RuntimeError):
    """The sandbox process exited or stayed silent before saying where it listens."""


def spec_text(spec: str | FaultSpec | None) -> str | None:
    """A fault spec as the ``--faults`` text (a parsed :class:`FaultSpec` is written back)."""
    if spec is None or isinstance(spec, str):
        return spec
    parts = [f"{kind}={p:g}" for kind, p in spec.probabilities.items()]
    parts.append(f"slow_s={spec.slow_s:g}")
    if spec.seed is not None:
        parts.append(f"seed={spec.seed}")
    return ",".join(parts)


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Child stdout -> queue (the two export lines, then control answers); None at end of file."""
    try:
        for line in stream:
            lines.put(line.rstrip("\n"))
    except (OSError, ValueError):
        pass
    finally:
        lines.put(None)


def _drain(stream: IO[str], tail: collections.deque[str], forward: bool) -> None:
    """Child stderr -> the last lines (for error messages) and, when asked, our own stderr."""
    try:
        for line in stream:
            tail.append(line.rstrip("\n"))
            if forward:
                err = sys.__stderr__
                if err is not None:
                    try:
                        err.write(line)
                        err.flush()
                    except (OSError, ValueError):
                        pass
    except (OSError, ValueError):
        pass


class SandboxProcess:
    """A sandbox server running in a child process. Use :func:`spawn`, not this constructor."""

    def __init__(self, args: list[str], *, speed: float, flavor: str, credits: int, plan: str,
                 seed: int | None, start_timeout: float = START_TIMEOUT, forward_stderr: bool = True) -> None:
        self.speed = float(speed)
        self.flavor = flavor
        self.plan = plan
        self.seed = seed
        self.credits = credits
        self._lock = threading.Lock()
        self._stopped = False
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        started = time.monotonic()
        popen_options: dict[str, Any] = {}
        if os.name == "posix":
            popen_options["start_new_session"] = True  # a kernel interrupt (SIGINT to its group) spares it
        else:  # pragma: no cover - Windows
            popen_options["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        self._proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", bufsize=1, close_fds=True, **popen_options,
        )
        self.pid: int = self._proc.pid
        assert self._proc.stdout is not None and self._proc.stderr is not None
        threading.Thread(target=_pump, args=(self._proc.stdout, self._lines),
                         name=f"vydra-sandbox-{self.pid}-out", daemon=True).start()
        threading.Thread(target=_drain, args=(self._proc.stderr, self._stderr_tail, forward_stderr),
                         name=f"vydra-sandbox-{self.pid}-err", daemon=True).start()
        with _live_lock:
            _live.add(self)
        try:
            env = self._read_exports(started + start_timeout)
        except BaseException:
            self.stop()
            raise
        self.url: str = env["VYDRA_BASE_URL"]
        self.api_key: str = env["VYDRA_API_KEY"]
        self.root = self.url.split("/api/", 1)[0]
        self.port = int(self.root.rsplit(":", 1)[1])
        self.startup_seconds = time.monotonic() - started
        # Loopback only, and never through a proxy the environment may name.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _read_exports(self, deadline: float) -> dict[str, str]:
        env: dict[str, str] = {}
        while len(env) < 2:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SandboxStartError(f"the sandbox process said nothing for {START_TIMEOUT:g} s{self._why()}") from None
            if line is None:
                self._proc.wait(timeout=5)
                raise SandboxStartError(f"the sandbox process exited with code {self._proc.returncode}"
                                        f"{self._why()}")
            if line.startswith("export ") and "=" in line:
                name, _, value = line[len("export "):].partition("=")
                env[name] = shlex.split(value)[0] if value else ""
        return env

    def _why(self) -> str:
        time.sleep(0.05)  # let the stderr reader catch the last lines
        tail = [line for line in self._stderr_tail if line.strip()]
        return (": " + " | ".join(tail[-5:])) if tail else ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<vydra_nb.sandbox.SandboxProcess pid={self.pid} url={getattr(self, 'url', None)!r} " \
               f"flavor={self.flavor!r} speed={self.speed:g} {state}>"

    # -- control ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(f"{self.root}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with self._http.open(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read() or b"{}").get("error") or str(exc)
            except ValueError:
                message = str(exc)
            if exc.code == 400:
                raise ValueError(message) from None
            raise RuntimeError(f"sandbox {method} {path}: HTTP {exc.code}: {message}") from None

    def state(self) -> dict[str, Any]:
        """A consistent snapshot, as the in-process sandbox's: balance, ledger entries, job counts."""
        return self._request("GET", "/_sandbox/state")

    def set_faults(self, spec: str | FaultSpec | None) -> None:
        """Replace the fault spec (None or "" clears it); ValueError on a bad spec."""
        text = spec_text(spec)
        if text:
            FaultSpec.parse(text)  # the same ValueError as in process, before any request
        self._request("POST", "/_sandbox/faults", {"faults": text or None})

    def set_price(self, slug: str, credits: int, *, variant: str | None = None, charge: int | None = None) -> dict[str, Any]:
        """Change a model's price from now on (``POST /_sandbox/price``), as the in-process
        sandbox's ``set_price``; returns its new listing, ValueError for an unknown model or variant."""
        return self._request("POST", "/_sandbox/price", {"slug": slug, "credits": credits, "variant": variant,
                                                         "charge": charge})

    def add_key(self, key: str | None = None, timeout: float = 10.0) -> str:
        """Accept one more API key for the same organization (sent over the control pipe)."""
        from .server import new_api_key

        key = key or new_api_key()
        if any(c.isspace() for c in key):
            raise ValueError("an API key has no spaces")
        with self._lock:
            if self._stopped or self._proc.stdin is None:
                raise RuntimeError("the sandbox process is stopped")
            self._proc.stdin.write(f"add-key {key}\n")
            self._proc.stdin.flush()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise RuntimeError(f"the sandbox process did not answer add-key in {timeout:g} s") from None
                if line is None:
                    raise RuntimeError(f"the sandbox process exited{self._why()}")
                if line == f"key-added {key}":
                    return key
                if line.startswith("error "):
                    raise RuntimeError(f"sandbox: {line}")

    # -- life ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return not self._stopped and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server and wait for the process to end. Idempotent.

        Closing the control pipe asks it to stop cleanly (it deletes its media folder); SIGTERM
        and then SIGKILL follow if it has not ended within ``timeout`` seconds.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        proc = self._proc
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except (OSError, ValueError):
                pass
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn(credits: int = 10_000, speed: float = 1.0, faults: str | FaultSpec | None = None,
          flavor: str = "spec", port: int = 0, api_key: str | None = None, seed: int | None = None,
          plan: str = "creator", media_limit_mb: float = 512, verbose: bool = False,
          progress: str = "provider", durations: str = "realistic", idempotency: bool = False,
          start_timeout: float = START_TIMEOUT) -> SandboxProcess:
    """Start a sandbox in a child process (the same options as :func:`vydra_nb.sandbox.start`).

    Returns once it listens. Raises ValueError for a bad option (as ``start`` does) and
    :class:`SandboxStartError` if the process fails to start.
    """
    from .api import FLAVORS
    from .jobs import DURATION_MODES, PROGRESS_MODES, check_mode
    from .ratelimit import plan_limits

    if not speed > 0:
        raise ValueError("speed must be > 0")
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}")
    check_mode("progress", progress, PROGRESS_MODES)
    check_mode("durations", durations, DURATION_MODES)
    plan_limits(plan)
    faults_text = spec_text(faults)
    if faults_text:
        FaultSpec.parse(faults_text)  # the in-process ValueError, not a child's exit code
    args = [sys.executable, "-m", "vydra_nb.sandbox", "--quiet", "--exit-with-stdin",
            "--parent-pid", str(os.getpid()), "--credits", str(int(credits)), "--speed", repr(float(speed)),
            "--flavor", flavor, "--port", str(int(port)), "--plan", plan,
            "--media-limit-mb", repr(float(media_limit_mb)), "--progress", progress, "--durations", durations]
    if idempotency:
        args.append("--idempotency")
    if faults_text:
        args += ["--faults", faults_text]
    if api_key is not None:
        args += ["--key", api_key]
    if seed is not None:
        args += ["--seed", str(int(seed))]
    if verbose:
        args.append("--verbose")
    return SandboxProcess(args, speed=speed, flavor=flavor, credits=credits, plan=plan, seed=seed,
                          start_timeout=start_timeout)


@atexit.register
def _stop_all() -> None:
    """At interpreter exit: stop every sandbox process this one started and did not stop."""
    with _live_lock:
        boxes = list(_live)
    for box in boxes:
        try:
            box.stop(timeout=2.0)
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


__all__ = ["SandboxProcess", "SandboxStartError", "spawn", "spec_text"]
