"""The plan's limits, and the concurrency cap kept on our side so that a burst never meets a 429.

Plans differ (vydra-notes.md): requests per minute, hour and day, and how many jobs may run at
once. ``GET /account/rate-limits`` says which apply; a 429 whose body says ``limits.type ==
"concurrent"`` says so too. The cap is enforced here, before a generation is sent: while this
client's own jobs fill every slot, the next submission waits for one of them to end (polling it
by the shared policy when no tracker does), so a sweep of 30 on a plan with ``concurrent: 2`` runs
two at a time and receives no 429 at all. Jobs other processes run on the same organisation are
invisible to us; the server's 429 then still stops a second charge (a 429 creates nothing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vydra_nb.api.jobs import Job
from vydra_nb.api.models import as_int


@dataclass(frozen=True)
class PlanLimits:
    """What ``GET /account/rate-limits`` says the plan allows (None: not stated)."""

    rpm: int | None = None
    rph: int | None = None
    rpd: int | None = None
    concurrent: int | None = None
    plan: str | None = None

    @classmethod
    def from_api(cls, data: Any) -> PlanLimits | None:
        """Parse the answer tolerantly; None when it carries no limits at all."""
        if not isinstance(data, dict):
            return None
        nested = data.get("limits")
        limits: dict[str, Any] = nested if isinstance(nested, dict) else data
        values = {k: as_int(limits.get(k)) for k in ("rpm", "rph", "rpd", "concurrent")}
        values = {k: v if v is not None and v > 0 else None for k, v in values.items()}
        if not any(values.values()):
            return None
        plan = data.get("plan")
        return cls(plan=plan if isinstance(plan, str) else None, **values)


class ConcurrencyGate:
    """At most ``cap`` of this client's jobs pending or running at once (no cap: no waiting).

    ``active()`` lists the client's jobs that have not ended; ``waiting`` is called once with the
    number of running jobs when a submission has to wait, so a view can say "queued".
    """

    def __init__(self, active: Callable[[], Iterable[Job]], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._active = active
        self._clock = clock
        self._lock = threading.Lock()  # one submission waits for a slot at a time, in order
        self.cap: int | None = None
        self.waits = 0

    def running(self) -> list[Job]:
        return [job for job in self._active() if not job.done]

    def acquire(self, *, timeout: float | None = None, waiting: Callable[[int], None] | None = None) -> None:
        """Return when fewer than ``cap`` jobs run; poll the one expected to end first meanwhile.

        Raises TimeoutError after ``timeout`` seconds (the submission was not sent).
        """
        if self.cap is None:
            return
        deadline = None if timeout is None else self._clock() + timeout
        told = False
        with self._lock:
            while True:
                running = self.running()
                if self.cap is None or len(running) < self.cap:
                    return
                if not told:
                    self.waits += 1
                    if waiting is not None:
                        waiting(len(running))
                    told = True
                soonest = min(running, key=lambda j: j.next_poll()[0])
                delay = soonest.next_poll()[0]
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        raise TimeoutError(f"{len(running)} jobs still fill the plan's {self.cap} slots")
                    delay = min(delay, left)
                if soonest.followed:  # a tracker polls it: wait for its news instead of asking again
                    soonest.wait_for_change(delay)
                else:
                    threading.Event().wait(delay)
                    try:
                        soonest.refresh()
                    except Exception:  # a failed poll only means: look again later
                        pass
