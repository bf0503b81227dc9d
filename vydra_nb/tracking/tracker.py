"""The tracker: one background thread per kernel that polls every live job.

Why a thread and not an asyncio task on the kernel loop: on ipykernel 7.4 both keep running after
their cell returns (platform-notes.md), but a thread does not depend on the kernel's loop policy,
works identically in a plain Python process (tests, scripts, the demo), and blocking ``requests``
calls would stall a loop task. Views never ``display()`` from here; they only change widget values
and children, which ipywidgets sends to the right output from any thread.

The thread exists only while there is a live job and exits when the last one ends, so an idle
kernel has nothing running. One failed poll never stops it: the job is marked "retrying" and
polled again later. When to poll each job is decided by ``PollPolicy`` (shared with ``Job.wait``).

Polls aimed at a job's expected end (or at an overdue job) are *urgent*; the rest only look for
news. When the status window is nearly used up (100 live jobs share 100 checks a minute), routine
polls step aside and leave the remaining calls to urgent ones, so finished jobs are still seen
promptly; they are postponed, never dropped.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vydra_nb.api.errors import VydraError
from vydra_nb.api.jobs import COMPLETED, Job
from vydra_nb.api.polling import PollPolicy
from vydra_nb.api.ratelimit import STATUS

JobKey = tuple[str | None, str]

log = logging.getLogger("vydra_nb")


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    key: JobKey = field(compare=False)
    urgent: bool = field(default=True, compare=False)


# Share of the status window kept for urgent polls: routine polls wait while less is left.
URGENT_RESERVE = 0.2


class Tracker:
    """Polls live jobs in the background until they end; optionally downloads completed results.

    ``auto_download`` is a flag or a function read each time a job completes, so that a setting
    changed later (``%config VydraMagics.auto_download``) applies to the next job. While it
    tracks a job, the job is *followed* (``Job.follow``): ``job.wait()`` then watches this
    tracker's updates instead of polling the same job a second time.
    """

    def __init__(self, *, auto_download: bool | Callable[[], bool] = False, name: str = "vydra-tracker") -> None:
        self.auto_download = auto_download
        self.name = name
        self._jobs: dict[JobKey, Job] = {}
        self._queue: list[_Due] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.polls = 0
        self.poll_failures = 0
        self._on_end: list[Callable[[Job], None]] = []

    # -- public -----------------------------------------------------------------------------
    def track(self, job: Job, *, poll_now: bool = False) -> Job:
        """Keep ``job`` up to date in the background until it ends; returns the job tracked.

        Idempotent per job: tracking a job already tracked changes nothing. Jobs come from one
        ``JobRegistry``, so a second object for the same job does not exist to be missed.
        """
        if job.done:
            self._ended(job)
            return job
        with self._cond:
            tracked = self._jobs.get(job.key)
            if tracked is None:
                self._jobs[job.key] = job
                job.follow()
                first, urgent = (0.0, True) if poll_now else self._plan(job, len(self._jobs))
                self._push(job.key, time.monotonic() + first, urgent=urgent)
                tracked = job
            elif poll_now:
                self._push(job.key, time.monotonic())
            self._ensure_thread()
            self._cond.notify_all()
        return tracked

    def untrack(self, job: Job) -> None:
        with self._cond:
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]
                job.unfollow()
            self._cond.notify_all()

    def is_tracking(self, job: Job) -> bool:
        with self._cond:
            return self._jobs.get(job.key) is job

    def poke(self, job: Job) -> None:
        """Poll this job as soon as possible (after a cancel, say)."""
        with self._cond:
            if job.key in self._jobs:
                self._push(job.key, time.monotonic())
                self._cond.notify_all()

    def on_end(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback(job)`` once when a tracked job reaches a terminal state."""
        self._on_end.append(callback)

    @property
    def live(self) -> list[Job]:
        with self._cond:
            return list(self._jobs.values())

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling (jobs go on on the server), forget every job and join the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            self._stopping = False
            self._thread = None
            for job in self._jobs.values():
                job.unfollow()
            self._jobs.clear()
            self._queue.clear()

    def join_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job is live; True if that happened within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._jobs:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.05 if left is None else min(left, 0.05))
        return True

    # -- internals --------------------------------------------------------------------------
    def _push(self, key: JobKey, at: float, urgent: bool = True) -> None:
        heapq.heappush(self._queue, _Due(at, next(self._seq), key, urgent))

    @staticmethod
    def _routine_step(job: Job) -> float:
        """0 when a routine poll of ``job`` may go now; else how long to postpone it.

        It may go while more than ``URGENT_RESERVE`` of its client's status window is free.
        """
        limiter: Any = getattr(job.client, "limiter", None)
        window = None if limiter is None else limiter.windows.get(STATUS)
        if window is None:
            return 0.0
        reserve = max(1, int(window.limit.calls * URGENT_RESERVE))
        if window.headroom() > reserve:
            return 0.0
        return window.limit.period / window.limit.calls  # about when the next slot frees

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _next_due(self) -> Job | None:
        """Block until some job is due; None when there is nothing left (the thread then exits)."""
        with self._cond:
            while True:
                if self._stopping or not self._jobs:
                    if not self._stopping:
                        self._thread = None
                    self._cond.notify_all()
                    return None
                while self._queue and self._queue[0].key not in self._jobs:
                    heapq.heappop(self._queue)  # stale entry of an untracked job
                if not self._queue:
                    for key in self._jobs:
                        self._push(key, time.monotonic())
                now = time.monotonic()
                due = self._queue[0]
                if due.at <= now:
                    heapq.heappop(self._queue)
                    job = self._jobs[due.key]
                    if not due.urgent and any(d.urgent for d in self._queue if d.key == due.key):
                        continue  # a poke or a landing poll of the same job is queued: let it decide
                    step = 0.0 if due.urgent else self._routine_step(job)
                    if step > 0:
                        self._push(due.key, now + step, urgent=False)
                        continue
                    # Skip duplicates: a poke may have queued the same job twice.
                    self._queue = [d for d in self._queue if d.key != due.key]
                    heapq.heapify(self._queue)
                    return job
                self._cond.wait(min(due.at - now, 1.0))

    def _run(self) -> None:
        while True:
            job = self._next_due()
            if job is None:
                return
            try:
                job.refresh()
                self.polls += 1
            except VydraError as exc:
                self.poll_failures += 1
                job.mark_poll_error(str(exc))
                if getattr(exc, "status_code", None) in (401, 403, 404):
                    log.warning("stopped tracking %s: %s", job.id, exc)
                    job.mark_poll_error(f"stopped tracking: {exc}")
                    self.untrack(job)
                    self._ended(job)
                    continue
            except Exception as exc:  # never let one bad answer kill the tracker
                self.poll_failures += 1
                log.exception("polling %s failed", job.id)
                job.mark_poll_error(f"{type(exc).__name__}")
            if job.done:
                self.untrack(job)
                self._ended(job)
                continue
            with self._cond:
                if job.key not in self._jobs:
                    continue
                same_client = sum(1 for j in self._jobs.values() if j.client is job.client)
                delay, urgent = self._plan(job, same_client)
                self._push(job.key, time.monotonic() + delay, urgent=urgent)

    @staticmethod
    def _plan(job: Job, live_jobs: int) -> tuple[float, bool]:
        """When to poll ``job`` next and whether that poll is aimed at its end (the job's client's policy)."""
        if job.client is None:
            return PollPolicy().baseline_interval, False
        return job.next_poll(live_jobs=live_jobs)

    def _ended(self, job: Job) -> None:
        for callback in list(self._on_end):
            try:
                callback(job)
            except Exception:
                log.exception("an end-of-job callback failed")
        wanted = self.auto_download() if callable(self.auto_download) else self.auto_download
        if wanted and job.status == COMPLETED and job.local_path is None and job.client is not None:
            threading.Thread(target=self._download, args=(job,), name="vydra-download", daemon=True).start()

    @staticmethod
    def _download(job: Job) -> None:
        try:
            job.download()
        except VydraError as exc:
            log.warning("could not download %s: %s", job.id, exc)
            job.mark_poll_error(f"download failed: {exc}")
