"""Real media produced by the sandbox: decodable, the right size, length and codec."""

from __future__ import annotations

import struct
import sys
import time
import wave
from pathlib import Path

import pytest

av = pytest.importorskip("av")
np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")

try:
    from vydra_nb.sandbox import media
except ModuleNotFoundError:  # not installed: run from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from vydra_nb.sandbox import media

PROMPT = "A red fox trotting through fresh snow at dawn, soft golden light, cinematic"


def top_level_boxes(path):
    """The types of the MP4's top-level boxes, in file order."""
    boxes = []
    with open(path, "rb") as fh:
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return boxes
            size, kind = struct.unpack(">I4s", head)
            header = 8
            if size == 1:
                size = struct.unpack(">Q", fh.read(8))[0]
                header = 16
            boxes.append(kind.decode("latin-1"))
            if size == 0:
                return boxes
            fh.seek(size - header, 1)


def decode_frames(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """An 8 s 640x360 clip, rendered once and timed (after a tiny warm-up render)."""
    folder = tmp_path_factory.mktemp("clip")
    media.render_video(folder / "warm.mp4", width=64, height=64, duration=0.25, title="w", text="w")
    path = folder / "clip.mp4"
    t0 = time.perf_counter()
    media.render_video(path, width=640, height=360, duration=8, title="vydra-gen-2", text=PROMPT)
    elapsed = time.perf_counter() - t0
    print(f"\nrender_video 8 s 640x360 @12 fps: {elapsed:.3f} s")
    return path, elapsed


def test_video_decodes_as_requested(clip):
    path, _ = clip
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == "h264"
        assert vs.codec_context.pix_fmt == "yuv420p"
        assert (vs.codec_context.width, vs.codec_context.height) == (640, 360)
        assert abs(c.duration / av.time_base - 8.0) <= 0.2
        assert [s.codec_context.name for s in c.streams.audio] == ["aac"]
        frames = sum(1 for _ in c.decode(video=0))
    assert abs(frames - 8 * 12) <= 1


def test_video_is_faststart(clip):
    boxes = top_level_boxes(clip[0])
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat"), boxes


def test_video_moves(clip):
    frames = decode_frames(clip[0])
    first, last = frames[0].astype(int), frames[-1].astype(int)
    assert first.shape == (360, 640, 3)
    changed = np.abs(first - last).max(axis=2) > 40
    assert changed.sum() > 500  # the progress bar and the timecode
    # the static part (title and prompt) stays put
    assert np.abs(first[:150] - last[:150]).mean() < 2


@pytest.mark.timing
def test_video_render_is_fast(clip):
    _, elapsed = clip
    assert elapsed < 1.5, f"8 s 640x360 clip took {elapsed:.3f} s"


def test_video_other_shapes_and_str_paths(tmp_path):
    vertical = tmp_path / "v.mp4"
    media.render_video(str(vertical), width=180, height=320, duration=1.5, title="t", text="x",
                       fps=24)
    info = media.probe(str(vertical))
    assert info == {"kind": "video", "duration": pytest.approx(1.5, abs=0.1), "width": 180,
                    "height": 320, "codec": "h264"}
    odd = tmp_path / "odd.mp4"
    media.render_video(odd, width=101, height=57, duration=0.5, title="t", text="x")
    assert (media.probe(odd)["width"], media.probe(odd)["height"]) == (100, 56)


@pytest.mark.parametrize(
    "text",
    [
        "x" * 10_000,
        "word " * 3000,
        "\x00\x01\x07\t\r\n\x1b[31m\u2028 control \ud800 \U0001f98a \u6771\u4eac \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
        "",
        "e\u0301" * 500 + "\u200d" * 100,
    ],
)
def test_any_text_renders(tmp_path, text):
    media.render_video(tmp_path / "v.mp4", width=160, height=90, duration=0.5, title=text[:300],
                       text=text)
    media.render_image(tmp_path / "i.png", width=120, height=80, title=text, text=text)
    assert media.probe(tmp_path / "v.mp4")["kind"] == "video"


def test_image(tmp_path):
    path = tmp_path / "img.png"
    media.render_image(path, width=512, height=288, title="vydra-image-1", text=PROMPT)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.size == (512, 288)
        colours = im.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) >= 32  # a gradient plus text in a 64-colour palette, not a flat fill
    assert media.probe(path) == {"kind": "image", "duration": None, "width": 512, "height": 288,
                                 "codec": "png"}


