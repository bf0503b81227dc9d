"""The sandbox-side job clock and job store.

A job's state is a pure function of the clock: pending for the first part of its duration (its
queue wait), then running, then completed (or failed part-way, for a job destined to fail).
Nothing runs in the background, there are no per-job threads: the state is computed when somebody
looks, so a thousand jobs cost nothing while nobody polls them.

The one side effect of time passing is the refund of a failed job. It is applied by
:meth:`JobStore.settle` under the ledger's lock the first time anybody observes the job past its
failure point (a status read, a cancel, a listing, a ``state()`` snapshot), so every observer agrees.

**Durations** are the real service's divided by the sandbox ``speed``, times a deterministic
per-job factor (seeded by the sandbox seed and the job's sequence number). ``durations=``:

* ``"realistic"`` (default): 0.6x to 1.8x the model's base, skewed long (a triangular
  distribution with its mode at 0.85x and a mean near 1.08x), and a queue wait of 3-15 % of it:
  a client cannot predict a job's end from the model alone;
* ``"jitter"``: the old +-10 %, with a fixed 4 % queue wait;
* ``"exact"``: the model's base duration, 4 % queue wait.

**Progress** (``progress=``) is what the job view's ``progress`` field shows while the job runs:

* ``"provider"`` (default): as the providers report it: kie.ai (provider ``kie-ai``) reports
  states only, so those jobs carry no ``progress`` field at all; the others move in coarse steps;
* ``"coarse"``: held at a value, then jumping (regular steps of 10-25, or irregular 10-30 %);
* ``"none"``: no ``progress`` field in any state; the ``status`` still moves;
* ``"erratic"``: monotonic but irregular: bursts, long stalls, 80 % early then crawling, or stuck
  at 99 until the end;
* ``"linear"``: rising evenly from 0 to 99 over the running time (the old behaviour).

The shape of each job's curve is deterministic from the seed and its sequence number.
"""
from __future__ import annotations

import bisect
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from .catalog import Model
from .ledger import Ledger

#: Fraction of the duration a job spends pending in the "jitter" and "exact" duration modes.
PENDING_FRACTION = 0.04

ACTIVE = ("pending", "running")
TERMINAL = ("completed", "failed", "cancelled")

PROGRESS_MODES = ("provider", "coarse", "none", "erratic", "linear")
DURATION_MODES = ("realistic", "jitter", "exact")

#: Providers that report states only, never a percentage (vydra-notes.md: kie.ai).
STATE_ONLY_PROVIDERS = frozenset({"kie-ai"})


