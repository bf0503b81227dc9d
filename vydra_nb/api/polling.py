"""When to poll a job next: the one policy ``Job.wait()`` and the background tracker share.

Jobs take from seconds to minutes, and services differ in what they say while a job runs: some
report smooth progress, most of the providers behind Vydra's video models report coarse steps or
no percentage at all (kie.ai reports only states). Polling every 10 s, the reference's advice, is
the baseline to beat: it costs a request per 10 s and shows a result about 5 s late.

The policy works from an *end window*: the interval in which the job will most likely end.

* From progress (:func:`end_window`): every answer is a constraint on the true progress line
  ``x(t) = r * (t - t0)``: at a poll's time the true progress is at least the value shown and
  below the next value shown later (or below the value plus the service's step, for the last
  poll). The feasible lines give the earliest and the latest end. Smooth progress gives a window
  of a second; coarse 15 % steps a wider one that narrows as steps are seen; progress that cannot
  be drawn as one line (erratic services) falls back on the most recent answers.
* From the history (:class:`DurationPrior`): the spread of this model's finished jobs.
* With neither, the job is polled at the baseline's pace: never worse than the plain 10 s poll.

Before the window the policy waits (refining a progress estimate about halfway there, so a
coarse step seen later can narrow it); inside the window it polls densely enough to see the end
within a second or two, but spends no more requests than the 10 s poll would have over the job's
life; after it (overdue), it backs off in proportion to the lateness.

Everything here is a pure function of its arguments (times are plain floats on any clock), so
tests drive it with an injected clock. A sandbox that runs ``speed`` times faster than real time
uses ``PollPolicy().scaled(1 / speed)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DurationPrior:
    """What this model's finished jobs say of its duration (seconds from submission to end)."""

    median: float
    low: float  # about the 10th percentile
    high: float  # about the 90th percentile
    samples: int = 0

    @classmethod
    def from_durations(cls, durations: Sequence[float]) -> DurationPrior | None:
        """The prior of a model from its jobs' durations; None with fewer than 3 (too few to trust)."""
        values = sorted(d for d in durations if isinstance(d, (int, float)) and math.isfinite(d) and d > 0)
        if len(values) < 3:
            return None

        def quantile(q: float) -> float:
            k = (len(values) - 1) * q
            lo, hi = int(k), min(int(k) + 1, len(values) - 1)
            return values[lo] + (values[hi] - values[lo]) * (k - lo)

        return cls(median=quantile(0.5), low=quantile(0.1), high=quantile(0.9), samples=len(values))

    def scaled(self, factor: float) -> DurationPrior:
        return replace(self, median=self.median * factor, low=self.low * factor, high=self.high * factor)


@dataclass(frozen=True)
class Observation:
    """One answer about a job: when it arrived and the progress it showed (None: no percentage)."""

    at: float
    progress: float | None


@dataclass(frozen=True)
class EndWindow:
    """When the job will most likely end: ``earliest`` to ``latest`` on the caller's clock."""

    earliest: float
    latest: float
    source: str  # "progress", "history" or "progress+history"

    @property
    def expected(self) -> float:
        return (self.earliest + self.latest) / 2

    @property
    def spread(self) -> float:
        return self.latest - self.earliest


# -- the end window from progress -------------------------------------------------------------------
_MAX_FIT = 12  # the most recent answers used for a fit: older ones add little, and cost time


def _step(observations: Sequence[Observation]) -> float:
    """The service's progress step: 1 for smooth progress, else the smallest jump seen.

    Smooth progress moves between any two answers; coarse progress shows the same value twice
    while the job runs, then jumps. One answer above 0 says nothing yet: assume a coarse 25 %.
    """
    values = [o.progress for o in observations if o.progress is not None and o.progress > 0]
    if len(values) < 2:
        return 25.0
    held = any(a == b for a, b in itertools.pairwise(values))
    if not held:
        return 1.0
    jumps = [b - a for a, b in itertools.pairwise(sorted(set(values))) if b > a]
    return max(1.0, min(25.0, min(jumps))) if jumps else 25.0


def _bounds(observations: Sequence[Observation]) -> list[tuple[float, float, float]]:
    """(time, lower, upper) bounds on the true progress at each answer."""
    step = _step(observations)
    out = []
    for i, obs in enumerate(observations):
        if obs.progress is None:
            continue
        later = [o.progress for o in observations[i + 1:] if o.progress is not None and o.progress > obs.progress]
        upper = min(later[0], obs.progress + step) if later else obs.progress + step
        out.append((obs.at, obs.progress, min(100.0, upper)))
    return out


