"""Poster frames and keyframe strips, made locally from downloaded videos.

A saved notebook outlives the media URLs it shows (provider URLs expire in about a day, a sandbox's
die with it), and some front ends cannot play ``<video>`` at all (VS Code's webviews, GitHub's
renderer). A small JPEG of one frame, embedded as a ``data:`` URI we build ourselves, keeps every
video visible there: as the ``<video poster>`` and as the fallback ``<img>``.

Frames are decoded with PyAV and scaled and encoded with Pillow, the libraries the ``[sandbox]``
extra ships; both are imported only when a poster is made. Without them nothing breaks: videos are
shown without a poster and one line (a ``PosterWarning``) says what to install.

Posters are cached on disk beside the video (``job_x.mp4`` -> ``job_x.poster.jpg``), so each is
made once however often the job is shown.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vydra_nb.api.media import atomic_write

log = logging.getLogger("vydra_nb")

VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mov", ".m4v", ".mkv"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
POSTER_SIDE = 360
"""The longer side of a poster, in pixels: enough for a grid cell or a paused player; a 16:9
poster is about 10-20 kB as JPEG, so a twelve-video sweep adds a few hundred kB to a notebook."""
POSTER_QUALITY = 70
STRIP_SIDE = 200
MAX_FRAMES = 24
INSTALL_HINT = "pip install 'vydra-nb[sandbox]' (PyAV and Pillow)"


class PosterWarning(UserWarning):
    """Posters or frames cannot be made here (PyAV or Pillow missing, or an unreadable video)."""


def _tools() -> tuple[Any, Any] | None:
    """(av, PIL.Image), or None when either cannot be imported."""
    try:
        import av
        from PIL import Image
    except ImportError:
        return None
    return av, Image


def available() -> bool:
    """Whether posters can be made in this environment."""
    return _tools() is not None


def is_video(path: Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() in VIDEO_SUFFIXES


def poster_path(video: Path) -> Path:
    return video.with_name(video.stem + ".poster.jpg")


def _jpeg(image: Any, side: int, quality: int) -> bytes:
    import io

    image = image.convert("RGB")
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=True, progressive=False)
    return out.getvalue()


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _frames_at(path: Path, times: list[float] | None, count: int) -> Iterator[tuple[float, Any]]:
    """(time, PIL image) of the first frame at or after each of ``times`` (seconds); with
    ``times`` None, ``count`` frames spread evenly over the video's length."""
    tools = _tools()
    if tools is None:
        raise ImportError(INSTALL_HINT)
    av, _image = tools
    with av.open(str(path), "r") as container:
        if not container.streams.video:
            raise ValueError("it has no video track")
        stream = container.streams.video[0]
        length = _duration(container, stream) or 0.0
        if times is None:
            times = [length * (i + 0.5) / count for i in range(count)] if length > 0 else [0.0]
        for target in times:
            target = max(0.0, min(target, max(0.0, length - 0.05)))
            if stream.time_base is not None and target > 0:
                container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
            else:
                container.seek(0)
            chosen = None
            for frame in container.decode(stream):
                chosen = frame
                if frame.time is None or frame.time + 1e-3 >= target:
                    break
            if chosen is not None:
                yield (float(chosen.time or 0.0), chosen.to_image())


def poster_time(length: float | None) -> float:
    """Where the poster is taken: a quarter in, at most one second (past a fade-in, before any cut)."""
    return min(1.0, (length or 0.0) * 0.25)


