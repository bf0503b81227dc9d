"""The sandbox-side job clock and job store.

A job's state is a pure function of the clock: pending for the first few per cent of its
duration, then running with progress rising linearly, then completed (or failed part-way, for a
job destined to fail). Nothing runs in the background, there are no per-job threads: the state is
computed when somebody looks, so a thousand jobs cost nothing while nobody polls them.

The one side effect of time passing is the refund of a failed job. It is applied by
:meth:`JobStore.settle` under the ledger's lock the first time anybody observes the job past its
failure point (a status read, a cancel, a listing, a ``state()`` snapshot), so every observer agrees.

Durations are the real service's divided by the sandbox ``speed``, times a small deterministic
per-job jitter (seeded by the sandbox seed and the job's sequence number).
"""
from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from .catalog import Model
from .ledger import Ledger

#: Fraction of the duration a job spends pending before it starts running.
PENDING_FRACTION = 0.04

ACTIVE = ("pending", "running")
TERMINAL = ("completed", "failed", "cancelled")


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
    duration: float  # real seconds, speed and jitter applied
    failure: Failure | None = None
    cancelled_mono: float | None = None
    cancelled_progress: int = 0
    refunded: int = 0
    synchronous: bool = False
    #: output object cached once completed (built lazily by the API layer)
    output: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def pending_s(self) -> float:
        return 0.0 if self.synchronous else self.duration * PENDING_FRACTION

    @property
    def fail_s(self) -> float | None:
        return None if self.failure is None else self.duration * self.failure.at_fraction

    def status_at(self, now: float) -> tuple[str, int]:
        """(status, progress 0-100) at monotonic time ``now``."""
        if self.cancelled_mono is not None and now >= self.cancelled_mono:
            return "cancelled", self.cancelled_progress
        elapsed = now - self.created_mono
        fail_s = self.fail_s
        if fail_s is not None and elapsed >= fail_s:
            return "failed", self._progress(fail_s)
        if elapsed < self.pending_s:
            return "pending", 0
        if elapsed < self.duration:
            return "running", self._progress(elapsed)
        return "completed", 100

    def _progress(self, elapsed: float) -> int:
        span = self.duration - self.pending_s
        if span <= 0 or elapsed <= self.pending_s:
            return 0
        return max(0, min(99, int((elapsed - self.pending_s) / span * 100)))

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
                 clock=time.monotonic) -> None:
        self.ledger = ledger
        self.lock = ledger.lock
        self.speed = speed
        self.seed = seed if seed is not None else secrets.randbits(32)
        self.clock = clock
        self._jobs: dict[str, Job] = {}
        self._seq = 0

    def create(self, *, key: str, model: Model, params: dict[str, Any], credits: int,
               base_duration: float, failure: Failure | None, synchronous: bool = False) -> Job:
        """Create and charge a job. The caller holds the lock and has checked the balance."""
        with self.lock:
            self._seq += 1
            rng = random.Random(f"{self.seed}:{self._seq}")
            jitter = rng.uniform(0.9, 1.1)
            if failure is not None:
                failure = Failure(failure.code, failure.message, rng.uniform(0.35, 0.65))
            job = Job(
                id=new_job_id(), key=key, model=model, params=params, credits=credits,
                external_id=new_external_id(), seq=self._seq, created=time.time(),
                created_mono=self.clock(),
                duration=0.0 if synchronous else base_duration / self.speed * jitter,
                failure=failure, synchronous=synchronous,
            )
            self.ledger.charge(job.id, credits)
            self._jobs[job.id] = job
            return job

    def get(self, job_id: str, key: str | None = None) -> Job | None:
        """The job, if it exists and (when ``key`` is given) belongs to that key."""
        with self.lock:
            job = self._jobs.get(job_id)
            if job is None or (key is not None and job.key != key):
                return None
            return job

    def settle(self, job: Job, now: float | None = None) -> tuple[str, int]:
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
                return status, job.refunded, False
            return status, job.refunded, status in ("failed", "cancelled")

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
