"""Inputs that are not plain values: local files, finished jobs and their media, for URL parameters.

A parameter whose schema says ``"format": "uri"`` (or whose name ends in ``_url``/``_urls``, or
``Url``/``Urls``) takes an http(s) URL on the wire. People have other things in hand: a file
beside the notebook, the ``Job`` of the previous step, one of its ``Media``. This module turns
each of them into what the request needs, and checks everything it can *before* anything is sent:

* a local file must be a regular file (no folder, device, FIFO or symbolic link), named without
  ``..``, no bigger than the upload limit (20 MB), and an image by its bytes (PNG, JPEG, WebP or
  GIF, sniffed from the magic bytes; the name and extension count for nothing), of a kind the
  field takes (no still for ``video_url``). It is read once, bounded, and its SHA-256 kept: what is
  uploaded later is re-read and must hash the same, so the file cannot be swapped in between.
* a ``Job`` must have completed with a media result; an unfinished one is an error that says to
  wait (or, asked to, it is waited for); a failed one is an error that says so.

Every refusal is a ``ValidationError`` of one line naming the field. Nothing here sends a request:
uploading (``POST /upload``, free, rate-limited, cached by content) is the client's job.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from vydra_nb.api.errors import ValidationError, shown
from vydra_nb.api.jobs import COMPLETED, Job
from vydra_nb.api.media import Media, is_safe_url
from vydra_nb.api.models import Model, is_http_url
from vydra_nb.api.settings import is_loopback_host

UPLOAD_LIMIT = 20 * 1024 * 1024
"""``POST /upload`` takes images of up to 20 MB (vydra-notes.md)."""

UPLOAD_MAX_AGE = 24 * 3600.0
"""Seconds an upload's URL is reused for the same content; after that it is uploaded again
(hosted URLs may expire, as provider URLs do after about a day)."""

UPLOAD_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP", "image/gif": "GIF"}
"""What ``POST /upload`` accepts, by the bytes (MIME type -> the name a message uses)."""

# What other bytes are, for a refusal that says what the file really is.
_OTHER_MAGIC: tuple[tuple[int, bytes, str, str | None], ...] = (
    (0, b"\x1a\x45\xdf\xa3", "a WebM/Matroska video", "video"),
    (0, b"OggS", "an Ogg audio file", "audio"),
    (0, b"fLaC", "a FLAC audio file", "audio"),
    (0, b"ID3", "an MP3 audio file", "audio"),
    (0, b"%PDF", "a PDF document", None),
    (0, b"MZ", "a Windows program", None),
    (0, b"\x7fELF", "a Linux program", None),
    (0, b"PK\x03\x04", "a ZIP archive", None),
    (0, b"\x1f\x8b", "a gzip archive", None),
    (0, b"BM", "a BMP image (not accepted: convert it to PNG)", None),
    (0, b"II*\x00", "a TIFF image (not accepted: convert it to PNG)", None),
    (0, b"MM\x00*", "a TIFF image (not accepted: convert it to PNG)", None),
)

# The kind of media a field takes, from words in its name (``image_url`` takes an image).
_FIELD_KINDS = (
    ("video", ("video", "clip", "movie")),
    ("audio", ("audio", "voice", "speech", "sound", "music", "song")),
    ("image", ("image", "img", "photo", "picture", "still", "frame", "thumbnail", "mask")),
)


def sniff(data: bytes) -> tuple[str | None, str]:
    """(MIME type if ``POST /upload`` accepts these bytes, else None; what they are, in words).

    Only the bytes count: a program renamed ``photo.png`` is "a Windows program".
    """
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "a JPEG image"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif", "a GIF image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp", "a WebP image"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return None, "a WAV audio file"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return None, "an M4A audio file" if brand in (b"M4A ", b"M4B ") else "an MP4/QuickTime video"
    for offset, magic, what, _kind in _OTHER_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return None, what
    if head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return None, "an MP3 audio file"
    if not data:
        return None, "empty"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:512]):
        return None, "text"
    return None, "not an image"


def sniffed_kind(data: bytes) -> str | None:
    """"image", "video" or "audio" as the bytes say, else None."""
    mime, what = sniff(data)
    if mime is not None:
        return "image"
    if "video" in what:
        return "video"
    if "audio" in what:
        return "audio"
    return None


def image_dimensions(data: bytes, mime: str) -> tuple[int, int] | None:
    """Width and height from an accepted image's header; None when the header cannot be read
    (a PNG signature followed by junk is not an image the service will take)."""
    try:
        if mime == "image/png":
            if data[12:16] != b"IHDR":
                return None
            w, h = struct.unpack(">II", data[16:24])
        elif mime == "image/gif":
            w, h = struct.unpack("<HH", data[6:10])
        elif mime == "image/webp":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = 1 + int.from_bytes(data[24:27], "little")
                h = 1 + int.from_bytes(data[27:30], "little")
            elif chunk == b"VP8 ":
                w, h = (v & 0x3FFF for v in struct.unpack("<HH", data[26:30]))
            elif chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            else:
                return None
        elif mime == "image/jpeg":
            return _jpeg_dimensions(data)
        else:
            return None
    except (struct.error, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # padding
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return (w, h) if w and h else None
        i += 2 + length
    return None


def field_kind(name: str) -> str | None:
    """The kind of media a URL field takes, from its name (``video_url`` -> "video"); None: any."""
    low = name.lower()
    for kind, words in _FIELD_KINDS:
        if any(word in low for word in words):
            return kind
    return None


_URL_NAME = re.compile(r"(_urls?|Urls?)$")


def uri_fields(model: Model) -> dict[str, bool]:
    """The model's URL parameters: name -> whether it takes a list (``video_urls``).

    By the schema (``format: uri`` on the property or its items), and by the name where the
    schema says nothing (``image_url``, ``audioUrl``).
    """
    out: dict[str, bool] = {}
    for name, prop in model.properties.items():
        items = prop.get("items") if isinstance(prop.get("items"), dict) else {}
        is_list = prop.get("type") == "array"
        if prop.get("format") == "uri" or (is_list and isinstance(items, dict) and items.get("format") == "uri"):
            out[name] = is_list
        elif _URL_NAME.search(name) and prop.get("type") in ("string", "array", None):
            out[name] = is_list
    return out


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} kB"
    return f"{n} bytes"


@dataclass(frozen=True)
class LocalFile:
    """A local image checked for upload: where it is, what it is, and the hash of what was read.

    The bytes themselves are not kept (a sweep may name the same 20 MB file in every
    combination): ``read()`` reads them again with the same checks and refuses them if the hash
    differs from the one checked here.
    """

    path: Path
    shown: str
    sha256: str
    size: int
    mime: str
    width: int | None = None
    height: int | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def type_name(self) -> str:
        return UPLOAD_TYPES.get(self.mime, self.mime)

    def describe(self) -> str:
        """``still.png (PNG 1024x576, 45 kB)``."""
        dims = f" {self.width}x{self.height}" if self.width and self.height else ""
        return f"{self.name} ({self.type_name}{dims}, {_size(self.size)})"

    def read(self, field: str = "file", *, limit: int = UPLOAD_LIMIT) -> bytes:
        """The file's bytes, checked again; ValidationError if it changed since it was checked."""
        data = _read_checked(self.path, self.shown, field, limit)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ValidationError(f"{field}: {self.shown} changed after it was checked; run the cell again.", field=field)
        return data

    def __repr__(self) -> str:
        return f"LocalFile({self.describe()})"


