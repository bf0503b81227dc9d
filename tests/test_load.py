"""Load (issue 10): several kernels share one history file and lose nothing.

Four writer processes (``spawn``, as separate kernels would be) start together on a data folder
that does not exist yet, so they also race to create and migrate the database. Each records 300
jobs of its own through the default store (``VYDRA_NB_HOME``), moving every job through the states
a tracker would record (pending, running 25/50/75 %, completed with its output); all four also
update a shared set of jobs at once, as two kernels tracking the same job do, and after a barrier
send stale "running" updates for jobs another process already finished. Meanwhile two reader
processes and a reader thread call ``jobs_df()`` and ``History.rows()`` in a loop.

Afterwards: ``PRAGMA integrity_check`` is ok, no row is lost or duplicated, every row holds
exactly what was written (no torn or mixed rows), every job's last update is the one stored, a
finished job was never reopened by a stale update, and no reader or writer ever saw
"database is locked" (or anything else).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

WRITERS = 4
JOBS_PER_WRITER = 300
SHARED_JOBS = 20  # updated by every writer; finished by one (its "owner")
READERS = 2
PROGRESS_STEPS = (25, 50, 75)


def _prompt(tag: str, i: int) -> str:
    # Long enough to span pages if rows were ever torn, and different per job.
    return f"{tag} job {i}: " + "a lake at sunset, " * 20 + f"#{i}"


def _output(tag: str, i: int) -> dict[str, Any]:
    return {"videoUrl": f"https://cdn.example/{tag}/{i}.mp4", "duration": 8, "resolution": "1080p"}


def _writer(n: int, home: str, start_at: float, barrier: Any, errors: Any) -> None:
    """One kernel: its own jobs through every state, plus racing updates of the shared ones."""
    os.environ["VYDRA_NB_HOME"] = home
    try:
        from datetime import datetime, timezone

        from vydra_nb.api.jobs import Job
        from vydra_nb.session import current as current_session

        while time.time() < start_at:  # all processes are up by then; they start together
            time.sleep(0.002)
        history = current_session().history()  # creates and migrates the file, racing the others
        tag = f"w{n}"
        now = datetime.now(timezone.utc)
        for i in range(JOBS_PER_WRITER):
            job = Job(id=f"{tag}_{i}", model="veo3", params={"prompt": _prompt(tag, i), "aspect_ratio": "9:16"},
                      credits_charged=175, created_at=now)
            job.backend = "sandbox"
            job.idempotency_key = f"key-{tag}-{i}"
            history.record(job)
            for step in PROGRESS_STEPS:
                job.status, job.progress = "running", step
                history.record(job)
            job.status, job.progress, job.output = "completed", 100, _output(tag, i)
            job.completed_at = datetime.now(timezone.utc)
            history.record(job)
            if i % 15 == 0:  # the shared jobs: every process reports progress on each of them
                s = (i // 15) % SHARED_JOBS
                shared = Job(id=f"shared_{s}", model="veo3", status="running", progress=10 + n,
                             params={"prompt": _prompt("shared", s)}, credits_charged=175, created_at=now)
                history.record(shared)
        # Each shared job is finished by its owner ...
        for s in range(SHARED_JOBS):
            if s % WRITERS == n:
                done = Job(id=f"shared_{s}", model="veo3", status="failed", progress=60,
                           params={"prompt": _prompt("shared", s)}, credits_charged=175, credits_refunded=175,
                           error={"code": "PROVIDER_ERROR", "message": "upstream failed"}, created_at=now)
                history.record(done)
        barrier.wait(timeout=60)
        # ... and then every other process sends a stale "running" update, as a slow poll would.
        for s in range(SHARED_JOBS):
            if s % WRITERS != n:
                stale = Job(id=f"shared_{s}", model="veo3", status="running", progress=99,
                            params={"prompt": _prompt("shared", s)}, credits_charged=175, created_at=now)
                history.record(stale)
    except BaseException:  # noqa: BLE001 - reported to the parent
        errors.put(f"writer {n}: {traceback.format_exc()}")
        raise


def _reader(n: int, home: str, start_at: float, stop: Any, errors: Any, reads: Any) -> None:
    """A notebook that keeps looking at its jobs while other kernels write."""
    os.environ["VYDRA_NB_HOME"] = home
    count, last_rows = 0, 0
    try:
        import vydra_nb
        from vydra_nb.session import current as current_session

        while time.time() < start_at:
            time.sleep(0.002)
        while not stop.is_set():
            try:
                df = vydra_nb.jobs_df()
            except Exception as exc:  # the file may not exist for the first milliseconds only
                if "no such table" in str(exc) and count == 0:
                    time.sleep(0.005)
                    continue
                raise
            rows = len(df)
            assert rows >= last_rows, f"rows went from {last_rows} to {rows}: a row disappeared"
            last_rows = rows
            if count % 5 == 0:
                current_session().history().rows(limit=50)
            count += 1
    except BaseException:  # noqa: BLE001 - reported to the parent
        errors.put(f"reader {n}: {traceback.format_exc()}")
    finally:
        reads.put(count)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_four_processes_share_one_history_without_loss_or_corruption(tmp_path: Path) -> None:
    import vydra_nb
    from vydra_nb.tracking.history import History

    home = tmp_path / "shared-home"  # does not exist yet: the processes race to create it
    os.environ["VYDRA_NB_HOME"] = str(home)  # the autouse fixture restores it afterwards
    ctx = mp.get_context("spawn")
    errors, reads = ctx.Queue(), ctx.Queue()
    barrier, stop = ctx.Barrier(WRITERS), ctx.Event()
    start_at = time.time() + 3.0  # spawned interpreters need a moment to import
    writers = [ctx.Process(target=_writer, args=(n, str(home), start_at, barrier, errors)) for n in range(WRITERS)]
    readers = [ctx.Process(target=_reader, args=(n, str(home), start_at, stop, errors, reads)) for n in range(READERS)]
    t0 = time.monotonic()
    for p in writers + readers:
        p.start()

    # A reader thread in this process too: jobs_df while the others write.
    thread_reads: list[int] = [0]
    thread_errors: list[str] = []

    def read_here() -> None:
        while time.time() < start_at + 0.5:
            time.sleep(0.01)
        while not stop.is_set():
            try:
                vydra_nb.jobs_df()
                thread_reads[0] += 1
            except Exception:  # noqa: BLE001
                thread_errors.append(traceback.format_exc())
                return
            time.sleep(0.01)

    reader_thread = threading.Thread(target=read_here, daemon=True)
    reader_thread.start()
    for p in writers:
        p.join(timeout=90)
    write_seconds = time.time() - start_at  # from the common start to the last writer's end
    stop.set()
    for p in readers:
        p.join(timeout=30)
    reader_thread.join(timeout=30)
    elapsed = time.monotonic() - t0

    problems = []
    while not errors.empty():
        problems.append(errors.get())
    problems += thread_errors
    assert not problems, "\n".join(problems)
    assert [p.exitcode for p in writers + readers] == [0] * (WRITERS + READERS)
    read_counts = [reads.get(timeout=5) for _ in readers]
    assert all(c > 0 for c in read_counts) and thread_reads[0] > 0, (read_counts, thread_reads)

    history = History(home / "history.sqlite3")
    conn = history.connection_for_read()
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        dupes = conn.execute("SELECT id FROM jobs GROUP BY id HAVING COUNT(*) > 1").fetchall()
    finally:
        conn.close()
    assert dupes == []
    rows = {r["id"]: r for r in history.rows()}
    expected_ids = {f"w{n}_{i}" for n in range(WRITERS) for i in range(JOBS_PER_WRITER)}
    expected_ids |= {f"shared_{s}" for s in range(SHARED_JOBS)}
    assert set(rows) == expected_ids, f"lost: {sorted(expected_ids - set(rows))[:5]}, extra: {sorted(set(rows) - expected_ids)[:5]}"
    assert history.count() == WRITERS * JOBS_PER_WRITER + SHARED_JOBS

    for n in range(WRITERS):
        tag = f"w{n}"
        for i in range(JOBS_PER_WRITER):
            row = rows[f"{tag}_{i}"]
            # The last update, whole: no field from an earlier state, no field from another job.
            assert (row["status"], row["progress"]) == ("completed", 100), row
            assert row["output"] == _output(tag, i), row
            assert row["media_url"] == _output(tag, i)["videoUrl"]
            assert row["params"] == {"prompt": _prompt(tag, i), "aspect_ratio": "9:16"}, row
            assert row["prompt"] == _prompt(tag, i)
            assert row["credits_charged"] == 175 and row["idempotency_key"] == f"key-{tag}-{i}"
            assert row["completed_at"] is not None and row["backend"] == "sandbox"
    for s in range(SHARED_JOBS):
        row = rows[f"shared_{s}"]
        # Finished by its owner; the stale "running 99 %" updates that came after did not reopen it.
        assert (row["status"], row["progress"], row["error_code"]) == ("failed", 60, "PROVIDER_ERROR"), row
        assert row["credits_refunded"] == 175 and row["prompt"] == _prompt("shared", s)

    df = vydra_nb.jobs_df()
    assert len(df) == len(expected_ids) and df["id"].is_unique
    assert int(df["net_credits"].sum()) == 175 * WRITERS * JOBS_PER_WRITER
    history.close()

    records = WRITERS * (JOBS_PER_WRITER * (2 + len(PROGRESS_STEPS)) + JOBS_PER_WRITER // 15 + SHARED_JOBS // WRITERS
                         + SHARED_JOBS - SHARED_JOBS // WRITERS)
    print(f"\nload: {WRITERS} writers x {JOBS_PER_WRITER} jobs, {records} recorded transactions, "
          f"{sum(read_counts)} jobs_df reads in {READERS} reader processes + {thread_reads[0]} in a thread, "
          f"{elapsed:.1f} s in all (writes {write_seconds:.1f} s)")


# -- kernels starting at once -----------------------------------------------------------------
OPENERS = 8
OPEN_ROUNDS = 60


def _opener(n: int, base: str, barrier: Any, errors: Any) -> None:
    """A kernel that records its first job the moment it starts, on a data folder nobody made yet."""
    from vydra_nb.api.jobs import Job
    from vydra_nb.session import current

    for r in range(OPEN_ROUNDS):
        os.environ["VYDRA_NB_HOME"] = os.path.join(base, f"round{r}")
        barrier.wait(timeout=60)  # all of them at once, every round
        try:
            job = Job(id=f"k{n}", model="veo3", status="pending", credits_charged=175)
            current().record(job)  # the listener every Client calls on submit
        except Exception:  # noqa: BLE001 - reported to the parent
            errors.put(f"opener {n}, round {r}: {traceback.format_exc()}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kernels_starting_at_once_on_a_new_data_folder_all_record_their_jobs(tmp_path: Path) -> None:
    """Every kernel switches a brand-new file to WAL at the same moment; none may fail to open it.

    SQLite answers that race with an immediate "database is locked" (its busy timeout does not
    apply), so before ``History`` retried the switch a few opens in every few hundred failed.
    """
    from vydra_nb.tracking.history import History

    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    barrier = ctx.Barrier(OPENERS)
    procs = [ctx.Process(target=_opener, args=(n, str(tmp_path), barrier, errors)) for n in range(OPENERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, f"{len(problems)} of {OPENERS * OPEN_ROUNDS} opens failed:\n" + problems[0]
    assert [p.exitcode for p in procs] == [0] * OPENERS
    for r in range(OPEN_ROUNDS):
        history = History(tmp_path / f"round{r}" / "history.sqlite3")
        try:
            assert {row["id"] for row in history.rows()} == {f"k{n}" for n in range(OPENERS)}, r
            assert history.schema_version >= 2
        finally:
            history.close()
