"""When to poll a job next: the one policy ``Job.wait()`` and the background tracker share.

Jobs take from seconds to minutes. Polling every 10 s (the reference's advice) wastes requests on
short jobs and shows long ones late. The policy:

* starts quick (``min_delay``) and backs off geometrically toward ``max_delay`` while it knows
  nothing about the job's pace;
* once progress is reported, it estimates when the job will end from the progress rate; far from
  the end it polls about halfway there (to refine the estimate, with few requests), and once the
  end is near it polls right after it, so the user sees the result within a second or so;
* if the job is not done when expected, it polls again soon, backing off in proportion to how late
  the job already is (a late job says the estimate was off, and by how much);
* polls that only look for news are spread within the status-check budget across every live job;
  the one poll aimed at a job's expected end is not held back by that spacing, since there is
  about one such poll per job (the client's rate limiter still guarantees no 429).

Times are in seconds. A sandbox that runs ``speed`` times faster than real time uses
``PollPolicy().scaled(1 / speed)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class PollPolicy:
    min_delay: float = 1.0
    max_delay: float = 20.0
    growth: float = 1.5
    overdue_delay: float = 1.0
    # When overdue by ``x`` s, poll again in ``x * overdue_backoff`` s (at least ``overdue_delay``).
    overdue_backoff: float = 0.5
    # Poll this long after the estimated end, to land just after it rather than just before.
    eta_margin: float = 0.3
    # Longest gap while an end estimate exists: long enough to save requests on long jobs, short
    # enough to notice a job whose pace changed.
    eta_max_delay: float = 30.0
    # Status checks allowed per ``budget_period`` across every live job of a client.
    budget_calls: int = 100
    budget_period: float = 60.0
    # Share of the status budget the policy may plan to use, leaving room for the user's own calls.
    budget_share: float = 0.8

    def scaled(self, factor: float) -> "PollPolicy":
        """The same policy with every duration multiplied by ``factor``."""
        return replace(
            self,
            min_delay=self.min_delay * factor,
            max_delay=self.max_delay * factor,
            overdue_delay=self.overdue_delay * factor,
            eta_margin=self.eta_margin * factor,
            eta_max_delay=self.eta_max_delay * factor,
            budget_period=self.budget_period * factor,
        )

    def budget_interval(self, live_jobs: int) -> float:
        """The shortest gap between two routine polls of one job that keeps ``live_jobs`` within budget."""
        return max(1, live_jobs) * self.budget_period / (self.budget_calls * self.budget_share)

    def next_delay(
        self,
        *,
        previous_delay: float | None,
        remaining: float | None,
        live_jobs: int = 1,
    ) -> float:
        """Seconds until the next poll of one job.

        ``previous_delay`` is the last gap used for this job (None before the first poll),
        ``remaining`` the estimated seconds until it ends (None when unknown, <= 0 when overdue).
        """
        backoff = self.min_delay if previous_delay is None else min(self.max_delay, previous_delay * self.growth)
        routine = max(backoff, self.min_delay, self.budget_interval(live_jobs))
        if remaining is None:
            return routine
        if remaining <= 0:
            return max(self.overdue_delay, min(-remaining * self.overdue_backoff, routine))
        landing = remaining + self.eta_margin
        if landing <= routine:
            return landing
        return max(routine, min(remaining / 2, self.eta_max_delay))


def estimate_remaining(
    first: tuple[float, float] | None, last: tuple[float, float] | None, now: float
) -> float | None:
    """Seconds until 100 % from two (time, progress) observations, assuming a steady rate.

    Progress is read as the middle of its whole percent (servers floor it), which halves the error
    of the estimate at the end. None when there is no rate yet (fewer than two distinct
    observations, or no progress).
    """
    if first is None or last is None:
        return None
    (t0, p0), (t1, p1) = first, last
    if p1 >= 100:
        return 0.0
    if t1 <= t0 or p1 <= p0:
        return None
    rate = (p1 - p0) / (t1 - t0)
    return (100.0 - (p1 + 0.5)) / rate - (now - t1)
