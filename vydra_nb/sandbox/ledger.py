"""The organization's credit ledger: charge on submit, refund on failure or cancel, never twice.

The one invariant that the whole sandbox exists to hold is
``balance == initial - charged + refunded`` at every moment, with at most one charge and at most
one refund per job. The ledger owns the sandbox's single lock (an ``RLock``): everything that
reads or changes credits *and* job state together (submit, cancel, a job reaching ``failed``)
takes it, so a snapshot can never see a job refunded but the balance not yet credited.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Entry:
    """One movement of credits; ``amount`` is always positive, ``kind`` says which way."""

    job_id: str
    kind: str  # "charge" | "refund"
    amount: int
    time: float  # unix seconds
    reason: str = ""

    def to_json(self) -> dict:
        return asdict(self)


class LedgerError(RuntimeError):
    """A double charge or refund was attempted: a sandbox bug, never a client error."""


class Ledger:
    """Credits of the one sandbox organization."""

    def __init__(self, initial: int) -> None:
        if initial < 0:
            raise ValueError("initial credits must be >= 0")
        self.lock = threading.RLock()
        self.initial = int(initial)
        self.charged = 0
        self.refunded = 0
        self.entries: list[Entry] = []
        self._charged_jobs: dict[str, int] = {}
        self._refunded_jobs: dict[str, int] = {}
        self.updated_at = time.time()

    @property
    def balance(self) -> int:
        return self.initial - self.charged + self.refunded

    def charge(self, job_id: str, amount: int) -> None:
        """Debit ``amount`` for ``job_id``; the caller has checked the balance under the same lock."""
        with self.lock:
            if job_id in self._charged_jobs:
                raise LedgerError(f"job {job_id} charged twice")
            if amount > self.balance:
                raise LedgerError(f"job {job_id} would overdraw the balance")
            self._charged_jobs[job_id] = amount
            self.charged += amount
            self._record(Entry(job_id, "charge", amount, time.time()))

    def refund(self, job_id: str, reason: str) -> int:
        """Credit back what ``job_id`` was charged; returns 0 if it was already refunded."""
        with self.lock:
            if job_id in self._refunded_jobs:
                return 0
            amount = self._charged_jobs.get(job_id)
            if amount is None:
                raise LedgerError(f"job {job_id} refunded without a charge")
            self._refunded_jobs[job_id] = amount
            self.refunded += amount
            self._record(Entry(job_id, "refund", amount, time.time(), reason))
            return amount

    def was_refunded(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self._refunded_jobs

    def _record(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.updated_at = entry.time

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "initialCredits": self.initial,
                "balance": self.balance,
                "charged": self.charged,
                "refunded": self.refunded,
                "ledger": [e.to_json() for e in self.entries],
            }
