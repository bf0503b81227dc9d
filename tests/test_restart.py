"""Restarts: a kernel killed while its jobs run loses nothing, and the next kernel finishes them.

The promise (history.py, magics.py): a job is recorded the moment the server accepts it, and
``%load_ext vydra_nb`` in a fresh kernel resumes tracking every unfinished job of the configured
backend, so the paid result still lands in the history and on disk. This drives two real
ipykernel processes through jupyter_client against a sandbox running in the test process, and
SIGKILLs the first one mid-job: no clean shutdown, no atexit, no flushed state.

The kernels use the sandbox the way a user with an external sandbox would: ``VYDRA_BASE_URL`` and
``VYDRA_API_KEY`` in the environment (the sandbox's loopback URL and key).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from jupyter_client import KernelManager
from jupyter_client.blocking.client import BlockingKernelClient

from vydra_nb import sandbox as sandbox_mod
from vydra_nb.tracking.history import History

pytestmark = pytest.mark.timeout(90)

# nano-banana takes 10 s of sandbox time; at speed 1 the jobs are still running when the first
# kernel dies a few seconds after submitting, and finish well within the test's budget.
SPEED = 1.0
MODEL = "nano-banana"
PRICE = 8
TERMINAL = {"completed", "failed", "cancelled"}


class Kernel:
    """A real kernel process and a blocking client for it; ``run`` returns stdout and errors."""

    def __init__(self, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.kc: BlockingKernelClient = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 30) -> str:
        """Execute ``code``; fail the test with the kernel's own traceback if it raised."""
        out: list[str] = []
        errors: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                errors.append(f"{content['ename']}: {content['evalue']}")

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook, allow_stdin=False)
        assert reply["content"]["status"] == "ok" and not errors, f"{code!r} failed: {errors or reply['content']}"
        return "".join(out)

    def kill(self) -> None:
        """SIGKILL: the kernel gets no chance to flush, untrack or say goodbye."""
        self.kc.stop_channels()
        self.km.signal_kernel(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.km.is_alive(), "the kernel survived SIGKILL"
        self.km.cleanup_resources()

    def shutdown(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=True)


@pytest.fixture
def slow_sandbox() -> Iterator[sandbox_mod.Sandbox]:
    with sandbox_mod.start(credits=1_000, speed=SPEED, seed=5) as box:
        yield box


def kernel_env(home: Path, box: sandbox_mod.Sandbox) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VYDRA_", "JPY_"))}
    env.update(VYDRA_NB_HOME=str(home), VYDRA_BASE_URL=box.url, VYDRA_API_KEY=box.api_key)
    return env


def charges(box: sandbox_mod.Sandbox) -> list[dict[str, Any]]:
    return [e for e in box.state()["ledger"] if e["kind"] == "charge"]


def test_killed_kernel_loses_no_job(tmp_path: Path, slow_sandbox: sandbox_mod.Sandbox) -> None:
    home = tmp_path / "home"
    env = kernel_env(home, slow_sandbox)
    started = time.monotonic()

    first = Kernel(env)
    try:
        first.run("%load_ext vydra_nb")
        for i in range(3):
            first.run(f"%%vydra {MODEL} -o job{i}\na small clay pot, take {i}")
        ids = json.loads(first.run("import json; print(json.dumps([job0.id, job1.id, job2.id]))"))
        assert len(set(ids)) == 3
        history = History(home / "history.sqlite3")
        try:
            rows = {r["id"]: r for r in history.rows()}
        finally:
            history.close()
        assert set(rows) == set(ids), "every accepted job is in the history before the cell returns"
        still_running = [r["status"] for r in rows.values() if r["status"] not in TERMINAL]
        assert len(still_running) == 3, f"the jobs must still be running when the kernel dies: {rows}"
        host = f"127.0.0.1:{urlsplit(slow_sandbox.url).port}"
        assert all(r["host"] == host and r["credits_charged"] == PRICE for r in rows.values())
    except BaseException:
        first.shutdown()
        raise
    first.kill()
    assert len(charges(slow_sandbox)) == 3

    second = Kernel(env)
    try:
        # Loading the extension alone must pick the jobs up again (resume_on_load is on by default).
        second.run("%load_ext vydra_nb")
        deadline = time.monotonic() + 45
        while True:
            history = History(home / "history.sqlite3")
            try:
                rows = {r["id"]: r for r in history.rows()}
            finally:
                history.close()
            done = [r for r in rows.values() if r["status"] == "completed" and r["local_path"]]
            if len(done) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert set(rows) == set(ids), "no job lost, none added"
        assert [r["status"] for r in rows.values()] == ["completed"] * 3, rows
        for row in rows.values():
            assert row["local_path"], f"{row['id']} completed but was not downloaded"
            path = Path(row["local_path"])
            assert path.is_file() and path.stat().st_size > 0
            assert path.parent == home / "downloads"
            assert row["credits_charged"] == PRICE and not row["credits_refunded"]
        # The new kernel agrees with the history, through its own API.
        listed = json.loads(second.run(
            "import json\n"
            "df = %vydra jobs --limit 10\n"
            "print(json.dumps(sorted(zip(df['id'], df['status']))))"
        ))
        assert listed == sorted([i, "completed"] for i in ids)
        # Resuming again finds nothing left to do and submits nothing.
        assert "Resumed tracking 0 unfinished job(s)." in second.run("_ = %vydra jobs --resume")
    finally:
        second.shutdown()
    ledger = charges(slow_sandbox)
    assert sorted(e["job_id"] for e in ledger) == sorted(ids), "resuming never submits again"
    assert slow_sandbox.state()["balance"] == 1_000 - 3 * PRICE
    assert time.monotonic() - started < 60
