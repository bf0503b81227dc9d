"""The media a completed job points at: lazy rendering, a bounded cache on disk, URL mapping.

A completed job gets a URL under ``{root}/media/`` straight away, but the file behind it is only
rendered when somebody first fetches it (or needs its duration): a test that submits a hundred
jobs and never downloads them costs no CPU. Rendered files live in a temporary folder bounded by
``media_limit_mb``; the oldest are evicted first and simply re-rendered if asked for again, since
every asset keeps the recipe that made it.

The utilities (trim, compose, extract), speech-to-speech and Whisper really operate on their inputs
when those are this sandbox's own ``/media`` URLs (the URL is mapped back to its asset); any other
URL gets a synthetic result of the right kind and shape.

Rendering itself is delegated to :mod:`vydra_nb.sandbox.media`, imported lazily so the server
starts (and everything but the media bytes works) without the media dependencies.

Uploads (``POST /upload``) are stored as they came, under ``uploads/`` in the same folder, and never
evicted (they cannot be rendered again). Their type is sniffed from the bytes (:func:`sniff_image`),
never taken from the file name or the declared type. A job whose ``image_url`` is an upload uses
it: Kling's result takes the image's orientation, and every video that animates one names it.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import struct
import sys
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from .catalog import IMAGE_SIZES, VIDEO_SIZES, produces
from .jobs import Job

CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".png": "image/png",
    ".wav": "audio/wav",
    ".txt": "text/plain; charset=utf-8",
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}

#: Upload limit (vydra-notes.md: "images up to 20 MB").
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Image types an upload may be, with the extension its stored copy gets.
UPLOAD_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


class MediaUnavailable(RuntimeError):
    """The media renderer (``vydra_nb.sandbox.media`` and its dependencies) cannot be imported."""


def _media():
    try:
        from . import media  # noqa: PLC0415 - lazy on purpose: heavy, and maybe absent
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MediaUnavailable(f"media rendering unavailable: {exc}") from exc
    return media


@dataclass
class Asset:
    """One servable file: its metadata and the recipe that renders it into a path."""

    name: str
    kind: str  # video | image | audio | text
    render: Callable[[Path], float | None]
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: an uploaded file: this path is the only copy (never rendered, never evicted)
    fixed: Path | None = None
    #: the name the uploader gave, for uploads
    filename: str | None = None

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(Path(self.name).suffix, "application/octet-stream")


# --------------------------------------------------------------------------- uploads

def sniff_image(data: bytes) -> str | None:
    """The image type the bytes really are (png, jpeg, webp, gif), from their magic numbers."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if i + 9 <= len(data) and 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return (width, height) if width and height else None
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            return None
        i += 2 + length
    return None


