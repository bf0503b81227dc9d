"""Result latency and polling cost: how soon a finished job is seen, and how many status calls it took.

N jobs of mixed lengths (evenly spread from 30 s to 3 min at real speed, shuffled) run on one
sandbox at ``speed`` times real time. Three ways of following them run *at the same time*, each
with its own API key (so each has its own status budget of 100/min and generation limit of 10/min):

- ``tracker``: ours, one ``vydra_nb.tracking.tracker.Tracker`` for all jobs, with the client's default
  ``PollPolicy`` scaled by 1/speed (``Client(time_scale=1/speed)``);
- ``wait``: ours, one ``job.wait()`` per job in its own thread (same ``PollPolicy``);
- ``baseline``: a plain loop that polls each live job every 10 s (real time) through the same client
  class, i.e. ``while not done: sleep(10); refresh()``.

Each job's real completion time is read from the sandbox's job clock (same process, same monotonic
clock: ``created + duration``); the moment the client saw it is ``Job.ended_seen_at``, stamped when
the answer saying "completed" is parsed. Delays and durations are reported in real-time seconds,
i.e. wall seconds multiplied by ``speed``.

The sandbox draws a job's duration from its model; the benchmark overrides it right after
submission (before the first poll) to get the 30 s - 3 min spread.

It runs once per progress shape the sandbox can report (issue 15): ``linear`` (smooth, the 0.1
sandbox), ``coarse`` (held values, then jumps), ``erratic`` (bursts and stalls), ``none`` (no
percentage at all, like kie.ai's veo3), and ``none+history``: no percentage, but the history
already holds 40 finished veo3 jobs of the same spread (30 s - 3 min, another shuffle), which is
what a user has after a while. Each variant runs on a sandbox of its own (its own organisation,
so the plan's per-organisation concurrency cap counts its jobs only), all in this process on one
clock, on the ``enterprise`` plan (50 jobs at once: the 20 of a variant never wait).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MIN_REAL, MAX_REAL = 30.0, 180.0
BASELINE_INTERVAL = 10.0  # real seconds
TARGET_MEDIAN = 1.5
TARGET_P95 = 4.0

FULL = {"n_jobs": 20, "speed": 20.0}
QUICK = {"n_jobs": 5, "speed": 60.0}
MODES = ("linear", "coarse", "erratic", "none", "none+history")
QUICK_MODES = ("coarse", "none")


def durations(n: int, seed: int = 7) -> list[float]:
    """``n`` real-time durations evenly spread over [30 s, 180 s], in a seeded random order."""
    if n == 1:
        return [MIN_REAL]
    values = [MIN_REAL + (MAX_REAL - MIN_REAL) * i / (n - 1) for i in range(n)]
    random.Random(seed).shuffle(values)
    return values


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class Entry:
    job: Any
    sandbox_job: Any
    real_duration: float
    next_at: float = 0.0


@dataclass
class Variant:
    name: str
    client: Any
    entries: list[Entry] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    submitted_all: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    tracker: Any = None
    errors: list[str] = field(default_factory=list)


def _count_status_calls(variant: Variant) -> None:
    """Count ``GET /jobs/{id}`` calls per job on this client instance (counting only, no change)."""
    original = variant.client.job_status

    def counted(job_id: str) -> Any:
        with variant.lock:
            variant.calls[job_id] += 1
        return original(job_id)

    variant.client.job_status = counted


def _set_duration(sb: Any, job_id: str, wall_seconds: float) -> Any:
    with sb.jobs.lock:
        sj = sb.jobs.get(job_id)
        sj.duration = wall_seconds
        return sj


def _baseline_loop(v: Variant, speed: float, deadline: float) -> None:
    from vydra_nb.api.errors import VydraError

    interval = BASELINE_INTERVAL / speed
    while time.monotonic() < deadline:
        with v.lock:
            live = [e for e in v.entries if not e.job.done]
        if not live:
            if v.submitted_all.is_set():
                with v.lock:
                    if all(e.job.done for e in v.entries):
                        return
            time.sleep(0.002)
            continue
        entry = min(live, key=lambda e: e.next_at)
        wait = entry.next_at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 0.02))  # short naps so newly submitted jobs are noticed
            continue
        try:
            entry.job.refresh()
        except VydraError as exc:
            v.errors.append(str(exc)[:200])
        entry.next_at = time.monotonic() + interval


def _submit_all(v: Variant, sb: Any, real_durations: list[float], speed: float, start_job) -> None:  # noqa: ANN001
    try:
        for i, real in enumerate(real_durations):
            job = v.client.generate("veo3", prompt=f"latency bench {v.name} {i}")
            sj = _set_duration(sb, job.id, real / speed)
            entry = Entry(job, sj, real, next_at=time.monotonic() + BASELINE_INTERVAL / speed)
            with v.lock:
                v.entries.append(entry)
            start_job(entry)
    except Exception as exc:  # reported, never hangs the run
        v.errors.append(f"submit: {type(exc).__name__}: {exc}"[:300])
    finally:
        v.submitted_all.set()


def run(quick: bool = False, *, n_jobs: int | None = None, speed: float | None = None, seed: int = 1,
        policy: Any = None, modes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every progress mode in turn; returns ``{"rows": [...], "details": {...}}``.

    ``policy``: an optional ``PollPolicy`` to use for the two "ours" variants instead of the default
    (for trying a proposed change; the default run leaves it None).
    """
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for mode in modes or (QUICK_MODES if quick else MODES):
        result = run_mode(mode, quick, n_jobs=n_jobs, speed=speed, seed=seed, policy=policy)
        rows += result["rows"]
        details[mode] = result["details"]
    return {"section": "latency", "rows": rows, "details": details}


