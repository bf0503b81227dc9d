"""JobView and show_job: widget state against a real sandbox, throttling, and a real kernel."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from vydra_nb.api.jobs import Job
from vydra_nb.tracking.tracker import Tracker
from vydra_nb.views.job_view import JobView, show_job
from vydra_nb.views.job_view import WIDGET_MIME, JobDisplay


def _run(client: Any, model: str = "veo3", **params: Any) -> tuple[Job, JobView, Tracker]:
    tracker = Tracker()
    job = client.generate(model, **params)
    view = JobView(job, tracker=tracker)
    tracker.track(job)
    return job, view, tracker


def _settle(tracker: Tracker) -> None:
    assert tracker.join_idle(30)
    for _ in range(50):  # the thread exits right after the last job ends
        if not tracker.running:
            break
        time.sleep(0.02)
    assert not tracker.running, "the tracker thread must exit when idle"


def test_completed_video_becomes_a_player(shared_client: Any) -> None:
    job, view, tracker = _run(shared_client, prompt="<script>alert(1)</script> lake")
    assert view.bar.value == 0 and not view.cancel_button.disabled
    assert view.children == (view.header, view.progress_row)
    assert "veo3" in view.header.value and "&lt;script&gt;" in view.header.value and "SANDBOX" in view.header.value
    _settle(tracker)
    assert job.status == "completed"
    assert view.bar.value == 100 and view.bar.bar_style == "success"
    assert view.cancel_button.disabled
    assert view.children[-1] is view.result
    assert f'<video class="vydra-video" controls playsinline preload="metadata" src="{job.media_url}">' in view.result.value
    assert "completed" in view.status.value and "175 credits" in view.info.value
    path = job.download()
    assert str(path) in view.result.value  # the local file appears once downloaded
    assert "<script>" not in view.header.value


def test_image_and_audio_players(shared_client: Any) -> None:
    img, img_view, t1 = _run(shared_client, "nano-banana", prompt="a cat")
    aud, aud_view, t2 = _run(shared_client, "elevenlabs-tts", text="hello")
    _settle(t1)
    _settle(t2)
    assert f'<img class="vydra-image" alt="a cat" src="{img.media_url}">' in img_view.result.value
    assert f'<audio class="vydra-audio" controls preload="metadata" src="{aud.media_url}">' in aud_view.result.value


def test_failed_job_shows_error_and_refund(shared_client: Any) -> None:
    job, view, tracker = _run(shared_client, prompt="a lake [fail]")
    _settle(tracker)
    assert job.status == "failed"
    assert "CONTENT_VIOLATION" in view.result.value and f"{job.credits_refunded} credits refunded" in view.result.value
    assert view.cancel_button.disabled and view.bar.bar_style == "danger"


def test_cancel_button_cancels_and_shows_refund(make_sb_slow: Any) -> None:
    client = make_sb_slow
    job, view, tracker = _run(client, prompt="a long lake")
    view.cancel_button.click()
    assert view.cancel_button.disabled and view.cancel_button.description == "Cancelling…"
    _settle(tracker)
    assert job.status == "cancelled"
    assert "cancelled · 175 credits refunded" in view.result.value
    assert view.cancel_button.disabled
    assert not [t for t in threading.enumerate() if t.name == "vydra-cancel"]


@pytest.fixture
def make_sb_slow() -> Any:
    from tests.conftest import make_client
    from vydra_nb import sandbox

    with sandbox.start(credits=10_000, speed=10) as box:  # a veo3 job takes ~9 s: time to cancel
        c = make_client(box)
        yield c
        c.close()


def test_retrying_is_shown(shared_client: Any) -> None:
    job = Job(id="job_x", model="veo3", status="running", client=shared_client)
    view = JobView(job, min_interval=0)
    job.mark_poll_error("HTTP 503")
    assert "retrying" in view.info.value
    job.apply({"status": "running", "progress": 10})
    assert "retrying" not in view.info.value
    view.close()


def test_stopped_tracking_is_not_called_retrying() -> None:
    job = Job(id="job_s", model="veo3", status="running")
    view = JobView(job, min_interval=0)
    job.mark_poll_error("stopped tracking: HTTP 404: Job not found")
    assert "stopped tracking: HTTP 404" in view.info.value and "retrying" not in view.info.value
    view.close()


def test_elapsed_time_advances_between_polls_and_stops_when_the_job_ends() -> None:
    job = Job(id="job_c", model="veo3", status="running", credits_charged=175)
    view = JobView(job)
    first, renders = view.info.value, view.renders
    assert "elapsed 0s" in first
    seen = set()
    deadline = time.monotonic() + 4.0  # no poll, no change of the job: only the clock moves the view
    while time.monotonic() < deadline and "elapsed 3s" not in view.info.value:
        seen.add(view.info.value)
        time.sleep(0.05)
    assert "elapsed 3s" in view.info.value, view.info.value
    assert any("elapsed 1s" in v for v in seen) and any("elapsed 2s" in v for v in seen), seen
    assert view.renders == renders and "175 credits" in view.info.value
    job.apply({"status": "completed", "output": {"videoUrl": "https://x.example/v.mp4"}})
    ended = view.info.value
    time.sleep(1.2)
    assert view.info.value == ended  # frozen once the job has ended


def test_the_clock_thread_exits_when_no_view_is_live() -> None:
    from vydra_nb.views.job_view import _Clock

    clock = _Clock()  # its own clock: other tests' live views keep the shared one busy
    job = Job(id="job_k", model="veo3", status="running")
    view = JobView(job)
    clock.add(view)
    assert clock.running
    job.apply({"status": "completed", "output": {"videoUrl": "https://x.example/v.mp4"}})
    for _ in range(60):
        if not clock.running:
            break
        time.sleep(0.05)
    assert not clock.running, "the clock thread must exit when no view is live"
    assert not [t for t in threading.enumerate() if t.name == "vydra-clock" and t is clock._thread]


def test_updates_are_throttled_but_final_state_always_rendered() -> None:
    now = [100.0]
    job = Job(id="job_t", model="veo3", status="running")
    view = JobView(job, min_interval=0.25, clock=lambda: now[0])
    base = view.renders
    for p in range(1, 40):  # 39 changes within the same instant
        job.apply({"status": "running", "progress": p})
    assert view.renders == base  # coalesced: one deferred render is pending
    assert view._timer is not None
    time.sleep(0.4)  # the deferred render shows the latest state
    assert view.renders == base + 1 and view.bar.value == 39
    now[0] += 0.1
    job.apply({"status": "completed", "output": {"videoUrl": "https://x.example/v.mp4"}})
    assert view.bar.value == 100 and "<video" in view.result.value  # final: at once, despite the throttle
    assert view._timer is None


def test_real_rate_is_at_most_four_per_second() -> None:
    job = Job(id="job_r", model="veo3", status="running")
    view = JobView(job)
    start, base = time.monotonic(), view.renders
    while time.monotonic() - start < 1.0:
        job.apply({"status": "running", "progress": int((time.monotonic() - start) * 90)})
        time.sleep(0.005)
    time.sleep(0.3)
    assert 2 <= view.renders - base <= 6
    view.close()


def test_mimebundle_carries_widget_and_fallback(shared_client: Any) -> None:
    job = shared_client.generate("veo3", prompt="x")
    data = JobView(job)._repr_mimebundle_()
    assert WIDGET_MIME in data and "text/html" in data and "text/plain" in data
    assert data[WIDGET_MIME]["model_id"]


def test_show_job_without_widgets_uses_text_view(shared_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    tracker = Tracker()
    job = shared_client.generate("veo3", prompt="text view")
    shown = show_job(job, tracker=tracker, use_widgets=False)
    assert isinstance(shown, JobDisplay) and shown.handle is None
    _settle(tracker)
    out = capsys.readouterr().out
    assert job.id in out and "url: http" in out


def test_show_job_updates_the_display_id_with_the_final_bundle(shared_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []

    class Handle:
        def update(self, obj: Any, **kw: Any) -> None:
            calls.append(("update", obj))

    def fake_display(obj: Any, **kw: Any) -> Handle:
        calls.append(("display", obj))
        assert kw == {"raw": True, "display_id": True}
        return Handle()

    monkeypatch.setattr("IPython.display.display", fake_display)
    tracker = Tracker()
    job = shared_client.generate("veo3", prompt="<b>bold</b>")
    shown = show_job(job, tracker=tracker, use_widgets=True)
    _settle(tracker)
    assert calls[0][0] == "display" and WIDGET_MIME in calls[0][1] and "text/html" in calls[0][1]
    updates = [c[1] for c in calls if c[0] == "update"]
    assert len(updates) == 1 and WIDGET_MIME not in updates[0]
    assert "<video" in updates[0]["text/html"] and "&lt;b&gt;bold" in updates[0]["text/html"]
    job.download()  # the saved file path is written into the final output too
    assert len([c for c in calls if c[0] == "update"]) == 2
    assert shown._ipython_display_() is None


NOTEBOOK_CELLS = [
    """