def image_size(data: bytes, mime: str) -> tuple[int, int] | None:
    """(width, height) read from the image's header, or None if the header is not readable."""
    try:
        if mime == "image/png":
            if data[12:16] != b"IHDR":
                return None
            size = struct.unpack(">II", data[16:24])
        elif mime == "image/gif":
            size = struct.unpack("<HH", data[6:10])
        elif mime == "image/jpeg":
            found = _jpeg_size(data)
            if found is None:
                return None
            size = found
        elif mime == "image/webp":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                size = (w, h)
            elif chunk == b"VP8L" and data[20] == 0x2F:
                b0, b1, b2, b3 = data[21:25]
                size = (1 + (((b1 & 0x3F) << 8) | b0), 1 + (((b3 & 0x0F) << 10) | (b2 << 2) | ((b1 & 0xC0) >> 6)))
            elif chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
                w, h = struct.unpack("<HH", data[26:30])
                size = (w & 0x3FFF, h & 0x3FFF)
            else:
                return None
        else:
            return None
    except (struct.error, IndexError, ValueError):
        return None
    width, height = int(size[0]), int(size[1])
    return (width, height) if width > 0 and height > 0 else None


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, ext: str) -> str:
    """The uploader's file name without any folder part, reduced to harmless characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = _UNSAFE.sub("_", base).strip("._")[:120]
    return base or f"upload{ext}"


class MediaStore:
    """Named assets, rendered on demand into a temporary folder of bounded size."""

    def __init__(self, limit_mb: float = 512) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vydra-sandbox-media-"))
        self.limit = int(limit_mb * 1024 * 1024)
        self.root = ""  # "http://127.0.0.1:PORT", set once the server is bound
        self._assets: dict[str, Asset] = {}
        self._rendered: OrderedDict[str, int] = OrderedDict()  # name -> size, oldest first
        self._lock = threading.Lock()

    def url(self, name: str) -> str:
        return f"{self.root}/media/{name}"

    def add(self, asset: Asset) -> str:
        """Register an asset; the first registration of a name wins (outputs may be built twice)."""
        with self._lock:
            self._assets.setdefault(asset.name, asset)
        return self.url(asset.name)

    def get(self, name: str) -> Asset | None:
        with self._lock:
            return self._assets.get(name)

    def from_url(self, url: Any) -> Asset | None:
        """The asset behind one of this sandbox's own media URLs, else None."""
        if not isinstance(url, str) or not self.root:
            return None
        parsed, mine = urlparse(url), urlparse(self.root)
        if parsed.netloc != mine.netloc or not parsed.path.startswith("/media/"):
            return None
        return self.get(parsed.path[len("/media/"):])

    def add_upload(self, data: bytes, mime: str, filename: str | None,
                   size: tuple[int, int] | None) -> Asset:
        """Store an uploaded image as it came; it is served at ``/media/{asset.name}``."""
        ext = UPLOAD_TYPES[mime]
        token = secrets.token_hex(12)
        folder = self.dir / "uploads"
        folder.mkdir(exist_ok=True)
        target = folder / f"{token}{ext}"
        target.write_bytes(data)
        width, height = size if size is not None else (None, None)

        def render(path: Path) -> None:  # pragma: no cover - an upload is never rendered
            raise MediaUnavailable("uploads cannot be rendered again")
        asset = Asset(f"upload_{token}{ext}", "image", render, width, height, fixed=target,
                      filename=safe_filename(filename, ext))
        self.add(asset)
        return asset

    def path(self, asset: Asset) -> Path:
        """Render the asset if it is not on disk; return its path."""
        if asset.fixed is not None:
            return asset.fixed
        target = self.dir / asset.name
        with asset.lock:
            if not target.exists():
                tmp = self.dir / f".{uuid.uuid4().hex}.tmp{Path(asset.name).suffix}"
                try:
                    result = asset.render(tmp)
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
                if asset.duration is None and isinstance(result, (int, float)):
                    asset.duration = float(result)
                with self._lock:
                    self._rendered[asset.name] = target.stat().st_size
                self._evict(keep=asset.name)
        return target

    def ensure_duration(self, asset: Asset) -> float | None:
        """The asset's duration, rendering it if that is the only way to know."""
        if asset.duration is None and asset.kind in ("audio", "video"):
            try:
                path = self.path(asset)
                if asset.duration is None:
                    asset.duration = _media().probe(path).get("duration")
            except MediaUnavailable:
                return None
            except Exception as exc:  # noqa: BLE001 - a render bug must not break job views
                print(f"vydra sandbox: cannot render {asset.name}: {exc!r}", file=sys.stderr)
                return None
        return asset.duration

    def _evict(self, keep: str) -> None:
        with self._lock:
            total = sum(self._rendered.values())
            for name in list(self._rendered):
                if total <= self.limit:
                    break
                if name == keep:
                    continue
                total -= self._rendered.pop(name)
                (self.dir / name).unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- job outputs

def _num(x: float | None) -> float | int | None:
    if x is None:
        return None
    x = round(float(x), 2)
    return int(x) if x.is_integer() else x


def _text_of(params: dict[str, Any]) -> str:
    for key in ("prompt", "customPrompt", "text"):
        if params.get(key):
            return str(params[key])
    if params.get("theme"):
        return f"Theme: {str(params['theme']).replace('_', ' ')}"
    return ""


def _speech_estimate(text: str) -> float:
    return max(1.0, round(len(text.split()) / 2.5, 2))


def _aspect_of(asset: Asset | None) -> str | None:
    """The catalog aspect ratio nearest to an image's shape."""
    if asset is None or not asset.width or not asset.height:
        return None
    ratio = asset.width / asset.height
    if ratio > 1.2:
        return "16:9"
    if ratio < 1 / 1.2:
        return "9:16"
    return "1:1"