@dataclass(frozen=True)
class Upload:
    """What ``POST /upload`` answered for one content: its hosted ``url`` (what a request sends),
    the server's ``filename``, ``size``, ``type`` and storage ``key``, and the content's
    ``sha256``. ``cached``: this answer came from an earlier upload, and no request was sent."""

    url: str
    sha256: str
    filename: str | None = None
    size: int | None = None
    type: str | None = None
    key: str | None = None
    cached: bool = False

    def __str__(self) -> str:
        return self.url


def _refuse(field: str, text: str) -> ValidationError:
    return ValidationError(f"{field}: {text}", field=field)


def _read_checked(path: Path, display: str, field: str, limit: int) -> bytes:
    """Open ``path`` without following a symbolic link or blocking on a FIFO, check it is a
    regular file within ``limit`` bytes, and read it (never more than ``limit + 1`` bytes)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _refuse(field, f"no file {display}.") from None
    except IsADirectoryError:
        raise _refuse(field, f"{display} is a folder, not an image file.") from None
    except PermissionError:
        raise _refuse(field, f"{display} cannot be read (permission denied).") from None
    except OSError as exc:
        if os.path.islink(path):
            raise _refuse(field, f"{display} is a symbolic link; give the path of the file itself.") from None
        raise _refuse(field, f"{display} cannot be opened ({exc.strerror or type(exc).__name__}).") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise _refuse(field, f"{display} is a folder, not an image file.")
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(field, f"{display} is not a regular file (a device, pipe or socket).")
        if info.st_size > limit:
            raise _refuse(field, f"{display} is {_size(info.st_size)}; POST /upload takes images up to {_size(limit)}.")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1024 * 1024, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _refuse(field, f"{display} is over {_size(limit)} (it grew while being read); "
                                     f"POST /upload takes images up to {_size(limit)}.")
        return b"".join(chunks)
    finally:
        os.close(fd)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_HOSTLIKE = re.compile(r"^(www\.|[a-z0-9-]+\.(com|org|net|io|ai|app|dev|co)\b)", re.IGNORECASE)


def looks_like_path(value: Any) -> bool:
    """A ``pathlib`` path, or a string that is neither an http(s) URL nor any other ``scheme:``."""
    if isinstance(value, PurePath):
        return True
    if not isinstance(value, str) or not value.strip() or is_http_url(value):
        return False
    return _SCHEME.match(value) is None


def check_local_file(value: str | os.PathLike[str], *, field: str, limit: int = UPLOAD_LIMIT,
                     takes: str | None = None) -> LocalFile:
    """Check a local file for upload into ``field`` and return what was found (see the module).

    ``takes`` is the kind of media the field takes ("video" for ``video_url``), None for any.
    """
    raw = os.fspath(value)
    if not isinstance(raw, str):
        raise _refuse(field, "a path must be text, not bytes.")
    display = shown(raw, 80)
    if "\x00" in raw:
        raise _refuse(field, f"{display} is not a usable path (it holds a NUL character).")
    path = Path(raw).expanduser()
    if ".." in path.parts:
        raise _refuse(field, f"{display} climbs out of its folder with '..'; write the path without it "
                             "(for example Path(...).resolve()) if you mean that file.")
    if takes in ("video", "audio"):
        kind_hint = f"; POST /upload takes images only, so give the {takes} as an http(s) URL or a finished Job"
    else:
        kind_hint = ""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        hint = " (a URL needs http:// or https://)" if _HOSTLIKE.match(raw) else ""
        raise _refuse(field, f"no file {display}{hint}; give an http(s) URL, a finished Job or an image file.") from None
    except OSError as exc:
        raise _refuse(field, f"{display} cannot be read ({exc.strerror or type(exc).__name__}).") from None
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(field, f"{display} is a symbolic link; give the path of the file itself.")
    data = _read_checked(path, display, field, limit)
    mime, what = sniff(data)
    if mime is None:
        if takes in ("video", "audio") and sniffed_kind(data) == takes:
            raise _refuse(field, f"{display} is {what}{kind_hint}.")
        named = path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".gif")
        whatever = ", whatever its name says" if named else ""
        raise _refuse(field, f"{display} is {what}, not a PNG, JPEG, WebP or GIF image{whatever}; "
                             "POST /upload takes images only.")
    if takes in ("video", "audio"):
        raise _refuse(field, f"{display} is {what}, and {field} takes {'a' if takes == 'video' else 'an'} "
                             f"{takes}{kind_hint}.")
    dims = image_dimensions(data, mime)
    if dims is None:
        raise _refuse(field, f"{display} starts like {what} but its header cannot be read; is the file damaged?")
    return LocalFile(path=path, shown=display, sha256=hashlib.sha256(data).hexdigest(), size=len(data), mime=mime,
                     width=dims[0], height=dims[1])


def file_from_bytes(data: bytes, name: str, *, field: str, limit: int = UPLOAD_LIMIT) -> tuple[str, str, str]:
    """Check bytes for upload (a studio file picker's): (sha256, MIME type, safe file name)."""
    display = shown(name, 80)
    if len(data) > limit:
        raise _refuse(field, f"{display} is {_size(len(data))}; POST /upload takes images up to {_size(limit)}.")
    mime, what = sniff(data)
    if mime is None:
        raise _refuse(field, f"{display} is {what}, not a PNG, JPEG, WebP or GIF image; POST /upload takes images only.")
    if image_dimensions(data, mime) is None:
        raise _refuse(field, f"{display} starts like {what} but its header cannot be read; is the file damaged?")
    return hashlib.sha256(data).hexdigest(), mime, upload_name(name, mime)


_EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


def upload_name(name: str, mime: str) -> str:
    """The file name sent with an upload: the base name only, reduced to harmless characters,
    with the extension of the type the bytes have."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", PurePath(str(name).replace("\\", "/")).stem).strip("._")[:80] or "upload"
    return stem + _EXT.get(mime, ".bin")


def job_input(job: Job, *, field: str, takes: str | None, wait: bool | float = False,
              remote: bool = True) -> str:
    """A finished job's primary media URL for ``field``; refused (one line) when there is none.

    ``wait``: True waits for an unfinished job without limit, a number of seconds bounds it;
    False refuses it with a line that says to wait. ``remote``: the request goes to a server
    that cannot reach this machine's loopback (a sandbox's media), so such URLs are refused.
    """
    label = f"job {job.id} ({job.model or 'unknown model'})"
    if not job.done:
        if wait is False:
            raise _refuse(field, f"{label} is still {job.status}; wait for it first (job.wait(), or --wait on the cell).")
        job.wait(timeout=None if wait is True else float(wait), raise_on_failure=False)
    if job.status != COMPLETED:
        err = job.error or {}
        reason = f" ({err.get('code')})" if err.get("code") else ""
        raise _refuse(field, f"{label} {job.status}{reason}; it has no result to use.")
    media = job.media
    if not media:
        raise _refuse(field, f"{label} completed without a media URL to use.")
    return media_input(media[0], field=field, takes=takes, remote=remote, label=label)


def media_input(media: Media, *, field: str, takes: str | None, remote: bool = True, label: str | None = None) -> str:
    """A ``Media``'s URL for ``field``, refused when its kind is not what the field takes."""
    label = label or "this media"
    if not is_safe_url(media.url):
        raise _refuse(field, f"{label}'s URL is not an http(s) URL.")
    kind = media.kind
    if takes is not None and kind is not None and kind != takes and kind in ("image", "video", "audio"):
        raise _refuse(field, f"{label} made {'an' if kind in ('image', 'audio') else 'a'} {kind}, and {field} takes "
                             f"{'an' if takes in ('image', 'audio') else 'a'} {takes}.")
    if remote:
        from urllib.parse import urlsplit

        if is_loopback_host(urlsplit(media.url).hostname):
            raise _refuse(field, f"{label}'s result is on this machine's sandbox, which the service cannot fetch; "
                                 "download it and give the file instead.")
    return media.url


