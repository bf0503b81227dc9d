"""Many jobs at once: N live jobs followed by one Tracker, each with a live ``JobView`` widget.

Measured until every job has ended:

- 429s received (the status budget is 100 per minute per key);
- the tracker thread's CPU time (``time.pthread_getcpuclockid`` of that thread, sampled while it
  lives), which includes what runs in it: HTTP, JSON parsing, job listeners (history store,
  the widgets' re-render). Reported as % of one core *at real speed*: CPU seconds divided by the
  real-time duration (wall x speed), since the number of polls, and so the work, does not depend on
  the speed. The raw share of the sped-up wall time is in the details;
- widget messages per second: comm messages the ``JobView`` widgets send (counted on ipywidgets'
  comm, which outside a kernel is a no-op ``DummyComm``), per real-time second. The views' render
  coalescing interval is scaled by 1/speed like every other duration.

Baseline: a careful loop in its own thread, on its own key, that GETs every live job every 10 s
(real time) with raw ``requests``, spaced so that it stays inside the 100-a-minute status budget
(with 100 jobs: each job about once a minute, round robin), carrying on at the next tick after a
429; its thread CPU is measured the same way. (0.1's baseline ignored the budget and collected
thousands of 429s by construction: a comparison it could only lose.)

To have N jobs live together, the generation limit is lifted for this benchmark (in the sandbox and
in the client); the status limit stays at 100/min. Job durations are set to a spread of 3 to 5
minutes (real time).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import threading
import time
from typing import Any

import requests

FULL = {"n": 100, "speed": 10.0}
QUICK = {"n": 20, "speed": 60.0}
MIN_REAL, MAX_REAL = 180.0, 300.0
BASELINE_INTERVAL = 10.0
TARGET_CPU_PCT = 2.0


class ThreadCPU:
    """Samples the CPU clock of a thread (found by a getter, since it may start late) until stopped."""

    def __init__(self, get_thread, period: float = 0.01) -> None:  # noqa: ANN001
        self._get = get_thread
        self.period = period
        self.cpu = 0.0
        self._base: dict[int, float] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="bench-cpu-sampler", daemon=True)

    def start(self) -> "ThreadCPU":
        self._t.start()
        return self

    def _sample(self) -> None:
        thread = self._get()
        if thread is None or thread.ident is None or not thread.is_alive():
            return
        try:
            value = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, ProcessLookupError):
            return
        # Keep the latest reading per thread (the tracker may restart as a new thread).
        self._base[thread.ident] = value
        self.cpu = sum(self._base.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period)

    def stop(self) -> float:
        self._sample()
        self._stop.set()
        self._t.join(2)
        return self.cpu


def _count_comm_messages() -> tuple[dict[str, int], Any]:
    """Count messages on ipywidgets' comms; returns (counts, undo)."""
    import comm

    counts = {"comm_msg": 0, "other": 0}
    original = comm.DummyComm.publish_msg

    def publish_msg(self, msg_type, *args, **kwargs):  # noqa: ANN001, ANN202
        counts["comm_msg" if msg_type == "comm_msg" else "other"] += 1
        return original(self, msg_type, *args, **kwargs)

    comm.DummyComm.publish_msg = publish_msg

    def undo() -> None:
        comm.DummyComm.publish_msg = original

    return counts, undo


