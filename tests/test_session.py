"""The session owns the state: each defect of issue 14's list, through the public API.

Every test here failed on 0.1 (module globals, import-order-dependent recording, two Job objects
per job, settings copied once) and passes with the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import vydra_nb
from vydra_nb import sandbox as sandbox_mod
from vydra_nb.session import current as current_session

from .conftest import SPEED, end_vydra_session, make_client
from .rawserver import Reply, raw_server


def _script(code: str, home: Path, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter with its own data folder; its stdout."""
    full_env = {**os.environ, "VYDRA_NB_HOME": str(home), **(env or {})}
    full_env.pop("VYDRA_API_KEY", None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _rows_read_by_a_fresh_process(home: Path) -> list[dict[str, Any]]:
    out = _script("""
        import json, vydra_nb
        df = vydra_nb.jobs_df(backend=None)
        print(json.dumps(df[["id", "model", "status", "backend"]].to_dict("records")))
    """, home)
    return json.loads(out.strip().splitlines()[-1])


# -- recording does not depend on import order ----------------------------------------------------
@pytest.mark.parametrize("style", ["client-module", "sweep-first"])
def test_a_scripts_paid_jobs_are_recorded_whatever_it_imports(tmp_path: Path, style: str) -> None:
    """A script that imports only ``vydra_nb.client`` (or calls ``vydra_nb.sweep`` first) and submits
    3 jobs leaves 3 rows that a fresh process reads back."""
    with sandbox_mod.start(credits=10_000, speed=SPEED) as box:
        env = {"BOX_URL": box.url, "BOX_KEY": box.api_key}
        if style == "client-module":
            code = """
                import os
                from vydra_nb.client import Client
                c = Client(api_key=os.environ["BOX_KEY"], base_url=os.environ["BOX_URL"], time_scale=0.01)
                for i in range(3):
                    c.generate("nano-banana", prompt=f"apple {i}")
            """
        else:
            code = """
                import os, vydra_nb
                from vydra_nb.session import current
                c = vydra_nb.Client(api_key=os.environ["BOX_KEY"], base_url=os.environ["BOX_URL"], time_scale=0.01)
                current().use_client(c)
                vydra_nb.sweep("nano-banana", ["a", "b", "c"], show=False, background=False)
            """
        _script(code, tmp_path, env)
        charged = [e["job_id"] for e in box.state()["ledger"] if e["kind"] == "charge"]
    rows = _rows_read_by_a_fresh_process(tmp_path)
    assert len(charged) == 3
    assert sorted(r["id"] for r in rows) == sorted(charged)


def test_no_history_is_said_explicitly(sb: sandbox_mod.Sandbox) -> None:
    quiet = make_client(sb, history=False)
    job = quiet.generate("nano-banana", prompt="not for the record")
    assert current_session().history().get(job.id) is None
    recorded = make_client(sb)
    other = recorded.generate("nano-banana", prompt="for the record")
    assert current_session().history().get(other.id) is not None


def test_a_history_of_its_own(sb: sandbox_mod.Sandbox, tmp_path: Path) -> None:
    store = tmp_path / "project.sqlite3"
    client = make_client(sb, history=store)
    job = client.generate("nano-banana", prompt="kept apart")
    client.close()
    assert vydra_nb.History(store).get(job.id)["status"] in ("pending", "running", "completed")
    assert current_session().history().get(job.id) is None


# -- one Job per (backend, id) --------------------------------------------------------------------
def test_one_job_object_per_job(sb: sandbox_mod.Sandbox) -> None:
    client = make_client(sb)
    job = client.generate("veo3", prompt="one of a kind")
    assert client.job(job.id) is job
    assert client.job(job.id) is client.job(job.id)
    another_client = make_client(sb)  # same session, same server: the same object
    assert another_client.job(job.id) is job
    client.cancel(job.id)
    assert job.status == "cancelled"  # the object everyone holds saw the cancel


def test_the_same_id_on_two_servers_is_two_jobs() -> None:
    with sandbox_mod.start(speed=SPEED, seed=1) as a, sandbox_mod.start(speed=SPEED, seed=1) as b:
        ja = make_client(a).generate("nano-banana", prompt="x")
        jb = make_client(b).generate("nano-banana", prompt="x")
        assert ja is not jb and ja.key != jb.key


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "vydra_nb")
    shell.run_line_magic("config", "VydraMagics.resume_on_load = False")
    yield shell
    end_vydra_session(shell)
    shell.run_line_magic("config", "VydraMagics.auto_download = True")
    shell.run_line_magic("config", "VydraMagics.download_dir = ''")
    shell.run_line_magic("config", "VydraMagics.low_credit_threshold = 500")