def _warm_history(path: str, host: str | None, speed: float, seed: int) -> None:
    """40 finished veo3 jobs of the benchmark's spread, as a history that has seen the model a while."""
    from vydra_nb.api.jobs import Job
    from vydra_nb.tracking.history import History

    store = History(path)
    for i, real in enumerate(durations(40, seed=seed + 100)):
        job = Job(id=f"job_warm_{i}", model="veo3", status="running", host=host, backend="sandbox")
        job.submitted_at = time.monotonic() - real / speed
        job.apply({"status": "completed", "output": {"videoUrl": f"http://127.0.0.1/warm/{i}.mp4"}})
        store.record(job)
    store.close()


def run_mode(mode: str, quick: bool = False, *, n_jobs: int | None = None, speed: float | None = None,
             seed: int = 1, policy: Any = None) -> dict[str, Any]:
    """The three variants side by side on one progress mode."""
    import tempfile

    import vydra_nb
    from vydra_nb import sandbox
    from vydra_nb.tracking.tracker import Tracker

    cfg = dict(QUICK if quick else FULL)
    n = n_jobs or cfg["n_jobs"]
    speed = float(speed or cfg["speed"])
    real_durations = durations(n, seed=seed + 6)
    progress = mode.split("+")[0]
    warm = mode.endswith("+history")
    # Bounded: submission at 10 per window, the longest job, then generous slack.
    windows = (n + 9) // 10
    budget_wall = (MAX_REAL * 1.2 + 60.0 * windows + 120.0) / speed + 10.0

    names = ("tracker", "wait", "baseline")
    boxes = {name: sandbox.start(credits=10**9, speed=speed, seed=seed, progress=progress, plan="enterprise")
             for name in names}
    history_dir = tempfile.TemporaryDirectory(prefix="vydra-bench-latency-")
    try:
        variants: dict[str, Variant] = {}
        for name in names:
            box = boxes[name]
            kwargs: dict[str, Any] = {"time_scale": 1.0 / speed,
                                      "history": os.path.join(history_dir.name, f"{name}.sqlite3")}
            if policy is not None and name != "baseline":
                kwargs["poll_policy"] = policy
            client = vydra_nb.Client(api_key=box.api_key, base_url=box.url, **kwargs)
            if warm and name != "baseline":
                _warm_history(kwargs["history"], client.host, speed, seed)
            client.models()  # warm the model cache so submission is just the POSTs
            client.plan_limits()  # and the plan, asked once per client before the first generation
            variants[name] = v = Variant(name, client)
            _count_status_calls(v)

        started = time.monotonic()
        deadline = started + budget_wall

        tv = variants["tracker"]
        tv.tracker = Tracker(name="bench-tracker")

        wv = variants["wait"]

        def start_wait(entry: Entry) -> None:
            def waiter() -> None:
                try:
                    entry.job.wait(timeout=max(1.0, deadline - time.monotonic()))
                except Exception as exc:
                    wv.errors.append(f"wait: {type(exc).__name__}: {exc}"[:300])

            t = threading.Thread(target=waiter, name="bench-wait", daemon=True)
            wv.threads.append(t)
            t.start()

        bv = variants["baseline"]
        loop = threading.Thread(target=_baseline_loop, args=(bv, speed, deadline), name="bench-baseline", daemon=True)
        loop.start()

        submitters = [
            threading.Thread(target=_submit_all, args=(tv, boxes["tracker"], real_durations, speed,
                                                       lambda e: tv.tracker.track(e.job)), daemon=True),
            threading.Thread(target=_submit_all, args=(wv, boxes["wait"], real_durations, speed, start_wait),
                             daemon=True),
            threading.Thread(target=_submit_all, args=(bv, boxes["baseline"], real_durations, speed, lambda e: None),
                             daemon=True),
        ]
        for t in submitters:
            t.start()
        for t in submitters:
            t.join(max(0.1, deadline - time.monotonic()))
        tv.tracker.join_idle(timeout=max(0.1, deadline - time.monotonic()))
        for t in wv.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        loop.join(max(0.1, deadline - time.monotonic()))
        tv.tracker.stop()
        wall = time.monotonic() - started

        results: dict[str, Any] = {}
        for name, v in variants.items():
            delays, per_job, unseen = [], [], 0
            for e in v.entries:
                done_at = e.sandbox_job.created_mono + e.sandbox_job.duration
                if e.job.ended_seen_at is None:
                    unseen += 1
                    continue
                delays.append((e.job.ended_seen_at - done_at) * speed)
                per_job.append(v.calls[e.job.id])
            results[name] = {
                "jobs": len(v.entries),
                "unseen": unseen,
                "delay_median_s": statistics.median(delays) if delays else float("nan"),
                "delay_p95_s": percentile(delays, 95),
                "delay_max_s": max(delays) if delays else float("nan"),
                "status_calls_per_job": statistics.mean(per_job) if per_job else float("nan"),
                "status_calls_total": sum(v.calls.values()),
                "http_requests": v.client.requests_sent,
                "rate_limited_429": v.client.rate_limited,
                "errors": v.errors[:5],
                "delays_s": [round(d, 3) for d in delays],
                "calls_per_job": per_job,
            }
            v.client.close()
    finally:
        for box in boxes.values():
            box.stop()
        history_dir.cleanup()

    ours, wait, base = results["tracker"], results["wait"], results["baseline"]
    incomplete = [k for k, r in results.items() if r["unseen"] or r["jobs"] < n]

    def compare(label: str, ours_r: dict[str, Any], key: str, target: str, ok: bool) -> dict[str, Any]:
        a, b = ours_r[key], base[key]
        return {"metric": label, "ours": a, "baseline": b, "ratio": a / b if b else None, "target": target, "ok": ok}

    # The targets of issue 15: with any progress, median < 1.5 s and p95 < 4 s for no more requests
    # than the 10 s poll; with none, never worse than it (and better once the history knows the model).
    if progress == "none":
        delay_target = ("<= baseline", lambda r, key: r[key] <= base[key] * 1.05 + 0.25)
    else:
        delay_target = None
    rows = []
    for label, r in ((f"Tracker, {n} jobs", ours), ("job.wait", wait)):
        short = label.split(",")[0]
        if delay_target is None:
            rows += [
                compare(f"[{mode}] delay median, real s ({label})", r, "delay_median_s", f"< {TARGET_MEDIAN} s",
                        r["delay_median_s"] < TARGET_MEDIAN),
                compare(f"[{mode}] delay p95, real s ({short})", r, "delay_p95_s", f"< {TARGET_P95} s",
                        r["delay_p95_s"] < TARGET_P95),
            ]
        else:
            text, check = delay_target
            rows += [
                compare(f"[{mode}] delay median, real s ({label})", r, "delay_median_s", text,
                        check(r, "delay_median_s")),
                compare(f"[{mode}] delay p95, real s ({short})", r, "delay_p95_s", text, check(r, "delay_p95_s")),
            ]
        rows.append(compare(f"[{mode}] status requests per job ({short})", r, "status_calls_per_job", "<= baseline",
                            r["status_calls_per_job"] <= base["status_calls_per_job"] + 1e-9))
    rows += [
        {"metric": f"[{mode}] 429s received (Tracker / job.wait)",
         "ours": ours["rate_limited_429"] + wait["rate_limited_429"],
         "baseline": base["rate_limited_429"], "ratio": None, "target": "0",
         "ok": ours["rate_limited_429"] + wait["rate_limited_429"] == 0},
    ]
    if incomplete:
        for r in rows:
            r["ok"] = False
        rows.append({"metric": f"[{mode}] jobs not seen to finish", "ours": sum(results[k]["unseen"] for k in incomplete),
                     "baseline": None, "ratio": None, "target": "0", "ok": False})
    return {
        "rows": rows,
        "details": {
            "mode": mode, "speed": speed, "n_jobs": n, "real_durations_s": real_durations, "wall_s": wall,
            "baseline_interval_real_s": BASELINE_INTERVAL, "variants": results,
            "policy": repr(policy) if policy is not None else "default PollPolicy().scaled(1/speed)",
            "note": "times in real-time seconds (wall seconds x speed); three variants ran concurrently, "
                    "each on a sandbox (organisation) of its own",
        },
    }


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run import main_for_section

    sys.exit(main_for_section("latency"))
