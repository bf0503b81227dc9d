"""A sandbox in its own process: it starts fast, answers as the in-process one does, and never
outlives the process that started it (even a SIGKILLed one)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from vydra_nb.sandbox import process
from vydra_nb.sandbox.process import SandboxProcess, SandboxStartError, spawn


def _until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture
def box() -> Iterator[SandboxProcess]:
    with spawn(credits=1_000, speed=100, seed=5) as sb:
        yield sb


def _auth(sb: SandboxProcess, key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key or sb.api_key}"}


def test_spawn_is_quick_and_serves_from_another_process(box: SandboxProcess) -> None:
    assert box.pid != os.getpid() and box.running
    assert box.url == f"{box.root}/api/v1" and box.root.startswith("http://127.0.0.1:")
    assert box.speed == 100.0 and box.flavor == "spec" and box.api_key.startswith("vydra_sandbox_")
    assert box.startup_seconds < 2.0, f"spawn to ready took {box.startup_seconds:.2f} s"
    r = requests.get(f"{box.url}/organization", headers=_auth(box), timeout=10)
    assert r.status_code == 200 and r.json()["creditsRemaining"] == 1_000
    assert requests.get(f"{box.url}/organization", headers=_auth(box, "wrong"), timeout=10).status_code == 401


def test_state_follows_charges(box: SandboxProcess) -> None:
    assert box.state()["balance"] == 1_000 and box.state()["jobs"] == {}
    r = requests.post(f"{box.url}/models/nano-banana", json={"prompt": "a cat"}, headers=_auth(box), timeout=10)
    assert r.status_code in (200, 201, 202), r.text
    state = box.state()
    charge = next(e for e in state["ledger"] if e["kind"] == "charge")
    assert state["balance"] == 1_000 - charge["amount"] == 1_000 - state["charged"] and sum(state["jobs"].values()) == 1


def test_faults_and_keys_over_the_control_channels(box: SandboxProcess) -> None:
    box.set_faults("500=1")
    assert requests.get(f"{box.url}/models", headers=_auth(box), timeout=10).status_code == 500
    box.set_faults(None)
    assert requests.get(f"{box.url}/models", headers=_auth(box), timeout=10).status_code == 200
    with pytest.raises(ValueError, match="unknown fault kind"):
        box.set_faults("nope=1")
    key = box.add_key()
    assert key != box.api_key
    assert requests.get(f"{box.url}/organization", headers=_auth(box, key), timeout=10).status_code == 200


def test_stop_is_idempotent_and_ends_the_process() -> None:
    sb = spawn(credits=10, speed=10)
    pid = sb.pid
    sb.stop()
    assert not sb.running and sb.returncode == 0  # stopped cleanly by closing its pipe
    assert not _alive(pid)
    sb.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sb.url}/health", timeout=2)


def test_bad_options_fail_in_the_caller() -> None:
    with pytest.raises(ValueError, match="speed"):
        spawn(speed=0)
    with pytest.raises(ValueError, match="flavor"):
        spawn(flavor="nope")
    with pytest.raises(ValueError, match="unknown fault kind"):
        spawn(faults="nope=1")
    with spawn(speed=10) as sb, pytest.raises(SandboxStartError, match="cannot listen"):
        spawn(port=sb.port)  # taken: the child's own error is in the message


def test_interpreter_exit_stops_it(tmp_path: object) -> None:
    """A script that starts a sandbox and just ends leaves no server behind (atexit)."""
    script = "from vydra_nb.sandbox.process import spawn\nsb = spawn(speed=10)\nprint(sb.pid, flush=True)\n"
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    assert _until(lambda: not _alive(pid), 5.0), "the sandbox outlived the script that started it"


PARENT = textwrap.dedent("""
    import sys, time
    from vydra_nb.sandbox.process import spawn
    sb = spawn(speed=10)
    print(sb.pid, sb.url, flush=True)
    time.sleep(600)
""")


def test_a_sigkilled_parent_takes_its_sandbox_with_it() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid, url = parent.stdout.readline().split()
        child = int(child_pid)
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert _until(lambda: not _alive(child), 5.0), "the sandbox outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if 'child' in locals() and _alive(child):  # pragma: no cover - only when the test fails
            os.kill(child, signal.SIGKILL)


def test_the_parent_pid_watch_alone_is_enough() -> None:
    """Even if the pipe's write end leaked to another process, a dead parent is noticed."""
    args = [sys.executable, "-m", "vydra_nb.sandbox", "--quiet", "--speed", "10"]
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, os
        child = subprocess.Popen({args!r} + ["--parent-pid", str(os.getpid())], stdout=subprocess.PIPE, text=True)
        child.stdout.readline()
        print(child.pid, flush=True)
        import time; time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        child = int(holder.stdout.readline())
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert _until(lambda: not _alive(child), 5.0), "the sandbox outlived its parent"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_an_interrupted_kernel_keeps_its_sandbox(box: SandboxProcess) -> None:
    """Jupyter interrupts a kernel by signalling its process group; the sandbox has its own."""
    assert os.getpgid(box.pid) != os.getpgid(0)


def test_the_sandbox_magic_starts_a_process_of_its_own() -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from tests.conftest import end_vydra_session
    from vydra_nb.session import current as current_session

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "vydra_nb")
    ip.run_line_magic("config", "VydraMagics.resume_on_load = False")
    try:
        started = time.monotonic()
        ip.run_line_magic("vydra", "sandbox --speed 50 --credits 1234")
        took = time.monotonic() - started
        box = current_session().sandbox
        assert isinstance(box, SandboxProcess) and box.pid != os.getpid() and box.running
        assert took < 2.0, f"%vydra sandbox took {took:.2f} s"
        assert box.state()["balance"] == 1234
        assert current_session().client.organization().credits_remaining == 1234
        ip.run_line_magic("vydra", "sandbox --stop")
        assert not box.running and current_session().sandbox is None
    finally:
        end_vydra_session(ip)


def test_no_process_is_left_behind() -> None:
    """Every sandbox process of this module was stopped (the registry atexit works from is empty)."""
    assert _until(lambda: not [b for b in list(process._live) if b.running], 5.0)
