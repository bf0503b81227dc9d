"""Server-side rate limits: per API key and category, in sliding windows of ``60 / speed`` seconds.

The documented numbers are per minute (generation 10, status 100, listing 50). Dividing the
window by the sandbox speed keeps a fast sandbox behaving like real time sped up, so a client's
rate-limit handling is exercised in seconds instead of minutes. A refused request is *not*
recorded: a 429 consumes nothing and creates nothing.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

#: Documented limits per minute.
LIMITS: dict[str, int] = {"generation": 10, "status": 100, "listing": 50}


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check, with what the ``X-RateLimit-*`` headers need."""

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
                 clock=time.monotonic) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.window = 60.0 / speed
        self.limits = dict(limits or LIMITS)
        self._clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, category: str) -> Verdict:
        """Count one request if the window has room; say whether it may proceed."""
        limit = self.limits[category]
        now = self._clock()
        with self._lock:
            hits = self._hits.setdefault((key, category), deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= limit:
                wait = hits[0] + self.window - now
                return Verdict(False, category, limit, len(hits), 0, max(wait, 0.0))
            hits.append(now)
            reset_in = hits[0] + self.window - now
            return Verdict(True, category, limit, len(hits), limit - len(hits), reset_in)
