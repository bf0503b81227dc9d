"""Run the vydra_nb benchmark suite and print one table: ours, baseline, ratio, target, result.

    python benchmarks/run.py                 # the full run (a few minutes); numbers go in BENCHMARKS.md
    python benchmarks/run.py --quick         # reduced sizes, < 45 s: the CI smoke run
    python benchmarks/run.py --json out.json # also write every number as JSON
    python benchmarks/run.py --only latency,sweep

Sections: latency (bench_latency.py), sweep (bench_sweep.py), tracker (bench_tracker.py),
startup (bench_startup.py), history (bench_history.py, run as a subprocess). Every baseline is
measured in the same run, on the same sandbox, as what it is compared with. All traffic goes to a
local sandbox on 127.0.0.1. Missed targets are reported, not fatal: the exit status is 0 when every
section ran, 2 when one crashed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECTIONS = ("latency", "sweep", "tracker", "startup", "history")


def _isolate() -> tempfile.TemporaryDirectory:
    """A throw-away data folder: benchmarks never touch the user's history or downloads."""
    tmp = tempfile.TemporaryDirectory(prefix="vydra-bench-")
    os.environ["VYDRA_NB_HOME"] = tmp.name
    os.environ.pop("VYDRA_API_KEY", None)
    os.environ.pop("VYDRA_BASE_URL", None)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    return tmp


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count(), "loadavg_at_start": load}


def run_history(quick: bool, timeout: float = 300.0) -> dict[str, Any]:
    """bench_history.py (issue 6) as a subprocess; its measurements become rows."""
    script = HERE / "bench_history.py"
    if not script.exists():
        return {"section": "history", "rows": [], "details": {"skipped": "benchmarks/bench_history.py not present"}}
    with tempfile.TemporaryDirectory(prefix="vydra-bench-history-") as tmp:
        out = Path(tmp) / "history.json"
        cmd = [sys.executable, str(script), "--json", str(out)] + (["--quick"] if quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy(), check=False)
        if not out.exists():
            raise RuntimeError(f"bench_history.py wrote no JSON (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        data = json.loads(out.read_text())
    rows = []
    for m in data.get("measurements", []):
        ours, base = m.get("ours_s"), m.get("baseline_s")
        rows.append({"metric": f"history: {m.get('name')}, s", "ours": ours, "baseline": base,
                     "ratio": m.get("ratio") if m.get("ratio") is not None else (ours / base if base else None),
                     "target": m.get("target"), "ok": m.get("ok"), "baseline_is": m.get("baseline")})
    return {"section": "history", "rows": rows,
            "details": {"rows_stored": data.get("rows"), "stdout": proc.stdout, "exit": proc.returncode,
                        "environment": data.get("environment")}}


def run_section(name: str, quick: bool) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    if name == "history":
        return run_history(quick)
    module = __import__(f"bench_{name}")
    return module.run(quick=quick)


# -- the table ----------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        if abs(value) >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def table(results: list[dict[str, Any]], markdown: bool = False) -> str:
    header = ("section", "metric", "ours", "baseline", "ratio", "target", "result")
    lines = [header]
    for res in results:
        if res.get("error"):
            lines.append((res["section"], "(section crashed)", "-", "-", "-", "-", "ERROR"))
            continue
        if not res["rows"] and res.get("details", {}).get("skipped"):
            lines.append((res["section"], res["details"]["skipped"], "-", "-", "-", "-", "skipped"))
        for r in res["rows"]:
            ratio = r.get("ratio")
            result = "-" if r.get("ok") is None else ("ok" if r["ok"] else "MISSED")
            lines.append((res["section"], r["metric"], fmt(r.get("ours")), fmt(r.get("baseline")),
                          "-" if ratio is None else f"{ratio:.2f}x", str(r.get("target") or "-"), result))
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in lines[1:]]
        return "\n".join(out)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for n, row in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="vydra_nb benchmarks: ours vs a plain baseline, same run.")
    parser.add_argument("--quick", action="store_true", help="reduced sizes (< 45 s): the CI smoke run")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write all results as JSON to PATH")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: all of {', '.join(SECTIONS)})")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")

    home = _isolate()
    started = time.monotonic()
    info = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
            "command": " ".join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine()}
    results: list[dict[str, Any]] = []
    crashed = False
    try:
        for name in chosen:
            t0 = time.monotonic()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            try:
                res = run_section(name, args.quick)
            except Exception as exc:  # one broken section must not hide the others
                crashed = True
                res = {"section": name, "rows": [], "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()}
                print(res["traceback"], file=sys.stderr)
            res["seconds"] = time.monotonic() - t0
            print(f"[bench] {name} done in {res['seconds']:.1f} s", file=sys.stderr, flush=True)
            results.append(res)
    finally:
        home.cleanup()
    info["seconds"] = time.monotonic() - started

    print()
    print(table(results))
    if args.markdown:
        print()
        print(table(results, markdown=True))
    missed = [f"{r['section']}: {row['metric']}" for r in results for row in r["rows"] if row.get("ok") is False]
    print(f"\n{len(missed)} target(s) missed" + (": " + "; ".join(missed) if missed else "")
          + f". Total {info['seconds']:.0f} s. Times marked 'real s' are sandbox wall seconds x speed.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"run": info, "sections": results, "missed": missed}, indent=2,
                                        default=str) + "\n")
    return 2 if crashed else 0


def main_for_section(name: str) -> int:
    """``python benchmarks/bench_<name>.py [--quick] [--json PATH]``: run one section alone."""
    argv = sys.argv[1:]
    return main([*argv, "--only", name])


if __name__ == "__main__":
    sys.exit(main())
