"""Plain mimebundles for jobs: what survives without a kernel.

A widget needs a live kernel and a widget manager; a saved notebook reopened later, nbconvert HTML,
VS Code without the kernel and a terminal have neither. So every job also has a plain form: HTML
(``<video>``/``<img>``/``<audio>``/``<pre>``) plus ``text/plain``. The widget view writes this
bundle over its own output when the job ends (see :func:`vydra_nb.widgets.show_job`).

Safety: every string that came from the server or from the user's prompt is ``html.escape``-d, and
only ``is_safe_url`` (absolute http/https) URLs are ever put into ``src``/``href``. The only other
``src`` we write is a ``data:`` URI we build ourselves from a downloaded file's bytes, with a MIME
type chosen from our own table, never from the server.

This module imports no ipywidgets (it must work where they are missing).
"""

from __future__ import annotations

import base64
import html
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vydra_nb.api.jobs import CANCELLED, COMPLETED, FAILED, Job
from vydra_nb.api.media import Media, is_safe_url

IMAGE_EMBED_LIMIT = 2 * 1024 * 1024
"""Images whose downloaded file is smaller than this are embedded as ``data:`` URIs (they then
survive the media URL expiring). Bigger ones are linked."""

MEDIA_EMBED_LIMIT = 0
"""Video and audio are embedded only below this size; the default 0 never embeds them: a
base64 video bloats the notebook file by a third more than the video itself."""

_MIME = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime",
    ".m4v": "video/mp4", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
    ".m4a": "audio/mp4", ".flac": "audio/flac", ".aac": "audio/aac",
}
_KIND_BY_EXT = {ext: mime.split("/")[0] for ext, mime in _MIME.items()}

STYLE = (
    "<style>.vydra-job{font-family:var(--jp-ui-font-family,sans-serif);font-size:13px;margin:4px 0}"
    ".vydra-badge{display:inline-block;padding:0 6px;border-radius:8px;font-size:11px;font-weight:600;"
    "color:#fff;background:#777;margin-right:6px}"
    # Scoped to the badge: the outer block carries the status class too and must keep its background.
    ".vydra-badge.vydra-sandbox{background:#b8860b}"
    ".vydra-badge.vydra-status-completed{background:#2e7d32}"
    ".vydra-badge.vydra-status-failed{background:#c62828}"
    ".vydra-badge.vydra-status-cancelled{background:#6d4c41}"
    ".vydra-badge.vydra-status-running{background:#1565c0}"
    ".vydra-badge.vydra-status-pending{background:#607d8b}"
    ".vydra-badge.vydra-verdict-kept{background:#00695c}.vydra-badge.vydra-verdict-rejected{background:#8d6e63}"
    ".vydra-player video,.vydra-player img{max-width:100%;max-height:480px}"
    ".vydra-meta{color:#666;font-size:12px}.vydra-links{overflow-wrap:anywhere}"
    ".vydra-error{color:#c62828}</style>"
)


# -- small shared helpers (the widgets use them too) -------------------------------------------
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def widget_only(bundle: dict[str, Any] | None) -> dict[str, Any]:
    """Just the widget view of a mimebundle: for a live view that will be cleared, so neither its
    text fallback ("VBox(...)") nor anything else of it is left in a saved notebook or seen by
    nbval, which applies neither clear_output nor display updates."""
    return {k: v for k, v in (bundle or {}).items() if k == WIDGET_MIME}


def esc(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def shorten(text: str | None, limit: int = 80) -> str:
    """One line, at most ``limit`` characters: prompts can be pages long."""
    if not text:
        return ""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 1].rstrip() + "…"


def status_class(status: str | None) -> str:
    """A CSS class from a status; unknown server statuses are reduced to ``[a-z-]``."""
    return "vydra-status-" + (re.sub(r"[^a-z-]+", "", (status or "unknown").lower())[:20] or "unknown")


def is_sandbox(job: Job) -> bool:
    return job.backend == "sandbox"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    minutes, s = divmod(seconds, 60)
    return f"{minutes}m{s:02d}s" if minutes else f"{s}s"


def elapsed(job: Job, now: float | None = None) -> float:
    """Seconds since submission, frozen when the job was first seen ending."""
    end = job.ended_seen_at if job.ended_seen_at is not None else (time.monotonic() if now is None else now)
    return max(0.0, end - job.submitted_at)