@dataclass(frozen=True)
class Resolved:
    """A request body with its inputs resolved: every Job/Media became its URL, every local file
    a checked ``LocalFile`` (uploaded at submission). ``sources`` says where each URL field's
    value came from, for dry runs and labels."""

    body: dict[str, Any]
    sources: dict[str, str]

    @property
    def files(self) -> list[LocalFile]:
        out: list[LocalFile] = []
        for value in self.body.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, LocalFile) and item not in out:
                    out.append(item)
        return out


def resolve_inputs(model: Model, params: Mapping[str, Any], *, wait: bool | float = False, remote: bool = True,
                   check_file: Callable[..., LocalFile] = check_local_file) -> Resolved:
    """Resolve ``params``' URL fields (no request is sent; an unfinished Job may be waited for).

    Values of other fields are left as they are, except a Job or Media, which is refused: it
    would otherwise reach the server as the text of its repr.
    """
    fields = uri_fields(model)
    body: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, value in params.items():
        if name not in fields:
            if isinstance(value, (Job, Media, LocalFile)):
                raise _refuse(name, f"takes no URL or file; {type(value).__name__} objects go in URL parameters "
                                    f"({', '.join(fields) or 'this model has none'}).")
            body[name] = value
            continue
        takes = field_kind(name)
        is_list = fields[name]
        items = list(value) if is_list and isinstance(value, (list, tuple)) else None
        if is_list and items is None and isinstance(value, (Job, Media, PurePath, LocalFile)):
            items = [value]  # one clip for ``video_urls``: a list of one
        if items is None:
            body[name], sources_one = _resolve_one(value, name, takes, wait, remote, check_file)
            if sources_one:
                sources[name] = sources_one
            continue
        out, said = [], []
        for i, item in enumerate(items):
            resolved, source = _resolve_one(item, f"{name}[{i}]", takes, wait, remote, check_file)
            out.append(resolved)
            said.append(source or (resolved if isinstance(resolved, str) else ""))
        body[name] = out
        if any(isinstance(v, (Job, Media, PurePath, LocalFile)) or looks_like_path(v) for v in items):
            sources[name] = ", ".join(said)
    return Resolved(body, sources)