def _fit(
    bounds: Sequence[tuple[float, float, float]], start: float, now: float, *, anchored: bool = True,
    finish_from: float = 100.0,
) -> tuple[float, float] | None:
    """Earliest and latest end over every line ``x = r * t - s`` that meets all the bounds.

    The feasible (r, s) form a convex polygon; the end ``(s + 100) / r`` is linear-fractional, so
    its extremes are at the polygon's corners, found by intersecting the bounds' lines pairwise.
    None when no line meets them all (progress that is not steady). ``anchored``: the line is at 0
    or below when the job was submitted (true of steady progress, not of a late stretch of it).
    The earliest end is when the line reaches ``finish_from``: services often jump to "completed"
    from the high nineties rather than showing 100.
    """
    if not bounds:
        return None
    t_ref = bounds[0][0]
    # Each constraint: a*r - b*s <= c, in a frame shifted to t_ref (numbers stay small).
    rows: list[tuple[float, float, float]] = []
    for t, lower, upper in bounds:
        tt = t - t_ref
        if lower > 0:
            rows.append((-tt, 1.0, -lower))  # r*tt - s >= lower
        rows.append((tt, -1.0, upper))  # r*tt - s <= upper
    horizon = max(1.0, now - start)
    r_min, r_max = 100.0 / (horizon * 1000.0), 100.0 / max(horizon * 1e-3, 1e-3)
    rows.append((-1.0, 0.0, -r_min))  # r >= r_min
    rows.append((1.0, 0.0, r_max))  # r <= r_max
    if anchored:  # at 0 or below when the job was submitted: r * (start - t_ref) - s <= 0
        rows.append((start - t_ref, -1.0, 0.0))
    # ... and no later than the last answer: s >= r * (last - t_ref) - 100, i.e. x(last) <= 100
    last = bounds[-1][0] - t_ref
    rows.append((last, -1.0, 100.0))
    corners = []
    for (a1, b1, c1), (a2, b2, c2) in itertools.combinations(rows, 2):
        det = a1 * b2 - a2 * b1
        if abs(det) < 1e-12:
            continue
        r = (c1 * b2 - c2 * b1) / det
        s = (a1 * c2 - a2 * c1) / det
        if r <= 0:
            continue
        if all(a * r + b * s <= c + 1e-6 * (1 + abs(c)) for a, b, c in rows):
            corners.append((t_ref + (s + finish_from) / r, t_ref + (s + 100.0) / r))
    if not corners:
        return None
    return min(c[0] for c in corners), max(c[1] for c in corners)


def end_window(
    observations: Sequence[Observation],
    *,
    start: float,
    now: float,
    prior: DurationPrior | None = None,
    margin: float = 0.0,
) -> EndWindow | None:
    """The interval the job will most likely end in, from its answers and its model's history.

    ``start`` is when the job was submitted and ``now`` the current time, on the clock of the
    observations; ``margin`` widens a progress window on both sides (answers arrive a little
    after the server wrote them). None when nothing is known: no percentage and no history.
    """
    from_progress: tuple[float, float] | None = None
    reported = [o for o in observations if o.progress is not None]
    if any(o.progress and o.progress > 0 for o in reported):
        recent = reported[-_MAX_FIT:]
        anchored = len(recent) == len(reported)
        finish_from = 99.0 if _step(recent) <= 1.0 else 100.0  # smooth progress often jumps from 99
        while len(recent) >= 1 and from_progress is None:
            from_progress = _fit(_bounds(recent), start, now, anchored=anchored, finish_from=finish_from)
            if from_progress is None:
                recent, anchored = recent[1:], False  # not one steady line: trust the latest answers
        if from_progress is not None:
            lo, hi = from_progress
            if not math.isfinite(hi) or hi - lo > 10 * max(1.0, now - start):
                from_progress = None  # one answer above 0 says little yet
            else:
                from_progress = (lo - margin, hi + margin)
    from_history = (start + prior.low, start + prior.high) if prior is not None else None
    if from_progress is not None and from_history is not None:
        lo, hi = max(from_progress[0], from_history[0]), min(from_progress[1], from_history[1])
        if lo <= hi:
            return EndWindow(lo, hi, "progress+history")
        return EndWindow(*from_progress, "progress")
    if from_progress is not None:
        return EndWindow(*from_progress, "progress")
    if from_history is not None:
        return EndWindow(*from_history, "history")
    return None


