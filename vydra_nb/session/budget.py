"""Budgets: how many credits a session, a day or a tagged project may spend, checked before any request.

``--max-credits`` caps one cell; a loop, a sweep or a forgotten cell can still spend a whole plan.
A budget caps the sum. The session owns its budgets (``Session.budgets``): ``%vydra budget 2000
[--per session|day|tag NAME]`` and ``Client(budget=...)`` set them, and every submission of every
client of the session goes through :meth:`Budgets.reserve`, which refuses (``BudgetExceededError``,
nothing sent) a submission whose price would take any budget that applies to it past its limit.

What counts is net credits (charged less refunded), so a cancelled or failed job gives its credits
back to the budget as soon as its refund is seen. Use is counted from two places that never
overlap:

- the jobs this process submitted, held here in memory (a few numbers per job, kept current by the
  job's own change notices), plus the price of each submission still in flight (a reservation, so
  two threads cannot both pass the check with the last credits);
- for day and tag budgets, the history's jobs recorded by *other* processes (earlier kernels,
  other notebooks: the history's ``session`` column tells them apart). So a day budget survives a
  kernel restart, and two notebooks share it.

A submission whose outcome is unknown (``OutcomeUnknownError``, an interrupted request) keeps its
reservation: it may have been charged, and a budget must never be crossed by guessing it was not.
Jobs of the sandbox and of the real service are counted apart: fake credits never use up a real
budget. A day is the local calendar day (midnight to midnight where the kernel runs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vydra_nb.api.errors import BudgetExceededError, ValidationError

if TYPE_CHECKING:
    from vydra_nb.api.jobs import Job
    from vydra_nb.tracking.history import History

PER_SESSION, PER_DAY, PER_TAG = "session", "day", "tag"
PERIODS = (PER_SESSION, PER_DAY, PER_TAG)


@dataclass(frozen=True)
class Budget:
    """A cap of ``limit`` net credits ``per`` session, day, or tag (``tag`` names it)."""

    per: str
    limit: int
    tag: str | None = None

    @property
    def scope(self) -> str:
        """How messages name it: "session", "day", "tag lake-promo"."""
        return f"tag {self.tag}" if self.per == PER_TAG else self.per

    def applies_to(self, tag: str | None) -> bool:
        return self.per != PER_TAG or (tag is not None and tag == self.tag)


@dataclass(frozen=True)
class BudgetStatus:
    """A budget as it stands: ``used`` (spent, plus submissions in flight) and ``left``."""

    budget: Budget
    used: int
    backend: str

    @property
    def left(self) -> int:
        return max(0, self.budget.limit - self.used)


@dataclass
class _Spend:
    """One job this process submitted: what budgets need of it, nothing more."""

    backend: str
    tag: str | None
    created: float  # epoch seconds, for day budgets
    credits: int  # net: the reserved price until the charge is known, then charged less refunded


@dataclass
class _Pending:
    backend: str
    tag: str | None
    credits: int
    created: float


def day_start(now: float | None = None) -> float:
    """Epoch seconds of the local midnight that began the day ``now`` falls in."""
    t = time.localtime(time.time() if now is None else now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def check_limit(limit: Any) -> int:
    """A budget's size: a whole number of credits >= 0 (a one-line error otherwise)."""
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit != int(limit) or limit < 0:
        raise ValidationError(f"A budget is a whole number of credits >= 0, like 2000, not {limit!r}.", field="budget")
    return int(limit)


def parse_per(per: str, tag: str | None = None) -> tuple[str, str | None]:
    """``"session"``, ``"day"``, ``"tag"`` with ``tag``, or ``"tag:NAME"`` -> (period, tag)."""
    text = str(per).strip()
    if text.startswith("tag:"):
        text, tag = PER_TAG, text[4:]
    if text not in PERIODS:
        raise ValidationError(f"A budget is per session, day or tag NAME, not {per!r}.", field="per")
    if text == PER_TAG:
        if not tag or not str(tag).strip():
            raise ValidationError("A tag budget needs the tag's name: per='tag:NAME' (or --per tag NAME).", field="per")
        return text, str(tag).strip()
    return text, None


