"""Client-side rate limits: a burst waits for its turn instead of collecting 429s.

The API documents per-minute limits per category (10 generations, 100 status checks, 50 model
listings); uploads (``POST /upload``, free) get a window of their own, 20 a minute, so that
uploading the inputs of a sweep never eats into the generations' budget. Each category gets a
sliding-window limiter. When the server sends ``X-RateLimit-*`` headers, or answers 429 with
``Retry-After``, the window is tightened to match: the server's count is the truth (other
processes may share the key), ours is only a lower bound.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

GENERATE = "generate"
STATUS = "status"
LIST = "list"
UPLOAD = "upload"


@dataclass(frozen=True)
class Limit:
    """``calls`` requests per ``period`` seconds."""

    calls: int
    period: float = 60.0

    def __post_init__(self) -> None:
        if self.calls < 1 or self.period <= 0:
            raise ValueError(f"A rate limit needs calls >= 1 and period > 0, got {self}")


DEFAULT_LIMITS: Mapping[str, Limit] = {
    GENERATE: Limit(10, 60.0),
    STATUS: Limit(100, 60.0),
    LIST: Limit(50, 60.0),
    UPLOAD: Limit(20, 60.0),
}


class SlidingWindow:
    """A thread-safe sliding-window limiter: at most ``calls`` acquisitions in any ``period``.

    ``clock`` and ``sleep`` are injectable so the policy can be tested without waiting.
    """

    def __init__(
        self,
        limit: Limit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._sleep = sleep
        self._stamps: deque[float] = deque()
        self._blocked_until = 0.0
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        horizon = now - self.limit.period
        while self._stamps and self._stamps[0] <= horizon:
            self._stamps.popleft()

    def delay(self) -> float:
        """Seconds until one more call would be allowed (0 when it would be allowed now)."""
        with self._lock:
            return self._delay_locked(self._clock())

    def _delay_locked(self, now: float) -> float:
        self._expire(now)
        wait = max(0.0, self._blocked_until - now)
        if len(self._stamps) >= self.limit.calls:
            wait = max(wait, self._stamps[0] + self.limit.period - now)
        return wait

    def headroom(self) -> int:
        """Calls still allowed in the current window (0 while a 429 block lasts)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if self._blocked_until > now:
                return 0
            return max(0, self.limit.calls - len(self._stamps))

    def acquire(self, timeout: float | None = None) -> float:
        """Block until a call is allowed, record it, and return the slot's time stamp.

        Raises TimeoutError if that would take longer than ``timeout`` seconds.
        """
        start = self._clock()
        while True:
            with self._lock:
                now = self._clock()
                wait = self._delay_locked(now)
                if wait <= 0:
                    self._stamps.append(now)
                    return now
            if timeout is not None and now - start + wait > timeout:
                raise TimeoutError(f"rate limit: next slot in {wait:.1f} s")
            # Sleep in short steps so a tightened or relaxed window is noticed promptly.
            self._sleep(min(wait, 1.0))

    def settle(self, stamp: float) -> None:
        """Move the slot taken at ``stamp`` to now, when its answer arrived.

        The server counts a request when it receives it, which is after we sent it. Counting our
        slot from the moment the answer came back keeps our window a little behind the server's,
        never ahead of it, so network jitter cannot turn a full window into a 429.
        """
        with self._lock:
            now = self._clock()
            for i in range(len(self._stamps) - 1, -1, -1):
                if self._stamps[i] == stamp:
                    del self._stamps[i]
                    self._stamps.append(now)
                    self._stamps = deque(sorted(self._stamps))
                    return

    def block_for(self, seconds: float) -> None:
        """The server said wait (429 ``Retry-After``): nobody in this category goes before then."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, seconds))

    def tighten(self, *, limit: int | None, remaining: int | None, reset_in: float | None) -> None:
        """Align with the server's ``X-RateLimit-*`` view, only ever making us stricter.

        ``remaining`` calls are left until ``reset_in`` seconds from now. If we believe more are
        left, we fill the window with placeholder stamps that expire at the reset time.
        """
        with self._lock:
            now = self._clock()
            self._expire(now)
            if limit is not None and 0 < limit < self.limit.calls:
                self.limit = Limit(limit, self.limit.period)
            if remaining is None:
                return
            ours = self.limit.calls - len(self._stamps)
            extra = ours - max(0, remaining)
            if extra <= 0:
                return
            reset_in = self.limit.period if reset_in is None else min(max(reset_in, 0.0), self.limit.period)
            stamp = now + reset_in - self.limit.period
            for _ in range(extra):
                self._stamps.append(stamp)
            # Keep the deque ordered so expiry from the left stays correct.
            self._stamps = deque(sorted(self._stamps))


class RateLimiter:
    """One sliding window per documented category."""

    def __init__(
        self,
        limits: Mapping[str, Limit] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        merged = dict(DEFAULT_LIMITS)
        merged.update(limits or {})
        self.windows = {name: SlidingWindow(lim, clock=clock, sleep=sleep) for name, lim in merged.items()}

    def __getitem__(self, category: str) -> SlidingWindow:
        return self.windows[category]

    def scaled(self, factor: float) -> dict[str, Limit]:
        """The same limits with periods multiplied by ``factor`` (a sandbox running at speed 1/factor)."""
        return {k: Limit(w.limit.calls, w.limit.period * factor) for k, w in self.windows.items()}
