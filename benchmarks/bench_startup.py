"""Start-up: ``%load_ext vydra_nb`` against a bare IPython start.

Each repetition runs two fresh interpreters, alternately: one that creates an ``InteractiveShell``
(the bare start, the baseline) and one that creates it and then runs ``%load_ext vydra_nb``. We
report the medians of the whole process's wall time, their difference ("extra"), the in-process
time of ``%load_ext`` alone, and whether pandas or ipywidgets were imported by it (they must not be).
Both use the same throw-away ``IPYTHONDIR`` and ``VYDRA_NB_HOME``; one warm-up pair is discarded.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

FULL = {"reps": 15}
QUICK = {"reps": 3}
TARGET_EXTRA_S = 0.100

SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
t1 = time.perf_counter()
before = set(sys.modules)
if sys.argv[1] == "load":
    shell.run_line_magic("load_ext", "vydra_nb")
    assert "vydra" in shell.magics_manager.magics["line"], "the %vydra magic is not registered"
t2 = time.perf_counter()
new = set(sys.modules) - before
print(json.dumps({"shell_s": t1 - t0, "load_s": t2 - t1, "new_modules": len(new),
                  "pandas": "pandas" in sys.modules, "ipywidgets": "ipywidgets" in sys.modules,
                  "requests": "requests" in sys.modules}))
"""


def _one(mode: str, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=60, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"start-up probe ({mode}) failed: {proc.stderr.strip()[-500:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


def run(quick: bool = False, *, reps: int | None = None) -> dict[str, Any]:
    reps = reps or (QUICK if quick else FULL)["reps"]
    with tempfile.TemporaryDirectory(prefix="vydra-bench-startup-") as tmp:
        env = {**os.environ, "IPYTHONDIR": os.path.join(tmp, "ipython"), "VYDRA_NB_HOME": os.path.join(tmp, "home")}
        env.pop("VYDRA_API_KEY", None)
        _one("bare", env), _one("load", env)  # warm-up: profile dir, bytecode caches
        bare, load = [], []
        for _ in range(reps):
            bare.append(_one("bare", env))
            load.append(_one("load", env))
    bare_med = statistics.median(r["process_s"] for r in bare)
    load_med = statistics.median(r["process_s"] for r in load)
    in_proc = statistics.median(r["load_s"] for r in load)
    extra = load_med - bare_med
    heavy = sorted({name for r in load for name in ("pandas", "ipywidgets") if r[name]})
    rows = [
        {"metric": "start-up: IPython + %load_ext, process s", "ours": load_med, "baseline": bare_med,
         "ratio": load_med / bare_med if bare_med else None, "target": f"extra < {TARGET_EXTRA_S * 1e3:.0f} ms",
         "ok": extra < TARGET_EXTRA_S},
        {"metric": "start-up: extra for %load_ext, s (process medians)", "ours": extra, "baseline": 0.0,
         "ratio": None, "target": f"< {TARGET_EXTRA_S * 1e3:.0f} ms", "ok": extra < TARGET_EXTRA_S},
        {"metric": "start-up: %load_ext alone, s (in-process)", "ours": in_proc, "baseline": None,
         "ratio": None, "target": f"< {TARGET_EXTRA_S * 1e3:.0f} ms", "ok": in_proc < TARGET_EXTRA_S},
        {"metric": "start-up: pandas/ipywidgets imported at load", "ours": ", ".join(heavy) or "none",
         "baseline": None, "ratio": None, "target": "none", "ok": not heavy},
    ]
    return {
        "section": "startup",
        "rows": rows,
        "details": {"reps": reps, "bare_process_median_s": bare_med, "load_process_median_s": load_med,
                    "extra_median_s": extra, "load_ext_in_process_median_s": in_proc,
                    "new_modules_at_load_median": statistics.median(r["new_modules"] for r in load),
                    "requests_imported_at_load": any(r["requests"] for r in load)},
    }


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run import main_for_section

    sys.exit(main_for_section("startup"))