def _naive_loop(base_url: str, key: str, job_ids: list[str], ends: dict[str, float], speed: float,
                deadline: float, stats: dict[str, Any]) -> None:
    session = requests.Session()
    session.trust_env = False
    headers = {"Authorization": f"Bearer {key}"}
    # A careful user's loop: every job every 10 s, but never faster than the status budget allows
    # for this many jobs (100 a minute, 95 planned): with 100 jobs, each one about once a minute.
    interval = max(BASELINE_INTERVAL, len(job_ids) * 60.0 / 95) / speed
    next_at = {j: time.monotonic() + interval * (i + 1) / len(job_ids) for i, j in enumerate(job_ids)}
    live = set(job_ids)
    try:
        while live and time.monotonic() < deadline:
            job_id = min(live, key=next_at.__getitem__)
            wait = next_at[job_id] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            stats["requests"] += 1
            try:
                resp = session.get(f"{base_url}/jobs/{job_id}", headers=headers, timeout=10)
            except requests.RequestException:
                stats["errors"] += 1
                next_at[job_id] = time.monotonic() + interval
                continue
            if resp.status_code == 429:
                stats["rate_limited_429"] += 1
            elif resp.ok and resp.json().get("status") in ("completed", "failed", "cancelled"):
                live.discard(job_id)
                stats["seen_done"] += 1
                stats["delays"].append((time.monotonic() - ends[job_id]) * speed)
            next_at[job_id] = time.monotonic() + interval
    finally:
        session.close()


