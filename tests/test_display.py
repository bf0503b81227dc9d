"""Plain mimebundles: final states, escaping, embedding limits, the text view."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from vydra_nb.api.jobs import Job
from vydra_nb.tracking.tracker import Tracker
from vydra_nb.views import display as D

EVIL = "<script>alert(1)</script>"


def _job(status: str = "completed", **data: object) -> Job:
    job = Job(id="job_1", model="veo3", params={"prompt": f"{EVIL} a lake"})
    job.apply({"status": status, **data})
    return job


def test_completed_video_bundle_and_escaping() -> None:
    job = _job(output={"videoUrl": "https://cdn.example/v.mp4"}, creditsCharged=175)
    bundle = D.job_bundle(job)
    assert set(bundle) == {"text/plain", "text/html"}
    html = bundle["text/html"]
    assert '<video class="vydra-video" controls' in html and 'src="https://cdn.example/v.mp4"' in html
    assert '<a href="https://cdn.example/v.mp4"' in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "SANDBOX" not in html
    assert "url: https://cdn.example/v.mp4" in bundle["text/plain"]


def test_server_strings_escaped_and_unsafe_urls_dropped() -> None:
    job = _job(output={"videoUrl": "javascript:alert(1)", "imageUrl": "https://x.example/a.png?a=1&b=\"2"})
    html = D.job_html(job)
    assert "javascript:" not in html
    failed = _job("failed", error={"code": "<b>X</b>", "message": f"{EVIL} bad"}, creditsRefunded=175)
    fh = D.job_html(failed)
    assert "<b>X</b>" not in fh and "&lt;b&gt;X&lt;/b&gt;" in fh and "<script>" not in fh
    assert "175 credits refunded" in fh
    weird = _job("<img src=x onerror=alert(1)>")
    wh = D.job_html(weird)
    assert "<img src=x" not in wh


def test_running_and_cancelled_lines() -> None:
    running = _job("running", progress=40, creditsCharged=175)
    assert "running · 40%" in D.job_html(running)
    assert "40%" in D.job_text(running)
    cancelled = _job("cancelled", creditsRefunded=175)
    assert "cancelled · 175 credits refunded" in D.job_html(cancelled)
    assert "refunded: 175 credits" in D.job_text(cancelled)


def test_transcript_is_pre_text() -> None:
    job = _job(output={"text": f"hello {EVIL}", "transcriptUrl": "https://x.example/t.txt"})
    html = D.job_html(job)
    assert '<pre class="vydra-transcript">hello &lt;script&gt;' in html


def test_small_image_embedded_big_video_never(tmp_path: Path) -> None:
    png = tmp_path / "job_1.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    job = _job(output={"imageUrl": "https://x.example/a.png"})
    job.local_path = png
    html = D.job_html(job)
    assert 'src="data:image/png;base64,' + base64.b64encode(png.read_bytes()).decode() in html
    assert str(png) in html
    assert "data:" not in D.job_html(job, embed_limit_bytes=50)  # above the limit: linked
    mp4 = tmp_path / "job_2.mp4"
    mp4.write_bytes(b"0" * 100)
    video = _job(output={"videoUrl": "https://x.example/v.mp4"})
    video.local_path = mp4
    assert "data:" not in D.job_html(video)  # default limit 0
    assert "data:video/mp4;base64," in D.job_html(video, media_embed_limit_bytes=1000)


def test_sandbox_badge_and_real_download(shared_client, tmp_path: Path) -> None:
    job = shared_client.generate("nano-banana", prompt=EVIL)
    job.wait(30)
    job.download(tmp_path)
    html = D.job_html(job)
    assert "vydra-sandbox" in html and "SANDBOX" in html
    assert "data:image/png;base64," in html  # a sandbox image is well below 2 MB
    assert "[SANDBOX]" in D.job_text(job)


def test_text_view_prints_at_a_sensible_rate(shared_client) -> None:
    lines: list[str] = []
    job = shared_client.generate("veo3", prompt="a lake")
    view = D.TextJobView(job, write=lines.append)
    tracker = Tracker()
    tracker.track(job)
    assert tracker.join_idle(30)
    job.download()
    assert job.status == "completed"
    assert len(lines) <= 15  # status changes + every 10 % + the end, not every poll
    assert any("url: http" in line for line in lines)
    assert "saved to" in lines[-1]
    for _ in range(3):
        job._notify()
    assert lines[-1].count("saved to") == 1 and len([ln for ln in lines if "saved to" in ln]) == 1
    view.close()


@pytest.mark.parametrize("status", ["pending", "running"])
def test_progress_line_has_no_eta_before_rate(status: str) -> None:
    line = D.progress_line(_job(status))
    assert line.startswith(status) and "ETA" not in line


def test_saved_paths_are_shown_relative_or_from_home(tmp_path: Any, monkeypatch: Any) -> None:
    """A saved notebook must not carry the user's home folder or a temp path where it can be avoided."""
    from pathlib import Path

    from vydra_nb.views.display import shown_path

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert shown_path(tmp_path / "work" / "media" / "job_x.mp4") == "media/job_x.mp4"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert shown_path(tmp_path / "home" / "data" / "job_x.png") == "~/data/job_x.png"
    assert shown_path(Path("/srv/other/job_x.wav")) == "/srv/other/job_x.wav"