import time, vydra_nb
from vydra_nb import sandbox
from vydra_nb.session import current as current_session
from vydra_nb.views.job_view import show_job
sb = sandbox.start(credits=10_000, speed=30)
client = vydra_nb.Client(api_key=sb.api_key, base_url=sb.url, time_scale=1 / sb.speed)
job = client.generate("veo3", prompt="<script>alert(1)</script> a lake")
shown = show_job(job)
""",
    "x = 1 + 1  # the kernel is free: the view's cell has returned",
    """
assert current_session().tracker.join_idle(25), job.status
time.sleep(0.3)
print(job.status, shown.view.bar.value, shown.view.cancel_button.disabled, current_session().tracker.running)
sb.stop()
""",
]


def test_updates_arrive_after_the_cell_returned_in_a_real_kernel(tmp_path: Any) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src.strip()) for src in NOTEBOOK_CELLS]
    started = time.monotonic()
    nbclient.NotebookClient(nb, timeout=40, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert time.monotonic() - started < 30
    outputs = nb.cells[0].outputs
    assert len(outputs) == 1, outputs
    data = outputs[0]["data"]
    # The widget output was replaced, by display id, with the plain final bundle.
    assert WIDGET_MIME not in data
    assert '<video class="vydra-video" controls' in data["text/html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in data["text/html"] and "<script>alert" not in data["text/html"]
    assert "completed" in data["text/plain"] and "url: http://127.0.0.1" in data["text/plain"]
    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert printed.split() == ["completed", "100", "True", "False"]
    nbformat.write(nb, tmp_path / "executed.ipynb")