def progress_line(job: Job) -> str:
    """One plain line for a job that is still going: status, progress, elapsed, ETA, credits."""
    parts = [job.status]
    if job.progress is not None:
        parts.append(f"{job.progress}%")
    else:
        guess = job.estimated_progress()
        if guess is not None:
            parts.append(f"~{guess}% (estimate)")
    parts.append(f"elapsed {format_seconds(elapsed(job))}")
    eta = eta_text(job)
    if eta:
        parts.append(eta)
    if job.credits_charged is not None:
        parts.append(f"{job.credits_charged} credits")
    if job.poll_error:
        parts.append("retrying")
    return " · ".join(parts)


def eta_text(job: Job) -> str | None:
    """"ETA 40s" when the end is well known, "ETA 30s-1m10s" when it is a range, None when unknown."""
    span = job.eta_range()
    if span is None or span[1] <= 0:
        return None
    soonest, latest = span
    if latest - soonest <= max(5.0, 0.2 * latest):
        return f"ETA {format_seconds((soonest + latest) / 2)}"
    return f"ETA {format_seconds(soonest)}-{format_seconds(latest)}"


def primary_media(job: Job) -> tuple[Media | None, str | None]:
    """The result to show and its kind (video/image/audio/text), guessing from the extension."""
    media = job.media
    if not media:
        text = (job.output or {}).get("text")
        return None, "text" if isinstance(text, str) else None
    first = media[0]
    kind = first.kind or _KIND_BY_EXT.get(first.extension)
    # A transcript's text is better shown than its .txt URL.
    if kind == "text" or (kind is None and isinstance((job.output or {}).get("text"), str)):
        return first, "text"
    return first, kind


def _data_uri(path: Path, limit: int) -> str | None:
    """``data:`` URI of a local file strictly smaller than ``limit`` bytes, else None."""
    mime = _MIME.get(path.suffix.lower())
    if mime is None or limit <= 0:
        return None
    try:
        if path.stat().st_size >= limit:
            return None
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def _beside_notebook(local: Path | None) -> str | None:
    """A relative URL for a file saved under the kernel's working folder (the notebook's folder).

    Front ends resolve it next to the notebook, so the player keeps working after the provider's
    URL expires or the sandbox stops, and nbconvert's HTML plays it from beside the page.
    """
    if local is None:
        return None
    try:
        rel = Path(local).resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return None
    return quote(rel.as_posix())


def shown_path(local: Any) -> str:
    """A saved file's path as a person reads it: relative under the working folder, ``~/...`` under
    the home folder, else absolute. Shorter, and a saved notebook does not carry the user's
    home or user name."""
    path = Path(local)
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + path.resolve().relative_to(base.resolve()).as_posix()
        except (ValueError, OSError, RuntimeError):
            continue
    return str(path)


def player_html(
    job: Job,
    *,
    embed_limit_bytes: int = IMAGE_EMBED_LIMIT,
    media_embed_limit_bytes: int = MEDIA_EMBED_LIMIT,
    posters: bool = True,
) -> str:
    """The player for a completed job (``<video>``/``<img>``/``<audio>``/``<pre>``), URL and local file.

    A video carries its poster frame (``poster_src``): the player shows it before playing, and it
    is the fallback image where a front end cannot play ``<video>`` or the URL has expired.
    """
    media, kind = primary_media(job)
    url = media.url if media is not None and is_safe_url(media.url) else None
    local = job.local_path if job.local_path is not None and Path(job.local_path).is_file() else None
    src = None
    if local is not None:
        limit = embed_limit_bytes if kind == "image" else media_embed_limit_bytes
        src = _data_uri(Path(local), limit)
    src = src or _beside_notebook(local) or url
    parts: list[str] = []
    if kind == "text":
        text = (job.output or {}).get("text")
        if not isinstance(text, str) and local is not None:
            try:
                text = Path(local).read_text("utf-8", errors="replace")[:100_000]
            except OSError:
                text = None
        parts.append(f'<pre class="vydra-transcript">{esc(text or "")}</pre>')
    elif kind == "video" and (src or posters):
        poster = poster_src(job) if posters else None
        if src or poster:
            parts.append(video_html(src, poster, alt=shorten(job.prompt, 120)))
    elif src and kind == "image":
        parts.append(f'<img class="vydra-image" alt="{esc(shorten(job.prompt, 120))}" src="{esc(src)}">')
    elif src and kind == "audio":
        parts.append(f'<audio class="vydra-audio" controls preload="metadata" src="{esc(src)}"></audio>')
    links = []
    if url:
        links.append(f'<a href="{esc(url)}" target="_blank" rel="noopener noreferrer">{esc(url)}</a>')
    if local is not None:
        links.append(f"saved to <code>{esc(shown_path(local))}</code>")
    if links:
        parts.append(f'<div class="vydra-meta vydra-links">{" · ".join(links)}</div>')
    if not parts:
        parts.append('<div class="vydra-meta">completed without a displayable result</div>')
    return f'<div class="vydra-player">{"".join(parts)}</div>'


