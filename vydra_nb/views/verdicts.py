"""Keep / Reject buttons for finished jobs: the verdicts ``spend_summary()`` turns into keep rates.

A finished job's output is plain HTML (see ``job_view``: a widget there would show "model not
found" in a saved notebook in place of the video). The buttons therefore live in a second, small
output of their own, under the result: one ``ToggleButtons`` widget (three comm models with its
layout and style, against the twenty-odd of a live view), displayed as the widget alone. The
verdict itself is saved with the result: the job's plain output is rewritten with a "kept" or
"rejected" badge when it changes, so a saved notebook, nbconvert HTML and nbval see the verdict and
never the buttons. In a notebook reopened without its kernel, JupyterLab shows the buttons' output
as any stale widget ("model not found") until it is run again, and hides it once the kernel that
made it restarts.

A click runs ``job.keep()`` or ``job.reject()`` in the kernel (the history records it at once), and
``job.keep()`` run in Python moves the buttons too: the widget follows the job's change notices.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as W

from vydra_nb.api.errors import VydraError
from vydra_nb.api.jobs import COMPLETED, Job
from vydra_nb.views import display as D

log = logging.getLogger("vydra_nb")

OPTIONS = [("Keep", Job.KEPT), ("Reject", Job.REJECTED)]
TOOLTIPS = ["Keep this result: it counts as usable in spend_summary()'s keep rate (job.keep())",
            "Reject this result: it still cost its credits (job.reject())"]


class VerdictButtons(W.ToggleButtons):
    """Keep / Reject for one job; hidden until the job has completed (only a result can be judged).

    ``error`` holds the last failure to record a verdict (shown as the tooltip), if any.
    """

    def __init__(self, job: Job, *, description: str = "", **kwargs: Any) -> None:
        self.job = job
        self.error: str | None = None
        super().__init__(options=OPTIONS, value=None, tooltips=TOOLTIPS, description=description,
                         style={"button_width": "64px", "description_width": "initial"}, **kwargs)
        self.add_class("vydra-verdict")
        self._show_if_done(job)
        self.observe(self._on_value, names="value")
        self._unsubscribe: Callable[[], None] | None = job.subscribe(self._on_job)

    def _show_if_done(self, job: Job) -> None:
        self.layout.display = None if job.status == COMPLETED else "none"
        if job.verdict in (Job.KEPT, Job.REJECTED) and self.get_interact_value() != job.verdict:
            self.set_trait("value", job.verdict)  # _on_value then finds the job already judged

    def _on_job(self, job: Job) -> None:
        """The tracker thread (or a ``job.keep()`` in a cell): show the buttons once completed,
        and follow a verdict given elsewhere. A job that failed or was cancelled has nothing to
        judge: its buttons are closed (JupyterLab then hides their output)."""
        if job.done and job.status != COMPLETED:
            self.close()
            return
        self._show_if_done(job)

    def _on_value(self, change: dict[str, Any]) -> None:
        """A click (the kernel's shell thread): record the verdict; the history has it at once."""
        verdict = change["new"]
        if verdict is None or verdict == self.job.verdict:
            return
        try:
            if verdict == Job.KEPT:
                self.job.keep()
            else:
                self.job.reject()
            self.error = None
        except VydraError as exc:  # shown on the buttons; the old verdict stays
            self.error = str(exc)
            self.tooltips = [f"Not recorded: {D.shorten(self.error, 120)}"] * len(OPTIONS)
            self.set_trait("value", self.job.verdict if self.job.verdict in (Job.KEPT, Job.REJECTED) else None)

    def close(self) -> None:
        """Stop following the job and close the widget with its layout and style."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        for part in (self.layout, self.style):
            if isinstance(part, W.Widget):
                W.Widget.close(part)
        super().close()


LIVE_VERDICTS = 20
"""How many finished jobs keep live Keep / Reject buttons: the most recent ones. Older buttons are
closed (their job's plain output keeps its verdict), so a 300-job session stays flat."""


def show_verdict(job: Job) -> VerdictButtons:
    """Display Keep / Reject for ``job`` in the current cell (call it from the cell), as the widget
    alone: nothing of it goes into a saved notebook's text or nbval's comparison."""
    from IPython.display import display

    from vydra_nb.session import current as current_session

    buttons = VerdictButtons(job)
    display(D.widget_only(buttons._repr_mimebundle_()), raw=True, display_id=True)
    current_session().retain("verdicts", buttons, LIVE_VERDICTS)
    return buttons


class VerdictPanel(W.VBox):
    """Keep / Reject for several jobs (a sweep's), one labelled row each, in submission order.

    A row appears when its job completes; a job that fails or is cancelled never gets one.
    ``rows`` maps each job to its buttons.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(children=[], **kwargs)
        self.add_class("vydra-verdicts")
        self.rows: dict[Job, VerdictButtons] = {}
        self._lock = threading.Lock()

    def add(self, job: Job, label: str | None = None) -> VerdictButtons:
        """Follow ``job``; ``label`` (default: its prompt) names its row."""
        text = D.shorten(label if label is not None else (job.prompt or job.id), 60)

        def drop_if_unjudgeable(j: Job) -> None:
            """Before the row closes itself (its listener comes after this one): out of the panel."""
            if j.done and j.status != COMPLETED:
                with self._lock:
                    row = self.rows.get(j)
                    if row is not None and row in self._children():
                        self.set_trait("children", tuple(c for c in self._children() if c is not row))

        job.subscribe(drop_if_unjudgeable)
        buttons = VerdictButtons(job, description=f"{len(self.rows) + 1}. {text}")
        with self._lock:
            self.rows[job] = buttons
            if buttons.comm is not None:  # not closed at once (a job that had already failed)
                self.set_trait("children", (*self._children(), buttons))
        return buttons

    def _children(self) -> tuple[W.Widget, ...]:
        return tuple(self.trait_values().get("children") or ())

    def close(self) -> None:
        with self._lock:
            rows = list(self.rows.values())
        for buttons in rows:
            buttons.close()
        if isinstance(self.layout, W.Widget):
            W.Widget.close(self.layout)
        super().close()


__all__ = ["OPTIONS", "VerdictButtons", "VerdictPanel", "show_verdict"]
