"""Sweeps: N generations as fast as the 10-per-minute generation limit allows, without 429s.

- ours: ``client.generate(...)`` in a plain loop; the client's rate limiter paces the burst;
- baseline: a naive loop of raw ``requests.post`` with no pacing that, on a 429, sleeps the
  ``Retry-After`` seconds and tries again.

Lower bound: with 10 generations per 60 s window, generation ``i`` (0-based) cannot be sent before
``floor(i / 10)`` windows after the first, so N generations need at least
``floor((N - 1) / 10) * 60`` s (120 s for 30) from the first send to the last. Times are from just
before the first request to the answer of the last one, in real-time seconds (wall x speed).

Each side has its own API key (its own server-side window) and they run one after the other.
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
        return {"wall_s": wall, "real_s": wall * speed, "rate_limited_429": client._transport.rate_limited,
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
    return {
        "section": "sweep",
        "rows": rows,
        "details": {"n": n, "speed": speed, "lower_bound_real_s": bound, "ours": ours, "baseline": naive,
                    "note": "real-time seconds = wall x speed; baseline sleeps Retry-After (whole wall seconds)"},
    }


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run import main_for_section

    sys.exit(main_for_section("sweep"))
