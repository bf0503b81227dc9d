"""``JobView``: the live widget of one job, and ``show_job`` which puts it in the current cell.

Threads: the tracker thread calls the job's listeners; a listener here only changes widget values
and children (ipywidgets sends those as comm messages, which the front end routes by model id, not
by cell). Nothing here calls ``display()`` from a thread. The one message sent from the tracker
thread that is not a comm message is ``update_display_data``, which front ends route by its
``display_id``, so it reaches the right output whichever cell is running.

Why the final output is plain: an output that carries the widget mimetype shows "Error displaying
widget: model not found" in a notebook reopened without the kernel (JupyterLab's widget renderer
outranks ``text/html``), and nbconvert prefers it too. So ``show_job`` displays a bundle with both
the widget and the plain fallback while the job runs, and replaces it with the plain final bundle
(``<video controls src=...>`` and text) when the job ends; that bundle plays in the live page too.

Lifecycle: a view's widgets (the VBox and every child, layout and style: about 22 comm models)
are closed once they have nothing left to show, so a long session does not pile up live models
in the kernel and the front end. ``show_job`` closes the view right after sending the final
bundle over it (never before: an output still pointing at a closed model shows "model not
found"). A view inside a container that stays on screen (a sweep's grid) is ``collapse()``-d
instead: one plain HTML card stays, every other widget is closed.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ipywidgets as W

from vydra_nb.api.jobs import CANCELLED, COMPLETED, FAILED, Job
from vydra_nb.session import current as current_session
from vydra_nb.tracking.tracker import Tracker
from vydra_nb.views import display as D

WIDGET_MIME = D.WIDGET_MIME
MIN_INTERVAL = 0.25  # at most 4 renders a second; the final state is always rendered at once
TICK = 1.0  # elapsed time and ETA advance once a second between polls...
TICK_MESSAGES_PER_SECOND = 10.0  # ...but all views together send at most about this many ticks a second


class _Clock:
    """Moves every live view's elapsed time and ETA along between polls, which may be 20 s apart.

    One daemon thread for all views, started by the first live view and gone as soon as none is
    left: a view leaves when its job ends (``discard``, which wakes the thread), so an idle kernel
    runs nothing and the clock holds no ended view. It only sets one HTML value per view, and only
    when its text changed; with many views it ticks less often so the front end is not flooded.
    """

    def __init__(self) -> None:
        self._views: weakref.WeakSet[JobView] = weakref.WeakSet()
        # Reentrant: code that runs in whatever thread the garbage collector interrupts must not
        # deadlock on a lock that very thread holds.
        self._cond = threading.Condition(threading.RLock())
        self._thread: threading.Thread | None = None

    def add(self, view: "JobView") -> None:
        with self._cond:
            self._views.add(view)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vydra-clock", daemon=True)
                self._thread.start()

    def discard(self, view: "JobView") -> None:
        with self._cond:
            self._views.discard(view)
            if not self._views:
                self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._views)

    def _run(self) -> None:
        while True:
            with self._cond:
                for view in [v for v in self._views if v.job.done]:
                    self._views.discard(view)
                live = list(self._views)
                if not live:
                    self._thread = None
                    return
            interval = max(TICK, len(live) / TICK_MESSAGES_PER_SECOND)
            _tick_all(live)
            live.clear()  # the set is weak: hold no view while sleeping
            with self._cond:
                self._cond.wait_for(lambda: not self._views, timeout=interval)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()


def _tick_all(views: list["JobView"]) -> None:
    for view in views:
        view._tick()


CLOCK = _Clock()


def close_widgets(*roots: Any) -> int:
    """Close ``roots`` and every widget they hold (children, layout, style...).

    ``Widget.close()`` closes one comm; a VBox's children and each widget's Layout and style are
    models of their own, left open unless closed too. Returns how many were open and got closed.
    Python attributes keep their last values, so a closed view can still be read.
    """
    seen: set[int] = set()
    stack = [w for w in roots if isinstance(w, W.Widget)]
    closed = 0
    while stack:
        widget = stack.pop()
        if id(widget) in seen:
            continue
        seen.add(id(widget))
        for name in widget.keys:
            value = widget._trait_values.get(name)  # no defaults made up for unset traits
            if isinstance(value, W.Widget):
                stack.append(value)
            elif isinstance(value, (list, tuple)):
                stack.extend(v for v in value if isinstance(v, W.Widget))
        detach = getattr(widget, "_detach", None)
        if detach is not None:  # a JobView met inside a container: stop its updates first
            detach()
        if widget.comm is not None:
            closed += 1
        W.Widget.close(widget)
    return closed


class JobView(W.VBox):
    """A live view of one job: header, progress bar, status, elapsed/ETA/credits, Cancel; then the result.

    Attributes for tests and composition: ``header`` (HTML), ``bar`` (IntProgress), ``status``
    (HTML badge), ``info`` (HTML: elapsed, ETA, credits, "retrying"), ``cancel_button``,
    ``result`` (HTML: the player / error / refund), ``renders`` (how many renders happened).

    Its widgets stay open until ``close()`` (the owner calls it once the view has nothing left to
    show: ``show_job`` does, after the final bundle replaced it) or ``collapse()``. When the job
    ends the view leaves the clock at once and renders its final state.
    """

    def __init__(
        self,
        job: Job,
        *,
        tracker: Tracker | None = None,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        self.job = job
        self.tracker = tracker
        self.min_interval = min_interval
        self._clock = clock
        self._vlock = threading.RLock()
        self._last_render = float("-inf")
        self._timer: threading.Timer | None = None
        self._final_rendered = False
        self._closed = False
        self.card: W.HTML | None = None  # the one widget a collapsed view keeps
        self.renders = 0
        self.cancel_error: str | None = None

        self.header = W.HTML(D.header_html(job))
        self.bar = W.IntProgress(value=0, min=0, max=100, description="", bar_style="info",
                                 layout=W.Layout(width="260px"))
        self.status = W.HTML()
        self.info = W.HTML()
        self.cancel_button = W.Button(description="Cancel", icon="stop", button_style="warning",
                                      tooltip="Cancel this job (credits are refunded)",
                                      layout=W.Layout(width="100px"))
        self.cancel_button.on_click(self._on_cancel_click)
        self.result = W.HTML()
        self.progress_row = W.HBox([self.bar, self.status, self.info, self.cancel_button],
                                   layout=W.Layout(align_items="center"))
        super().__init__(children=[self.header, self.progress_row], **kwargs)
        self.add_class("vydra-job-view")
        self._render()
        self._unsubscribe: Callable[[], None] | None = job.subscribe(self._on_change)
        if not job.done:
            CLOCK.add(self)

    # -- updates (tracker thread) -----------------------------------------------------------
    def _on_change(self, job: Job) -> None:
        """Coalesce: render now if the last render is old enough, else once at the end of the interval."""
        with self._vlock:
            if self._closed:
                return
            if job.done:
                self._cancel_timer()
                self._render()
                CLOCK.discard(self)  # at once, not at the clock's next tick
                return
            wait = self._last_render + self.min_interval - self._clock()
            if wait <= 0:
                self._render()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._deferred)
                self._timer.daemon = True
                self._timer.start()

    def _deferred(self) -> None:
        with self._vlock:
            self._timer = None
            if not self._closed:
                self._render()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _render(self) -> None:
        """Set every value and child from the job's current state (idempotent)."""
        with self._vlock:
            job = self.job
            self._last_render = self._clock()
            self.renders += 1
            if self.card is not None:  # collapsed: the card alone is on screen
                self.card.value = self._card_html()
                return
            self.header.value = D.STYLE + D.header_html(job)
            self.status.value = f'<span class="vydra-badge {D.status_class(job.status)}">{D.esc(job.status)}</span>'
            if job.status == COMPLETED:
                self.bar.value, self.bar.bar_style = 100, "success"
            else:
                self._set_bar()
            if job.status == FAILED:
                self.bar.bar_style = "danger"
            elif job.status == CANCELLED:
                self.bar.bar_style = "warning"
            self.info.value = self._info_html()
            if job.done:
                self.cancel_button.disabled = True
                # The widget shows the URL; base64 over the comm channel would be heavy.
                self.result.value = D.outcome_html(job, embed_limit_bytes=0, media_embed_limit_bytes=0)
                if self.result not in tuple(getattr(self, "children", ())):
                    self.children = [self.header, self.progress_row, self.result]
                self._final_rendered = True

    def _set_bar(self) -> None:
        """The service's percentage; where it reports none, an estimate from the elapsed time and
        the expected duration, drawn striped and labelled "estimate" so nobody takes it for news."""
        job = self.job
        if job.progress is not None:
            self.bar.value, self.bar.description = job.progress, ""
            return
        guess = job.estimated_progress()
        if guess is not None:
            self.bar.value, self.bar.description = guess, "estimate"
            self.bar.add_class("vydra-estimate")

    def _info_html(self) -> str:
        job = self.job
        info = [f"elapsed {D.format_seconds(D.elapsed(job))}"]
        eta = D.eta_text(job) if not job.done else None
        if eta:
            info.append(eta)
        if job.credits_charged is not None:
            info.append(f"{job.credits_charged} credits")
        if job.poll_error and not job.done:
            # The tracker gives up only on 401/403/404, and says so: then retrying would be a lie.
            stopped = job.poll_error.startswith("stopped tracking")
            info.append(D.shorten(job.poll_error, 80) if stopped else "retrying")
        if self.cancel_error:
            info.append(f"cancel failed: {D.shorten(self.cancel_error, 80)}")
        return f'<span class="vydra-meta">{D.esc(" · ".join(info))}</span>'

    def _tick(self) -> None:
        """The clock thread: refresh the elapsed/ETA line alone, when its text changed."""
        with self._vlock:
            if self.job.done or self._closed or self.card is not None:
                return
            value = self._info_html()
            if value != self.info.value:
                self.info.value = value
            if self.job.progress is None:  # an estimate moves with the clock, not with the polls
                self._set_bar()

    # -- cancel -----------------------------------------------------------------------------
    def _on_cancel_click(self, _button: Any = None) -> None:
        """Runs in the kernel's shell thread: hand the request to a thread so the kernel stays free."""
        if self.job.done:
            return
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"
        threading.Thread(target=self._cancel, name="vydra-cancel", daemon=True).start()

    def _cancel(self) -> None:
        try:
            self.job.cancel()
        except Exception as exc:  # shown in the view; the job goes on
            self.cancel_error = str(exc)
            self.cancel_button.disabled = self.job.done
            self.cancel_button.description = "Cancel"
            self._render()
            return
        tracker = self.tracker or current_session().tracker
        if tracker.is_tracking(self.job):
            tracker.poke(self.job)
        else:
            try:
                self.job.refresh()
            except Exception:
                pass

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def _parts(self) -> list[W.Widget]:
        """Every widget of the full view, shown or not yet (``result`` joins at the end)."""
        return [self.header, self.bar, self.status, self.info, self.cancel_button, self.result,
                self.progress_row]

    def _detach(self) -> None:
        """Stop following the job: no more renders, no timer, off the clock."""
        with self._vlock:
            self._closed = True
            unsubscribe, self._unsubscribe = getattr(self, "_unsubscribe", None), None
            self._cancel_timer()
        if unsubscribe is not None:
            unsubscribe()
        CLOCK.discard(self)

    def close(self) -> None:
        """Close the view and every widget in it (about 22 comm models). Idempotent.

        Call it when nothing on screen refers to the view any more: after its output was replaced
        (``show_job`` does this), or cleared. Attributes keep their last values.
        """
        if self._closed and self.comm is None:
            return
        self._detach()
        close_widgets(self, *self._parts(), *([self.card] if self.card is not None else []))

    def __del__(self) -> None:
        """ipywidgets closes a widget it collects; an open one is never collected (its registry
        holds it), so a collected view was closed already. No locks here: the collector may run
        in any thread, holding any of them."""
        W.Widget.close(self)

    def collapse(self) -> None:
        """Keep one plain HTML card of the job and close every other widget of the view.

        For a view inside a container that stays on screen (a sweep's grid): the VBox stays where
        it is with the card as its only child, and the card still follows the job (a download
        adds the file's path). Idempotent; nothing happens to a closed view.
        """
        with self._vlock:
            if self._closed or self.card is not None:
                return
            self._cancel_timer()
            self.card = W.HTML(self._card_html())
            parts = self._parts()
            self.children = [self.card]  # sent before the old children's models are closed
        CLOCK.discard(self)
        close_widgets(*parts)

    def _card_html(self) -> str:
        # The URL, not base64 over the comm channel (as for ``result``).
        return D.job_html(self.job, embed_limit_bytes=0, media_embed_limit_bytes=0)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        """The widget plus a plain fallback, for front ends (and saved files) without widgets."""
        data = super()._repr_mimebundle_(**kwargs)
        if not data:
            return data
        return {**data, **D.job_bundle(self.job)}


