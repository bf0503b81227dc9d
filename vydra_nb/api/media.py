"""Media in a job's output, and downloading it: what a result *is* and how it reaches the disk.

Kept apart from ``jobs`` and ``client`` so that neither needs the other for files: a ``Job``
asks its client's public ``download_media`` for the bytes, and the client asks a ``Downloader``.
Everything here treats the server and the media host as untrusted: only absolute http(s) URLs
are fetched, file names come from the job id alone, sizes and durations are capped.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from vydra_nb.api.errors import DownloadError
from vydra_nb.api.transport import declared_length

DEFAULT_MAX_DOWNLOAD = 2 * 1024**3  # 2 GiB

DEFAULT_DOWNLOAD_TIMEOUT = 3600.0
"""Seconds one download may take in all, unless the client or the call says otherwise. Generous
(a 2 GiB video on a slow link), but finite: a host that drips bytes cannot hold a kernel's tracker
thread forever."""


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
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # "Invalid IPv6 URL" (https://[x/...), a port out of range: not a URL to use
        return False


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))


def url_scheme(url: Any) -> str:
    """What a message may say of a URL it refuses: its scheme ("javascript", "file"), never its text.

    A front end links any URL-looking text it prints, so the rest of a server's URL stays out;
    a scheme that is not a short plain word ("www.evil.example") is "other".
    """
    if not isinstance(url, str):
        return "not text"
    match = _SCHEME.match(url.lstrip(_C0_AND_SPACE))
    if match is None:
        return "no scheme"
    scheme = match.group(1).lower()
    return scheme if re.fullmatch(r"[a-z][a-z0-9+-]{0,15}", scheme) else "other"


def refusal_label(url: Any) -> str:
    """How a message names a URL ``is_safe_url`` refused: its scheme, or "malformed https"."""
    scheme = url_scheme(url)
    return f"malformed {scheme}" if scheme in ("http", "https") else scheme


def find_media(output: Any, unsafe: list[str] | None = None) -> list[Media]:
    """Every safe media URL in an output object, wherever the server put it, best first.

    URLs that are not absolute http(s) (``javascript:``, ``data:``...) are left out, and appended
    to ``unsafe`` when given, so the caller can say so once rather than on every look.
    """
    unsafe = [] if unsafe is None else unsafe
    found: list[Media] = []
    seen: set[str] = set()

    def add(url: Any, kind: str | None) -> None:
        if isinstance(url, dict):
            url = url.get("url")
        if not is_safe_url(url) or url in seen:
            if isinstance(url, str) and url not in seen and not is_safe_url(url):
                unsafe.append(url)
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




class Downloader:
    """Streams result files to disk over its own ``requests.Session``, which never carries the key."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_DOWNLOAD, timeout: float = DEFAULT_DOWNLOAD_TIMEOUT) -> None:
        self.max_download_bytes = max_bytes
        self.download_timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False

    def close(self) -> None:
        self._session.close()

    def fetch(
        self,
        media: Media,
        directory: str | os.PathLike[str],
        job_id: str,
        *,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Path:
        """Stream ``media`` into ``directory`` under a name made from ``job_id`` only.

        Two limits bound what a media host can make us do: ``max_bytes`` (decoded bytes, so a
        compression bomb counts at its real size) and ``timeout``, the whole download's deadline in
        seconds. The requests read timeout alone does not end a download whose server sends a byte
        every few seconds, so the deadline is checked between reads; a read itself waits at most
        the read timeout (30 s, or the whole deadline when that is shorter), so a stalled host is
        noticed too. Every failure is a DownloadError and leaves no file behind.
        """
        if not is_safe_url(media.url):
            raise DownloadError(f"Job {job_id}'s result URL is not an http(s) URL; refusing to fetch it.")
        cap = self.max_download_bytes if max_bytes is None else max_bytes
        limit = float(timeout if timeout is not None else self.download_timeout)
        if not limit > 0:
            raise ValueError("the download timeout must be a positive number of seconds")
        deadline = time.monotonic() + limit
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with self._session.get(
                media.url, stream=True, timeout=(min(5.0, limit), min(30.0, limit))
            ) as resp:
                if resp.status_code >= 400:
                    raise DownloadError(
                        f"Could not download job {job_id}'s result (HTTP {resp.status_code}); provider URLs "
                        "expire after about a day."
                    )
                declared = declared_length(resp.headers.get("Content-Length"))
                if declared is not None and declared > cap:
                    raise DownloadError(
                        f"Job {job_id}'s result is {declared:,} bytes, above the {cap:,}-byte cap; not saved."
                    )
                ext = ext_for_content_type(resp.headers.get("Content-Type")) or media.extension
                target = folder / safe_filename(job_id, ext)
                atomic_write(target, _body_chunks(resp, deadline, limit, job_id), max_bytes=cap)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # OSError covers socket errors raised from raw reads; a failed write of the file is an
            # OSError too and equally means "not saved" (atomic_write removed its temp file).
            raise DownloadError(f"Could not download job {job_id}'s result ({type(exc).__name__}); try again.") from None
        return target


_CHUNK = 256 * 1024


def _body_chunks(resp: requests.Response, deadline: float, limit: float, job_id: str) -> Iterator[bytes]:
    """Yield the decoded body as it arrives, raising DownloadError once ``deadline`` passes.

    ``read1`` returns whatever has arrived (up to a chunk) instead of waiting to fill a whole
    chunk, which ``iter_content`` does and which would let a byte-a-second drip block inside one
    read for days without ever tripping the read timeout.
    """
    read1 = getattr(resp.raw, "read1", None)
    source = resp.iter_content(chunk_size=8192) if read1 is None else None  # urllib3 < 2 has no read1

    def reader() -> bytes:
        if source is not None:
            return next(source, b"")
        assert read1 is not None  # source is None only when the raw stream has read1
        return read1(_CHUNK, decode_content=True)

    while True:
        if time.monotonic() > deadline:
            raise DownloadError(
                f"Downloading job {job_id}'s result took longer than {limit:g} s; stopped and not saved. "
                "Pass a larger timeout to download() if the file is expected to be slow."
            )
        chunk = reader()
        if not chunk:
            return
        yield chunk


def write_text(job_id: str, directory: str | os.PathLike[str], text: str) -> Path:
    """Save a text result (a transcript) the way media are saved: atomically, named from the id."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / safe_filename(job_id, ".txt")
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