def test_vydra_job_on_a_resumed_job_is_the_tracked_object(ip: InteractiveShell) -> None:
    """0.1: `%vydra job ID` on a job resumed at load made a second object that never updated."""
    ip.run_line_magic("vydra", "sandbox --speed 30 --credits 5000")
    session = current_session()
    earlier = vydra_nb.Client(history=True)  # the session's sandbox
    job = earlier.generate("veo3", prompt="left running")
    assert session.resume() == 1
    shown = ip.run_line_magic("vydra", f"job {job.id}")
    assert shown is job
    assert session.tracker.is_tracking(job)
    assert session.tracker.join_idle(60)
    assert shown.status == "completed"


def test_wait_in_a_cell_polls_no_more_than_job_wait(ip: InteractiveShell) -> None:
    """0.1: `%%vydra --wait` polled the job from the tracker and from job.wait() (15 calls vs 9)."""
    ip.run_line_magic("config", "VydraMagics.auto_download = False")
    session = current_session()
    # Both jobs must last as long as each other for their polls to be compared: exact durations.
    session.start_sandbox(credits=5000, speed=20, durations="exact")

    def count_status_calls(client: vydra_nb.Client) -> list[str]:
        """Record each GET /jobs/{id} this client sends (counting only: the call goes through)."""
        calls: list[str] = []
        original = client.job_status

        def counted(job_id: str) -> dict[str, Any]:
            calls.append(job_id)
            return original(job_id)

        client.job_status = counted  # type: ignore[method-assign]
        return calls

    # job.wait() alone, from a plain client on the same sandbox
    alone = vydra_nb.Client(history=False)
    solo_calls = count_status_calls(alone)
    job = alone.generate("veo3", prompt="waited alone")
    job.wait(timeout=60)
    cell_calls = count_status_calls(session.client)
    cell_job = ip.run_cell_magic("vydra", "veo3 --wait --yes", "waited in a cell")
    assert cell_job.status == "completed"
    solo, in_cell = solo_calls.count(job.id), cell_calls.count(cell_job.id)
    assert solo >= 2 and in_cell <= solo + 1, (in_cell, solo)


# -- Client() and the session's backend -------------------------------------------------------------
def test_client_with_no_arguments_uses_the_sessions_sandbox(ip: InteractiveShell) -> None:
    ip.run_line_magic("vydra", "sandbox --speed 100 --credits 1234")
    client = vydra_nb.Client()
    assert client.base_url == current_session().sandbox.url
    assert client.organization().credits_remaining == 1234
    assert vydra_nb.default_client() is current_session().client
    assert vydra_nb.models_df(client=client).shape[0] > 0


def test_client_with_no_arguments_and_nothing_set_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    current_session().reset()
    with pytest.raises(vydra_nb.ConfigurationError, match="VYDRA_API_KEY"):
        vydra_nb.Client().organization()


