"""JobView and show_job: widget state against a real sandbox, throttling, and a real kernel."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest

import vydra_nb
from vydra_nb.api.jobs import Job
from vydra_nb.tracking.tracker import Tracker
from vydra_nb.views.job_view import CLOCK, WIDGET_MIME, JobDisplay, JobView, show_job


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
    assert view.bar.value <= 5 and not view.cancel_button.disabled  # veo3 reports no percentage: an estimate, near 0
    assert view.children == (view.header, view.progress_row)
    assert "veo3" in view.header.value and "&lt;script&gt;" in view.header.value and "SANDBOX" in view.header.value
    _settle(tracker)
    assert job.status == "completed"
    assert view.bar.value == 100 and view.bar.bar_style == "success"
    assert view.cancel_button.disabled
    assert view.children[-1] is view.result
    # A poster (once the file is downloaded, by an auto-download) comes before the source.
    assert re.search(r'<video class="vydra-video" controls playsinline preload="metadata"( poster="data:image/jpeg;base64,'
                     rf'[^"]+")? src="{re.escape(job.media_url)}">', view.result.value), view.result.value[:300]
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


# -- lifecycle: a view's widgets are closed once it has nothing left to show -------------------
def _until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _tree(*roots: Any) -> list[Any]:
    """Every widget reachable from ``roots`` through synced traits (children, layout, style)."""
    import ipywidgets as W

    found: dict[int, Any] = {}
    stack = list(roots)
    while stack:
        w = stack.pop()
        if not isinstance(w, W.Widget) or id(w) in found:
            continue
        found[id(w)] = w
        for name in w.keys:
            value = w._trait_values.get(name)
            stack.extend(value if isinstance(value, (list, tuple)) else [value])
    return list(found.values())


def _view_tree(view: JobView) -> list[Any]:
    # ``result`` joins the children only at the end: count it from the start.
    return _tree(view, view.header, view.bar, view.status, view.info, view.cancel_button, view.result,
                 view.progress_row)


def _open(widgets: list[Any]) -> list[Any]:
    return [w for w in widgets if w.comm is not None]


class _Handle:
    """A display handle that notes, at each update, whether the view it replaces is still open."""

    def __init__(self, log: list[Any], watched: list[Any]) -> None:
        self.log, self.watched = log, watched

    def update(self, obj: Any, **kw: Any) -> None:
        self.log.append((obj, len(_open(self.watched))))


def _fake_display(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any], list[Any]]:
    shown: list[Any] = []
    updates: list[Any] = []
    watched: list[Any] = []

    def display(obj: Any, **kw: Any) -> _Handle:
        shown.append(obj)
        return _Handle(updates, watched)

    monkeypatch.setattr("IPython.display.display", display)
    return shown, updates, watched


@pytest.mark.parametrize("transient", [False, True])
def test_a_finished_view_leaves_no_open_widget(shared_client: Any, monkeypatch: pytest.MonkeyPatch,
                                               transient: bool) -> None:
    from ipywidgets.widgets import widget as widget_module

    shown, updates, watched = _fake_display(monkeypatch)
    before = set(widget_module._instances)
    tracker = Tracker()
    job = shared_client.generate("nano-banana", prompt="a cat")
    display = show_job(job, tracker=tracker, use_widgets=True, transient=transient)
    view = display.view
    watched.extend(_view_tree(view))
    assert len(_open(watched)) == len(watched) == 22  # VBox, HBox, 4 HTML, bar, button, layouts, styles
    assert (WIDGET_MIME in shown[0]) and (("text/html" in shown[0]) != transient)
    _settle(tracker)
    assert _until(lambda: view.closed and not _open(watched)), _open(watched)
    # The plain final bundle went over the view while it was still open; then it was closed.
    assert updates and updates[0][1] == 22 and WIDGET_MIME not in updates[0][0]
    assert "<img" in updates[0][0]["text/html"]
    # What stays open is the Keep / Reject buttons under the result (one widget, with its layout
    # and style), shown as a widget-only output of their own; a transient view has none.
    left = {widget_module._instances[k] for k in set(widget_module._instances) - before}
    buttons = display.verdict
    assert (buttons is None) == transient
    assert left == (set() if transient else set(_tree(buttons))) and len(left) in (0, 3), left
    if not transient:
        assert shown[1] == {WIDGET_MIME: shown[1][WIDGET_MIME]}  # nothing of it in a saved text
        buttons.close()
    assert view not in CLOCK._views
    assert view.bar.value == 100 and "<img" in view.result.value  # still readable once closed
    view.close()  # idempotent


def test_close_closes_every_model_and_stops_updates() -> None:
    job = Job(id="job_cl", model="veo3", status="running")
    view = JobView(job, min_interval=0)
    widgets = _view_tree(view)
    assert view in CLOCK._views
    view.close()
    assert not _open(widgets) and view.closed and view not in CLOCK._views
    renders = view.renders
    job.apply({"status": "running", "progress": 50})
    assert view.renders == renders and view.bar.value == 0  # no longer follows the job
    view.close()


def test_the_clock_lets_go_of_an_ended_view_at_once() -> None:
    from vydra_nb.views.job_view import TICK, _Clock

    job = Job(id="job_ck", model="veo3", status="running")
    view = JobView(job)
    assert view in CLOCK._views
    job.apply({"status": "completed", "output": {"videoUrl": "https://x.example/v.mp4"}})
    assert view not in CLOCK._views  # when the job ends, not at the clock's next tick
    view.close()
    clock = _Clock()
    other = JobView(Job(id="job_ck2", model="veo3", status="running"))
    clock.add(other)
    assert clock.running
    started = time.monotonic()
    clock.discard(other)  # the last view gone: the thread wakes and exits, no tick to wait for
    assert _until(lambda: not clock.running, TICK / 2), "the clock thread waited for its tick"
    assert time.monotonic() - started < TICK / 2
    other.close()


def test_collapse_keeps_one_card_and_closes_the_rest() -> None:
    job = Job(id="job_co", model="nano-banana", status="running")
    view = JobView(job, min_interval=0)
    parts = _view_tree(view)
    parts.remove(view)
    parts.remove(view.layout)
    job.apply({"status": "completed", "output": {"imageUrl": "https://x.example/a.png"}})
    view.collapse()
    assert view.children == (view.card,) and "https://x.example/a.png" in view.card.value
    assert not _open(parts), _open(parts)
    assert len(_open(_tree(view))) == 5  # the VBox and the card, each with its layout (and style)
    job.apply({"status": "completed", "output": {"imageUrl": "https://x.example/b.png"}})
    assert "https://x.example/b.png" in view.card.value  # the card still follows the job
    view.close()
    assert not _open(_tree(view))


def test_a_sweep_grid_ends_as_plain_html_and_closes(shared_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from ipywidgets.widgets import widget as widget_module

    from vydra_nb.analysis.sweeps import sweep

    shown, updates, watched = _fake_display(monkeypatch)
    monkeypatch.setattr("vydra_nb.views.job_view.widgets_available", lambda: True)
    before = set(widget_module._instances)
    tracker = Tracker()
    s = sweep("nano-banana", ["a cat", "a dog", "a fox"], client=shared_client, tracker=tracker)
    assert WIDGET_MIME in shown[0] and "text/html" not in shown[0]
    s.wait_submitted(30)
    watched.extend(_tree(s._live))
    s.wait(30)
    _settle(tracker)
    assert _until(lambda: not _open(_tree(s._live, *s.widget.children))), "the sweep's widgets stay open"
    assert all(isinstance(v, JobView) for v in s.views) and len(s.views) == 3
    # The grid gave way to the plain results while its widgets were still open, then closed.
    assert updates and updates[0][1] > 0 and WIDGET_MIME not in updates[0][0]
    assert updates[-1][0]["text/html"].count("<img") == 3 and "3 completed" in updates[-1][0]["text/plain"]
    # Only the Keep / Reject panel under the grid stays: its box, and one widget per completed job.
    left = {widget_module._instances[k] for k in set(widget_module._instances) - before}
    assert left == set(_tree(s.verdicts)) and len(s.verdicts.rows) == 3, left
    s.verdicts.close()


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
    # The job's output, then its Keep / Reject buttons: a widget alone, nothing nbval compares.
    assert len(outputs) == 2 and list(outputs[1]["data"]) == [WIDGET_MIME], outputs
    data = outputs[0]["data"]
    # The widget output was replaced, by display id, with the plain final bundle.
    assert WIDGET_MIME not in data
    assert '<video class="vydra-video" controls' in data["text/html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in data["text/html"] and "<script>alert" not in data["text/html"]
    assert "completed" in data["text/plain"] and "url: http://127.0.0.1" in data["text/plain"]
    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert printed.split() == ["completed", "100", "True", "False"]
    nbformat.write(nb, tmp_path / "executed.ipynb")


def test_a_job_with_no_percentage_shows_a_moving_estimate_labelled_as_one() -> None:
    """kie.ai-backed models report states only: the bar must not sit at 0 for minutes."""
    from vydra_nb import sandbox as sandbox_mod
    from vydra_nb.views import display as D

    with sandbox_mod.start(speed=20, progress="none") as box:
        client = vydra_nb.Client(api_key=box.api_key, base_url=box.url, time_scale=1 / box.speed, history=False)
        client.models()  # the model list is what the guess reads (cached: no request)
        job = client.generate("veo3", prompt="no percentage here")
        view = JobView(job, tracker=Tracker())
        try:
            seen = []
            deadline = time.monotonic() + 30
            while not job.done and time.monotonic() < deadline:
                job.refresh()
                view._render()
                assert job.progress is None or job.done
                if not job.done:
                    seen.append(view.bar.value)
                    assert view.bar.description == "estimate"
                    assert "(estimate)" in D.progress_line(job)
                threading.Event().wait(0.2)
            assert job.done and len(seen) >= 2 and seen[-1] > seen[0] >= 0 and max(seen) > 0, seen
        finally:
            view.close()
            client.close()