@dataclass
class JobDisplay:
    """What ``show_job`` returns: the job, its view, and the display handle (None for text).

    It is already on screen, so displaying it again shows nothing: a cell ending in
    ``show_job(job)`` does not get a second copy of the view.
    """

    job: Job
    view: Any
    handle: Any = None
    verdict: Any = None
    """The Keep / Reject buttons under the result (``views.verdicts``), where widgets are available."""

    def _ipython_display_(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"<JobDisplay {self.job.id}: {self.job.status}>"


def widgets_available() -> bool:
    """True in an IPython kernel (comms available); False in a terminal, script or test process."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_job(
    job: Job, *, tracker: Tracker | None = None, use_widgets: bool | None = None, transient: bool = False,
    verdicts: bool = True,
) -> JobDisplay:
    """Show a live view of ``job`` in the current cell and make the tracker keep it up to date.

    Call it from the cell (it displays); updates then come from the tracker thread. When the job
    ends, the output is rewritten (by display id) with the plain final bundle, so the result stays
    visible in a saved notebook, nbconvert HTML and VS Code without the kernel; then the view's
    widgets are closed, so a finished job keeps no widget model alive. ``transient`` shows the
    widget alone, for a caller that clears it and displays the final result itself.

    Under the result, ``verdicts`` adds Keep / Reject buttons (``views.verdicts``: one small widget,
    shown once the job has completed); the verdict then shows in the plain result, which is
    rewritten when it changes, and is what a saved notebook keeps.
    """
    from IPython.display import display

    tracker = tracker or current_session().tracker
    if use_widgets is None:
        use_widgets = widgets_available()
    if not use_widgets:
        text_view = D.TextJobView(job)
        tracker.track(job)
        return JobDisplay(job, text_view, None)

    if job.done:
        # Nothing left to watch: the plain final bundle is the whole story, and it saves cleanly.
        plain = D.job_bundle(job)
        handle = display(plain, raw=True, display_id=True)
        _follow_plain(job, handle, plain["text/html"])
        buttons = _verdict_buttons(job) if verdicts and job.status == COMPLETED else None
        return JobDisplay(job, None, handle, buttons)

    view = JobView(job, tracker=tracker)
    if transient:
        # The widget alone: the caller (``%%vydra --wait``) clears it and displays the result
        # itself. It still gets a display id, so a view left on screen (the wait was interrupted)
        # ends as the plain result too, and is closed like any other.
        bundle = D.widget_only(super(JobView, view)._repr_mimebundle_())
    else:
        bundle = view._repr_mimebundle_() or {}
    handle = display(bundle, raw=True, display_id=True)
    buttons = _verdict_buttons(job) if verdicts and not transient else None
    rewrite = _plain_rewriter(handle, None)
    live: dict[str, Any] = {"view": view}  # the view is dropped once closed
    lock = threading.Lock()

    def finish(j: Job) -> None:
        """Write the plain final bundle over the view (again when it changes: a download), then
        close the view: after the update, so no output ever points at a closed model."""
        if not j.done or not rewrite(j):
            return
        with lock:
            ended, live["view"] = live["view"], None
        if ended is not None:
            ended.close()

    job.subscribe(finish)  # after the view's own listener: the final render comes first
    tracker.track(job)
    if job.done:
        finish(job)
    return JobDisplay(job, view, handle, buttons)


def _plain_rewriter(handle: Any, html: str | None) -> Callable[[Job], bool]:
    """A function that writes a job's plain bundle over the output ``handle`` shows, when it differs
    from what was last written (``html`` at first); it returns whether it wrote."""
    shown = {"html": html}
    lock = threading.Lock()

    def rewrite(j: Job) -> bool:
        bundle = D.job_bundle(j)
        with lock:
            if bundle["text/html"] == shown["html"]:
                return False
            shown["html"] = bundle["text/html"]
            if handle is not None:
                handle.update(bundle, raw=True)
        return True

    return rewrite


def _follow_plain(job: Job, handle: Any, html: str) -> None:
    """Rewrite a finished job's plain output when it changes (a verdict, a note, a download)."""
    job.subscribe(_plain_rewriter(handle, html))


def _verdict_buttons(job: Job) -> Any:
    """Keep / Reject under the result (a separate, widget-only output; see ``views.verdicts``)."""
    from vydra_nb.views.verdicts import show_verdict

    return show_verdict(job)
