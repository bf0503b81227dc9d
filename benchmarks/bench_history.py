"""Benchmark the job history: ``jobs_df()`` over 100,000 stored jobs and ``History.record()`` for one job.

Each measurement runs next to a plain baseline in the same process, on the same file, so the
ratio says what our layer costs on this machine whatever its speed:

- ``jobs_df``: baseline is a bare ``SELECT *`` ``fetchall()`` into a list of tuples (the floor for
  getting the rows out of SQLite into Python at all);
- ``record``: baseline is a bare one-row ``INSERT`` plus commit on a connection with the same WAL
  settings (``journal_mode=WAL``, ``synchronous=NORMAL``), on the same database.

Targets (issue 6): ``jobs_df`` under 1 s for 100,000 jobs; recording a job about a millisecond
(checked as a median under 2 ms). Exits 1 when a target is missed, so CI can run it.

    python benchmarks/bench_history.py            # 100,000 rows
    python benchmarks/bench_history.py --quick    # 10,000 rows, a CI smoke run
    python benchmarks/bench_history.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.synthetic
from tests.synthetic import synthetic_rows  # noqa: E402

JOBS_DF_TARGET_S = 1.0
RECORD_TARGET_S = 0.002  # "about a millisecond": the median must stay under 2 ms


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """The fastest of ``repeat`` runs: the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def median_per_call(fn: Callable[[int], Any], calls: int) -> float:
    times = []
    for i in range(calls):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(rows: int, repeat: int, record_calls: int, folder: Path) -> dict[str, Any]:
    from vydra_nb.analysis import frames
    from vydra_nb.api.jobs import Job
    from vydra_nb.tracking.history import _UPSERT, COLUMNS, History

    history = History(folder / "history.sqlite3")
    t = time.perf_counter()
    with history._tx() as conn:
        conn.executemany(_UPSERT, synthetic_rows(rows, COLUMNS))
    setup_s = time.perf_counter() - t

    # -- jobs_df vs a bare SELECT * fetchall ----------------------------------------------------
    reader = history.connection_for_read()
    frames.jobs_df(history=history)  # warm the page cache for both, as a notebook's second call
    reader.execute("SELECT * FROM jobs").fetchall()
    ours_df = best_of(lambda: frames.jobs_df(history=history), repeat)
    base_df = best_of(lambda: reader.execute("SELECT * FROM jobs").fetchall(), repeat)
    reader.close()
    assert len(frames.jobs_df(history=history)) == rows

    # -- record() of one new job vs a bare INSERT + commit -----------------------------------
    created = datetime.now(timezone.utc)
    params = {"prompt": "A lake at sunset, 35mm film, slow dolly in", "aspect_ratio": "9:16"}

    def ours_record(i: int) -> None:
        job = Job(id=f"bench_new_{i}", model="veo3", status="pending", params=params, credits_charged=175,
                  created_at=created)
        job.backend = "vydra"
        history.record(job)

    bare = sqlite3.connect(history.path, timeout=30.0, isolation_level=None)
    bare.execute("PRAGMA journal_mode=WAL")
    bare.execute("PRAGMA synchronous=NORMAL")
    template = list(synthetic_rows(1, COLUMNS, seed=2)[0])
    insert = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"

    def base_record(i: int) -> None:
        template[0] = f"bench_bare_{i}"
        bare.execute("BEGIN")
        bare.execute(insert, template)
        bare.execute("COMMIT")

    for i in range(20):  # warm both paths
        ours_record(-1 - i)
        base_record(-1 - i)
    ours_rec = median_per_call(ours_record, record_calls)
    base_rec = median_per_call(base_record, record_calls)
    bare.close()
    history.close()

    import pandas as pd

    return {
        "rows": rows,
        "setup_insert_s": setup_s,
        "measurements": [
            {"name": f"jobs_df ({rows:,} jobs)", "ours_s": ours_df, "baseline_s": base_df,
             "baseline": "SELECT * fetchall", "target_s": JOBS_DF_TARGET_S, "target": "< 1 s",
             "ok": ours_df < JOBS_DF_TARGET_S},
            {"name": "record() one job (median)", "ours_s": ours_rec, "baseline_s": base_rec,
             "baseline": "bare INSERT + commit, WAL", "target_s": RECORD_TARGET_S, "target": "≈ 1 ms (< 2 ms)",
             "ok": ours_rec < RECORD_TARGET_S},
        ],
        "environment": {
            "python": platform.python_version(), "pandas": pd.__version__, "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 0.1 else f"{seconds:.3f} s"


def print_table(result: dict[str, Any]) -> None:
    header = ("measurement", "ours", "baseline", "ratio", "target", "result")
    lines = [header]
    for m in result["measurements"]:
        ratio = m["ours_s"] / m["baseline_s"] if m["baseline_s"] else float("inf")
        lines.append((m["name"], fmt_time(m["ours_s"]), f"{fmt_time(m['baseline_s'])} ({m['baseline']})",
                      f"{ratio:.2f}x", m["target"], "ok" if m["ok"] else "MISSED"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for n, row in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print(f"(setup: {result['rows']:,} rows inserted in {result['setup_insert_s']:.2f} s; "
          f"Python {result['environment']['python']}, pandas {result['environment']['pandas']}, "
          f"SQLite {result['environment']['sqlite']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 rows instead of 100,000 (CI smoke run)")
    parser.add_argument("--rows", type=int, default=None, help="number of stored jobs (overrides --quick)")
    parser.add_argument("--repeat", type=int, default=5, help="jobs_df runs; the best counts (default 5)")
    parser.add_argument("--record-calls", type=int, default=500, help="record() calls; the median counts")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    rows = args.rows or (10_000 if args.quick else 100_000)
    with tempfile.TemporaryDirectory(prefix="vydra-bench-") as tmp:
        result = run(rows, args.repeat, args.record_calls, Path(tmp))
    for m in result["measurements"]:
        m["ratio"] = m["ours_s"] / m["baseline_s"] if m["baseline_s"] else None
    print_table(result)
    result["ok"] = all(m["ok"] for m in result["measurements"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if not result["ok"]:
        missed = ", ".join(m["name"] for m in result["measurements"] if not m["ok"])
        print(f"target missed: {missed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