class OutputBuilder:
    """Turns a completed job into its ``output`` object, registering the assets it points at."""

    def __init__(self, store: MediaStore) -> None:
        self.store = store

    # -- asset recipes ---------------------------------------------------------------------------
    def _video(self, name: str, w: int, h: int, duration: float, title: str, text: str) -> Asset:
        def render(path: Path) -> None:
            _media().render_video(path, width=w, height=h, duration=duration, title=title, text=text)
        return Asset(name, "video", render, w, h, float(duration))

    def _image(self, name: str, w: int, h: int, title: str, text: str) -> Asset:
        def render(path: Path) -> None:
            _media().render_image(path, width=w, height=h, title=title, text=text)
        return Asset(name, "image", render, w, h)

    def _speech(self, name: str, text: str, voice: str) -> Asset:
        def render(path: Path) -> float:
            return _media().render_speech(path, text=text, voice=voice)
        return Asset(name, "audio", render)

    def _derived(self, name: str, kind: str, op: Callable[[Path], None], **meta: Any) -> Asset:
        return Asset(name, kind, lambda path: op(path), **meta)

    def _source(self, url: Any, kind: str) -> Asset | None:
        asset = self.store.from_url(url)
        return asset if asset is not None and asset.kind == kind else None

    def source_duration(self, url: Any) -> float | None:
        """Duration of one of our own audio/video media URLs (for pricing and checks), else None."""
        asset = self.store.from_url(url)
        return None if asset is None else self.store.ensure_duration(asset)

    # -- outputs ---------------------------------------------------------------------------------
    def build(self, job: Job) -> dict[str, Any]:
        """The spec-shaped output of a completed job (the live flavor reshapes it afterwards)."""
        model, params = job.model, job.params
        kind = model.kind
        title, text = model.name, _text_of(params)
        out_kind = produces(model, params)
        if kind in ("video", "grok") and out_kind == "video":
            return self._generated_video(job, title, text)
        if out_kind == "image" and kind in ("grok", "image"):
            aspect = params.get("aspect_ratio") or ("16:9" if kind == "grok" else "1:1")
            w, h = IMAGE_SIZES[aspect]
            url = self.store.add(self._image(f"{job.id}.png", w, h, title, text))
            return {"imageUrl": url, "width": w, "height": h}
        if kind == "speech":
            return self._audio(self._speech(f"{job.id}.wav", text, params.get("voice", "default")), text)
        if kind == "voice":
            return self._voice(job)
        if kind == "transcript":
            return self._transcript(job)
        if kind == "trim":
            return self._trim(job)
        if kind == "compose":
            return self._compose(job)
        if kind == "extract":
            return self._extract(job)
        raise ValueError(f"no output recipe for model {model.slug}")  # pragma: no cover

    def _video_output(self, asset: Asset) -> dict[str, Any]:
        url = self.store.add(asset)
        return {"videoUrl": url, "duration": _num(asset.duration), "resolution": f"{asset.width}x{asset.height}"}

    def _generated_video(self, job: Job, title: str, text: str) -> dict[str, Any]:
        params = job.params
        image = self._source(params.get("image_url"), "image")
        if image is not None:  # one of our own images (an upload, a generated still): say so
            text = f"{text}\nAnimating {image.filename or image.name}".strip()
        if job.model.slug == "asmr-generator":
            aspect, duration = "9:16", job.model.media_duration
        elif job.model.kind == "grok":
            aspect, duration = params.get("aspect_ratio") or "16:9", float(params.get("duration", 6))
        elif job.model.slug == "kling-motion-control":
            src = self._source(params.get("video_url"), "video")
            # the character image decides the result's orientation, as it does upstream
            aspect = _aspect_of(image) or "9:16"
            duration = min(10.0, src.duration) if src is not None and src.duration else job.model.media_duration
            text = text or f"Motion from {params.get('video_url')}"
        else:
            aspect, duration = params.get("aspect_ratio") or "16:9", job.model.media_duration
        w, h = VIDEO_SIZES[aspect]
        return self._video_output(self._video(f"{job.id}.mp4", w, h, duration, title, text))

    def _audio(self, asset: Asset, text: str) -> dict[str, Any]:
        url = self.store.add(asset)
        duration = self.store.ensure_duration(asset)
        return {"audioUrl": url, "duration": _num(duration if duration is not None else _speech_estimate(text))}

    def _voice(self, job: Job) -> dict[str, Any]:
        src_url = job.params.get("audio_url")
        src = self._source(src_url, "audio")
        text = f"Voice conversion of {src_url}"
        if src is not None:
            try:
                text = _media().transcribe(self.store.path(src))
            except Exception:  # noqa: BLE001 - MediaUnavailable or a render bug: keep the placeholder
                pass
        return self._audio(self._speech(f"{job.id}.wav", text, job.params.get("voice", "default")), text)

    def _transcript(self, job: Job) -> dict[str, Any]:
        src_url = job.params.get("audio_url")
        src = self.store.from_url(src_url)
        text, duration = f"[sandbox transcript of {src_url}: 60 seconds of audio]", 60.0
        if src is not None and src.kind in ("audio", "video"):
            try:
                path = self.store.path(src)
                if src.kind == "audio":
                    text = _media().transcribe(path)
                else:
                    text = f"[sandbox transcript of {src.name}: {_num(src.duration)} seconds of video]"
                duration = self.store.ensure_duration(src) or duration
            except Exception:  # noqa: BLE001 - MediaUnavailable or a render bug: keep the placeholder
                pass
        body = text

        def render(path: Path) -> None:
            path.write_text(body + "\n", encoding="utf-8")
        url = self.store.add(Asset(f"{job.id}.txt", "text", render))
        return {"text": text, "transcriptUrl": url, "duration": _num(duration)}

    def _trim(self, job: Job) -> dict[str, Any]:
        p = job.params
        start, end = float(p["start"]), float(p["end"])
        src = self._source(p.get("video_url"), "video")
        name = f"{job.id}.mp4"
        if src is None:
            return self._video_output(self._video(name, 640, 360, max(0.5, end - start), job.model.name,
                                                  f"Trim {start:g}-{end:g} s of {p.get('video_url')}"))
        end = min(end, src.duration or end)
        store = self.store

        def op(path: Path) -> None:
            _media().trim_video(store.path(src), path, start=start, end=end)
        return self._video_output(self._derived(name, "video", op, width=src.width, height=src.height,
                                                duration=max(0.0, end - start)))

    def _compose(self, job: Job) -> dict[str, Any]:
        urls = job.params["video_urls"]
        sources = [self._source(u, "video") for u in urls]
        audio_url = job.params.get("audio_url")
        track = self.store.from_url(audio_url) if audio_url else None
        track = track if track is not None and track.kind in ("audio", "video") else None
        name = f"{job.id}.mp4"
        if any(s is None for s in sources):
            over = " with a soundtrack" if audio_url else ""
            return self._video_output(self._video(name, 640, 360, 5.0 * len(urls), job.model.name,
                                                  f"Composition of {len(urls)} videos{over}"))
        store = self.store

        def op(path: Path) -> None:
            _media().compose_videos([store.path(s) for s in sources], path,
                                    soundtrack=store.path(track) if track is not None else None)
        first = sources[0]
        return self._video_output(self._derived(name, "video", op, width=first.width, height=first.height,
                                                duration=sum(s.duration or 0 for s in sources)))

    def _extract(self, job: Job) -> dict[str, Any]:
        p = job.params
        src = self._source(p.get("video_url"), "video")
        store = self.store
        if p.get("what", "audio") == "audio":
            name = f"{job.id}.wav"
            if src is None:
                text = f"Audio extracted from {p.get('video_url')}"
                return self._audio(self._speech(name, text, "default"), text)

            def op(path: Path) -> None:
                _media().extract_audio(store.path(src), path)
            asset = self._derived(name, "audio", op, duration=src.duration)
            return {"audioUrl": self.store.add(asset), "duration": _num(src.duration)}
        name = f"{job.id}.png"
        if src is None:
            asset = self._image(name, 640, 360, job.model.name, f"Frame of {p.get('video_url')}")
        else:
            at = min(float(p.get("at", 0)), max(0.0, (src.duration or 0) - 0.1))

            def op(path: Path) -> None:
                _media().extract_frame(store.path(src), path, at=at)
            asset = self._derived(name, "image", op, width=src.width, height=src.height)
        return {"imageUrl": self.store.add(asset), "width": asset.width, "height": asset.height}