POSTER_EMBED_LIMIT = 96 * 1024
"""Posters (and grid thumbnails) are embedded as ``data:`` URIs below this size: they are small
JPEGs we make ourselves (about 5-20 kB), so a saved notebook shows every video without its URL."""

_THUMBNAIL_KEYS = ("thumbnailUrl", "thumbnail_url", "posterUrl", "poster_url", "coverUrl", "thumbnail")


def local_src(job: Job) -> str | None:
    """A relative URL for the job's saved file when it lies under the notebook's folder."""
    local = job.local_path if job.local_path is not None and Path(job.local_path).is_file() else None
    return _beside_notebook(local)


def poster_src(job: Job) -> str | None:
    """The poster of a completed video: our own JPEG of a frame of the downloaded file, as a
    ``data:`` URI; else a ``thumbnailUrl`` the service gave (an http(s) URL); else None."""
    try:
        path = job.poster()
    except Exception:  # a poster is an extra: never let it break a view
        path = None
    if path is not None:
        uri = _data_uri(Path(path), POSTER_EMBED_LIMIT)
        if uri is not None:
            return uri
    output = job.output or {}
    for key in _THUMBNAIL_KEYS:
        value = output.get(key)
        if is_safe_url(value):
            return str(value)
    return None


def thumbnail_src(job: Job) -> str | None:
    """A small JPEG of a completed image job's downloaded file, as a ``data:`` URI (for grids)."""
    local = job.local_path
    if local is None or Path(local).suffix.lower() not in _MIME or _KIND_BY_EXT.get(Path(local).suffix.lower()) != "image":
        return None
    from vydra_nb.api import posters

    data = posters.thumbnail(Path(local))
    if data is None or len(data) >= POSTER_EMBED_LIMIT:
        return None
    return posters.data_uri(data)


def video_html(src: str | None, poster: str | None, *, alt: str = "", preload: str = "metadata") -> str:
    """``<video>`` with its poster, and the poster again as the fallback ``<img>`` for front ends
    that cannot play video (or when there is no source left to play)."""
    fallback = (f'<img class="vydra-poster" alt="{esc(alt or "video poster")}" src="{esc(poster)}">'
                if poster else "")
    if src is None:
        return fallback
    poster_attr = f' poster="{esc(poster)}"' if poster else ""
    return (f'<video class="vydra-video" controls playsinline preload="{esc(preload)}"{poster_attr} '
            f'src="{esc(src)}">{fallback}</video>')


def outcome_html(job: Job, **kw: Any) -> str:
    """The body under the header: player, error and refund, refund, or a static progress line."""
    if job.status == COMPLETED:
        return player_html(job, **kw)
    if job.status == FAILED:
        err = job.error or {}
        refund = f"{job.credits_refunded} credits refunded" if job.credits_refunded else "no refund reported"
        return (
            f'<div class="vydra-error"><b>{esc(err.get("code") or "FAILED")}</b>: '
            f'{esc(err.get("message") or "no reason given")}</div><div class="vydra-meta">{esc(refund)}</div>'
        )
    if job.status == CANCELLED:
        refund = f"{job.credits_refunded or 0} credits refunded"
        return f'<div class="vydra-meta vydra-cancelled">cancelled · {esc(refund)}</div>'
    return f'<div class="vydra-meta vydra-progress">{esc(progress_line(job))}</div>'


def header_html(job: Job, *, prompt_limit: int = 80) -> str:
    """SANDBOX badge, status badge, verdict badge, model, job id, tag and the shortened prompt and
    note, all escaped. The verdict is here so that a saved notebook keeps it with the result."""
    sandbox = '<span class="vydra-badge vydra-sandbox">SANDBOX</span>' if is_sandbox(job) else ""
    badge = f'<span class="vydra-badge {status_class(job.status)}">{esc(job.status)}</span>'
    verdict = (f'<span class="vydra-badge vydra-verdict-{esc(job.verdict)}">{esc(job.verdict)}</span>'
               if job.verdict in ("kept", "rejected") else "")
    credits = f" · {job.credits_charged} credits" if job.credits_charged is not None else ""
    tag = f" · tag {job.tag}" if job.tag else ""
    prompt = shorten(job.prompt, prompt_limit)
    prompt_html = f'<div class="vydra-prompt">{esc(prompt)}</div>' if prompt else ""
    note_html = f'<div class="vydra-meta vydra-note">note: {esc(shorten(job.note_text, 200))}</div>' if job.note_text else ""
    return (
        f'<div class="vydra-header">{sandbox}{badge}{verdict}<b>{esc(job.model or "?")}</b> '
        f'<span class="vydra-meta">{esc(job.id)}{esc(credits)}{esc(tag)}</span></div>{prompt_html}{note_html}'
    )


