"""``Job``: one generation, from submission to a file on disk.

A job is shared between the user's thread (``wait()``, ``cancel()``) and the kernel's tracker, so
its state changes under a lock and every change is announced to listeners (views, the history
store). There is one ``Job`` object per (server, id) in a process (``JobRegistry``): the one the
tracker updates is the one every view shows and ``wait()`` watches. A job talks to its client
only through the small public ``JobSource`` interface, never through the client's internals. Parsing is tolerant: the live service uses statuses and output keys the specification does
not list (``processing``, ``resultUrls``, nested ``data``), and all of them are understood here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from vydra_nb.api.errors import DownloadError, JobCancelledError, JobFailedError, JobTimeoutError, VydraError
from vydra_nb.api.media import Media, find_media, refusal_label, write_text
from vydra_nb.api.models import PROMPT_FIELD_NAMES, CancelResult, as_datetime, as_int, as_str
from vydra_nb.api.polling import DurationPrior, EndWindow, Observation, PollPolicy, end_window

log = logging.getLogger("vydra_nb")

PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = "pending", "running", "completed", "failed", "cancelled"
LOST = "lost"  # our own word: the server that ran it is gone for good (a stopped sandbox)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, LOST})
_STATUS_ALIASES = {
    "queued": PENDING, "submitted": PENDING, "created": PENDING, "waiting": PENDING,
    "processing": RUNNING, "in_progress": RUNNING, "started": RUNNING, "generating": RUNNING,
    "succeeded": COMPLETED, "success": COMPLETED, "done": COMPLETED, "complete": COMPLETED,
    "error": FAILED, "errored": FAILED, "failure": FAILED,
    "canceled": CANCELLED, "cancelled": CANCELLED, "aborted": CANCELLED,
}


def normalize_status(raw: Any) -> str:
    """Map the server's status onto the five documented ones; an unknown one is kept (not terminal)."""
    if not isinstance(raw, str) or not raw.strip():
        return "unknown"
    s = raw.strip().lower()
    if s in (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, LOST):
        return s
    return _STATUS_ALIASES.get(s, s[:40])


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobSource(Protocol):
    """What a ``Job`` needs from its client: the client's public job methods, nothing private."""

    poll_policy: PollPolicy

    @property
    def download_dir(self) -> Path: ...

    def job_status(self, job_id: str) -> dict[str, Any]: ...

    def cancel(self, job_id: str, *, job: Job | None = None) -> CancelResult: ...

    def download_media(
        self, media: Media, directory: str | os.PathLike[str] | None, job_id: str, *,
        max_bytes: int | None = None, timeout: float | None = None,
    ) -> Path: ...

    def job_changed(self, job: Job) -> None: ...

    def duration_prior(self, model: str | None) -> DurationPrior | None: ...

    def duration_guess(self, model: str | None) -> float | None: ...