def _resolve_one(value: Any, field: str, takes: str | None, wait: bool | float, remote: bool,
                 check_file: Callable[..., LocalFile]) -> tuple[Any, str | None]:
    if isinstance(value, Job):
        return job_input(value, field=field, takes=takes, wait=wait, remote=remote), f"job {value.id}"
    if isinstance(value, Media):
        return media_input(value, field=field, takes=takes, remote=remote), None
    if isinstance(value, LocalFile):
        return value, value.describe()
    if looks_like_path(value):
        found = check_file(value, field=field, takes=takes)
        return found, found.describe()
    return value, None


def stand_ins(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with every ``LocalFile`` replaced by an https URL of the right shape, for schema
    validation and pricing before the upload has happened (the real URL replaces it then)."""
    def one(v: Any) -> Any:
        if isinstance(v, LocalFile):
            return f"https://upload.invalid/{v.sha256[:16]}/{upload_name(v.name, v.mime)}"
        return v

    return {k: [one(i) for i in v] if isinstance(v, list) else one(v) for k, v in body.items()}


def input_label(value: Any, limit: int = 40) -> str:
    """How a grid or a message names an input: a job by model and id, a file by its name, a URL by its last part."""
    if isinstance(value, Job):
        return f"{value.model or 'job'} {value.id}"
    if isinstance(value, Media):
        value = value.url
    if isinstance(value, LocalFile):
        return value.name
    if isinstance(value, PurePath):
        return value.name
    if isinstance(value, (list, tuple)):
        return " + ".join(input_label(v, max(8, limit // max(1, len(value)))) for v in value)
    if isinstance(value, str) and is_http_url(value):
        from urllib.parse import urlsplit

        last = urlsplit(value).path.rstrip("/").rsplit("/", 1)[-1] or urlsplit(value).hostname or value
        return last if len(last) <= limit else last[: limit - 1] + "…"
    text = str(value)
    if isinstance(value, str) and looks_like_path(value):
        text = PurePath(value).name or text
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = [
    "LocalFile", "Resolved", "UPLOAD_LIMIT", "UPLOAD_MAX_AGE", "Upload", "UPLOAD_TYPES", "check_local_file", "field_kind", "file_from_bytes",
    "image_dimensions", "input_label", "job_input", "looks_like_path", "media_input", "resolve_inputs", "sniff",
    "stand_ins", "upload_name", "uri_fields",
]
