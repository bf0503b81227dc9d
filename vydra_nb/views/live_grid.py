"""The live labelled grid: a comparison (``views.comparison``) as widgets while its jobs run.

Same layout and labels as the plain table a finished sweep leaves in the notebook: column labels
on top, row labels down the side, each cell a live ``JobView`` (a placeholder until its job is
submitted), and credit totals per row and column that follow every job as it changes. More than
two varying dimensions: one labelled grid per group.

Threads: jobs change on the tracker thread; a change only sets HTML values (comm messages).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as W

from vydra_nb.api.jobs import Job
from vydra_nb.tracking.tracker import Tracker
from vydra_nb.views import comparison as C
from vydra_nb.views import display as D
from vydra_nb.views.job_view import JobView, close_widgets

CELL_WIDTH = "minmax(240px, 1fr)"


class LiveGrid(W.VBox):
    """A labelled grid of live job views. ``slots[i]`` holds entry ``i``'s view (``views[i]``
    once submitted); ``row_totals``/``col_totals`` are the total widgets of each group."""

    def __init__(self, entries: Sequence[C.Entry], axes: Sequence[tuple[str, Sequence[Any]]], *,
                 tracker: Tracker | None = None) -> None:
        self.entries = list(entries)
        self.tracker = tracker
        self.groups = C.layout(self.entries, axes)
        self.slots: list[W.Box] = [W.Box() for _ in self.entries]
        self.views: dict[int, JobView] = {}
        self.totals: list[tuple[W.HTML, list[int]]] = []
        self._lock = threading.RLock()
        self._unsubscribe: list[Callable[[], None]] = []
        for i, slot in enumerate(self.slots):
            slot.children = [W.HTML(C.cell_html(self.entries[i]))]
            slot.add_class("vydra-slot")
        children: list[W.Widget] = [W.HTML(D.STYLE + C.GRID_STYLE)]
        for group in self.groups:
            if group.heading:
                children.append(W.HTML(f'<div class="vydra-group">{D.esc(group.heading)}</div>'))
            children.append(self._grid(group))
        if len(self.groups) > 1:
            children.append(self._total_widget(list(range(len(self.entries))), "all groups: "))
        super().__init__(children=children)
        self.add_class("vydra-live-grid")

    def _label(self, axis: C.Axis, k: int) -> W.HTML:
        title = axis.titles[k] if k < len(axis.titles) else axis.labels[k]
        label = W.HTML(f'<b title="{D.esc(title)}">{D.esc(axis.labels[k])}</b>')
        label.add_class("vydra-label")
        return label

    def _total_widget(self, indices: list[int], prefix: str = "") -> W.HTML:
        widget = W.HTML()
        widget.add_class("vydra-total")
        self.totals.append((widget, indices))
        widget.value = self._total_value(indices, prefix)
        widget._vydra_prefix = prefix
        return widget

    def _total_value(self, indices: list[int], prefix: str = "") -> str:
        value, estimated = C.total(self.entries, indices)
        return f'<span class="vydra-meta">{D.esc(prefix)}</span>{C._credits_html(value, estimated)}'

    def _grid(self, group: C.Group) -> W.GridBox:
        rows = range(len(group.rows.values)) if group.rows else range(1)
        cols = range(len(group.cols.values)) if group.cols else range(1)
        children: list[W.Widget] = []
        corner = " \\ ".join(a.name for a in (group.rows, group.cols) if a is not None)
        if group.rows:
            children.append(W.HTML(f'<i class="vydra-meta">{D.esc(corner)}</i>'))
        for c in cols:
            children.append(self._label(group.cols, c) if group.cols else W.HTML("<b>result</b>"))
        children.append(W.HTML("<b>row total</b>" if group.rows else "<b>total</b>"))
        for r in rows:
            if group.rows:
                children.append(self._label(group.rows, r))
            indices = []
            for c in cols:
                i = group.cells.get((r, c))
                if i is None:
                    children.append(W.HTML(""))
                else:
                    indices.append(i)
                    children.append(self.slots[i])
            children.append(self._total_widget(indices))
        if group.rows and (group.cols or len(rows) > 1):
            children.append(W.HTML("<b>column total</b>"))
            for c in cols:
                children.append(self._total_widget([i for (_r, cc), i in group.cells.items() if cc == c]))
            children.append(self._total_widget(list(group.cells.values())))
        columns = ("minmax(100px, max-content) " if group.rows else "") + f"repeat({len(cols)}, {CELL_WIDTH}) max-content"
        grid = W.GridBox(children=children, layout=W.Layout(grid_template_columns=columns, grid_gap="6px",
                                                             align_items="flex-start"))
        grid.add_class("vydra-sweep")
        return grid

    # -- jobs -----------------------------------------------------------------------------------
    def set_job(self, index: int, job: Job) -> JobView:
        """Entry ``index`` was submitted: its slot shows the job's live view; totals follow it."""
        with self._lock:
            self.entries[index].job = job
            view = JobView(job, tracker=self.tracker)
            # A cell is narrow and its row and column already say what the job is: the header
            # goes, and the progress row wraps with the bar across the whole cell.
            view.header.layout.display = "none"
            view.progress_row.layout.flex_flow = "row wrap"
            view.bar.layout.width = "100%"
            view.cancel_button.layout.width = "auto"
            self.views[index] = view
            placeholder = list(self.slots[index].children)
            self.slots[index].children = [view]
        close_widgets(*placeholder)  # after the slot shows the view: no output points at a closed model
        self._unsubscribe.append(job.subscribe(lambda _j: self.refresh_totals()))
        self.refresh_totals()
        return view

    def refresh_totals(self) -> None:
        with self._lock:
            for widget, indices in self.totals:
                value = self._total_value(indices, getattr(widget, "_vydra_prefix", ""))
                if widget.value != value:
                    widget.value = value

    def _detach(self) -> None:
        """Stop following the jobs (before the grid's widgets are closed)."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()


__all__ = ["LiveGrid"]