def check_mode(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Curve:
    """Progress (0-1) as a function of the running fraction (0-1), monotonic.

    ``knots`` are (running fraction, progress) points with both coordinates non-decreasing; with
    ``steps`` the progress is held at a knot's value until the next knot (coarse jumps), else it is
    interpolated linearly between knots.
    """

    knots: tuple[tuple[float, float], ...]
    steps: bool = False

    def at(self, x: float) -> float:
        xs = [k[0] for k in self.knots]
        i = bisect.bisect_right(xs, x) - 1
        if i < 0:
            return 0.0
        if self.steps or i >= len(self.knots) - 1:
            return self.knots[i][1]
        (x0, y0), (x1, y1) = self.knots[i], self.knots[i + 1]
        return y0 if x1 <= x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


LINEAR = Curve(((0.0, 0.0), (1.0, 1.0)))


def coarse_curve(rng: random.Random) -> Curve:
    """Held values and jumps: regular steps (10, 15, 20 or 25) or irregular 10-30 % ones."""
    values = [0.0]
    if rng.random() < 0.5:
        step = rng.choice((10, 15, 20, 25))
        values += [float(v) for v in range(step, 100, step)]
    else:
        while True:
            nxt = values[-1] + rng.uniform(10, 30)
            if nxt >= 100:
                break
            values.append(round(nxt))
    knots = [(0.0, 0.0)]
    for v in values[1:]:
        # a jump lands near the time its value suggests, a little early or late
        t = min(0.98, max(knots[-1][0] + 0.01, v / 100 + rng.uniform(-0.06, 0.06)))
        knots.append((t, v / 100))
    return Curve(tuple(knots), steps=True)


def erratic_curve(rng: random.Random) -> Curve:
    """Monotonic but irregular: fast bursts, long stalls, an early 80 %, or stuck at 99."""
    style = rng.choice(("burst-then-crawl", "stuck-at-99", "stall-then-burst", "random"))
    if style == "burst-then-crawl":
        t = rng.uniform(0.2, 0.35)
        knots = [(0.0, 0.0), (t, rng.uniform(0.75, 0.88)), (1.0, rng.uniform(0.9, 0.99))]
    elif style == "stuck-at-99":
        t = rng.uniform(0.35, 0.6)
        knots = [(0.0, 0.0), (t * 0.5, rng.uniform(0.3, 0.6)), (t, 0.99), (1.0, 0.99)]
    elif style == "stall-then-burst":
        a, b, c = sorted(rng.uniform(0.08, 0.9) for _ in range(3))
        low = rng.uniform(0.05, 0.25)
        knots = [(0.0, 0.0), (a, low), (b, low + rng.uniform(0.0, 0.05)), (c, rng.uniform(0.85, 0.97)),
                 (1.0, 0.99)]
    else:
        n = rng.randint(4, 8)
        xs = sorted(rng.random() for _ in range(n - 1))
        incs = [0.0 if rng.random() < 0.35 else rng.expovariate(1.0) for _ in range(n)]
        total = sum(incs) or 1.0
        ys, acc = [], 0.0
        for inc in incs:
            acc += inc / total * 0.99
            ys.append(acc)
        knots = [(0.0, 0.0)] + list(zip(xs, ys[:-1], strict=True)) + [(1.0, ys[-1])]
    return Curve(tuple(knots))


def progress_curve(mode: str, model: Model, rng: random.Random) -> Curve | None:
    """The curve a job's progress follows, or None when it reports no percentage at all."""
    if mode == "provider":
        mode = "none" if model.provider in STATE_ONLY_PROVIDERS else "coarse"
    if mode == "none":
        return None
    if mode == "linear":
        return LINEAR
    if mode == "coarse":
        return coarse_curve(rng)
    return erratic_curve(rng)


def duration_factor(mode: str, rng: random.Random) -> float:
    if mode == "realistic":
        return rng.triangular(0.6, 1.8, 0.85)
    if mode == "jitter":
        return rng.uniform(0.9, 1.1)
    return 1.0


@dataclass(frozen=True)
class Failure:
    """Why and when (as a fraction of its duration) a job will fail."""

    code: str
    message: str
    at_fraction: float


@dataclass
class Job:
    """One generation job; everything time-dependent is derived in :meth:`status_at`."""

    id: str
    key: str
    model: Model
    params: dict[str, Any]
    credits: int
    external_id: str
    seq: int
    created: float  # unix seconds
    created_mono: float
    duration: float  # real seconds, speed and spread applied
    failure: Failure | None = None
    cancelled_mono: float | None = None
    cancelled_progress: int | None = 0
    refunded: int = 0
    synchronous: bool = False
    #: progress curve over the running time; None: the job reports no percentage
    curve: Curve | None = LINEAR
    pending_fraction: float = PENDING_FRACTION
    base_duration: float = 0.0  # the model's duration, before the speed and the spread
    #: output object cached once completed (built lazily by the API layer)
    output: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def pending_s(self) -> float:
        return 0.0 if self.synchronous else self.duration * self.pending_fraction

    @property
    def fail_s(self) -> float | None:
        return None if self.failure is None else self.duration * self.failure.at_fraction

    @property
    def end_s(self) -> float:
        """Seconds after creation at which the job stops being active (unless cancelled)."""
        fail_s = self.fail_s
        return self.duration if fail_s is None else min(fail_s, self.duration)

    def status_at(self, now: float) -> tuple[str, int | None]:
        """(status, progress 0-100 or None when the job reports none) at monotonic time ``now``."""
        if self.cancelled_mono is not None and now >= self.cancelled_mono:
            return "cancelled", self.cancelled_progress
        elapsed = now - self.created_mono
        fail_s = self.fail_s
        if fail_s is not None and elapsed >= fail_s:
            return "failed", self._progress(fail_s)
        if elapsed < self.pending_s:
            return "pending", None if self.curve is None else 0
        if elapsed < self.duration:
            return "running", self._progress(elapsed)
        return "completed", None if self.curve is None else 100

    def running_fraction(self, now: float) -> float:
        """How far through its running time the job is at ``now`` (0 while pending, 1 at the end)."""
        span = self.duration - self.pending_s
        elapsed = now - self.created_mono
        if span <= 0:
            return 1.0 if elapsed >= self.duration else 0.0
        return max(0.0, min(1.0, (elapsed - self.pending_s) / span))

    def _progress(self, elapsed: float) -> int | None:
        if self.curve is None:
            return None
        span = self.duration - self.pending_s
        if span <= 0 or elapsed <= self.pending_s:
            return 0
        x = (elapsed - self.pending_s) / span
        return max(0, min(99, int(self.curve.at(x) * 100 + 1e-9)))

    def phase_message(self, status: str, now: float) -> str:
        """A short ``statusMessage``: kie.ai's state names for its models, a phrase for the others."""
        kie = self.model.provider in STATE_ONLY_PROVIDERS
        if status == "pending":
            early = (now - self.created_mono) < self.pending_s / 2
            if kie:
                return "waiting" if early else "queuing"
            return "Waiting in queue" if early else "Starting"
        if status == "running":
            return "generating" if kie else "Generating"
        if status == "completed":
            return "success" if kie else "Completed"
        if status == "failed":
            return "fail" if kie else (self.failure.message if self.failure else "Failed")
        return "cancelled" if kie else "Cancelled"

    # Unix timestamps of the transitions, derived from the clock.
    def _at(self, offset: float) -> float:
        return self.created + offset

    def started_at(self, now: float) -> float | None:
        end = self.cancelled_mono if self.cancelled_mono is not None else now
        return self._at(self.pending_s) if end - self.created_mono >= self.pending_s else None

    def finished_at(self, status: str) -> float | None:
        if status == "completed":
            return self._at(self.duration)
        if status == "failed" and self.fail_s is not None:
            return self._at(self.fail_s)
        if status == "cancelled" and self.cancelled_mono is not None:
            return self._at(self.cancelled_mono - self.created_mono)
        return None


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


def new_external_id() -> str:
    return "ext_" + secrets.token_hex(10)


class JobStore:
    """All jobs of the sandbox, guarded by the ledger's lock (the sandbox's one lock)."""

    def __init__(self, ledger: Ledger, speed: float = 1.0, seed: int | None = None,
                 clock=time.monotonic, progress: str = "provider", durations: str = "realistic") -> None:
        self.ledger = ledger
        self.lock = ledger.lock
        self.speed = speed
        self.seed = seed if seed is not None else secrets.randbits(32)
        self.clock = clock
        self.progress = check_mode("progress", progress, PROGRESS_MODES)
        self.durations = check_mode("durations", durations, DURATION_MODES)
        self._jobs: dict[str, Job] = {}
        self._active: dict[str, Job] = {}  # jobs that may still be pending or running
        self._seq = 0

    def create(self, *, key: str, model: Model, params: dict[str, Any], credits: int,
               base_duration: float, failure: Failure | None, synchronous: bool = False) -> Job:
        """Create and charge a job. The caller holds the lock and has checked the balance."""
        with self.lock:
            self._seq += 1
            rng = random.Random(f"{self.seed}:{self._seq}")
            factor = duration_factor(self.durations, rng)
            if failure is not None:
                failure = Failure(failure.code, failure.message, rng.uniform(0.35, 0.65))
            shape = random.Random(f"{self.seed}:{self._seq}:shape")
            pending = shape.uniform(0.03, 0.15) if self.durations == "realistic" else PENDING_FRACTION
            job = Job(
                id=new_job_id(), key=key, model=model, params=params, credits=credits,
                external_id=new_external_id(), seq=self._seq, created=time.time(),
                created_mono=self.clock(),
                duration=0.0 if synchronous else base_duration / self.speed * factor,
                failure=failure, synchronous=synchronous,
                curve=progress_curve(self.progress, model, shape), pending_fraction=pending,
                base_duration=base_duration,
            )
            self.ledger.charge(job.id, credits)
            self._jobs[job.id] = job
            if not synchronous:
                self._active[job.id] = job
            return job

    def get(self, job_id: str, key: str | None = None) -> Job | None:
        """The job, if it exists and (when ``key`` is given) belongs to that key."""
        with self.lock:
            job = self._jobs.get(job_id)
            if job is None or (key is not None and job.key != key):
                return None
            return job

    def settle(self, job: Job, now: float | None = None) -> tuple[str, int | None]:
        """Status of ``job`` now, refunding it first if it has just failed."""
        with self.lock:
            now = self.clock() if now is None else now
            status, progress = job.status_at(now)
            if status == "failed" and not job.refunded:
                job.refunded = self.ledger.refund(job.id, f"failed: {job.failure.code}") or job.credits
            return status, progress

    def cancel(self, job: Job) -> tuple[str, int, bool]:
        """Cancel if active. Returns (status before, credits refunded, already refunded)."""
        with self.lock:
            now = self.clock()
            status, progress = self.settle(job, now)
            if status in ACTIVE:
                job.cancelled_mono = now
                job.cancelled_progress = progress
                job.refunded = self.ledger.refund(job.id, "cancelled")
                self._active.pop(job.id, None)
                return status, job.refunded, False
            return status, job.refunded, status in ("failed", "cancelled")

    def active(self, now: float | None = None) -> list[Job]:
        """Jobs pending or running at ``now`` (every key: limits are per organization)."""
        with self.lock:
            now = self.clock() if now is None else now
            live = []
            for job_id, job in list(self._active.items()):
                if job.status_at(now)[0] in ACTIVE:
                    live.append(job)
                else:
                    del self._active[job_id]
            return live

    def all(self, key: str | None = None) -> Iterator[Job]:
        with self.lock:
            jobs = [j for j in self._jobs.values() if key is None or j.key == key]
        return iter(jobs)

    def settle_all(self) -> dict[str, int]:
        """Settle every job; return the count per status (for ``state()``)."""
        counts: dict[str, int] = {}
        with self.lock:
            now = self.clock()
            for job in self._jobs.values():
                status, _ = self.settle(job, now)
                counts[status] = counts.get(status, 0) + 1
        return counts

    def timeline(self, job: Job, now: float | None = None) -> dict[str, Any]:
        """The job's clock at one instant, for tests (``/_sandbox/jobs/{id}``)."""
        with self.lock:
            now = self.clock() if now is None else now
            status, progress = self.settle(job, now)
            return {
                "id": job.id, "status": status, "progress": progress,
                "elapsed": now - job.created_mono, "duration": job.duration, "pendingS": job.pending_s,
                "failS": job.fail_s, "runningFraction": job.running_fraction(now),
                "baseDuration": job.base_duration, "speed": self.speed,
                "factor": (job.duration * self.speed / job.base_duration) if job.base_duration else None,
                "progressMode": self.progress, "reportsProgress": job.curve is not None,
            }