@pytest.mark.parametrize(
    "text, expected",
    [("hi", 1.0), ("a" * 70, 5.0), ("Grüße aus 東京 🦊\nzweite Zeile\t\x00 ok \ud800", 1.0)],
)
def test_speech_round_trip(tmp_path, text, expected):
    path = tmp_path / "speech.wav"
    duration = media.render_speech(path, text=text, voice="nova")
    assert duration == pytest.approx(max(expected, len(text) / 14), abs=0.01)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        assert w.getnframes() / 22050 == pytest.approx(duration, abs=0.001)
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert media.transcribe(path) == text
    assert media.transcribe(str(path)) == text
    info = media.probe(path)
    assert info["kind"] == "audio" and info["codec"] == "pcm_s16le"
    assert info["duration"] == pytest.approx(duration, abs=0.01)
    assert np.abs(samples).max() > 3000  # audible
    assert np.abs(samples).max() < 32767  # not clipped


def test_speech_pitch_depends_on_voice(tmp_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    media.render_speech(a, text="hello there", voice="onyx")
    media.render_speech(b, text="hello there", voice="shimmer")
    assert a.stat().st_size == b.stat().st_size
    assert a.read_bytes() != b.read_bytes()
    assert media.transcribe(a) == media.transcribe(b) == "hello there"


def test_transcribe_placeholder(clip):
    assert media.transcribe(clip[0]) == "[no speech recognised in 8.0 s of audio]"


def test_trim(clip, tmp_path):
    out = tmp_path / "trim.mp4"
    media.trim_video(clip[0], out, start=2.0, end=5.0)
    info = media.probe(out)
    assert (info["kind"], info["codec"], info["width"], info["height"]) == ("video", "h264", 640, 360)
    assert info["duration"] == pytest.approx(3.0, abs=0.1)
    frames = decode_frames(out)
    assert abs(len(frames) - 36) <= 1
    # the first trimmed frame is the source frame at 2.0 s
    source = decode_frames(clip[0])
    assert np.abs(frames[0].astype(int) - source[24].astype(int)).mean() < 3
    assert np.abs(frames[0].astype(int) - source[0].astype(int)).mean() > \
        np.abs(frames[0].astype(int) - source[24].astype(int)).mean()
    # an end past the clip is clamped
    media.trim_video(clip[0], tmp_path / "tail.mp4", start=7.0, end=60)
    assert media.probe(tmp_path / "tail.mp4")["duration"] == pytest.approx(1.0, abs=0.1)


def test_compose(clip, tmp_path):
    small = tmp_path / "small.mp4"
    media.render_video(small, width=320, height=240, duration=2, title="b", text="bee", fps=24)
    out = tmp_path / "both.mp4"
    media.compose_videos([clip[0], str(small)], out)
    info = media.probe(out)
    assert (info["width"], info["height"], info["codec"]) == (640, 360, "h264")
    assert info["duration"] == pytest.approx(10.0, abs=0.2)
    assert abs(len(decode_frames(out)) - 120) <= 2
    assert top_level_boxes(out).index("moov") < top_level_boxes(out).index("mdat")


def test_extract_audio_and_frame(clip, tmp_path):
    wav = tmp_path / "a.wav"
    media.extract_audio(clip[0], wav)
    info = media.probe(wav)
    assert info["kind"] == "audio" and info["duration"] == pytest.approx(8.0, abs=0.1)

    first, late = tmp_path / "f0.png", tmp_path / "f7.png"
    media.extract_frame(clip[0], first)
    media.extract_frame(clip[0], late, at=7.9)
    with Image.open(first) as a, Image.open(late) as b:
        assert a.size == b.size == (640, 360)
        assert np.asarray(a.convert("RGB")).tolist() != np.asarray(b.convert("RGB")).tolist()

    speech = tmp_path / "s.wav"
    media.render_speech(speech, text="carry me over")
    media.extract_audio(speech, tmp_path / "s2.wav")
    assert media.transcribe(tmp_path / "s2.wav") == "carry me over"


def test_extract_audio_of_silent_video_is_silence(tmp_path):
    src = tmp_path / "silent.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(15):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), "rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    wav = tmp_path / "silent.wav"
    media.extract_audio(src, wav)
    with wave.open(str(wav)) as w:
        assert w.getnframes() / w.getframerate() == pytest.approx(1.5, abs=0.1)
        assert not np.frombuffer(w.readframes(w.getnframes()), "<i2").any()
    assert media.transcribe(src) == "[no speech recognised in 1.5 s of audio]"


def test_no_temporary_files_left(clip, tmp_path):
    media.render_video(tmp_path / "v.mp4", width=64, height=64, duration=0.5, title="t", text="x")
    media.render_image(tmp_path / "i.png", width=64, height=64, title="t", text="x")
    media.render_speech(tmp_path / "s.wav", text="x")
    media.trim_video(clip[0], tmp_path / "t.mp4", start=0, end=0.5)
    with pytest.raises(ValueError):
        media.trim_video(tmp_path / "i.png", tmp_path / "bad.mp4", start=0, end=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.png", "s.wav", "t.mp4", "v.mp4"]


def _bad_calls(tmp, clip_path):
    junk = tmp / "junk.mp4"
    junk.write_bytes(b"this is not a video at all" * 10)
    png = tmp / "pic.png"
    media.render_image(png, width=32, height=32, title="t", text="x")
    v = dict(width=64, height=64, duration=1, title="t", text="x")
    return [
        lambda: media.render_video(tmp / "o.mp4", **{**v, "width": 0}),
        lambda: media.render_video(tmp / "o.mp4", **{**v, "height": -2}),
        lambda: media.render_video(tmp / "o.mp4", **{**v, "duration": 0}),
        lambda: media.render_video(tmp / "o.mp4", **{**v, "duration": -1.0}),
        lambda: media.render_video(tmp / "o.mp4", **{**v, "duration": float("nan")}),
        lambda: media.render_video(tmp / "o.mp4", **{**v, "fps": 0}),
        lambda: media.render_video(tmp / "o.mp4", **{**v, "width": "wide"}),
        lambda: media.render_video(tmp / "missing-dir" / "o.mp4", **v),
        lambda: media.render_image(tmp / "o.png", width=0, height=10, title="t", text="x"),
        lambda: media.render_speech(tmp / "o.wav", text=42),
        lambda: media.probe(tmp / "nope.mp4"),
        lambda: media.probe(junk),
        lambda: media.transcribe(junk),
        lambda: media.transcribe(png),
        lambda: media.trim_video(junk, tmp / "o.mp4", start=0, end=1),
        lambda: media.trim_video(clip_path, tmp / "o.mp4", start=3, end=2),
        lambda: media.trim_video(clip_path, tmp / "o.mp4", start=-1, end=2),
        lambda: media.trim_video(clip_path, tmp / "o.mp4", start=9, end=10),
        lambda: media.compose_videos([], tmp / "o.mp4"),
        lambda: media.compose_videos([clip_path, tmp / "nope.mp4"], tmp / "o.mp4"),
        lambda: media.compose_videos([clip_path, png], tmp / "o.mp4"),
        lambda: media.extract_audio(tmp / "nope.mp4", tmp / "o.wav"),
        lambda: media.extract_audio(junk, tmp / "o.wav"),
        lambda: media.extract_frame(clip_path, tmp / "o.png", at=8.5),
        lambda: media.extract_frame(clip_path, tmp / "o.png", at=-0.1),
        lambda: media.extract_frame(png, tmp / "o.png"),
    ]


def test_bad_inputs_raise_value_error(clip, tmp_path):
    calls = _bad_calls(tmp_path, clip[0])
    not_raised = []
    for i, call in enumerate(calls):
        try:
            call()
        except ValueError as exc:
            assert str(exc), f"bad call #{i} raised an empty ValueError"
        else:
            not_raised.append(i)
    assert not_raised == [], f"bad calls {not_raised} did not raise ValueError"
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o.png").exists()
