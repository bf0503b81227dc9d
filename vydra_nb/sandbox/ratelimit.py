"""Server-side rate limits: sliding windows, scaled by the sandbox ``speed``.

Two kinds of limit apply, and a request must pass all that concern it:

* **per API key and category** (vydra-api.md): generation 10, status 100, listing 50 per minute;
  uploads (``POST /upload``, not in the reference) have a category of their own, 20 per minute;
* **per organization and plan** (vydra-notes.md), on generation requests only: requests per
  minute, hour and day, and a cap on concurrent jobs (pending or running). The concurrency cap is
  checked by the API layer at job creation (it needs the job store); the windows are here.

Windows are ``60 / speed``, ``3600 / speed`` and ``86400 / speed`` seconds, so a fast sandbox
behaves like real time sped up and a client's rate-limit handling is exercised in seconds instead
of minutes. A refused request is *not* recorded: a 429 consumes nothing and creates nothing.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

#: Documented limits per minute, per key and category (``upload`` is the sandbox's choice).
LIMITS: dict[str, int] = {"generation": 10, "status": 100, "listing": 50, "upload": 20}


@dataclass(frozen=True)
class PlanLimits:
    """A plan's generation limits, per organization: per minute, hour, day, and concurrent jobs."""

    rpm: int
    rph: int
    rpd: int
    concurrent: int

    def to_json(self) -> dict[str, int]:
        return {"rpm": self.rpm, "rph": self.rph, "rpd": self.rpd, "concurrent": self.concurrent}


#: free, starter and creator are vydra-notes.md's numbers; pro and enterprise are the sandbox's
#: guess (nothing public gives them): each step up roughly doubles-to-triples the one below, and,
#: like the documented plans, the hourly limit is reachable within the hour at the per-minute pace.
PLANS: dict[str, PlanLimits] = {
    "free": PlanLimits(rpm=10, rph=100, rpd=500, concurrent=2),
    "starter": PlanLimits(rpm=30, rph=500, rpd=5_000, concurrent=5),
    "creator": PlanLimits(rpm=60, rph=1_500, rpd=20_000, concurrent=10),
    "pro": PlanLimits(rpm=120, rph=5_000, rpd=100_000, concurrent=25),
    "enterprise": PlanLimits(rpm=600, rph=20_000, rpd=200_000, concurrent=50),
}

#: Plan windows, in real-service seconds.
PLAN_WINDOWS: dict[str, float] = {"rpm": 60.0, "rph": 3600.0, "rpd": 86400.0}


def plan_limits(plan: str) -> PlanLimits:
    try:
        return PLANS[plan]
    except KeyError:
        raise ValueError(f"plan must be one of {', '.join(PLANS)}, got {plan!r}") from None


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check, with what the ``X-RateLimit-*`` headers need.

    ``category`` names the limit that decided: a request category (``generation``, ``status``,
    ...), a plan window (``rpm``, ``rph``, ``rpd``) or ``concurrent``.
    """

    allowed: bool
    category: str
    limit: int
    used: int
    remaining: int
    reset_in: float  # real seconds until a slot frees up (the full window when empty)

    @property
    def retry_after(self) -> int:
        """Whole seconds to wait, rounded up, at least 1 (the ``Retry-After`` header)."""
        return max(1, math.ceil(self.reset_in))

    @property
    def reset_at(self) -> int:
        """Unix time when a slot frees up (the ``X-RateLimit-Reset`` header)."""
        return math.ceil(time.time() + self.reset_in)


class RateLimiter:
    """Sliding-window counters, thread-safe."""

    def __init__(self, speed: float = 1.0, limits: dict[str, int] | None = None,
                 clock=time.monotonic, plan: PlanLimits | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self.window = 60.0 / speed
        self.limits = dict(LIMITS)
        self.limits.update(limits or {})
        self.plan = plan
        self._clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _window(self, bucket: tuple[str, str], seconds: float, now: float) -> deque[float]:
        hits = self._hits.setdefault(bucket, deque())
        while hits and hits[0] <= now - seconds:
            hits.popleft()
        return hits

    def _checks(self, key: str, category: str, org: str | None) -> list[tuple[tuple[str, str], int, float, str]]:
        checks = [((key, category), self.limits[category], self.window, category)]
        if org is not None and category == "generation" and self.plan is not None:
            for name, seconds in PLAN_WINDOWS.items():
                checks.append(((org, "plan:" + name), getattr(self.plan, name), seconds / self.speed, name))
        return checks

    def hit(self, key: str, category: str, org: str | None = None) -> Verdict:
        """Count one request if every window that concerns it has room; say whether it may proceed.

        With ``org``, a generation request also counts against the plan's windows of that
        organization. The verdict of an allowed request is the window with the least room left.
        """
        now = self._clock()
        with self._lock:
            checks = self._checks(key, category, org)
            windows = []
            for bucket, limit, seconds, name in checks:
                hits = self._window(bucket, seconds, now)
                if len(hits) >= limit:
                    wait = hits[0] + seconds - now
                    return Verdict(False, name, limit, len(hits), 0, max(wait, 0.0))
                windows.append((hits, limit, seconds, name))
            verdicts = []
            for hits, limit, seconds, name in windows:
                hits.append(now)
                verdicts.append(Verdict(True, name, limit, len(hits), limit - len(hits), hits[0] + seconds - now))
            return min(verdicts, key=lambda v: v.remaining)  # the first of equals: the category

    def usage(self, org: str) -> dict[str, int]:
        """Generation requests of ``org`` counted in each plan window right now."""
        now = self._clock()
        with self._lock:
            return {name: len(self._window((org, "plan:" + name), seconds / self.speed, now))
                    for name, seconds in PLAN_WINDOWS.items()}
