"""``Job``: one generation, from submission to a file on disk.

A job is shared between the user's thread (``wait()``, ``cancel()``) and the kernel's tracker, so
its state changes under a lock and every change is announced to listeners (views, the history
store). Parsing is tolerant: the live service uses statuses and output keys the specification does
not list (``processing``, ``resultUrls``, nested ``data``), and all of them are understood here.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import DownloadError, JobCancelledError, JobFailedError, JobTimeoutError, VydraError
from .models import as_datetime, as_int, as_str
from .polling import estimate_remaining

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("vydra_nb")

PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = "pending", "running", "completed", "failed", "cancelled"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})
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
    if s in (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED):
        return s
    return _STATUS_ALIASES.get(s, s[:40])


# -- media in an output object ----------------------------------------------------------------
_KIND_KEYS = {
    "video": ("videoUrl", "videoUrls", "video_url", "video_urls", "video"),
    "image": ("imageUrl", "imageUrls", "image_url", "image_urls", "image", "images"),
    "audio": ("audioUrl", "audioUrls", "audio_url", "audio_urls", "audio"),
    "text": ("transcriptUrl", "transcript_url", "srtUrl", "vttUrl"),
    None: ("resultUrl", "resultUrls", "outputUrl", "outputUrls", "url", "urls", "result_url", "fileUrl"),
}
_NESTS = ("output", "outputs", "result", "results", "data", "files")
_EXT_KIND = {
    ".mp4": "video", ".webm": "video", ".mov": "video", ".m4v": "video", ".mkv": "video",
    ".png": "image", ".jpg": "image", ".jpeg": "image", ".webp": "image", ".gif": "image",
    ".wav": "audio", ".mp3": "audio", ".ogg": "audio", ".m4a": "audio", ".flac": "audio", ".aac": "audio",
    ".txt": "text", ".srt": "text", ".vtt": "text", ".json": "text",
}
EXTENSIONS = {"video": ".mp4", "image": ".png", "audio": ".wav", "text": ".txt"}
_CONTENT_TYPE_EXT = {
    "video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov",
    "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
    "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg", "audio/mp4": ".m4a", "text/plain": ".txt", "application/json": ".json",
}


@dataclass(frozen=True)
class Media:
    """One result file: its URL and what kind of media it is (video, image, audio, text or None)."""

    url: str
    kind: str | None

    @property
    def extension(self) -> str:
        ext = os.path.splitext(urlsplit(self.url).path)[1].lower()
        if ext in _EXT_KIND:
            return ext
        return EXTENSIONS.get(self.kind or "", ".bin")


def is_safe_url(url: Any) -> bool:
    """Only absolute http(s) URLs are ever displayed or fetched: no javascript:, data:, file: or paths."""
    if not isinstance(url, str) or len(url) > 4096 or any(c in url for c in "\x00\r\n\t <>\"'`"):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def find_media(output: Any) -> list[Media]:
    """Every safe media URL in an output object, wherever the server put it, best first."""
    found: list[Media] = []
    seen: set[str] = set()

    def add(url: Any, kind: str | None) -> None:
        if isinstance(url, dict):
            url = url.get("url")
        if not is_safe_url(url) or url in seen:
            if isinstance(url, str) and url not in seen and not is_safe_url(url):
                log.warning("ignored an unsafe media URL from the server: %.60r", url)
            return
        seen.add(url)
        ext_kind = _EXT_KIND.get(os.path.splitext(urlsplit(url).path)[1].lower())
        found.append(Media(url, kind or ext_kind))

    def walk(obj: Any, depth: int) -> None:
        if depth > 4 or not isinstance(obj, dict):
            return
        for kind, keys in _KIND_KEYS.items():
            for key in keys:
                value = obj.get(key)
                values = value if isinstance(value, list) else [value]
                for v in values[:50]:
                    if isinstance(v, (str, dict)):
                        add(v, kind)
        for nest in _NESTS:
            inner = obj.get(nest)
            for item in inner[:50] if isinstance(inner, list) else [inner]:
                walk(item, depth + 1)

    walk(output, 0)
    return found


def safe_filename(job_id: str, extension: str) -> str:
    """A file name no server can steer: the job id reduced to ``[A-Za-z0-9_-]``, bounded, plus a known extension."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", job_id).strip("_")[:80] or "job"
    ext = extension.lower() if extension.lower() in set(_EXT_KIND) | {".bin"} else ".bin"
    return stem + ext


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
    _client: Client | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._listeners: list[Callable[[Job], None]] = []
        self._first_progress: tuple[float, float] | None = None
        self._last_progress: tuple[float, float] | None = None
        self.submitted_at = time.monotonic()
        self.ended_seen_at: float | None = None  # local monotonic time we first saw it end
        self.poll_error: str | None = None       # the last failed poll, shown as "retrying"

    # -- state ------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def media(self) -> list[Media]:
        """Safe media URLs of the output, best first (empty until completed)."""
        return find_media(self.output) if self.output else []

    @property
    def media_url(self) -> str | None:
        media = self.media
        return media[0].url if media else None

    @property
    def prompt(self) -> str | None:
        from .models import PROMPT_FIELD_NAMES

        for name in PROMPT_FIELD_NAMES:
            if isinstance(self.params.get(name), str):
                return self.params[name]
        return None

    @property
    def net_credits(self) -> int:
        return (self.credits_charged or 0) - (self.credits_refunded or 0)

    def eta(self, now: float | None = None) -> float | None:
        """Estimated seconds until the job ends, from its progress rate; None when unknown."""
        if self.done:
            return 0.0
        return estimate_remaining(self._first_progress, self._last_progress, time.monotonic() if now is None else now)

    def subscribe(self, callback: Callable[[Job], None]) -> Callable[[], None]:
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
        client_listeners = self._client._job_listeners if self._client is not None else []
        for callback in [*client_listeners, *listeners]:
            try:
                callback(self)
            except Exception:  # a broken view must not break tracking
                log.exception("a job listener failed")

    def apply(self, data: dict[str, Any]) -> bool:
        """Merge an API job view (or submit answer) into this job; True when anything changed.

        Fields the server omits keep their last value; unknown ones are kept in ``extra``.
        """
        known = {
            "id", "jobId", "status", "progress", "output", "error", "creditsCharged", "creditsRefunded",
            "refundStatus", "createdAt", "startedAt", "completedAt", "externalJobId", "message", "workflow", "model",
        }
        with self._lock:
            before = self._snapshot()
            if "status" in data:
                self.raw_status = as_str(data.get("status"))
                self.status = normalize_status(data.get("status"))
            progress = as_int(data.get("progress"))
            if progress is not None:
                self.progress = max(0, min(100, progress))
                now = time.monotonic()
                # Anchor the rate at the first progress above 0: a job may sit at 0 while queued.
                if self._first_progress is None and self.progress > 0:
                    self._first_progress = (now, float(self.progress))
                self._last_progress = (now, float(self.progress))
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
                value = as_int(data.get(key))
                if value is not None:
                    setattr(self, attr, max(0, value))
            for attr, key in (("created_at", "createdAt"), ("started_at", "startedAt"), ("completed_at", "completedAt")):
                value = as_datetime(data.get(key))
                if value is not None:
                    if attr == "created_at" and self.created_at is None:
                        # A job reopened later counts its elapsed time from its creation, not from now.
                        age = (_utcnow() - value).total_seconds()
                        self.submitted_at = time.monotonic() - max(0.0, min(age, 30 * 86400))
                    setattr(self, attr, value)
            for attr, key in (("refund_status", "refundStatus"), ("external_job_id", "externalJobId"), ("message", "message")):
                value = as_str(data.get(key))
                if value is not None:
                    setattr(self, attr, value[:500])
            if self.model is None:
                self.model = as_str(data.get("model")) or as_str(data.get("workflow"))
            self.extra.update({k: v for k, v in data.items() if k not in known})
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
    def _require_client(self) -> Client:
        if self._client is None:
            raise VydraError(f"Job {self.id} is not attached to a client; use client.job({self.id!r}).")
        return self._client

    def refresh(self) -> Job:
        """Fetch the latest state from ``GET /jobs/{id}``."""
        data = self._require_client()._job_view(self.id)
        self.apply(data)
        return self

    def wait(self, timeout: float | None = None, *, raise_on_failure: bool = True) -> Job:
        """Block until the job ends, polling by the shared policy; return it completed.

        Raises JobFailedError (failed), JobCancelledError (cancelled), JobTimeoutError (``timeout``
        passed; the job goes on). A failed poll is retried, never fatal, unless it keeps failing.
        """
        client = self._require_client()
        policy = client.poll_policy
        start = time.monotonic()
        delay: float | None = None
        failures = 0
        while not self.done:
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
            if self.done:
                break
            delay = policy.next_delay(previous_delay=delay, remaining=self.eta(), live_jobs=1)
            if timeout is not None:
                left = timeout - (time.monotonic() - start)
                if left <= 0:
                    raise JobTimeoutError(
                        f"Job {self.id} is still {self.status} after {timeout:g} s; it goes on. "
                        f"Wait again, or cancel it: job.cancel() (or `%vydra cancel {self.id}` in a notebook)."
                    )
                delay = min(delay, left)
            time.sleep(delay)
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

    def cancel(self) -> Any:
        """Cancel the job (credits are refunded); returns the ``CancelResult``."""
        return self._require_client().cancel(self.id, job=self)

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
            if isinstance((self.output or {}).get("text"), str):
                path = _write_text(self, directory or client.download_dir, self.output["text"])  # type: ignore[index]
                self._set_local_path(path)
                return path
            raise DownloadError(f"Job {self.id} completed without a downloadable media URL.")
        path = client._download(media[0], directory, self.id, max_bytes=max_bytes, timeout=timeout)
        self._set_local_path(path)
        return path

    def _set_local_path(self, path: Path) -> None:
        with self._lock:
            self.local_path = path
        self._notify()

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


def _write_text(job: Job, directory: str | os.PathLike[str], text: str) -> Path:
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / safe_filename(job.id, ".txt")
    atomic_write(target, [text.encode("utf-8")])
    return target


def atomic_write(target: Path, chunks: Any, *, max_bytes: int | None = None) -> int:
    """Write chunks to a temp file beside ``target``, then rename; nothing half-written is left."""
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=target.parent)
    written = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                written += len(chunk)
                if max_bytes is not None and written > max_bytes:
                    raise DownloadError(
                        f"The result is larger than the {max_bytes:,}-byte cap; not saved. "
                        "Raise max_bytes if this is expected."
                    )
                fh.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return written


def ext_for_content_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return _CONTENT_TYPE_EXT.get(content_type.split(";")[0].strip().lower())
