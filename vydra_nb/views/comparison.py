"""Labelled comparisons: the X/Y grid of a sweep (or of the studio's results), as plain HTML.

A comparison is a list of entries (the parameters of one request, its job once submitted, and its
estimated price) and the axes they were made from. Only what varies is an axis of the grid: one
varying dimension is one labelled row or column, two are rows x columns (the first, usually the
prompt, down the side), more are grouped under labelled headings with the last two as rows x
columns. Every cell shows its status, its credits (charged, or "~" estimated) and its media (a
poster or thumbnail we build ourselves, so a saved notebook shows an image for every result after
its URLs expire); every row and column has its credit total.

This module builds HTML only (no widgets): the live grid (``views.live_grid``) uses the same
layout and labels, and a finished sweep renders this table into the saved notebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vydra_nb.api.jobs import CANCELLED, COMPLETED, FAILED, Job
from vydra_nb.api.models import PROMPT_FIELD_NAMES
from vydra_nb.views import display as D

PROMPT_LABEL_CHARS = 64
VALUE_LABEL_CHARS = 32

GRID_STYLE = (
    "<style>.vydra-compare{border-collapse:collapse;margin:4px 0;font-family:var(--jp-ui-font-family,sans-serif);"
    "font-size:12px}.vydra-compare th,.vydra-compare td{border:1px solid #ddd;padding:4px;vertical-align:top;text-align:left}"
    ".vydra-compare th{background:#f6f6f6;font-weight:600;text-align:left}"
    # JupyterLab right-aligns output tables with a (0,2,1) selector: ours must outrank it.
    ".vydra-comparison table.vydra-compare th,.vydra-comparison table.vydra-compare td{text-align:left}"
    ".vydra-compare th.vydra-axis{color:#666;font-weight:400;font-style:italic}"
    ".vydra-compare td.vydra-total,.vydra-compare th.vydra-total{background:#fafafa;color:#333;white-space:nowrap}"
    ".vydra-compare .vydra-cell-media video,.vydra-compare .vydra-cell-media img{max-width:100%;max-height:260px;"
    "display:block}.vydra-compare td.vydra-cell{min-width:180px;max-width:360px}"
    ".vydra-estimate{color:#888}.vydra-group{margin:8px 0 2px;font-weight:600}</style>"
)


@dataclass
class Entry:
    """One request of a comparison: its parameters (as given: a Job or a file name stays what it
    was, for the labels), its job once submitted, and its estimated credits."""

    params: Mapping[str, Any]
    job: Job | None = None
    estimate: int | None = None


@dataclass
class Axis:
    """A varying parameter: its name, its values (as given) and their labels (unique, short)."""

    name: str
    values: list[Any]
    labels: list[str]
    titles: list[str] = field(default_factory=list)  # the full text, for a tooltip

    def index(self, value: Any) -> int:
        for i, v in enumerate(self.values):
            if v is value:
                return i
        for i, v in enumerate(self.values):
            try:
                if v == value and type(v) is type(value):
                    return i
            except Exception:  # an odd __eq__: identity only
                continue
        raise KeyError(value)


@dataclass
class Group:
    """One table of a comparison: its heading (the values of the grouping axes), and for each
    cell (row, column) the index of its entry."""

    heading: str
    rows: Axis | None
    cols: Axis | None
    cells: dict[tuple[int, int], int]


def is_prompt(name: str) -> bool:
    return name in PROMPT_FIELD_NAMES or "prompt" in name.lower()


def value_label(name: str, value: Any, limit: int = VALUE_LABEL_CHARS) -> str:
    """How a header names one value: a Job by model and id, a file by its name, a URL by its last part."""
    from vydra_nb.api.inputs import input_label

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return input_label(value, limit)


def prompt_labels(prompts: Sequence[Any], limit: int = PROMPT_LABEL_CHARS) -> list[str]:
    """Prompt lines as row labels: the words every prompt shares at the start (or end) are
    replaced by "…" when at least three are shared, so what differs is what shows; then each is
    cut to ``limit`` characters."""
    words = [" ".join(str(p).split()).split(" ") for p in prompts]
    if len(words) > 1:
        start = 0
        while all(len(w) > start + 1 for w in words) and len({w[start] for w in words}) == 1:
            start += 1
        end = 0
        while all(len(w) > start + end + 1 for w in words) and len({w[-1 - end] for w in words}) == 1:
            end += 1
        start = start if start >= 3 else 0
        end = end if end >= 3 else 0
        if start or end:
            words = [(["…"] if start else []) + w[start:len(w) - end] + (["…"] if end else []) for w in words]
    return [D.shorten(" ".join(w), limit) for w in words]


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def make_axis(name: str, values: Sequence[Any]) -> Axis:
    values = list(values)
    if is_prompt(name) and all(isinstance(v, str) for v in values):
        labels = prompt_labels(values)
        titles = [" ".join(str(v).split()) for v in values]
    else:
        labels = [value_label(name, v) for v in values]
        titles = [value_label(name, v, 200) for v in values]
    return Axis(name, values, _unique(labels), titles)


def varying_axes(axes: Sequence[tuple[str, Sequence[Any]]]) -> list[Axis]:
    """The axes with more than one value, in order, labelled."""
    return [make_axis(name, values) for name, values in axes if len(values) > 1]


def axes_from_entries(entries: Sequence[Entry]) -> list[tuple[str, list[Any]]]:
    """The axes of entries made one by one (the studio's): each parameter with its distinct
    values in order of first use; one absent from some entries counts "—" for them."""
    names: list[str] = []
    for e in entries:
        for k in e.params:
            if k not in names:
                names.append(k)
    out = []
    for name in names:
        values: list[Any] = []
        for e in entries:
            v = e.params.get(name, "—")
            if not any(v is w or (type(v) is type(w) and _eq(v, w)) for w in values):
                values.append(v)
        out.append((name, values))
    # Prompts first: they label the rows.
    out.sort(key=lambda a: 0 if is_prompt(a[0]) else 1)
    return out


def _eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def layout(entries: Sequence[Entry], axes: Sequence[tuple[str, Sequence[Any]]]) -> list[Group]:
    """Place every entry: the groups (one unless more than two axes vary), each with its rows,
    columns and which entry is in which cell."""
    varying = varying_axes(axes)
    rows: Axis | None
    cols: Axis | None
    grouping: list[Axis]
    if len(varying) == 0:
        rows, cols, grouping = None, None, []
    elif len(varying) == 1:
        only = varying[0]
        as_rows = is_prompt(only.name) or len(only.values) > 4
        rows, cols, grouping = (only, None, []) if as_rows else (None, only, [])
    else:
        rows, cols, grouping = varying[-2], varying[-1], varying[:-2]
    groups: dict[tuple[int, ...], Group] = {}
    order: list[tuple[int, ...]] = []
    def at(axis: Axis | None, params: Mapping[str, Any]) -> int:
        return 0 if axis is None else axis.index(params.get(axis.name, "—"))

    for i, entry in enumerate(entries):
        key = tuple(at(a, entry.params) for a in grouping)
        if key not in groups:
            heading = " · ".join(f"{a.name} = {a.labels[k]}" for a, k in zip(grouping, key, strict=True))
            groups[key] = Group(heading, rows, cols, {})
            order.append(key)
        groups[key].cells.setdefault((at(rows, entry.params), at(cols, entry.params)), i)
    return [groups[k] for k in order]


# -- credits --------------------------------------------------------------------------------------
def credits_of(entry: Entry) -> tuple[int | None, bool]:
    """(credits, estimated?): what the job was charged net of refunds once the server says, else
    the estimate (a job that failed before charging counts 0)."""
    job = entry.job
    if job is not None and job.credits_charged is not None:
        return job.net_credits, False
    if job is not None and job.status in (FAILED, CANCELLED):
        return (job.net_credits if job.credits_refunded else 0), False
    return entry.estimate, True


def credits_text(value: int | None, estimated: bool) -> str:
    if value is None:
        return "? credits"
    return f"{'~' if estimated else ''}{value:,} credits"


def total(entries: Sequence[Entry], indices: Sequence[int]) -> tuple[int | None, bool]:
    values = [credits_of(entries[i]) for i in indices]
    if any(v is None for v, _ in values):
        known = sum(v or 0 for v, _ in values)
        return known, True
    return sum(v or 0 for v, _ in values), any(e for _, e in values)


def _credits_html(value: int | None, estimated: bool) -> str:
    cls = ' class="vydra-estimate"' if estimated else ""
    return f"<span{cls}>{D.esc(credits_text(value, estimated))}</span>"


# -- cells ----------------------------------------------------------------------------------------
def cell_media_html(job: Job) -> str:
    """A result as a grid cell shows it: a video with its poster (and the poster as the fallback
    image), a thumbnail of an image, an audio player, a transcript's first lines."""
    media, kind = D.primary_media(job)
    url = media.url if media is not None else None
    src = D.local_src(job) or url
    if kind == "video":
        poster = D.poster_src(job)
        if src is None and poster is None:
            return ""
        return D.video_html(src, poster, alt=D.shorten(job.prompt, 120), preload="none")
    if kind == "image":
        thumb = D.thumbnail_src(job) or src
        if thumb is None:
            return ""
        img = f'<img class="vydra-image" loading="lazy" alt="{D.esc(D.shorten(job.prompt, 120))}" src="{D.esc(thumb)}">'
        return f'<a href="{D.esc(url)}" target="_blank" rel="noopener noreferrer">{img}</a>' if url else img
    if kind == "audio" and src:
        return f'<audio class="vydra-audio" controls preload="none" src="{D.esc(src)}" style="width:100%"></audio>'
    if kind == "text":
        text = (job.output or {}).get("text")
        return f'<pre class="vydra-transcript">{D.esc(D.shorten(text if isinstance(text, str) else "", 300))}</pre>'
    return ""


def cell_html(entry: Entry) -> str:
    job = entry.job
    value, estimated = credits_of(entry)
    if job is None:
        badge = '<span class="vydra-badge vydra-status-pending">not submitted</span>'
        return f'<div class="vydra-cell-head">{badge} {_credits_html(value, estimated)}</div>'
    status = f'<span class="vydra-badge {D.status_class(job.status)}">{D.esc(job.status)}</span>'
    head = f'<div class="vydra-cell-head" title="{D.esc(job.id)}">{status} {_credits_html(value, estimated)}</div>'
    if job.status == COMPLETED:
        body = f'<div class="vydra-cell-media">{cell_media_html(job)}</div>'
    elif job.status == FAILED:
        err = job.error or {}
        body = (f'<div class="vydra-error">{D.esc(err.get("code") or "FAILED")}: '
                f'{D.esc(D.shorten(err.get("message") or "no reason given", 120))}</div>')
    elif job.status == CANCELLED:
        body = f'<div class="vydra-meta">cancelled · {D.esc(job.credits_refunded or 0)} credits refunded</div>'
    else:
        body = f'<div class="vydra-meta">{D.esc(D.progress_line(job))}</div>'
    return head + body


def _label_th(axis: Axis, k: int, *, scope: str) -> str:
    title = axis.titles[k] if k < len(axis.titles) else axis.labels[k]
    return f'<th scope="{scope}" title="{D.esc(title)}">{D.esc(axis.labels[k])}</th>'


def group_html(group: Group, entries: Sequence[Entry]) -> str:
    """One labelled table: column labels on top, row labels down the side, totals right and below."""
    rows = range(len(group.rows.values)) if group.rows else range(1)
    cols = range(len(group.cols.values)) if group.cols else range(1)
    corner = " \\ ".join(a.name for a in (group.rows, group.cols) if a is not None)
    head = f'<th class="vydra-axis">{D.esc(corner)}</th>' if group.rows else ""
    if group.cols:
        head += "".join(_label_th(group.cols, c, scope="col") for c in cols)
    else:
        head += "<th>result</th>"
    head += '<th class="vydra-total">row total</th>' if group.rows else '<th class="vydra-total">total</th>'
    body = []
    for r in rows:
        cells = _label_th(group.rows, r, scope="row") if group.rows else ""
        indices = []
        for c in cols:
            i = group.cells.get((r, c))
            if i is None:
                cells += '<td class="vydra-cell vydra-empty"></td>'
                continue
            indices.append(i)
            job = entries[i].job
            cls = D.status_class(job.status if job is not None else "pending")
            cells += f'<td class="vydra-cell {cls}">{cell_html(entries[i])}</td>'
        cells += f'<td class="vydra-total">{_credits_html(*total(entries, indices))}</td>'
        body.append(f"<tr>{cells}</tr>")
    if group.rows and (group.cols or len(rows) > 1):
        foot = '<th class="vydra-total" scope="row">column total</th>'
        for c in cols:
            indices = [i for (r, cc), i in group.cells.items() if cc == c]
            foot += f'<td class="vydra-total">{_credits_html(*total(entries, indices))}</td>'
        foot += f'<td class="vydra-total"><b>{_credits_html(*total(entries, list(group.cells.values())))}</b></td>'
        body.append(f"<tr>{foot}</tr>")
    heading = f'<div class="vydra-group">{D.esc(group.heading)}</div>' if group.heading else ""
    return f'{heading}<table class="vydra-compare"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def comparison_html(entries: Sequence[Entry], axes: Sequence[tuple[str, Sequence[Any]]], *, title: str = "") -> str:
    """The whole comparison as self-contained HTML (styles included), for saved notebooks."""
    groups = layout(entries, axes)
    parts = [D.STYLE, GRID_STYLE]
    if title:
        parts.append(f"<div><b>{D.esc(title)}</b></div>")
    parts += [group_html(g, entries) for g in groups]
    if len(groups) > 1:
        parts.append(f'<div class="vydra-total">all groups: {_credits_html(*total(entries, range(len(entries))))}</div>')
    return f'<div class="vydra-comparison">{"".join(parts)}</div>'


__all__ = ["Axis", "Entry", "Group", "axes_from_entries", "cell_html", "comparison_html", "credits_of", "layout",
           "make_axis", "prompt_labels", "total", "varying_axes"]