class Reservation:
    """The price of one submission in flight, held against the budgets until the job is known.

    ``commit(job)`` turns it into the job's spend; leaving the ``with`` block any other way
    releases it, except on an outcome that may have cost credits (see :meth:`Budgets.reserve`).
    """

    def __init__(self, budgets: Budgets, pending: _Pending) -> None:
        self._budgets = budgets
        self._pending: _Pending | None = pending
        self.job: Job | None = None

    def commit(self, job: Job) -> None:
        self.job = job
        self._budgets._commit(self, job)

    def _take(self) -> _Pending | None:
        pending, self._pending = self._pending, None
        return pending


class Budgets:
    """The session's budgets and the spend they count. Thread-safe.

    ``history`` is a function giving the store of other processes' jobs (the session's history),
    and ``session_id`` this process's id in its ``session`` column.
    """

    def __init__(self, history: Callable[[], History | None], session_id: str) -> None:
        self._history = history
        self._session_id = session_id
        self._lock = threading.RLock()
        self._budgets: dict[tuple[str, str | None], Budget] = {}
        self._spent: dict[tuple[str | None, str], _Spend] = {}
        self._pending: list[_Pending] = []

    def __repr__(self) -> str:
        shown = ", ".join(f"{b.scope}={b.limit}" for b in self.budgets) or "none"
        return f"<Budgets {shown}>"

    # -- setting ----------------------------------------------------------------------------------
    @property
    def budgets(self) -> list[Budget]:
        with self._lock:
            return list(self._budgets.values())

    def set(self, limit: Any, per: str = PER_SESSION, tag: str | None = None) -> Budget:
        """Cap net spend per session, day, or tag (``per="tag"`` with ``tag``, or ``"tag:NAME"``);
        replaces an earlier budget of the same scope."""
        period, name = parse_per(per, tag)
        budget = Budget(period, check_limit(limit), name)
        with self._lock:
            self._budgets[(period, name)] = budget
        return budget

    def clear(self, per: str | None = None, tag: str | None = None) -> list[Budget]:
        """Remove one budget (``per``/``tag``), or every budget; returns the ones removed."""
        with self._lock:
            if per is None:
                removed = list(self._budgets.values())
                self._budgets.clear()
                return removed
            period, name = parse_per(per, tag)
            gone = self._budgets.pop((period, name), None)
            return [gone] if gone is not None else []

    def applicable(self, tag: str | None) -> list[Budget]:
        """The budgets a submission with ``tag`` counts against."""
        with self._lock:
            return [b for b in self._budgets.values() if b.applies_to(tag)]

    # -- counting ---------------------------------------------------------------------------------
    def used(self, budget: Budget, backend: str, *, now: float | None = None) -> int:
        """Net credits spent against ``budget`` on ``backend``, submissions in flight included."""
        since = day_start(now) if budget.per == PER_DAY else None
        with self._lock:
            mine: list[_Spend | _Pending] = [*self._spent.values(), *self._pending]
            local = sum(s.credits for s in mine if s.backend == backend and self._counts(budget, s.tag, s.created, since))
        if budget.per == PER_SESSION:
            return local
        return local + self._elsewhere(budget, backend, since)

    @staticmethod
    def _counts(budget: Budget, tag: str | None, created: float, since: float | None) -> bool:
        if budget.per == PER_TAG and tag != budget.tag:
            return False
        return since is None or created >= since

    def _elsewhere(self, budget: Budget, backend: str, since: float | None) -> int:
        """Other processes' spend against a day or tag budget, from the history."""
        try:
            store = self._history()
            if store is None:
                return 0
            return store.net_credits(since=since, tag=budget.tag if budget.per == PER_TAG else None,
                                     backend=backend, exclude_session=self._session_id)
        except Exception:  # noqa: BLE001 - an unreadable history counts nothing, said in status()
            return 0

    def status(self, backend: str) -> list[BudgetStatus]:
        """Every budget with what is used and left on ``backend``: what ``%vydra budget`` shows."""
        return [BudgetStatus(b, self.used(b, backend), backend) for b in self.budgets]

    def check(self, credits: int | None, *, tag: str | None, backend: str, what: str = "This") -> None:
        """Raise BudgetExceededError if ``credits`` more would cross a budget that applies; sends nothing."""
        with self._lock:
            self._refuse_if_over(credits, tag=tag, backend=backend, what=what)

    def _refuse_if_over(self, credits: int | None, *, tag: str | None, backend: str, what: str) -> None:
        for budget in self.applicable(tag):
            if credits is None:
                raise BudgetExceededError(
                    f"{what} has no known price, so the {budget.scope} budget cannot be checked; nothing was sent.",
                    scope=budget.scope, limit=budget.limit, used=self.used(budget, backend), needed=0)
            used = self.used(budget, backend)
            if used + credits > budget.limit:
                left = max(0, budget.limit - used)
                raise BudgetExceededError(
                    f"{what} needs {credits:,} credits and the {budget.scope} budget has {left:,} of "
                    f"{budget.limit:,} left; nothing was sent. Raise it with `%vydra budget N"
                    f"{_per_flag(budget)}` or cancel a running job to get its credits back.",
                    scope=budget.scope, limit=budget.limit, used=used, needed=credits)

    @contextmanager
    def reserve(self, credits: int | None, *, tag: str | None, backend: str, what: str = "This") -> Iterator[Reservation]:
        """Hold ``credits`` against the budgets while one submission is in flight.

        Refuses at once (BudgetExceededError, before any request) if they would cross a budget.
        Inside the block, ``commit(job)`` the accepted job. A ``VydraError`` that is not an unknown
        outcome releases the credits (the server charged nothing); an ``OutcomeUnknownError`` or an
        interruption keeps them counted, since the job may exist and be charged.
        """
        from vydra_nb.api.errors import OutcomeUnknownError, VydraError

        with self._lock:
            self._refuse_if_over(credits, tag=tag, backend=backend, what=what)
            pending = _Pending(backend, tag, credits or 0, time.time())
            self._pending.append(pending)
        reservation = Reservation(self, pending)
        try:
            yield reservation
        except VydraError as exc:
            if isinstance(exc, OutcomeUnknownError):
                self._keep_unknown(reservation)
            else:
                self._release(reservation)
            raise
        except BaseException:
            self._keep_unknown(reservation)
            raise
        else:
            self._release(reservation)  # the block ended without a job: nothing was charged

    def _release(self, reservation: Reservation) -> None:
        pending = reservation._take()
        if pending is not None:
            with self._lock:
                self._pending.remove(pending)

    def _keep_unknown(self, reservation: Reservation) -> None:
        """An unknown outcome: the reserved price stays spent for the rest of the session."""
        pending = reservation._take()
        if pending is not None:
            with self._lock:
                self._pending.remove(pending)
                self._spent[(None, f"unknown-{id(pending)}")] = _Spend(pending.backend, pending.tag,
                                                                       pending.created, pending.credits)

    def _commit(self, reservation: Reservation, job: Job) -> None:
        pending = reservation._take()
        if pending is None:
            return
        key = job.key
        spend = _Spend(pending.backend, pending.tag if job.tag is None else job.tag, pending.created,
                       job.net_credits if job.credits_charged is not None else pending.credits)
        with self._lock:
            self._pending.remove(pending)
            if key in self._spent:  # the same job again (an idempotent replay): counted once
                return
            self._spent[key] = spend

        reserved = pending.credits

        def follow(changed: Job) -> None:
            """Refunds (a cancel, a failure) give the credits back as soon as they are seen."""
            charged = changed.credits_charged if changed.credits_charged is not None else reserved
            with self._lock:
                spend.credits = max(0, charged - (changed.credits_refunded or 0))

        job.subscribe(follow)
        follow(job)

    def spent_here(self, backend: str) -> int:
        """Net credits this process's submissions spent on ``backend`` (for tests and status)."""
        with self._lock:
            return sum(s.credits for s in self._spent.values() if s.backend == backend)


def _per_flag(budget: Budget) -> str:
    if budget.per == PER_SESSION:
        return ""
    return f" --per tag {budget.tag}" if budget.per == PER_TAG else f" --per {budget.per}"


__all__ = ["PERIODS", "PER_DAY", "PER_SESSION", "PER_TAG", "Budget", "BudgetStatus", "Budgets", "Reservation",
           "check_limit", "day_start", "parse_per"]
