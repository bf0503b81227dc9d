"""Real, playable media for the offline Vydra sandbox.

Everything here is produced locally with PyAV (libx264 / aac in its wheel), Pillow and numpy:

* :func:`render_video` - H.264/yuv420p MP4 with faststart and a quiet AAC tone, showing the
  model name, the prompt and a moving progress bar with a timecode;
* :func:`render_image` - PNG with a gradient, the model name and the prompt;
* :func:`render_speech` - 16-bit mono 22050 Hz WAV of syllable-like tone bursts whose RIFF
  ``LIST/INFO/ICMT`` chunk carries the text, which :func:`transcribe` reads back;
* :func:`probe`, :func:`trim_video`, :func:`compose_videos`, :func:`extract_audio`,
  :func:`extract_frame` - real operations on media the sandbox can decode.

Every write is atomic (temporary file in the destination folder, then ``os.replace``). Bad
inputs (nonpositive sizes or durations, unreadable sources) raise :class:`ValueError`.
This module imports nothing from the rest of ``vydra_nb``.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import unicodedata
import uuid
import zlib
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "render_video",
    "render_image",
    "render_speech",
    "transcribe",
    "probe",
    "trim_video",
    "compose_videos",
    "extract_audio",
    "extract_frame",
]

MAX_SIDE = 8192  # pixels, per side
MAX_DURATION = 3600.0  # seconds, for generated media
MAX_FPS = 120
SPEECH_RATE = 22050
SPEECH_CHARS_PER_SECOND = 14.0
AUDIO_RATE = 44100  # AAC track of generated / re-encoded videos
_AVError = getattr(av, "FFmpegError", None) or av.error.FFmpegError
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


# --------------------------------------------------------------------------- validation


def _positive_int(name, value, upper):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if value > upper:
        raise ValueError(f"{name} must be at most {upper}, got {value}")
    return value


def _positive_float(name, value, upper):
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if value > upper:
        raise ValueError(f"{name} must be at most {upper}, got {value}")
    return value


def _time(name, value):
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _text(name, value):
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _path(name, value):
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"{name} must be a non-empty str or path, got {value!r}")
    return Path(value)


def _source(value, name="src"):
    p = _path(name, value)
    if not p.is_file():
        raise ValueError(f"{name} {str(p)!r} is not a readable file")
    return p


def _even(n):
    return max(2, n - (n % 2))


@contextmanager
def _atomic(dst):
    """Yield a temporary path next to ``dst``; move it into place only on success."""
    dst = _path("dst", dst)
    folder = dst.parent
    if not folder.is_dir():
        raise ValueError(f"destination folder {str(folder)!r} does not exist")
    tmp = folder / f".{dst.stem[:80]}.{uuid.uuid4().hex[:12]}.tmp{dst.suffix}"
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------- text drawing


# Pillow's built-in font has no glyphs for typographic punctuation; model names use it.
_PLAIN_PUNCTUATION = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'",
                                    "\u201c": '"', "\u201d": '"', "\u2026": "..."})


def _clean(text, limit=4000):
    """Make any string safe to rasterise: no lone surrogates, no control characters."""
    text = text[:limit].encode("utf-8", "replace").decode("utf-8", "replace")
    text = text.translate(_PLAIN_PUNCTUATION)
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cc" or cat == "Cs" or ch in "\u2028\u2029":
            out.append(" ")
        else:
            out.append(ch)
    return " ".join("".join(out).split())


_FONTS = threading.local()  # FreeType faces are not shared between threads


def _font(size):
    size = max(6, int(size))
    cache = getattr(_FONTS, "cache", None)
    if cache is None:
        cache = _FONTS.cache = {}
    font = cache.get(size)
    if font is None:
        try:
            font = ImageFont.load_default(size=size)
        except Exception:  # very old Pillow or no FreeType: bitmap default font
            font = ImageFont.load_default()
        cache[size] = font
    return font


def _fit(text, font, width):
    """Longest prefix of ``text`` (ending in an ellipsis) that fits ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(text[:mid].rstrip() + "\u2026") <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "\u2026"


