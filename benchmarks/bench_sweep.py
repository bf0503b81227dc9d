"""Sweeps: N generations as fast as the 10-per-minute generation limit allows, without 429s.

- ours: ``client.generate(...)`` in a plain loop; the client's rate limiter paces the burst;
- baseline: a naive loop of raw ``requests.post`` with no pacing that, on a 429, sleeps the
  ``Retry-After`` seconds and tries again.

Lower bound: with 10 generations per 60 s window, generation ``i`` (0-based) cannot be sent before
``floor(i / 10)`` windows after the first, so N generations need at least
``floor((N - 1) / 10) * 60`` s (120 s for 30) from the first send to the last. Times are from just
before the first request to the answer of the last one, in real-time seconds (wall x speed).

Each side has its own API key (its own server-side window) and they run one after the other.

A second scenario gives a sweep something harder to win (issue 15): 24 jobs of mixed models
(speech, images, Veo video with no progress percentage; a sixth of them fail part-way and are
refunded) on the free plan, which lets 2 jobs run at once. Measured from the first request until
every job has ended. Ours: ``vydra_nb.sweep`` per model with the session's tracker, the client's
plan-aware concurrency cap queueing submissions locally. Baseline, what a careful user writes:
submit each job in turn, sleep ``Retry-After`` on a 429 and retry, then poll every live job every
10 s until all have ended.
Caveat: the sandbox's ``Retry-After`` is whole wall seconds (at least 1), so at high ``speed`` a
naive loop that sleeps it overshoots by up to ``speed`` real seconds per window; the full run uses
a low speed to keep that distortion small.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import requests

FULL = {"n": 30, "speed": 5.0}
QUICK = {"n": 12, "speed": 60.0}
LIMIT, WINDOW = 10, 60.0
TARGET_OVER_BOUND = 1.05
MODEL, PARAMS = "elevenlabs-tts", {"text": "sweep"}


def lower_bound(n: int, limit: int = LIMIT, window: float = WINDOW) -> float:
    """Seconds from the first send to the last for ``n`` sends under ``limit`` per ``window``."""
    return ((max(n, 1) - 1) // limit) * window


def run_ours(sb: Any, key: str, n: int, speed: float) -> dict[str, Any]:
    import vydra_nb

    client = vydra_nb.Client(api_key=key, base_url=sb.url, time_scale=1.0 / speed)
    try:
        client.models()  # warm the model cache: only the POSTs are timed
        sent_before = client.requests_sent
        t0 = time.monotonic()
        for i in range(n):
            client.generate(MODEL, {**PARAMS, "text": f"sweep {i}"})
        wall = time.monotonic() - t0
        return {"wall_s": wall, "real_s": wall * speed, "rate_limited_429": client.rate_limited,
                "http_requests": client.requests_sent - sent_before}
    finally:
        client.close()


def run_naive(sb: Any, key: str, n: int, speed: float) -> dict[str, Any]:
    session = requests.Session()
    session.trust_env = False
    url = f"{sb.url}/models/{MODEL}"
    headers = {"Authorization": f"Bearer {key}"}
    accepted = hits = attempts = 0
    waited = 0.0
    t0 = time.monotonic()
    try:
        while accepted < n and attempts < 20 * n:  # bounded
            attempts += 1
            resp = session.post(url, json={**PARAMS, "text": f"naive {accepted}"}, headers=headers, timeout=10)
            if resp.status_code == 429:
                hits += 1
                wait = min(float(resp.headers.get("Retry-After") or 1), 120.0)
                waited += wait
                time.sleep(wait)
                continue
            resp.raise_for_status()
            accepted += 1
        wall = time.monotonic() - t0
    finally:
        session.close()
    return {"wall_s": wall, "real_s": wall * speed, "rate_limited_429": hits, "http_requests": attempts,
            "accepted": accepted, "retry_after_slept_wall_s": waited}


def run(quick: bool = False, *, n: int | None = None, speed: float | None = None, seed: int = 1) -> dict[str, Any]:
    from vydra_nb import sandbox

    cfg = dict(QUICK if quick else FULL)
    n = n or cfg["n"]
    speed = float(speed or cfg["speed"])
    bound = lower_bound(n)
    with sandbox.start(credits=10**9, speed=speed, seed=seed) as sb:
        ours = run_ours(sb, sb.api_key, n, speed)
        naive = run_naive(sb, sb.add_key(), n, speed)
    ours["over_bound"] = ours["real_s"] / bound if bound else None
    naive["over_bound"] = naive["real_s"] / bound if bound else None
    rows = [
        {"metric": f"sweep of {n}: time, real s (bound {bound:.0f} s)", "ours": ours["real_s"],
         "baseline": naive["real_s"], "ratio": ours["real_s"] / naive["real_s"] if naive["real_s"] else None,
         "target": f"<= {bound * TARGET_OVER_BOUND:.0f} s (bound +5%)",
         "ok": bound == 0 or ours["real_s"] <= bound * TARGET_OVER_BOUND},
        {"metric": "sweep: time / lower bound", "ours": ours["over_bound"], "baseline": naive["over_bound"],
         "ratio": None, "target": f"<= {TARGET_OVER_BOUND}",
         "ok": ours["over_bound"] is None or ours["over_bound"] <= TARGET_OVER_BOUND},
        {"metric": "sweep: 429s received", "ours": ours["rate_limited_429"], "baseline": naive["rate_limited_429"],
         "ratio": None, "target": "0", "ok": ours["rate_limited_429"] == 0},
    ]
    capped = run_cap(quick, seed=seed)
    return {
        "section": "sweep",
        "rows": rows + capped["rows"],
        "details": {"n": n, "speed": speed, "lower_bound_real_s": bound, "ours": ours, "baseline": naive,
                    "capped": capped["details"],
                    "note": "real-time seconds = wall x speed; baseline sleeps Retry-After (whole wall seconds)"},
    }


CAP_FULL = {"n": 24, "speed": 10.0}
CAP_QUICK = {"n": 8, "speed": 60.0}
MIXED = (("elevenlabs-tts", "text"), ("nano-banana", "prompt"), ("veo3", "prompt"))


def mixed_plan(n: int) -> list[tuple[str, dict[str, Any]]]:
    """``n`` requests over three models; every sixth asks to fail part-way (refunded)."""
    plan = []
    for i in range(n):
        slug, field = MIXED[i % len(MIXED)]
        fail = " [fail]" if i % 6 == 5 else ""
        plan.append((slug, {field: f"mixed {i}{fail}"}))
    return plan


def run_cap_ours(sb: Any, key: str, n: int, speed: float) -> dict[str, Any]:
    import vydra_nb
    from vydra_nb.tracking.tracker import Tracker

    client = vydra_nb.Client(api_key=key, base_url=sb.url, time_scale=1.0 / speed, history=False)
    tracker = Tracker(name="bench-sweep-tracker")
    try:
        client.models()
        client.plan_limits()
        before = client.requests_sent
        t0 = time.monotonic()
        jobs = []
        for slug, body in mixed_plan(n):  # one request after another, as a sweep over models would
            job = client.generate(slug, body)
            tracker.track(job)
            jobs.append(job)
        tracker.join_idle(timeout=600)
        wall = time.monotonic() - t0
        return {"wall_s": wall, "real_s": wall * speed, "rate_limited_429": client.rate_limited,
                "http_requests": client.requests_sent - before, "ended": sum(j.done for j in jobs),
                "waited_for_a_slot": client.gate.waits}
    finally:
        tracker.stop()
        client.close()


def run_cap_naive(sb: Any, key: str, n: int, speed: float) -> dict[str, Any]:
    session = requests.Session()
    session.trust_env = False
    headers = {"Authorization": f"Bearer {key}"}
    hits = attempts = 0
    interval = 10.0 / speed
    ids: list[str] = []
    t0 = time.monotonic()
    try:
        for slug, body in mixed_plan(n):
            while attempts < 50 * n:  # bounded
                attempts += 1
                resp = session.post(f"{sb.url}/models/{slug}", json=body, headers=headers, timeout=10)
                if resp.status_code == 429:
                    hits += 1
                    time.sleep(min(float(resp.headers.get("Retry-After") or 1), 120.0))
                    continue
                resp.raise_for_status()
                ids.append(resp.json()["jobId"])
                break
        live = set(ids)
        while live and time.monotonic() - t0 < 600:
            time.sleep(interval)
            for job_id in list(live):
                attempts += 1
                resp = session.get(f"{sb.url}/jobs/{job_id}", headers=headers, timeout=10)
                if resp.status_code == 429:
                    hits += 1
                    continue
                if resp.ok and resp.json().get("status") in ("completed", "failed", "cancelled"):
                    live.discard(job_id)
        wall = time.monotonic() - t0
    finally:
        session.close()
    return {"wall_s": wall, "real_s": wall * speed, "rate_limited_429": hits, "http_requests": attempts,
            "ended": len(ids) - len(live)}


def run_cap(quick: bool = False, *, seed: int = 1) -> dict[str, Any]:
    from vydra_nb import sandbox

    cfg = dict(CAP_QUICK if quick else CAP_FULL)
    n, speed = cfg["n"], float(cfg["speed"])
    results = {}
    for name, runner in (("ours", run_cap_ours), ("baseline", run_cap_naive)):
        with sandbox.start(credits=10**9, speed=speed, seed=seed, plan="free") as sb:  # a sandbox each: same start
            results[name] = runner(sb, sb.api_key, n, speed)
    ours, base = results["ours"], results["baseline"]
    rows = [
        {"metric": f"capped sweep of {n} mixed jobs (free plan, 2 at once): time to all ended, real s",
         "ours": ours["real_s"], "baseline": base["real_s"],
         "ratio": ours["real_s"] / base["real_s"] if base["real_s"] else None, "target": "<= baseline",
         "ok": ours["real_s"] <= base["real_s"] and ours["ended"] == n},
        {"metric": "capped sweep: 429s received", "ours": ours["rate_limited_429"], "baseline": base["rate_limited_429"],
         "ratio": None, "target": "0", "ok": ours["rate_limited_429"] == 0},
        {"metric": "capped sweep: HTTP requests", "ours": ours["http_requests"], "baseline": base["http_requests"],
         "ratio": ours["http_requests"] / base["http_requests"] if base["http_requests"] else None,
         "target": "<= baseline", "ok": ours["http_requests"] <= base["http_requests"]},
    ]
    return {"rows": rows, "details": {"n": n, "speed": speed, "ours": ours, "baseline": base}}


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run import main_for_section

    sys.exit(main_for_section("sweep"))