# -- the policy -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PollPolicy:
    min_delay: float = 1.0
    overdue_delay: float = 1.0
    # When overdue by ``x`` s, poll again in ``x * overdue_backoff`` s (at least ``overdue_delay``).
    overdue_backoff: float = 0.5
    # Poll this long after the estimated end, to land just after it rather than just before.
    eta_margin: float = 0.3
    # Longest gap while an end estimate exists: long enough to save requests on long jobs, short
    # enough to notice a job whose pace changed.
    eta_max_delay: float = 30.0
    # The pace of the plain poll the reference advises, and what a job with no estimate gets.
    baseline_interval: float = 10.0
    # Inside the end window: no closer than this (each poll is a request) ...
    dense_min: float = 1.0
    # ... and no further apart than this, when the request budget allows it.
    dense_max: float = 2.5
    # Status checks allowed per ``budget_period`` across every live job of a client.
    budget_calls: int = 100
    budget_period: float = 60.0
    # Share of the status budget the policy may plan to use, leaving room for the user's own calls.
    budget_share: float = 0.8

    def scaled(self, factor: float) -> PollPolicy:
        """The same policy with every duration multiplied by ``factor``."""
        return replace(
            self,
            min_delay=self.min_delay * factor,
            overdue_delay=self.overdue_delay * factor,
            eta_margin=self.eta_margin * factor,
            eta_max_delay=self.eta_max_delay * factor,
            baseline_interval=self.baseline_interval * factor,
            dense_min=self.dense_min * factor,
            dense_max=self.dense_max * factor,
            budget_period=self.budget_period * factor,
        )

    def budget_interval(self, live_jobs: int) -> float:
        """The shortest gap between two routine polls of one job that keeps ``live_jobs`` within budget."""
        return max(1, live_jobs) * self.budget_period / (self.budget_calls * self.budget_share)

    def plan(
        self,
        *,
        now: float,
        start: float,
        window: EndWindow | None,
        polls: int,
        live_jobs: int = 1,
    ) -> tuple[float, bool]:
        """(seconds until the next poll of one job, whether that poll is aimed at its end).

        ``start`` is when the job was submitted, ``polls`` how many status requests it has cost
        so far, ``window`` its :func:`end_window`. Routine polls (not aimed at the end) are also
        spread within the status budget of ``live_jobs`` jobs.
        """
        spacing = self.budget_interval(live_jobs)
        if window is None:
            # Nothing known: the baseline's pace exactly, 10 s after submission, then 10 s after
            # each answer (no more requests than the plain poll, whatever the latency).
            if polls == 0:
                first = max(0.0, start + self.baseline_interval - now)
                return max(first, spacing, self.min_delay * 0.5), False
            return max(self.baseline_interval, spacing), False
        lo, hi = window.earliest, window.latest
        if now < lo:
            # A narrow window is one landing poll just after it; a wide one is entered at its start.
            target = hi + self.eta_margin if window.spread <= self.dense_max else lo
            until = target - now
            if window.source != "history" and until > 2 * self.dense_max:
                # Far from a progress estimate's window: look again about halfway, which a
                # coarse step seen then can narrow; never closer than routine spacing.
                return max(min(until / 2, self.eta_max_delay), self.min_delay, spacing), False
            if until > self.eta_max_delay:  # a history window is not narrowed by looking early
                return max(self.eta_max_delay, spacing), False
            return max(until, self.min_delay * 0.5), True
        if now <= hi:
            # Inside: the requests polling every 10 s would have spent over the job's life, spread
            # evenly over what is left of the window; a window narrow enough gets dense polls even
            # a little past that budget, which is where a result is seen within a second or two.
            left = (hi - start) / self.baseline_interval - polls
            spacing = min(max((hi - now) / max(1.0, left), self.dense_min), self.baseline_interval)
            if window.spread <= 4 * self.dense_max and left > -2:  # overspend by two polls at most
                spacing = min(spacing, self.dense_max)
            return max(self.dense_min, min(spacing, hi - now + self.eta_margin)), True
        # Overdue: the estimate was early. Back off with the lateness, up to the 10 s pace; while
        # the job has not used the requests polling every 10 s would have, stay close (an erratic
        # service that slowed near the end is usually about to finish).
        late = now - hi
        cap = self.dense_max if polls + 1 < (now - start) / self.baseline_interval else self.baseline_interval
        return max(self.overdue_delay, min(late * self.overdue_backoff, cap)), True
