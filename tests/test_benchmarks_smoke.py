"""The benchmark suite still runs: ``benchmarks/run.py --quick``, in its own process, as a person would.

Absolute times and most targets are not checked here: CI machines are shared and the quick sizes
are too small to mean much. What is checked holds on any machine: every section ran and produced
its rows with a baseline, the client-side limiter kept our side at zero 429s, and ``%load_ext``
imported neither pandas nor ipywidgets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_quick_benchmark_suite_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k not in ("VYDRA_API_KEY", "VYDRA_BASE_URL")}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    sections = {s["section"]: s for s in data["sections"]}
    assert set(sections) == {"latency", "sweep", "tracker", "startup", "history"}
    for name, section in sections.items():
        assert not section.get("error"), f"{name}: {section.get('error')}"
        assert section["rows"], f"{name} produced no measurements"
    rows = {(s, r["metric"]): r for s, sec in sections.items() for r in sec["rows"]}

    def row(section: str, starts: str) -> dict:
        return next(r for (s, m), r in rows.items() if s == section and m.startswith(starts))

    # Every comparison carries its baseline, measured in this run, and the ratio between them.
    for key in [("latency", "[coarse] delay median"), ("latency", "[none] delay median"), ("sweep", "sweep of"),
                ("sweep", "capped sweep of"), ("startup", "start-up: IPython"),
                ("history", "history: jobs_df")]:
        r = row(*key)
        assert r["baseline"] is not None and r["ratio"] is not None and r["target"], r
    # What does not depend on the machine's speed.
    assert row("sweep", "sweep: 429s")["ours"] == 0
    assert row("tracker", "")["ours"] == 0  # the first tracker row: 429s received
    assert row("latency", "[coarse] 429s")["ours"] == 0 and row("latency", "[none] 429s")["ours"] == 0
    assert row("sweep", "capped sweep: 429s")["ours"] == 0
    assert row("startup", "start-up: pandas/ipywidgets")["ours"] == "none"
    for mode, details in sections["latency"]["details"].items():
        latency = details["variants"]
        assert all(v["unseen"] == 0 and not v["errors"] for v in latency.values()), (mode, latency)
    # The table a person reads names the baseline, the ratio and the target side by side.
    assert "baseline" in proc.stdout and "ratio" in proc.stdout and "target" in proc.stdout
