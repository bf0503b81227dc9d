"""Local files and finished jobs as inputs, over real HTTP against the sandbox.

Every refusal is one line, names the field, and costs nothing: the tests count the requests the
sandbox answered (``state()["requests"]``, by handler) and the client sent, before and after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vydra_nb
from vydra_nb import ValidationError
from vydra_nb.api.inputs import check_local_file, image_dimensions, sniff, uri_fields
from vydra_nb.api.media import Media

from .conftest import make_client

PIL = pytest.importorskip("PIL.Image")


def png(path: Path, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    PIL.new("RGB", size, color).save(path, format="PNG")
    return path


def uploads(sb: Any) -> int:
    return int(sb.state().get("requests", {}).get("upload", 0))


def server_requests(sb: Any) -> int:
    return sum(sb.state().get("requests", {}).values())


@pytest.fixture
def primed(client: vydra_nb.Client) -> vydra_nb.Client:
    """A client whose model list is cached: what follows sends only what it has to."""
    client.models()
    return client


@pytest.fixture
def cwd(tmp_path: Path) -> Iterator[Path]:
    before = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(before)


# -- sniffing, without a network ----------------------------------------------------------------
@pytest.mark.parametrize(("head", "mime", "words"), [
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 8, "image/png", "PNG"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 8, "image/jpeg", "JPEG"),
    (b"GIF89a" + b"\x00" * 8, "image/gif", "GIF"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp", "WebP"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", None, "WAV"),
    (b"\x00\x00\x00\x18ftypisom\x00\x00", None, "MP4"),
    (b"MZ\x90\x00" + b"\x00" * 12, None, "Windows program"),
    (b"\x7fELF\x02\x01" + b"\x00" * 10, None, "Linux program"),
    (b"hello, I am text", None, "text"),
])
def test_sniff_reads_bytes_not_names(head: bytes, mime: str | None, words: str) -> None:
    found, what = sniff(head)
    assert found == mime and words in what


def test_image_dimensions_from_headers(tmp_path: Path) -> None:
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("WEBP", "webp")):
        path = tmp_path / f"x.{ext}"
        PIL.new("RGB", (33, 17)).save(path, format=fmt)
        data = path.read_bytes()
        mime = sniff(data)[0]
        assert mime is not None and image_dimensions(data, mime) == (33, 17), fmt


def test_url_fields_come_from_the_schema_and_names(primed: vydra_nb.Client) -> None:
    assert uri_fields(primed.model("veo3")) == {"image_url": False}
    assert uri_fields(primed.model("video-compose")) == {"video_urls": True, "audio_url": False}
    assert uri_fields(primed.model("elevenlabs-tts")) == {}


# -- uploads: once per content and server -------------------------------------------------------
def test_a_local_file_is_uploaded_once_and_its_url_sent(sb: Any, primed: vydra_nb.Client, cwd: Path) -> None:
    png(cwd / "still.png")
    job = primed.generate("veo3", prompt="the still, moving", image_url="still.png")
    url = job.params["image_url"]
    assert url.startswith(sb.url.rsplit("/api/", 1)[0] + "/media/upload_") and uploads(sb) == 1
    again = primed.generate("veo3", prompt="the same still again", image_url=Path("still.png"))
    assert again.params["image_url"] == url and uploads(sb) == 1  # same content: no second upload
    # A new client (a new kernel) finds it in the history: still no upload.
    fresh = make_client(sb)
    try:
        assert fresh.upload(cwd / "still.png").cached and fresh.upload(cwd / "still.png").url == url
        assert uploads(sb) == 1 and fresh.uploads_sent == 0
        rows = vydra_nb.session.current().history().uploads()
        assert [r["url"] for r in rows] == [url] and rows[0]["content_type"] == "image/png"
        # Different content is a different upload; the served file is what was sent.
        png(cwd / "other.png", color=(0, 0, 255))
        other = fresh.upload("other.png")
        assert other.url != url and uploads(sb) == 2 and not other.cached
        import requests

        served = requests.get(other.url, timeout=10)
        assert served.status_code == 200 and served.content == (cwd / "other.png").read_bytes()
        assert "Authorization" not in served.request.headers  # the key goes to the API host only
    finally:
        fresh.close()


def test_the_same_content_under_another_name_is_not_uploaded_again(sb: Any, primed: vydra_nb.Client, cwd: Path) -> None:
    png(cwd / "a.png")
    (cwd / "copy.png").write_bytes((cwd / "a.png").read_bytes())
    first = primed.upload("a.png")
    second = primed.upload("copy.png")
    assert second.url == first.url and second.cached and uploads(sb) == 1


def test_uploads_have_their_own_rate_window(primed: vydra_nb.Client) -> None:
    assert primed.limiter["upload"].limit.calls == 20
    assert primed.limiter["generate"].headroom() == primed.limiter["generate"].limit.calls


def test_a_file_that_changes_after_the_check_is_refused(sb: Any, primed: vydra_nb.Client, cwd: Path) -> None:
    path = png(cwd / "s.png")
    _model, body = primed.prepare("veo3", {"prompt": "x", "image_url": "s.png"})
    png(path, color=(1, 2, 3))  # swapped between the check and the upload
    with pytest.raises(ValidationError, match="changed after it was checked"):
        primed.generate("veo3", body)
    assert uploads(sb) == 0 and sb.state()["jobs"] == {}


# -- hostile and mistaken files: one line, nothing sent ------------------------------------------
def _hostile(kind: str, cwd: Path) -> str:
    if kind == "missing":
        return "nothere.png"
    if kind == "dotdot":
        png(cwd / "fine.png")
        (cwd / "sub").mkdir()
        return "sub/../fine.png"
    if kind == "symlink":
        png(cwd / "real.png")
        os.symlink(cwd / "real.png", cwd / "link.png")
        return "link.png"
    if kind == "symlink-secret":
        os.symlink("/etc/passwd", cwd / "avatar.png")
        return "avatar.png"
    if kind == "huge":
        with open(cwd / "huge.png", "wb") as fh:  # a sparse 25 MB "PNG": the size alone refuses it
            fh.write(b"\x89PNG\r\n\x1a\n")
            fh.truncate(25 * 1024 * 1024)
        return "huge.png"
    if kind == "exe-named-png":
        (cwd / "photo.png").write_bytes(b"MZ\x90\x00\x03" + b"\x00" * 200)
        return "photo.png"
    if kind == "exe":
        (cwd / "setup.exe").write_bytes(b"MZ\x90\x00\x03" + b"\x00" * 200)
        return "setup.exe"
    if kind == "text-named-png":
        (cwd / "notes.png").write_text("not an image at all")
        return "notes.png"
    if kind == "broken-png":
        (cwd / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        return "broken.png"
    if kind == "empty":
        (cwd / "empty.png").write_bytes(b"")
        return "empty.png"
    if kind == "folder":
        (cwd / "pics.png").mkdir()
        return "pics.png"
    if kind == "fifo":
        os.mkfifo(cwd / "pipe.png")
        return "pipe.png"
    if kind == "device":
        return "/dev/zero"
    if kind == "other-scheme":
        return "file:///etc/passwd"
    if kind == "no-scheme-url":
        return "www.example.com/still.png"
    raise AssertionError(kind)


HOSTILE = {
    "missing": "no file 'nothere.png'",
    "dotdot": "'..'",
    "symlink": "symbolic link",
    "symlink-secret": "symbolic link",
    "huge": "25.0 MB; POST /upload takes images up to 20.0 MB",
    "exe-named-png": "a Windows program, not a PNG, JPEG, WebP or GIF image, whatever its name says",
    "exe": "a Windows program",
    "text-named-png": "is text, not a PNG",
    "broken-png": "header cannot be read",
    "empty": "is empty",
    "folder": "is a folder",
    "fifo": "not a regular file",
    "device": "not a regular file",
    "other-scheme": "needs an http(s) URL",
    "no-scheme-url": "a URL needs http:// or https://",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_paths_are_one_line_and_send_nothing(kind: str, sb: Any, primed: vydra_nb.Client, cwd: Path) -> None:
    value = _hostile(kind, cwd)
    before_client, before_server = primed.requests_sent, server_requests(sb)
    with pytest.raises(ValidationError) as info:
        primed.generate("veo3", prompt="x", image_url=value)
    message = str(info.value)
    assert HOSTILE[kind] in message, message
    assert "\n" not in message and message.startswith("image_url")
    assert info.value.field == "image_url"
    assert primed.requests_sent == before_client and server_requests(sb) == before_server
    assert uploads(sb) == 0 and sb.state()["jobs"] == {}


def test_a_file_of_the_wrong_kind_for_the_field_is_refused(sb: Any, primed: vydra_nb.Client, cwd: Path) -> None:
    png(cwd / "still.png")
    (cwd / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 100)
    with pytest.raises(ValidationError, match=r"video_url: 'still.png' is a PNG image, and video_url takes a video"):
        primed.generate("video-trim", video_url="still.png", start=0, end=1)
    with pytest.raises(ValidationError, match="POST /upload takes images only, so give the video as an http"):
        primed.generate("video-trim", video_url="clip.mp4", start=0, end=1)
    assert uploads(sb) == 0 and sb.state()["jobs"] == {}


def test_a_sweep_checks_every_file_before_sending_anything(sb: Any, primed: vydra_nb.Client, cwd: Path) -> None:
    png(cwd / "ok.png")
    (cwd / "bad.png").write_text("text")
    with pytest.raises(ValidationError, match="Combination 2 .*bad.png.*Nothing was sent"):
        vydra_nb.sweep("veo3", ["a"], client=primed, image_url=["ok.png", "bad.png"], show=False)
    assert uploads(sb) == 0 and sb.state()["jobs"] == {}


# -- chaining: finished jobs and their media -----------------------------------------------------
def test_a_finished_job_gives_its_media_url_and_an_unfinished_one_says_wait(sb: Any, primed: vydra_nb.Client) -> None:
    still = primed.generate("nano-banana", prompt="a red kite over the sea")
    with pytest.raises(ValidationError, match=r"image_url: job .* \(nano-banana\) is still (pending|running); wait for it"):
        primed.generate("veo3", prompt="fly", image_url=still)
    assert sb.state()["jobs"].get("pending", 0) + sb.state()["jobs"].get("running", 0) + \
        sb.state()["jobs"].get("completed", 0) == 1  # only the still was submitted
    clip = primed.generate("veo3", prompt="fly", image_url=still, wait_inputs=30)  # waits, then sends its URL
    assert still.status == "completed" and clip.params["image_url"] == still.media_url
    by_media = primed.generate("veo3", prompt="fly again", image_url=still.media[0])
    assert by_media.params["image_url"] == still.media_url
    clip.wait(30)
    with pytest.raises(ValidationError, match="job .* \\(veo3\\) made a video, and image_url takes an image"):
        primed.generate("nano-banana", prompt="edit", image_url=clip)
    with pytest.raises(ValidationError, match="takes no URL or file"):
        primed.generate("nano-banana", prompt=still)  # type: ignore[arg-type]


def test_a_failed_job_is_no_input(sb: Any, primed: vydra_nb.Client) -> None:
    failed = primed.generate("nano-banana", prompt="[fail] a still")
    failed.wait(30, raise_on_failure=False)
    with pytest.raises(ValidationError, match=r"failed \(CONTENT_VIOLATION\); it has no result to use"):
        primed.generate("veo3", prompt="x", image_url=failed)


def test_jobs_fill_list_fields_and_the_utility_composes_them(sb: Any, primed: vydra_nb.Client) -> None:
    clip = primed.generate("veo3", prompt="a lighthouse at dusk").wait(60)
    voice = primed.generate("elevenlabs-tts", text="The light comes on at dusk.").wait(30)
    one = primed.prepare("video-compose", {"video_urls": clip})[1]
    assert one == {"video_urls": [clip.media_url]}  # one job where a list is expected: a list of one
    cut = primed.generate("video-compose", video_urls=[clip], audio_url=voice).wait(60)
    assert cut.params == {"video_urls": [clip.media_url], "audio_url": voice.media_url}
    assert cut.output and cut.output["duration"] == pytest.approx(clip.output["duration"], abs=0.5)
    path = cut.download()
    import av

    with av.open(str(path)) as container:
        assert container.streams.video and container.streams.audio


def test_a_sandbox_result_is_refused_by_a_real_service(primed: vydra_nb.Client) -> None:
    media = Media("http://127.0.0.1:9/media/job_x.png", "image")
    from vydra_nb.api.inputs import media_input

    with pytest.raises(ValidationError, match="sandbox, which the service cannot fetch"):
        media_input(media, field="image_url", takes="image", remote=True)
    assert media_input(media, field="image_url", takes="image", remote=False) == media.url


def test_check_local_file_reports_what_it_found(cwd: Path) -> None:
    found = check_local_file(png(cwd / "s.png", (320, 180)), field="image_url")
    assert found.describe().startswith("s.png (PNG 320x180,") and found.mime == "image/png"


# -- posters and frames ---------------------------------------------------------------------------
def test_poster_and_frames_of_a_downloaded_video(sb: Any, primed: vydra_nb.Client) -> None:
    job = primed.generate("veo3", prompt="waves on a pebble beach").wait(60)
    assert job.poster() is None  # not downloaded yet
    job.download()
    poster = job.poster()
    assert poster is not None and poster.read_bytes()[:3] == b"\xff\xd8\xff" and poster.stat().st_size < 40_000
    with PIL.open(poster) as img:
        assert max(img.size) <= 360
    frames = job.frames(4)
    assert len(frames) == 4 and frames.times == sorted(frames.times) and frames.times[-1] > frames.times[0]
    html = frames._repr_html_()
    assert html.count('<img src="data:image/jpeg;base64,') == 4
    with pytest.raises(vydra_nb.VydraError, match="completed video|not a video"):
        primed.generate("nano-banana", prompt="x").wait(30).frames(2)


def test_without_media_libraries_a_video_shows_without_a_poster(monkeypatch: pytest.MonkeyPatch, sb: Any,
                                                                primed: vydra_nb.Client) -> None:
    from vydra_nb.api import posters
    from vydra_nb.views import display as D

    job = primed.generate("veo3", prompt="a quiet pond").wait(60)
    job.download()
    monkeypatch.setattr(posters, "_tools", lambda: None)
    with pytest.warns(posters.PosterWarning, match="pip install 'vydra-nb\\[sandbox\\]'"):
        html = D.job_html(job)
    assert '<video class="vydra-video"' in html and "poster=" not in html
    with pytest.raises(vydra_nb.VydraError, match="needs PyAV and Pillow"):
        job.frames(3)