def test_sandbox_credits_zero_means_zero(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("vydra", "sandbox --credits 0 --speed 100")
    assert "0 fake credits" in capsys.readouterr().out
    assert vydra_nb.Client().organization().credits_remaining == 0


# -- settings are live -------------------------------------------------------------------------------
def test_config_changes_apply_to_the_next_job(ip: InteractiveShell, tmp_path: Path) -> None:
    ip.run_line_magic("config", "VydraMagics.auto_download = False")
    ip.run_line_magic("vydra", "sandbox --speed 100 --credits 5000")
    session = current_session()
    client = session.client  # made before the changes below
    first = ip.run_cell_magic("vydra", "nano-banana --wait", "before")
    assert first.local_path is None
    target = tmp_path / "mine"
    ip.run_line_magic("config", f"VydraMagics.download_dir = {str(target)!r}")
    ip.run_line_magic("config", "VydraMagics.auto_download = True")
    ip.run_line_magic("config", "VydraMagics.low_credit_threshold = 4990")
    assert session.client is client  # the same client reads the new settings
    assert client.download_dir == target
    assert client.credit_warning_threshold == 4990
    # The new threshold applies to the next submission, which crosses it and says so, in its cell.
    with pytest.warns(vydra_nb.CreditWarning, match="below 4990"):
        second = ip.run_cell_magic("vydra", "nano-banana --wait", "after")
    assert second.local_path is not None and second.local_path.parent == target
    # A job followed by the tracker alone (no --wait) is saved by the tracker, by the new setting too.
    result = ip.run_cell("%%vydra nano-banana\ntracked", store_history=True)  # displayed: tracked
    third = result.result
    assert session.tracker.is_tracking(third) or third.done
    assert session.tracker.join_idle(30)

    def saved() -> bool:
        return third.local_path is not None

    deadline_wait(saved, 30)
    assert third.local_path.parent == target
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.organization()  # once per crossing: still below, no second warning


def deadline_wait(predicate: Any, seconds: float) -> None:
    import threading

    event = threading.Event()
    for _ in range(int(seconds * 20)):
        if predicate():
            return
        event.wait(0.05)
    assert predicate(), "condition not reached in time"


# -- bookkeeping apart from what the server sent ------------------------------------------------------
def test_a_server_field_named_backend_changes_nothing(tmp_path: Path) -> None:
    """0.1 kept its own ``backend`` in ``Job.extra``, where a server field of that name overwrote it."""
    models = {"data": [{"slug": "tiny", "name": "Tiny", "provider": "x", "creditsPerUnit": 5, "pricingUnit": "image",
                        "isActive": True, "inputSchema": {"type": "object", "properties": {"prompt": {"type": "string"}},
                                                          "required": ["prompt"]}}], "count": 1}

    def script(req: Any) -> Reply:
        if req.path.endswith("/models"):
            return Reply(body=models)
        if req.method == "POST":
            return Reply(status=202, body={"jobId": "job_b1", "status": "pending", "creditsCharged": 5,
                                           "backend": "vydra", "idempotency_key": "theirs", "host": "evil"})
        return Reply(body={"id": "job_b1", "status": "completed", "creditsCharged": 5, "backend": "vydra",
                           "output": {"imageUrl": "https://cdn.example/x.png"}})

    with raw_server(script) as server:
        client = vydra_nb.Client(api_key="k_test", base_url=server.url)
        job = client.generate("tiny", prompt="p")
        job.refresh()
    assert job.backend == "sandbox"  # a loopback server: its credits are not real spend, whatever it says
    assert job.extra["backend"] == "vydra" and job.extra["host"] == "evil"
    assert vydra_nb.spend_summary("model", backend="vydra").empty
    assert job.idempotency_key != "theirs" and job.host != "evil"
    row = current_session().history().get("job_b1")
    assert row["idempotency_key"] == job.idempotency_key and row["host"] == job.host


def test_server_backend_field_cannot_move_real_spend(tmp_path: Path) -> None:
    job = vydra_nb.Job(id="job_real", model="veo3", status="pending", backend="vydra", host="www.vydra.ai")
    job.apply({"status": "completed", "backend": "sandbox", "creditsCharged": 175})
    assert job.backend == "vydra" and job.extra["backend"] == "sandbox"


# -- the layers ------------------------------------------------------------------------------------------
def test_job_reaches_its_client_only_through_its_public_interface() -> None:
    import inspect

    from vydra_nb.api import jobs

    source = inspect.getsource(jobs)
    assert "client._" not in source and "._client" not in source and "import vydra_nb.api.client" not in source
    assert "from vydra_nb.api.client" not in source


def test_no_module_reads_another_modules_private_state() -> None:
    """No ``other_module._name`` reads across the package (the 0.1 globals were read that way)."""
    import re

    root = Path(vydra_nb.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"\b(client_mod(?:ule)?|history|poller|tracker_mod)\._[a-z]\w*", text):
            offenders.append(f"{path.relative_to(root)}: {match.group(0)}")
        for match in re.finditer(r"\bjob\._client\b|\._default_client\b|GLOBAL_JOB_LISTENERS", text):
            offenders.append(f"{path.relative_to(root)}: {match.group(0)}")
    assert not offenders, offenders


def test_session_state_is_reset_cleanly(sb: sandbox_mod.Sandbox) -> None:
    session = current_session()
    client = make_client(sb)
    session.use_client(client)
    job = client.generate("veo3", prompt="followed")
    session.tracker.track(job)
    assert job.followed
    session.reset()
    assert not job.followed and session.existing_client is None


# -- a stopped sandbox's jobs, and the history after a restart ------------------------------------------
def test_a_stopped_sandboxs_jobs_are_lost_not_pending_and_job_id_shows_the_history(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_line_magic("vydra", "sandbox --speed 1 --credits 5000")  # veo3 takes minutes: it will not end
    job = vydra_nb.Client().generate("veo3", prompt="left running")
    capsys.readouterr()
    ip.run_line_magic("vydra", "sandbox --speed 100 --credits 1000")  # a new one replaces it, and says so
    said = capsys.readouterr().out
    assert "Stopped the sandbox at" in said and "1 unfinished job(s) went with it" in said
    row = current_session().history().get(job.id)
    assert row["status"] == "lost"
    assert current_session().resume() == 0  # nothing to resume on a sandbox that is gone
    shown = ip.run_line_magic("vydra", f"job {job.id}")
    out = capsys.readouterr().out
    assert f"Job {job.id}: from the history, since the sandbox that ran it is gone." in out
    assert "left running" in shown.data and "lost" in shown.data


def test_job_id_without_any_backend_shows_the_history(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("vydra", "sandbox --speed 100 --credits 1000")
    job = ip.run_cell_magic("vydra", "nano-banana --wait", "an apple to remember")
    current_session().reset()  # a new kernel: no key, no sandbox
    capsys.readouterr()
    shown = ip.run_line_magic("vydra", f"job {job.id}")
    out = capsys.readouterr().out
    assert f"Job {job.id}: from the history, since it ran on 127.0.0.1:" in out and "not on the server in use" in out
    assert "an apple to remember" in shown.data and "completed" in shown.data