def run(quick: bool = False, *, n: int | None = None, speed: float | None = None, seed: int = 1,
        widgets: bool = True) -> dict[str, Any]:
    import vydra_nb
    from vydra_nb import sandbox
    from vydra_nb.api.ratelimit import GENERATE, Limit
    from vydra_nb.tracking.tracker import Tracker

    cfg = dict(QUICK if quick else FULL)
    n = n or cfg["n"]
    speed = float(speed or cfg["speed"])
    real = [MIN_REAL + (MAX_REAL - MIN_REAL) * i / max(1, n - 1) for i in range(n)]
    budget_wall = (MAX_REAL * 3 + 120.0) / speed + 15.0

    counts, undo = _count_comm_messages()
    views: list[Any] = []
    try:
        # The enterprise plan (50 jobs at once, 600 a minute) and the generation limit lifted, so the
        # N jobs start together; the status budget (100 a minute) is what is measured.
        with sandbox.start(credits=10**9, speed=speed, seed=seed, plan="enterprise") as sb:
            sb.api.limiter.limits["generation"] = 10**6  # lifted so N jobs can start together
            sb.api.plan_limits = dataclasses.replace(sb.api.plan_limits, rpm=10**6, concurrent=10**6)
            sb.api.limiter.plan = sb.api.plan_limits
            base_key = sb.add_key()
            client = vydra_nb.Client(api_key=sb.api_key, base_url=sb.url, time_scale=1.0 / speed,
                                     rate_limits={GENERATE: Limit(10**6, 60.0)})
            client.models()
            raw = requests.Session()
            raw.trust_env = False
            jobs, base_ids, ends = [], [], {}
            for i in range(n):
                job = client.generate("veo3", prompt=f"many jobs {i}")
                r = raw.post(f"{sb.url}/models/veo3", json={"prompt": f"many jobs baseline {i}"},
                             headers={"Authorization": f"Bearer {base_key}"}, timeout=10)
                r.raise_for_status()
                bid = r.json()["jobId"]
                for jid in (job.id, bid):
                    with sb.jobs.lock:
                        sj = sb.jobs.get(jid)
                        sj.duration = real[i] / speed
                        ends[jid] = sj.created_mono + sj.duration
                jobs.append(job)
                base_ids.append(bid)
            raw.close()
            messages_before = dict(counts)
            if widgets:
                from vydra_nb.views.job_view import MIN_INTERVAL, JobView

                tracker = Tracker(name="bench-many")
                for job in jobs:
                    views.append(JobView(job, tracker=tracker, min_interval=MIN_INTERVAL / speed))
            else:
                tracker = Tracker(name="bench-many")
            messages_at_start = dict(counts)

            t0 = time.monotonic()
            deadline = t0 + budget_wall
            stats: dict[str, Any] = {"requests": 0, "rate_limited_429": 0, "errors": 0, "seen_done": 0, "delays": []}
            naive = threading.Thread(target=_naive_loop, args=(sb.url, base_key, base_ids, ends, speed, deadline, stats),
                                     name="bench-naive", daemon=True)
            ours_cpu = ThreadCPU(lambda: tracker._thread)
            base_cpu = ThreadCPU(lambda: naive)
            polls_before = tracker.polls
            for job in jobs:
                tracker.track(job)
            ours_cpu.start()
            naive.start()
            base_cpu.start()
            finished = tracker.join_idle(timeout=max(0.1, deadline - time.monotonic()))
            ours_wall = time.monotonic() - t0
            cpu_ours = ours_cpu.stop()
            naive.join(max(0.1, deadline - time.monotonic()))
            base_wall = time.monotonic() - t0
            cpu_base = base_cpu.stop()
            tracker.stop()
            delays = [(j.ended_seen_at - ends[j.id]) * speed for j in jobs if j.ended_seen_at is not None]
            rate_limited = client._transport.rate_limited
            polls = tracker.polls - polls_before
            client.close()
    finally:
        for v in views:
            try:
                v.close()
            except Exception:
                pass
        undo()

    messages = counts["comm_msg"] - messages_at_start["comm_msg"]
    ours_real = ours_wall * speed
    base_real = base_wall * speed
    ours_pct = 100.0 * cpu_ours / ours_real
    base_pct = 100.0 * cpu_base / base_real
    msg_rate = messages / ours_real
    rows = [
        {"metric": f"{n} live jobs: 429s received", "ours": rate_limited, "baseline": stats["rate_limited_429"],
         "ratio": None, "target": "0", "ok": rate_limited == 0 and finished},
        {"metric": f"{n} live jobs: tracker CPU, % of a core", "ours": ours_pct, "baseline": base_pct,
         "ratio": ours_pct / base_pct if base_pct else None, "target": f"< {TARGET_CPU_PCT} %",
         "ok": ours_pct < TARGET_CPU_PCT},
        {"metric": f"{n} live jobs: widget messages / s" if widgets else f"{n} live jobs: widget messages / s (off)",
         "ours": msg_rate, "baseline": None, "ratio": None, "target": "(reported)", "ok": None},
        {"metric": f"{n} live jobs: delay median, real s", "ours": statistics.median(delays) if delays else None,
         "baseline": statistics.median(stats["delays"]) if stats["delays"] else None,
         "ratio": (statistics.median(delays) / statistics.median(stats["delays"])) if delays and stats["delays"] else None,
         "target": "(reported)", "ok": None},
        {"metric": f"{n} live jobs: status requests / min", "ours": polls / (ours_real / 60.0),
         "baseline": stats["requests"] / (base_real / 60.0), "ratio": None, "target": "<= 100 (budget)",
         "ok": polls / (ours_real / 60.0) <= 100.0},
    ]
    return {
        "section": "tracker",
        "rows": rows,
        "details": {
            "n": n, "speed": speed, "finished": finished, "real_durations_s": [real[0], real[-1]],
            "ours": {"wall_s": ours_wall, "real_s": ours_real, "cpu_s": cpu_ours, "polls": polls,
                     "cpu_pct_of_core_real_time": ours_pct, "cpu_pct_of_core_wall_at_speed": 100.0 * cpu_ours / ours_wall,
                     "widget_comm_messages": messages, "widget_messages_per_real_s": msg_rate,
                     "widget_comm_messages_at_creation": messages_at_start["comm_msg"] - messages_before["comm_msg"],
                     "views": len(views), "renders": sum(v.renders for v in views),
                     "delay_median_real_s": statistics.median(delays) if delays else None,
                     "delay_max_real_s": max(delays) if delays else None},
            "baseline": {"wall_s": base_wall, "real_s": base_real, "cpu_s": cpu_base, **stats,
                         "cpu_pct_of_core_real_time": base_pct},
            "note": ("CPU % and rates per real-time second (wall x speed); generation limit lifted to start N jobs "
                     "together, status limit 100/min unchanged"),
        },
    }


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run import main_for_section

    sys.exit(main_for_section("tracker"))