def make_poster(video: Path, *, side: int = POSTER_SIDE, quality: int = POSTER_QUALITY) -> Path | None:
    """The poster of a downloaded video (made once, then read from beside the video); None when
    it cannot be made (a one-line ``PosterWarning`` says why)."""
    video = Path(video)
    target = poster_path(video)
    try:
        if target.is_file() and target.stat().st_mtime >= video.stat().st_mtime:
            return target
    except OSError:
        return None
    if _tools() is None:
        warnings.warn(f"Videos are shown without a poster frame: {INSTALL_HINT} makes them.", PosterWarning, stacklevel=2)
        return None
    try:
        import av

        with av.open(str(video), "r") as container:
            stream = container.streams.video[0] if container.streams.video else None
            length = _duration(container, stream) if stream is not None else None
        frames = list(_frames_at(video, [poster_time(length)], 1))
        if not frames:
            raise ValueError("no frame could be decoded")
        atomic_write(target, [_jpeg(frames[0][1], side, quality)])
    except Exception as exc:  # a damaged or unusual file: show the video without a poster
        warnings.warn(f"No poster for {video.name}: {type(exc).__name__}: {str(exc)[:100]}", PosterWarning, stacklevel=2)
        return None
    return target


def thumbnail(image: Path, *, side: int = POSTER_SIDE, quality: int = POSTER_QUALITY) -> bytes | None:
    """A small JPEG of a downloaded image (for grids of many results), made once and kept beside
    it (``job_x.png`` -> ``job_x.thumb.jpg``); None without Pillow or for an unreadable image."""
    image = Path(image)
    target = image.with_name(image.stem + ".thumb.jpg")
    try:
        if target.is_file() and target.stat().st_mtime >= image.stat().st_mtime:
            return target.read_bytes()
    except OSError:
        return None
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(image) as img:
            img.seek(0)
            data = _jpeg(img, side, quality)
    except Exception:  # an image Pillow cannot read: the caller shows it another way
        return None
    try:
        atomic_write(target, [data])
    except OSError:  # a read-only folder: the thumbnail is made again next time
        pass
    return data


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


@dataclass
class Frames:
    """A keyframe strip of one video: ``times`` (seconds) and ``jpegs`` (small JPEG bytes).

    Shows itself as one row of images with their times; ``images`` decodes them with Pillow.
    """

    job_id: str
    times: list[float]
    jpegs: list[bytes] = field(repr=False)

    def __len__(self) -> int:
        return len(self.jpegs)

    @property
    def images(self) -> list[Any]:
        import io

        from PIL import Image

        return [Image.open(io.BytesIO(b)) for b in self.jpegs]

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write the frames as ``{job}_frame_{i}.jpg`` files into ``directory``; their paths."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, data in enumerate(self.jpegs):
            path = folder / f"{self.job_id}_frame_{i:02d}.jpg"
            atomic_write(path, [data])
            paths.append(path)
        return paths

    def _repr_html_(self) -> str:
        cells = "".join(
            f'<figure style="margin:0;text-align:center"><img src="{data_uri(j)}" alt="{t:.1f} s" '
            f'style="max-height:120px;display:block"><figcaption style="font-size:11px;color:#666">'
            f"{t:.1f} s</figcaption></figure>"
            for t, j in zip(self.times, self.jpegs, strict=True))
        return (f'<div class="vydra-frames" title="{html.escape(self.job_id)}" '
                f'style="display:flex;gap:4px;overflow-x:auto">{cells}</div>')

    def __repr__(self) -> str:
        return f"<Frames of {self.job_id}: {len(self)} at {', '.join(f'{t:.1f}s' for t in self.times)}>"


def keyframes(video: Path, count: int, *, job_id: str = "", side: int = STRIP_SIDE) -> Frames:
    """``count`` frames spread evenly over the video (1 to 24), as a ``Frames`` strip.

    Raises ImportError (with what to install) when PyAV or Pillow is missing, ValueError when the
    file has no decodable video.
    """
    if not 1 <= count <= MAX_FRAMES:
        raise ValueError(f"frames(n) takes n from 1 to {MAX_FRAMES} (got {count})")
    times, jpegs = [], []
    for t, image in _frames_at(Path(video), None, count):
        times.append(round(t, 2))
        jpegs.append(_jpeg(image, side, POSTER_QUALITY))
    if not jpegs:
        raise ValueError("no frame could be decoded")
    return Frames(job_id=job_id, times=times, jpegs=jpegs)


__all__ = ["Frames", "PosterWarning", "available", "data_uri", "keyframes", "make_poster", "poster_path", "thumbnail"]