def live_output(slug: str, output: dict[str, Any]) -> dict[str, Any]:
    """Reshape a spec output the way the live service varies it, deterministically per model.

    vydra-notes.md: media URLs appear under several keys, sometimes nested. Each model gets one
    fixed shape so tests are reproducible, and together they cover the variants.
    """
    out = dict(output)
    url = out.pop("videoUrl", None) or out.pop("imageUrl", None) or out.pop("audioUrl", None)
    if url is None:  # whisper: text and transcriptUrl stay as documented
        return output
    shapes: dict[str, Callable[[str], dict[str, Any]]] = {
        "veo3": lambda u: {"videoUrls": [u]},
        "veo2": lambda u: {"videoUrls": [u]},
        "kling-motion-control": lambda u: {"result": {"url": u}},
        "grok-imagine": lambda u: {"resultUrls": [u]},
        "asmr-generator": lambda u: {"outputUrl": u},
        "elevenlabs-tts": lambda u: {"data": {"url": u}},
        "elevenlabs-sts": lambda u: {"audioUrls": [u]},
        "nano-banana": lambda u: {"imageUrls": [u]},
        "video-trim": lambda u: {"url": u},
        "video-compose": lambda u: {"urls": [u]},
        "video-extract": lambda u: {"results": [{"url": u}]},
    }
    shape = shapes.get(slug, lambda u: {"url": u})
    return {**shape(url), **out}