def _wrap(text, font, width, max_lines):
    """Greedy pixel-width wrap; long words are broken; the last line gets an ellipsis."""
    if max_lines <= 0 or not text:
        return []
    lines = []
    words = text.split(" ")
    i = 0
    while i < len(words) and len(lines) < max_lines:
        line = ""
        while i < len(words):
            word = words[i]
            candidate = word if not line else f"{line} {word}"
            if font.getlength(candidate) <= width:
                line = candidate
                i += 1
                continue
            if not line:  # a single word wider than the line: break it
                cut = len(_fit(word, font, width)) - 1
                cut = max(1, cut)
                line = word[:cut]
                words[i] = word[cut:]
            break
        lines.append(line)
    if i < len(words):  # truncated
        last = lines[-1] + " " + " ".join(words[i : i + 20])
        lines[-1] = _fit(last + "\u2026" * 50, font, width)
        if not lines[-1].endswith("\u2026"):
            lines[-1] += "\u2026"
    return lines


def _line_height(font):
    try:
        left, top, right, bottom = font.getbbox("Ag\u00c9y")
        return max(1, bottom) + max(2, font.size // 4 if hasattr(font, "size") else 2)
    except Exception:
        return 12


def _palette(seed_text):
    """Two pleasant, deterministic colours from a string."""
    import colorsys

    h = zlib.crc32(seed_text.encode("utf-8", "replace")) / 0xFFFFFFFF
    c1 = colorsys.hls_to_rgb(h, 0.30, 0.55)
    c2 = colorsys.hls_to_rgb((h + 0.18) % 1.0, 0.16, 0.50)
    return np.array(c1) * 255, np.array(c2) * 255


def _gradient(width, height, seed_text):
    c1, c2 = _palette(seed_text)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    t = np.clip(0.65 * ys + 0.35 * xs, 0.0, 1.0)[..., None]
    arr = c1[None, None, :] * (1 - t) + c2[None, None, :] * t
    # a soft light spot in the upper-left third
    cy, cx = 0.25, 0.3
    d = np.sqrt(((ys - cy) * height) ** 2 + ((xs - cx) * width) ** 2) / max(width, height)
    arr += (np.clip(1.0 - d * 2.2, 0, 1) ** 2 * 40.0)[..., None]
    return np.clip(arr, 0, 255).astype(np.uint8)


def _draw_card(img, title, text, *, bottom_reserve=0, subtitle=None):
    """Draw the title and wrapped prompt onto a Pillow image (in place)."""
    width, height = img.size
    unit = min(width, height)
    margin = max(4, int(unit * 0.06))
    title_font = _font(unit * 0.085)
    text_font = _font(unit * 0.055)
    small_font = _font(unit * 0.04)
    draw = ImageDraw.Draw(img)
    avail = width - 2 * margin
    y = margin
    title = _clean(title, 400) or "vydra sandbox"
    draw.text((margin, y), _fit(title, title_font, avail), font=title_font, fill=(255, 255, 255))
    y += _line_height(title_font)
    if subtitle:
        draw.text((margin, y), _fit(_clean(subtitle, 200), small_font, avail), font=small_font,
                  fill=(215, 225, 240))
        y += _line_height(small_font)
    y += max(2, margin // 3)
    draw.line([(margin, y), (width - margin, y)], fill=(255, 255, 255), width=max(1, unit // 200))
    y += max(3, margin // 2)
    lh = _line_height(text_font)
    max_lines = max(0, (height - bottom_reserve - margin - y) // lh)
    for line in _wrap(_clean(text), text_font, avail, max_lines):
        draw.text((margin, y), line, font=text_font, fill=(240, 244, 250))
        y += lh
    return margin


# --------------------------------------------------------------------------- encoding


def _open_mp4(path):
    return av.open(str(path), "w", format="mp4", container_options={"movflags": "+faststart"})


def _add_video_stream(out, width, height, fps):
    rate = Fraction(fps).limit_denominator(1001)
    stream = out.add_stream("libx264", rate=rate)
    stream.time_base = 1 / rate
    stream.width = width
    stream.height = height
    stream.pix_fmt = "yuv420p"
    stream.options = {"preset": "veryfast", "crf": "23", "tune": "stillimage"}
    stream.codec_context.thread_count = 0  # libx264 picks
    return stream


def _add_audio_stream(out, rate=AUDIO_RATE):
    stream = out.add_stream("aac", rate=rate, layout="mono")
    stream.bit_rate = 64000
    return stream


def _encode_audio(out, stream, samples, rate=AUDIO_RATE):
    """Encode float32 mono samples in [-1, 1]; PyAV re-chunks to the codec frame size."""
    samples = np.ascontiguousarray(np.clip(samples, -1.0, 1.0), dtype=np.float32)
    chunk = rate  # one second per frame handed to the encoder
    for start in range(0, len(samples), chunk):
        part = samples[start : start + chunk]
        frame = av.AudioFrame.from_ndarray(part[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _tone(duration, rate=AUDIO_RATE, base=220.0):
    """A soft, quiet chord with a gentle pulse once a second and fades at both ends."""
    n = max(1, int(round(duration * rate)))
    t = np.arange(n, dtype=np.float32) / rate
    sig = (
        np.sin(2 * np.pi * base * t)
        + 0.5 * np.sin(2 * np.pi * base * 1.5 * t)
        + 0.25 * np.sin(2 * np.pi * base * 2.0 * t)
    ) / 1.75
    pulse = 0.65 + 0.35 * np.exp(-((t % 1.0) * 6.0))
    fade = np.minimum(1.0, np.minimum(t / 0.3, (duration - t) / 0.3).clip(0, None))
    return (0.06 * sig * pulse * fade).astype(np.float32)


def _write_mp4(tmp, width, height, fps, frames, audio=None):
    """Encode ``frames`` (iterable of VideoFrame / RGB ndarray) and optional mono float audio."""
    out = _open_mp4(tmp)
    try:
        vstream = _add_video_stream(out, width, height, fps)
        astream = _add_audio_stream(out) if audio is not None else None
        time_base = 1 / Fraction(fps).limit_denominator(1001)
        count = 0
        for i, frame in enumerate(frames):
            if isinstance(frame, np.ndarray):
                frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if frame.width != width or frame.height != height or frame.format.name != "yuv420p":
                frame = frame.reformat(width=width, height=height, format="yuv420p")
            frame.pts = i
            frame.time_base = time_base
            out.mux(vstream.encode(frame))
            count += 1
        if count == 0:
            raise ValueError("no video frames to encode")
        out.mux(vstream.encode(None))
        if astream is not None:
            n = int(round(count / fps * AUDIO_RATE))
            audio = np.asarray(audio, dtype=np.float32)[:n]
            if len(audio) < n:
                audio = np.concatenate([audio, np.zeros(n - len(audio), np.float32)])
            _encode_audio(out, astream, audio)
    finally:
        out.close()


# --------------------------------------------------------------------------- generation


def render_video(path, *, width: int, height: int, duration: float, title: str, text: str,
                 fps: int = 12) -> None:
    """Write an H.264 MP4 (yuv420p, faststart, quiet AAC tone) showing ``title`` and ``text``.

    Odd sizes are rounded down to even (H.264 4:2:0 needs even dimensions). A progress bar
    and a timecode move at the bottom so a viewer sees the clip play.
    """
    width = _even(_positive_int("width", width, MAX_SIDE))
    height = _even(_positive_int("height", height, MAX_SIDE))
    duration = _positive_float("duration", duration, MAX_DURATION)
    fps = _positive_int("fps", fps, MAX_FPS)
    title, text = _text("title", title), _text("text", text)
    n_frames = max(1, int(round(duration * fps)))

    unit = min(width, height)
    bar_h = max(2, unit // 45)
    tc_font = _font(unit * 0.05)
    tc_h = _line_height(tc_font)
    reserve = bar_h + tc_h + max(4, unit // 20)

    bg = Image.fromarray(_gradient(width, height, title + "\n" + text))
    margin = _draw_card(bg, title, text, bottom_reserve=reserve,
                        subtitle=f"vydra sandbox \u00b7 {width}x{height} \u00b7 {duration:g} s")
    base = np.asarray(bg).copy()

    bar_y1 = height - max(2, unit // 30)
    bar_y0 = bar_y1 - bar_h
    bar_x0, bar_x1 = margin, width - margin
    base[bar_y0:bar_y1, bar_x0:bar_x1] = (base[bar_y0:bar_y1, bar_x0:bar_x1] * 0.5).astype(np.uint8)
    tc_y0 = max(0, bar_y0 - tc_h - max(2, unit // 80))
    tc_box = (bar_x0, tc_y0, bar_x1, bar_y0)  # region redrawn each frame
    tc_bg = Image.fromarray(base[tc_box[1] : tc_box[3], tc_box[0] : tc_box[2]])
    total = _timecode(n_frames / fps)
    accent = np.array([255, 196, 64], dtype=np.uint8)

    def frames():
        for i in range(n_frames):
            arr = base.copy()
            x = bar_x0 + int(round((bar_x1 - bar_x0) * (i + 1) / n_frames))
            arr[bar_y0:bar_y1, bar_x0:x] = accent
            if tc_box[3] > tc_box[1] and tc_box[2] > tc_box[0]:
                patch = tc_bg.copy()
                ImageDraw.Draw(patch).text((0, 0), f"{_timecode(i / fps)} / {total}",
                                           font=tc_font, fill=(255, 255, 255))
                arr[tc_box[1] : tc_box[3], tc_box[0] : tc_box[2]] = np.asarray(patch)
            yield arr

    with _atomic(path) as tmp:
        _write_mp4(tmp, width, height, fps, frames(), audio=_tone(n_frames / fps))


def _timecode(seconds):
    cs = int(round(seconds * 100))
    m, cs = divmod(cs, 6000)
    return f"{m:02d}:{cs // 100:02d}.{cs % 100:02d}"


def render_image(path, *, width: int, height: int, title: str, text: str) -> None:
    """Write a PNG with a gradient background, the title and the wrapped prompt."""
    width = _positive_int("width", width, MAX_SIDE)
    height = _positive_int("height", height, MAX_SIDE)
    title, text = _text("title", title), _text("text", text)
    img = Image.fromarray(_gradient(width, height, title + "\n" + text))
    _draw_card(img, title, text, subtitle=f"vydra sandbox \u00b7 {width}x{height}")
    # 64 colours: a fifth of the bytes (28 KB for 1024x1024), so notebooks that embed sandbox
    # images stay small enough to commit.
    img = img.quantize(64)
    with _atomic(path) as tmp:
        img.save(tmp, format="PNG", optimize=True)


# --------------------------------------------------------------------------- speech / WAV


def _voice_pitch(voice):
    presets = {"default": 165.0, "alloy": 150.0, "echo": 120.0, "fable": 185.0,
               "onyx": 100.0, "nova": 215.0, "shimmer": 240.0}
    key = (voice or "default").strip().lower()
    if key in presets:
        return presets[key]
    return 100.0 + (zlib.crc32(key.encode("utf-8", "replace")) % 1500) / 10.0


def _syllables(text):
    """Split text into (start_char, n_chars, kind) runs: kind 's' syllable, 'p' pause."""
    runs = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isalnum():
            j = i
            while j < n and text[j].isalnum() and j - i < 3:
                j += 1
            runs.append((i, j - i, "s"))
            i = j
        else:
            runs.append((i, 1, "p"))
            i += 1
    return runs


def _speech_samples(text, voice, duration, rate=SPEECH_RATE):
    n = max(1, int(round(duration * rate)))
    out = np.zeros(n, dtype=np.float32)
    if not text:
        return out
    base = _voice_pitch(voice)
    lead = int(0.05 * rate)
    body = max(1, n - 2 * lead)
    per_char = body / len(text)
    for start, count, kind in _syllables(text):
        if kind != "s":
            continue
        s0 = lead + int(start * per_char)
        length = max(8, int(count * per_char * 0.85))
        s1 = min(n, s0 + length)
        if s1 <= s0:
            continue
        m = s1 - s0
        code = ord(text[start])
        f0 = base * (1.0 + 0.12 * ((code % 7) - 3) / 3.0)
        glide = 1.0 + 0.06 * np.linspace(1, -1, m, dtype=np.float32) * (1 if code % 2 else -1)
        phase = 2 * np.pi * np.cumsum(f0 * glide) / rate
        formant = 0.35 + 0.3 * ((code // 7) % 3) / 2.0
        sig = np.sin(phase) + formant * np.sin(2 * phase) + 0.15 * np.sin(3 * phase)
        env = np.clip(np.sin(np.linspace(0, np.pi, m, dtype=np.float32)), 0, 1) ** 1.5
        out[s0:s1] += (0.32 * sig * env).astype(np.float32)
    return out


def _wav_bytes(samples_i16, rate, comment=None, software="vydra_nb sandbox"):
    data = samples_i16.astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    info = b""
    for key, value in (("ISFT", software), ("ICMT", comment)):
        if value is None:
            continue
        raw = value.encode("utf-8", "surrogatepass") + b"\x00"
        info += key.encode() + struct.pack("<I", len(raw)) + raw + (b"\x00" if len(raw) % 2 else b"")
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if info:
        body = b"INFO" + info
        chunks += b"LIST" + struct.pack("<I", len(body)) + body
    chunks += b"data" + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def _write_wav(dst, samples, rate, comment=None):
    samples = np.nan_to_num(np.asarray(samples, dtype=np.float32))
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    with _atomic(dst) as tmp:
        tmp.write_bytes(_wav_bytes(pcm, rate, comment))


def _wav_comment(path):
    """The ICMT text of a RIFF/WAVE file, or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            while True:
                hdr = fh.read(8)
                if len(hdr) < 8:
                    return None
                cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
                if cid == b"LIST":
                    body = fh.read(size)
                    if body[:4] == b"INFO":
                        pos = 4
                        while pos + 8 <= len(body):
                            sid = body[pos : pos + 4]
                            ssize = struct.unpack("<I", body[pos + 4 : pos + 8])[0]
                            raw = body[pos + 8 : pos + 8 + ssize]
                            if sid == b"ICMT":
                                if raw.endswith(b"\x00"):
                                    raw = raw[:-1]
                                try:
                                    return raw.decode("utf-8", "surrogatepass")
                                except UnicodeDecodeError:
                                    return raw.decode("utf-8", "replace")
                            pos += 8 + ssize + (ssize % 2)
                    if size % 2:
                        fh.read(1)
                else:
                    fh.seek(size + (size % 2), os.SEEK_CUR)
    except OSError:
        return None


def render_speech(path, *, text: str, voice: str = "default") -> float:
    """Write a 16-bit mono 22050 Hz WAV of tone "syllables" for ``text``; return its duration.

    The length follows the text (about 14 characters per second, at least 1 s) and the pitch
    follows the voice. The exact text is stored in the RIFF ``LIST/INFO/ICMT`` chunk.
    """
    text = _text("text", text)
    voice = _text("voice", voice) or "default"
    duration = max(1.0, len(text) / SPEECH_CHARS_PER_SECOND)
    samples = _speech_samples(text, voice, duration)
    _write_wav(path, samples, SPEECH_RATE, comment=text)
    return len(samples) / SPEECH_RATE


# --------------------------------------------------------------------------- reading


def _is_image_file(p):
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ValueError(f"cannot read {str(p)!r}: {exc}") from None
    return head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


@contextmanager
def _open_av(p):
    try:
        container = av.open(str(p), "r")
    except (_AVError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read media {str(p)!r}: {exc}") from None
    try:
        yield container
    finally:
        container.close()


def _container_duration(c):
    if c.duration is not None and c.duration > 0:
        return c.duration / av.time_base
    best = 0.0
    for s in c.streams:
        if s.duration is not None and s.time_base is not None:
            best = max(best, float(s.duration * s.time_base))
    return best or None


def _video_duration(c, vs):
    if vs.duration is not None and vs.time_base is not None and vs.duration > 0:
        return float(vs.duration * vs.time_base)
    return _container_duration(c)


def probe(path) -> dict:
    """``{"kind", "duration", "width", "height", "codec"}`` of a video, image or audio file."""
    p = _source(path, "path")
    if _is_image_file(p):
        try:
            with Image.open(p) as im:
                im.verify()
                return {"kind": "image", "duration": None, "width": im.width,
                        "height": im.height, "codec": (im.format or "").lower() or None}
        except Exception as exc:
            raise ValueError(f"cannot read image {str(p)!r}: {exc}") from None
    with _open_av(p) as c:
        if c.streams.video:
            vs = c.streams.video[0]
            return {"kind": "video", "duration": _round(_container_duration(c)),
                    "width": vs.codec_context.width, "height": vs.codec_context.height,
                    "codec": vs.codec_context.name}
        if c.streams.audio:
            a = c.streams.audio[0]
            return {"kind": "audio", "duration": _round(_container_duration(c)), "width": None,
                    "height": None, "codec": a.codec_context.name}
    raise ValueError(f"{str(p)!r} has neither video nor audio")


def _round(x):
    return None if x is None else round(float(x), 3)


def transcribe(path) -> str:
    """The text :func:`render_speech` embedded, or a deterministic placeholder."""
    p = _source(path, "path")
    comment = _wav_comment(p)
    if comment is not None:
        return comment
    info = probe(p)
    if info["kind"] == "image":
        raise ValueError(f"{str(p)!r} is an image, not audio or video")
    return f"[no speech recognised in {info['duration'] or 0.0:.1f} s of audio]"


def _decode_audio(c, rate=AUDIO_RATE):
    """Mono float32 samples of the first audio stream at ``rate``, or None."""
    if not c.streams.audio:
        return None
    stream = c.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    parts = []
    c.seek(0)
    try:
        for frame in c.decode(stream):
            frame.pts = None
            for f in resampler.resample(frame):
                parts.append(f.to_ndarray().reshape(-1))
        for f in resampler.resample(None):
            parts.append(f.to_ndarray().reshape(-1))
    except _AVError as exc:
        raise ValueError(f"cannot decode audio: {exc}") from None
    samples = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    if stream.duration and stream.time_base:  # drop the codec's trailing padding
        samples = samples[: int(round(float(stream.duration * stream.time_base) * rate))]
    return samples


def _frames_at(c, fps, start, end):
    """Yield frames of the first video stream sampled at ``start + k / fps`` while < ``end``."""
    vs = c.streams.video[0]
    vs.thread_type = "AUTO"
    n = max(0, int(round((end - start) * fps)))
    k = 0
    prev = None
    if n == 0:
        return
    try:
        for idx, frame in enumerate(c.decode(vs)):
            t = frame.time
            if t is None:
                rate = float(vs.average_rate or fps)
                t = idx / rate
            while k < n and start + k / fps < t - 1e-6:
                yield prev if prev is not None else frame
                k += 1
            prev = frame
            if k >= n:
                break
    except _AVError as exc:
        raise ValueError(f"cannot decode video: {exc}") from None
    if prev is None:
        raise ValueError("source has no decodable video frames")
    while k < n:
        yield prev
        k += 1


def _video_info(c, p):
    if not c.streams.video:
        raise ValueError(f"{str(p)!r} has no video stream")
    vs = c.streams.video[0]
    rate = vs.average_rate or vs.guessed_rate
    rate = Fraction(rate).limit_denominator(1001) if rate and 0 < rate <= 240 else Fraction(12)
    duration = _video_duration(c, vs)
    if not duration:
        raise ValueError(f"{str(p)!r} has an unknown duration")
    return vs, rate, duration


def trim_video(src, dst, *, start: float, end: float) -> None:
    """Re-encode the frames of ``src`` in ``[start, end)`` (and its audio) to an MP4 ``dst``."""
    start, end = _time("start", start), _time("end", end)
    if end <= start:
        raise ValueError(f"end ({end}) must be greater than start ({start})")
    p = _source(src)
    if _is_image_file(p):
        raise ValueError(f"{str(p)!r} is an image, not a video")
    with _open_av(p) as c:
        vs, rate, duration = _video_info(c, p)
        if start >= duration:
            raise ValueError(f"start ({start}) is beyond the clip's duration ({duration:.3f} s)")
        end = min(end, duration)
        width, height = _even(vs.codec_context.width), _even(vs.codec_context.height)
        audio = _decode_audio(c)
        if audio is not None:
            audio = audio[int(start * AUDIO_RATE) : int(end * AUDIO_RATE)]
        c.seek(0)
        fps = float(rate)
        if int(round((end - start) * fps)) < 1:
            raise ValueError("the requested range is shorter than one frame")
        with _atomic(dst) as tmp:
            _write_mp4(tmp, width, height, rate, _frames_at(c, fps, start, end), audio=audio)


def compose_videos(srcs: list, dst, soundtrack=None) -> None:
    """Concatenate clips into one MP4, scaled to the first clip's size and frame rate.

    ``soundtrack`` (an audio or video file) is laid over the result from its start, a voice-over:
    the clips' own sound is kept underneath at a third of its level.
    """
    if isinstance(srcs, (str, bytes, os.PathLike)) or not srcs:
        raise ValueError("srcs must be a non-empty list of video paths")
    paths = [_source(s, "srcs[]") for s in srcs]
    voice = None
    if soundtrack is not None:
        sp = _source(soundtrack, "soundtrack")
        if _is_image_file(sp):
            raise ValueError(f"{str(sp)!r} is an image, not a soundtrack")
        with _open_av(sp) as sc:
            voice = _decode_audio(sc)
        if voice is None:
            raise ValueError(f"{str(sp)!r} has no audio")
    for p in paths:
        if _is_image_file(p):
            raise ValueError(f"{str(p)!r} is an image, not a video")
    containers = []
    try:
        for p in paths:
            try:
                containers.append(av.open(str(p), "r"))
            except (_AVError, OSError, ValueError) as exc:
                raise ValueError(f"cannot read media {str(p)!r}: {exc}") from None
        infos = [_video_info(c, p) for c, p in zip(containers, paths, strict=True)]
        vs0, rate, _ = infos[0]
        width, height = _even(vs0.codec_context.width), _even(vs0.codec_context.height)
        fps = float(rate)
        audios = [_decode_audio(c) for c in containers]
        has_audio = any(a is not None for a in audios) or voice is not None
        pieces = []
        counts = []
        for (_vs, _, duration), a in zip(infos, audios, strict=True):
            count = max(1, int(round(duration * fps)))
            counts.append(count)
            if has_audio:
                need = int(round(count / fps * AUDIO_RATE))
                a = np.zeros(0, np.float32) if a is None else a[:need]
                if len(a) < need:
                    a = np.concatenate([a, np.zeros(need - len(a), np.float32)])
                pieces.append(a)
        for c in containers:
            c.seek(0)

        def frames():
            for c, count in zip(containers, counts, strict=True):
                yield from _frames_at(c, fps, 0.0, count / fps)

        audio = np.concatenate(pieces) if has_audio else None
        if voice is not None and audio is not None:
            audio = audio * (1 / 3)
            n = min(len(audio), len(voice))
            audio[:n] += voice[:n]
        with _atomic(dst) as tmp:
            _write_mp4(tmp, width, height, rate, frames(), audio=audio)
    finally:
        for c in containers:
            c.close()


def extract_audio(src, dst) -> None:
    """Write the source's audio track as a 16-bit mono WAV (silence if it has none)."""
    p = _source(src)
    if _is_image_file(p):
        raise ValueError(f"{str(p)!r} is an image and has no audio")
    comment = _wav_comment(p)
    with _open_av(p) as c:
        if c.streams.audio:
            rate = c.streams.audio[0].codec_context.sample_rate or SPEECH_RATE
            samples = _decode_audio(c, rate=rate)
        else:
            duration = _container_duration(c)
            if not duration:
                raise ValueError(f"{str(p)!r} has an unknown duration")
            rate = SPEECH_RATE
            samples = np.zeros(int(round(duration * rate)), np.float32)
    _write_wav(dst, samples, rate, comment=comment)


def extract_frame(src, dst, *, at: float = 0.0) -> None:
    """Write the video frame shown at ``at`` seconds as a PNG."""
    at = _time("at", at)
    p = _source(src)
    if _is_image_file(p):
        raise ValueError(f"{str(p)!r} is an image, not a video")
    with _open_av(p) as c:
        vs, rate, duration = _video_info(c, p)
        if at >= duration:
            raise ValueError(f"at ({at}) is beyond the clip's duration ({duration:.3f} s)")
        frame = next(iter(_frames_at(c, float(rate), at, at + 1.0 / float(rate))), None)
        if frame is None:
            raise ValueError("no frame at that time")
        img = frame.to_image()
    with _atomic(dst) as tmp:
        img.save(tmp, format="PNG")