# -- public -------------------------------------------------------------------------------------
def job_html(
    job: Job,
    *,
    embed_limit_bytes: int = IMAGE_EMBED_LIMIT,
    media_embed_limit_bytes: int = MEDIA_EMBED_LIMIT,
) -> str:
    """Self-contained HTML for a job in its current state (final states are what gets saved)."""
    body = outcome_html(job, embed_limit_bytes=embed_limit_bytes, media_embed_limit_bytes=media_embed_limit_bytes)
    return f'{STYLE}<div class="vydra-job {status_class(job.status)}">{header_html(job)}{body}</div>'


def job_text(job: Job) -> str:
    """Plain text for terminals and ``text/plain``: the summary, then the URL, path or error."""
    lines = [("[SANDBOX] " if is_sandbox(job) else "") + job.summary()]
    prompt = shorten(job.prompt, 100)
    if prompt:
        lines.append(f"prompt: {prompt}")
    judged = " · ".join(p for p in (job.verdict, shorten(job.note_text, 100) if job.note_text else None) if p)
    if judged:
        lines.append(f"verdict: {judged}" if job.verdict else f"note: {judged}")
    if job.status == COMPLETED:
        media, kind = primary_media(job)
        text = (job.output or {}).get("text")
        if kind == "text" and isinstance(text, str):
            lines.append(shorten(text, 400))
        if media is not None:
            lines.append(f"url: {media.url}")
        if job.local_path is not None:
            lines.append(f"file: {shown_path(job.local_path)}")
    elif job.status in (FAILED, CANCELLED):
        lines.append(f"refunded: {job.credits_refunded or 0} credits")
    else:
        lines.append(progress_line(job))
    return "\n".join(lines)


def job_bundle(job: Job, **kw: int) -> dict[str, str]:
    """``{"text/plain", "text/html"}`` for ``display(..., raw=True)`` and ``update_display_data``."""
    return {"text/plain": job_text(job), "text/html": job_html(job, **kw)}


class TextJobView:
    """Progress as printed lines, for front ends without widgets (terminals, nbconvert, consoles).

    Prints on every status change, at each ``step`` % of progress, once when polling starts to
    fail ("retrying"), and at the end the URL/path or error and refund. Lines are printed from the
    tracker thread, so they are kept few.
    """

    def __init__(self, job: Job, *, step: int = 10, write: Callable[[str], Any] | None = None) -> None:
        self.job = job
        self.step = max(1, step)
        self.lines: list[str] = []
        self._write = write or (lambda line: print(line, file=sys.stdout, flush=True))
        self._lock = threading.Lock()
        self._status: str | None = None
        self._bucket = -1
        self._retrying = False
        self._final_printed = False
        self._path_printed = False
        self._unsubscribe = job.subscribe(self._on_change)
        self._on_change(job)

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        try:
            self._write(line)
        except Exception:
            pass

    def _on_change(self, job: Job) -> None:
        with self._lock:
            prefix = f"{job.id} {job.model or ''}".rstrip()
            if job.done:
                if not self._final_printed:
                    self._final_printed = True
                    self._emit(f"{prefix}: " + job_text(job).replace("\n", " | "))
                elif job.local_path is not None and not self._path_printed:
                    self._emit(f"{prefix}: saved to {shown_path(job.local_path)}")
                self._path_printed = self._path_printed or job.local_path is not None
                return
            bucket = (job.progress or 0) // self.step
            if job.status != self._status or bucket > self._bucket:
                self._status, self._bucket = job.status, bucket
                self._emit(f"{prefix}: {progress_line(job)}")
            if job.poll_error and not self._retrying:
                self._emit(f"{prefix}: retrying ({shorten(job.poll_error, 80)})")
            self._retrying = bool(job.poll_error)

    def close(self) -> None:
        self._unsubscribe()

    def __repr__(self) -> str:
        return f"<TextJobView {self.job.id}: {self.job.status}>"