@dataclass(eq=False)
class Job:
    """A generation job. ``output`` is the API's ``output`` object as a dict."""

    id: str
    model: str | None = None
    status: str = PENDING
    progress: int | None = None
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    credits_charged: int | None = None
    credits_refunded: int | None = None
    refund_status: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    external_job_id: str | None = None
    message: str | None = None
    params: dict[str, Any] = field(default_factory=dict, repr=False)
    raw_status: str | None = field(default=None, repr=False)
    local_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Fields the server sent that this class does not know; nothing of the client's own."""
    client: JobSource | None = field(default=None, repr=False, compare=False)
    # The client's own bookkeeping, never mixed with what the server sent:
    backend: str | None = field(default=None, repr=False)
    """"sandbox" or "vydra": which kind of server charged it (spend reports keep them apart)."""
    host: str | None = field(default=None, repr=False)
    """The server it lives on (``settings.host_key``): with ``id``, the job's identity."""
    idempotency_key: str | None = field(default=None, repr=False)
    tag: str | None = field(default=None, repr=False)
    """A label the user gave it (``tag=`` / ``--tag``), for grouping a project's spend."""
    catalog_credits: int | None = field(default=None, repr=False)
    """The catalog's price for it when it was submitted (a later price change does not rewrite it)."""
    pricing_unit: str | None = field(default=None, repr=False)
    verdict: str | None = field(default=None, repr=False)
    """"kept" or "rejected", as the user judged the result (None: not judged)."""
    note_text: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._followers = 0  # trackers keeping this job up to date (``follow``)
        self._media: list[Media] | None = None
        self._media_of: Any = None  # the output object ``_media`` was read from
        self._unsafe_warned = False
        self._listeners: list[Callable[[Job], object]] = []
        self._observations: deque[Observation] = deque(maxlen=40)  # the answers, for the end estimate
        self.polls = 0  # status requests spent on this job (by ``refresh``)
        self.submitted_at = time.monotonic()
        self.ended_seen_at: float | None = None  # local monotonic time we first saw it end
        self.poll_error: str | None = None       # the last failed poll, shown as "retrying"

    # -- state ------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def key(self) -> tuple[str | None, str]:
        """(host, id): what makes a job one job in this process."""
        return (self.host, self.id)

    @property
    def media(self) -> list[Media]:
        """Safe media URLs of the output, best first (empty until completed).

        Read once per output: a URL that is not http(s) is left out and reported once per job,
        naming only its scheme (the URL itself is server text, and a front end would link it).
        """
        with self._lock:
            if self._media is None or self._media_of is not self.output:
                unsafe: list[str] = []
                self._media = find_media(self.output, unsafe) if self.output else []
                self._media_of = self.output
                if unsafe and not self._unsafe_warned:
                    self._unsafe_warned = True
                    schemes = sorted({refusal_label(u) for u in unsafe})
                    log.warning("job %s: ignored %d result URL(s) that are not http(s) (%s)",
                                self.id, len(unsafe), ", ".join(schemes))
            return list(self._media)

    @property
    def media_url(self) -> str | None:
        media = self.media
        return media[0].url if media else None

    @property
    def prompt(self) -> str | None:
        for name in PROMPT_FIELD_NAMES:
            if isinstance(self.params.get(name), str):
                return self.params[name]
        return None

    @property
    def net_credits(self) -> int:
        return (self.credits_charged or 0) - (self.credits_refunded or 0)

    @property
    def observations(self) -> list[Observation]:
        """The answers seen so far (time on the monotonic clock, progress or None), oldest first."""
        with self._lock:
            return list(self._observations)

    def end_window(self, now: float | None = None) -> EndWindow | None:
        """When the job will most likely end (monotonic clock), from its progress and its model's
        history; None when neither says anything. See ``polling.end_window``."""
        now = time.monotonic() if now is None else now
        client = self.client
        prior = client.duration_prior(self.model) if client is not None else None
        margin = client.poll_policy.eta_margin if client is not None else 0.0
        return end_window(self.observations, start=self.submitted_at, now=now, prior=prior, margin=margin)

    def eta(self, now: float | None = None) -> float | None:
        """Estimated seconds until the job ends (the middle of its end window); None when unknown."""
        if self.done:
            return 0.0
        now = time.monotonic() if now is None else now
        window = self.end_window(now)
        return None if window is None else window.expected - now

    def estimated_progress(self, now: float | None = None) -> int | None:
        """A percentage for a job whose service reports none: the elapsed share of its expected
        duration (its end window, else its client's guess for the model), at most 99; None when
        the service reports progress, the job has ended, or nothing can be guessed. Views label
        it as an estimate."""
        if self.done or self.progress is not None:
            return None
        now = time.monotonic() if now is None else now
        window = self.end_window(now)
        if window is not None:
            total = window.expected - self.submitted_at
        else:
            guess = self.client.duration_guess(self.model) if self.client is not None else None
            if guess is None:
                return None
            total = guess
        if total <= 0:
            return 99
        return max(0, min(99, int((now - self.submitted_at) / total * 100)))

    def eta_range(self, now: float | None = None) -> tuple[float, float] | None:
        """(soonest, latest) seconds until the job ends, from its end window; None when unknown."""
        if self.done:
            return None
        now = time.monotonic() if now is None else now
        window = self.end_window(now)
        if window is None:
            return None
        return max(0.0, window.earliest - now), max(0.0, window.latest - now)

    @property
    def duration_seen(self) -> float | None:
        """Seconds from submission until the end was seen, for a completed job (the history learns
        each model's durations from these)."""
        if self.status != COMPLETED or self.ended_seen_at is None:
            return None
        return max(0.0, self.ended_seen_at - self.submitted_at)

    def subscribe(self, callback: Callable[[Job], object]) -> Callable[[], None]:
        """Call ``callback(job)`` after every change; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
            self._changed.notify_all()
        if self.client is not None:
            # The client's listeners first: the history records a change before any view shows it.
            self.client.job_changed(self)
        for callback in listeners:
            try:
                callback(self)
            except Exception:  # a broken view must not break tracking
                log.exception("a job listener failed")

    def announce(self) -> None:
        """Tell the listeners (the history store first) about this job as it stands: what the
        client does for a job it has just created, changed or not."""
        self._notify()

    # -- following (the tracker) --------------------------------------------------------------
    def follow(self) -> None:
        """A tracker now keeps this job up to date: ``wait()`` watches its updates instead of polling."""
        with self._lock:
            self._followers += 1
            self._changed.notify_all()

    def unfollow(self) -> None:
        with self._lock:
            self._followers = max(0, self._followers - 1)
            self._changed.notify_all()

    @property
    def followed(self) -> bool:
        return self._followers > 0

    def wait_for_change(self, timeout: float) -> None:
        """Block until the job changes (or ends), or ``timeout`` seconds pass, sending nothing."""
        with self._changed:
            if not self.done:
                self._changed.wait(timeout)

    def apply(self, data: dict[str, Any]) -> bool:
        """Merge an API job view (or submit answer) into this job; True when anything changed.

        Fields the server omits keep their last value; unknown ones are kept in ``extra``.
        """
        known = {
            "id", "jobId", "status", "progress", "output", "error", "creditsCharged", "creditsRefunded",
            "refundStatus", "createdAt", "startedAt", "completedAt", "externalJobId", "message", "workflow", "model",
            "workflowSlug",
        }
        with self._lock:
            before = self._snapshot()
            if "status" in data:
                self.raw_status = as_str(data.get("status"))
                self.status = normalize_status(data.get("status"))
            progress = as_int(data.get("progress"))
            if progress is not None:
                self.progress = max(0, min(100, progress))
            if "status" in data:  # an answer about the job: what the end estimate learns from
                shown = None if progress is None else float(max(0, min(100, progress)))
                self._observations.append(Observation(time.monotonic(), shown))
            output = data.get("output")
            if isinstance(output, dict):
                self.output = output
            elif self.status == COMPLETED and self.output is None:
                # Synchronous answers put the media at the top level (imageUrl, resultUrls, ...).
                top = {k: v for k, v in data.items() if k not in known}
                if find_media(top) or "text" in top:
                    self.output = top
            err = data.get("error")
            if isinstance(err, dict):
                self.error = {"code": as_str(err.get("code")), "message": as_str(err.get("message"))}
            elif isinstance(err, str):
                self.error = {"code": as_str(data.get("code")), "message": err}
            for attr, key in (("credits_charged", "creditsCharged"), ("credits_refunded", "creditsRefunded")):
                number = as_int(data.get(key))
                if number is not None:
                    setattr(self, attr, max(0, number))
            for attr, key in (("created_at", "createdAt"), ("started_at", "startedAt"), ("completed_at", "completedAt")):
                when = as_datetime(data.get(key))
                if when is not None:
                    if attr == "created_at" and self.created_at is None:
                        # A job reopened later counts its elapsed time from its creation, not from now.
                        age = (_utcnow() - when).total_seconds()
                        self.submitted_at = time.monotonic() - max(0.0, min(age, 30 * 86400))
                    setattr(self, attr, when)
            for attr, key in (("refund_status", "refundStatus"), ("external_job_id", "externalJobId"), ("message", "message")):
                text = as_str(data.get(key))
                if text is not None:
                    setattr(self, attr, text[:500])
            if self.model is None:
                # The live job list names the model ``workflowSlug``; the reference's job view ``workflow``.
                self.model = as_str(data.get("model")) or as_str(data.get("workflowSlug")) or as_str(data.get("workflow"))
            self.extra.update({k: v for k, v in data.items() if k not in known})
            if self.status == COMPLETED:
                self.progress = 100  # whether or not the service reports percentages
            if self.done and self.ended_seen_at is None:
                self.ended_seen_at = time.monotonic()
                if self.completed_at is None and self.status == COMPLETED:
                    self.completed_at = _utcnow()
            self.poll_error = None
            changed = self._snapshot() != before
        if changed:
            self._notify()
        return changed

    def _snapshot(self) -> tuple[Any, ...]:
        return (
            self.status, self.progress, repr(self.output), repr(self.error), self.credits_charged,
            self.credits_refunded, self.refund_status, self.started_at, self.completed_at, self.local_path,
            self.poll_error,
        )

    def mark_poll_error(self, message: str) -> None:
        """A poll failed; the tracker keeps going and views show "retrying"."""
        with self._lock:
            self.poll_error = message
        self._notify()

    # -- actions ----------------------------------------------------------------------------
    def _require_client(self) -> JobSource:
        if self.client is None:
            raise VydraError(f"Job {self.id} is not attached to a client; use client.job({self.id!r}).")
        return self.client

    def refresh(self) -> Job:
        """Fetch the latest state from ``GET /jobs/{id}``."""
        client = self._require_client()
        with self._lock:
            self.polls += 1
        self.apply(client.job_status(self.id))
        return self

    def next_poll(self, *, live_jobs: int = 1, now: float | None = None) -> tuple[float, bool]:
        """(seconds until this job should be polled next, whether that poll is aimed at its end),
        by its client's policy; the tracker and ``wait()`` both ask this."""
        client = self._require_client()
        now = time.monotonic() if now is None else now
        return client.poll_policy.plan(now=now, start=self.submitted_at, window=self.end_window(now),
                                       polls=self.polls, live_jobs=live_jobs)

    def wait(self, timeout: float | None = None, *, raise_on_failure: bool = True) -> Job:
        """Block until the job ends; return it completed.

        While a tracker follows the job (a live view, a sweep, ``%%vydra``), this waits on the
        tracker's updates and sends no request of its own; otherwise it polls by the shared
        policy. Raises JobFailedError (failed), JobCancelledError (cancelled), JobTimeoutError
        (``timeout`` passed; the job goes on). A failed poll is retried, never fatal, unless it
        keeps failing.
        """
        self._require_client()
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while not self.done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise JobTimeoutError(
                    f"Job {self.id} is still {self.status} after {timeout:g} s; it goes on. "
                    f"Wait again, or cancel it: job.cancel() (or `%vydra cancel {self.id}` in a notebook)."
                )
            if self.followed:
                with self._changed:
                    if self.followed and not self.done:
                        # Woken by every change; the bound only re-checks the deadline and the follower.
                        self._changed.wait(1.0 if left is None else min(left, 1.0))
                continue
            delay = self.next_poll()[0]
            if failures:  # the service is failing: back off, whatever the plan says
                delay = max(delay, self._require_client().poll_policy.min_delay * 2.0 ** min(failures, 5))
            with self._changed:
                # A sleep that a tracker taking over (or any news) ends early.
                if not self.followed and not self.done:
                    self._changed.wait(delay if left is None else min(delay, left))
            if self.done or self.followed or (deadline is not None and time.monotonic() >= deadline):
                continue
            try:
                self.refresh()
                failures = 0
            except (VydraError, OSError) as exc:
                if getattr(exc, "status_code", None) in (401, 403, 404):
                    raise
                failures += 1
                self.mark_poll_error(str(exc))
                if failures > 10:
                    raise
        if raise_on_failure:
            self.raise_for_status()
        return self

    def raise_for_status(self) -> None:
        if self.status == FAILED:
            err = self.error or {}
            refund = f" {self.credits_refunded} credits were refunded." if self.credits_refunded else ""
            raise JobFailedError(
                f"Job {self.id} failed: {err.get('message') or 'no reason given'} "
                f"({err.get('code') or 'no code'}).{refund}",
                code=err.get("code"),
                job=self,
            )
        if self.status == CANCELLED:
            raise JobCancelledError(f"Job {self.id} was cancelled.", job=self)

    def cancel(self) -> CancelResult:
        """Cancel the job (credits are refunded); returns the ``CancelResult``."""
        return self._require_client().cancel(self.id, job=self)

    # -- verdicts: what the user thinks of the result -------------------------------------------
    KEPT, REJECTED = "kept", "rejected"
    NOTE_CHARS = 2000

    def keep(self) -> Job:
        """Mark the result as usable. Saved in the history at once; ``spend_summary()`` counts it in
        ``kept``, ``keep_rate`` and ``credits_per_kept``, the cost of a result worth keeping."""
        return self._judge(self.KEPT)

    def reject(self) -> Job:
        """Mark the result as thrown away (it still cost its credits: that is the point of counting)."""
        return self._judge(self.REJECTED)

    def note(self, text: str) -> Job:
        """Attach a note to the job (replacing any earlier one), kept in the history and shown by
        ``jobs_df()``: why a take was kept or thrown away, what to try next."""
        if not isinstance(text, str):
            raise VydraError(f"A note is text, like job.note('too dark'), not {type(text).__name__}.")
        self._require_client()
        with self._lock:
            self.note_text = text.strip()[: self.NOTE_CHARS]
        self._notify()
        return self

    def _judge(self, verdict: str) -> Job:
        """Only a completed result can be judged: a failed or cancelled job has nothing to keep (and
        was refunded), and a running one is not a result yet."""
        self._require_client()
        if self.status != COMPLETED:
            verb = "kept" if verdict == self.KEPT else "rejected"
            raise VydraError(f"Job {self.id} is {self.status}; only a completed result can be {verb}"
                             + (" (wait for it first: job.wait())." if not self.done else "."))
        with self._lock:
            changed = self.verdict != verdict
            self.verdict = verdict
        if changed:
            self._notify()  # the client's listeners (the history) first, then the views
        return self

    def download(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Path:
        """Stream the first output file into ``directory`` (default: the data folder's downloads).

        The file is named from the job id and the media type only (never from the URL or a
        Content-Disposition header, which a server controls), written atomically, capped at
        ``max_bytes`` and stopped after ``timeout`` seconds in all (default: the client's
        ``download_timeout``, an hour), so no media host can fill the disk, escape the folder or
        hold the download open forever. The API key is never sent to the media host.
        """
        client = self._require_client()
        if self.status != COMPLETED:
            raise DownloadError(f"Job {self.id} is {self.status}; only a completed job has a result to download.")
        media = self.media
        if not media:
            text = (self.output or {}).get("text")
            if isinstance(text, str):
                path = write_text(self.id, directory or client.download_dir, text)
                self._set_local_path(path)
                return path
            raise DownloadError(f"Job {self.id} completed without a downloadable media URL.")
        path = client.download_media(media[0], directory, self.id, max_bytes=max_bytes, timeout=timeout)
        self._set_local_path(path)
        return path

    def _set_local_path(self, path: Path) -> None:
        with self._lock:
            self.local_path = path
        self._notify()

    # -- posters and frames -------------------------------------------------------------------
    def poster(self) -> Path | None:
        """The poster frame of this job's downloaded video, a small JPEG beside it (made once,
        locally, with PyAV and Pillow); None for other media, before the download, or where it
        cannot be made (one ``PosterWarning`` line says why)."""
        from vydra_nb.api import posters

        local = self.local_path
        if self.status != COMPLETED or local is None or not posters.is_video(Path(local)) or not Path(local).is_file():
            return None
        return posters.make_poster(Path(local))

    def frames(self, n: int = 6) -> Any:
        """A strip of ``n`` keyframes spread over this job's video (``Frames``: shows as a row of
        small images in a notebook; ``.images``, ``.times``, ``.save(folder)``). Downloads the
        video first if needed. Raises VydraError for a job without a video, or without PyAV/Pillow."""
        from vydra_nb.api import posters

        if self.status != COMPLETED:
            raise VydraError(f"Job {self.id} is {self.status}; frames come from a completed video.")
        local = self.local_path
        if local is None or not Path(local).is_file():
            local = self.download()
        if not posters.is_video(Path(local)):
            raise VydraError(f"Job {self.id}'s result is not a video ({Path(local).suffix or 'no extension'}).")
        try:
            return posters.keyframes(Path(local), int(n), job_id=self.id)
        except ImportError:
            raise VydraError(f"job.frames() needs PyAV and Pillow: {posters.INSTALL_HINT}.") from None
        except ValueError as exc:
            raise VydraError(f"No frames from job {self.id}'s video: {exc}.") from None

    # -- display ----------------------------------------------------------------------------
    def summary(self) -> str:
        """One line for text displays and logs (no key, nothing executable)."""
        parts = [f"{self.id}", self.model or "?", self.status]
        if self.progress is not None and not self.done:
            parts.append(f"{self.progress}%")
        if self.credits_charged is not None:
            parts.append(f"{self.credits_charged} credits")
        if self.credits_refunded:
            parts.append(f"{self.credits_refunded} refunded")
        if self.error:
            parts.append(f"{self.error.get('code')}: {self.error.get('message')}")
        if self.poll_error and not self.done:
            parts.append("retrying")
        return " · ".join(parts)

    def __str__(self) -> str:
        return f"Job({self.summary()})"


class JobRegistry:
    """One ``Job`` object per (host, id) in a process.

    Whoever meets a job (a submission, ``client.job(id)``, the job list, the history at resume)
    gets the object already known, if any, so the one the tracker updates is the one every view
    shows. Jobs are held weakly: a finished job nobody refers to any more is forgotten, and a
    long session does not grow; a later lookup builds a fresh one from the server or the history.
    """

    def __init__(self) -> None:
        self._jobs: weakref.WeakValueDictionary[tuple[str | None, str], Job] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get(self, host: str | None, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get((host, job_id))

    def adopt(self, job: Job) -> Job:
        """The registered job with ``job``'s key, registering ``job`` itself when there is none."""
        with self._lock:
            known = self._jobs.get(job.key)
            if known is not None:
                return known
            self._jobs[job.key] = job
            return job

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)
