"""``sweep()``: every combination of prompts and parameter values, priced and checked before any is sent.

The order of operations is the point: build all combinations, validate every one locally, price
the total and show it, refuse above ``max_credits``, ask above ``confirm_above``, and only then
submit, one at a time through the client, whose rate limiter paces them (so no 429 is ever
provoked). Submitting 30 jobs at 10 a minute takes three minutes, so in a notebook the submission
loop runs in a background thread and the cell returns at once; ``Sweep.wait_submitted()`` blocks
until it is done, ``Sweep.wait()`` until every job has ended.

Display layer: this module may import widgets (lazily, only when ``show`` is true).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vydra_nb.api.client import APIClient
from vydra_nb.api.errors import JobTimeoutError, ValidationError, VydraError
from vydra_nb.api.jobs import Job
from vydra_nb.api.models import Model
from vydra_nb.api.money import Rate, rate_for
from vydra_nb.session import current as current_session
from vydra_nb.tracking.tracker import Tracker


@dataclass(eq=False)
class Sweep:
    """A sweep: its combinations (request bodies), their total estimated cost, and the jobs so far."""

    model: Model
    combinations: list[dict[str, Any]]
    costs: list[int | None]
    total_credits: int
    dry_run: bool = False
    declined: bool = False
    jobs: list[Job] = field(default_factory=list)
    axes: list[tuple[str, list[Any]]] = field(default_factory=list)
    """Every parameter swept or fixed, with its values as given (a Job, a file, a prompt line),
    in the order the combinations were made: the grid's labels come from these."""
    inputs: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """Each combination's parameters as given, before files and jobs became URLs."""
    submit_error: BaseException | None = None
    widget: Any = field(default=None, repr=False)
    _live: Any = field(default=None, repr=False)  # what is on screen: the summary above ``widget``
    _handle: Any = field(default=None, repr=False)  # its display handle
    _shown_html: str | None = field(default=None, repr=False)  # the plain grid, once the views ended
    _thread: threading.Thread | None = field(default=None, repr=False)
    error_note: Any = field(default=None, repr=False)  # the live grid's line saying why submission stopped
    tag: str | None = None
    """The tag every job of the sweep carries (``spend_summary(by="tag")``, tag budgets)."""
    rate: Rate = field(default_factory=lambda: rate_for(None), repr=False)
    """The dollar rate of the client that priced it (its plan's, or the one set)."""
    verdicts: Any = field(default=None, repr=False)
    """Keep / Reject for each completed job (``views.verdicts.VerdictPanel``), under the grid."""
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def total_usd(self) -> float:
        return float(self.rate.usd(self.total_credits) or 0)

    @property
    def submitted(self) -> bool:
        return self._done.is_set()

    def wait_submitted(self, timeout: float | None = None) -> Sweep:
        """Block until every combination has been submitted (or submission stopped on an error)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"Sweep still submitting after {timeout} s ({len(self.jobs)} sent).")
        return self

    def wait(self, timeout: float | None = None) -> Sweep:
        """Block until every submitted job has ended; failures do not raise (see ``dataframe()``).

        ``timeout`` bounds the whole wait, submission included, not each job's: a sweep of N jobs
        waited with ``timeout=60`` returns or raises JobTimeoutError within about a minute.
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        try:
            self.wait_submitted(left())
        except TimeoutError:
            raise JobTimeoutError(f"The sweep is still submitting after {timeout:g} s ({len(self.jobs)} of "
                                  f"{len(self.combinations)} sent); its jobs go on.") from None
        for job in list(self.jobs):
            remaining = left()
            try:
                if remaining is not None and remaining <= 0 and not job.done:
                    raise JobTimeoutError("the sweep's deadline passed")
                job.wait(remaining, raise_on_failure=False)
            except JobTimeoutError:
                pending = sum(1 for j in self.jobs if not j.done)
                raise JobTimeoutError(f"{pending} of the sweep's jobs are still running after {timeout:g} s; "
                                      "they go on. Wait again, or cancel them with `%vydra cancel ID`.") from None
        return self

    @property
    def varying(self) -> list[str]:
        """The parameters that take more than one value in this sweep (the grid's axes)."""
        return [name for name, values in self.axes if len(values) > 1]

    @property
    def fixed(self) -> dict[str, Any]:
        """The parameters every combination shares (not columns of ``dataframe()``)."""
        return {name: values[0] for name, values in self.axes if len(values) == 1}

    def entries(self) -> list[Any]:
        """The comparison's entries (``views.comparison.Entry``): each combination as given, its
        job once submitted, its estimated credits."""
        from vydra_nb.views.comparison import Entry

        inputs = self.inputs or self.combinations
        return [Entry(params=inputs[i], job=self.jobs[i] if i < len(self.jobs) else None, estimate=self.costs[i])
                for i in range(len(self.combinations))]

    def dataframe(self) -> Any:
        """One row per combination: one column per varying parameter (a prompt, a value; a job or
        file given as input by its label), then the estimate, job id, status, credits, result URL
        and error. What every combination shares is ``fixed``."""
        import pandas as pd

        from vydra_nb.views.comparison import value_label

        varying = self.varying if self.axes else list(self.combinations[0]) if self.combinations else []
        inputs = self.inputs or self.combinations
        rows = []
        for i, _params in enumerate(self.combinations):
            job = self.jobs[i] if i < len(self.jobs) else None
            row: dict[str, Any] = {}
            for name in varying:
                value = inputs[i].get(name)
                row[name] = value if isinstance(value, (str, int, float, bool)) or value is None else value_label(name, value, 200)
            row["estimated_credits"] = self.costs[i]
            if job is not None:
                row.update({
                    "job_id": job.id, "status": job.status, "progress": job.progress,
                    "credits_charged": job.credits_charged, "credits_refunded": job.credits_refunded,
                    "url": job.media_url, "local_path": str(job.local_path) if job.local_path else None,
                    "error": (job.error or {}).get("code"),
                })
            else:
                row.update({"job_id": None, "status": "not submitted"})
            rows.append(row)
        frame = pd.DataFrame(rows)
        for column in ("estimated_credits", "progress", "credits_charged", "credits_refunded"):
            if column in frame:  # whole numbers with gaps: nullable integers, as in jobs_df()
                frame[column] = frame[column].astype("Int64")
        return frame

    def summary(self) -> str:
        return (f"Sweep of {len(self.combinations)} {self.model.slug} jobs: {self.total_credits:,} credits "
                f"(about {self.rate.format(self.total_credits)} at ${self.rate.usd_per_credit.normalize():f}/credit)")

    def state(self) -> str:
        """"dry run", "declined", or how many were submitted and how they stand ("4 completed")."""
        if self.dry_run:
            return "dry run"
        if self.declined:
            return "declined"
        counts: dict[str, int] = {}
        for job in self.jobs:
            counts[job.status] = counts.get(job.status, 0) + 1
        standing = ", ".join(f"{n} {status}" for status, n in counts.items())
        sent = f"{len(self.jobs)}/{len(self.combinations)} submitted"
        return f"{sent}: {standing}" if standing else sent

    def __repr__(self) -> str:
        return f"<{self.summary()}; {self.state()}>"

    def _repr_html_(self) -> str:
        """The summary and the labelled grid of every combination as it stands (rows and columns
        named by what varies, status, credits and media in each cell, totals per row and column),
        as plain HTML: a saved notebook and nbconvert show the same table without a kernel."""
        from vydra_nb.views import display as D
        from vydra_nb.views.comparison import comparison_html

        axes = self.axes or [(k, [c.get(k) for c in self.combinations]) for k in (self.combinations or [{}])[0]]
        table = comparison_html(self.entries(), axes) if self.combinations else ""
        return f'<div class="vydra-sweep-summary"><b>{D.esc(self.summary())}</b> · {D.esc(self.state())}</div>{table}'

    @property
    def views(self) -> list[Any]:
        """The live job views of the grid, in submission order (empty without widgets)."""
        grid = self.widget
        views = getattr(grid, "views", None)
        return [views[i] for i in sorted(views)] if isinstance(views, dict) else []


def _as_values(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def combinations(model: Model, prompts: Sequence[str] | str | None, grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of prompts x grid values, as request bodies, in a stable order."""
    axes = sweep_axes(model, prompts, grid)
    names = [a[0] for a in axes]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(a[1] for a in axes))]


def sweep_axes(model: Model, prompts: Sequence[str] | str | None, grid: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    """The sweep's axes: (parameter, its values), the prompt first. A list sweeps over its values,
    except for a parameter that takes a list (``video_urls``), where a list of lists does."""
    axes: list[tuple[str, list[Any]]] = []
    if prompts is not None:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not model.prompt_field:
            raise ValidationError(f"{model.slug} has no prompt field; pass its inputs as keywords.", field="prompts")
        if not prompts:
            raise ValidationError("prompts is empty: nothing to sweep.", field="prompts")
        axes.append((model.prompt_field, prompts))
    for name, value in grid.items():
        takes_list = (model.properties.get(name) or {}).get("type") == "array"
        if takes_list and isinstance(value, (list, tuple)) and not all(isinstance(v, (list, tuple)) for v in value):
            values: list[Any] = [list(value)]
        else:
            values = [list(v) if takes_list and isinstance(v, tuple) else v for v in _as_values(value)]
        if not values:
            raise ValidationError(f"{name} has no values to sweep.", field=name)
        axes.append((name, values))
    return axes


def sweep(
    model: str | Model,
    /,
    prompts: Sequence[str] | str | None = None,
    *,
    parameters: Mapping[str, Any] | None = None,
    client: APIClient | None = None,
    confirm_above: int | None = None,
    max_credits: int | None = None,
    dry_run: bool = False,
    show: bool = True,
    background: bool | None = None,
    tracker: Tracker | None = None,
    wait_inputs: bool | float = False,
    tag: str | None = None,
    **grid: Any,
) -> Sweep:
    """Submit every combination of ``prompts`` x ``grid`` (list values are swept) after pricing them.

    Raises ValidationError (naming the combination) if any combination is invalid, and VydraError
    if the total exceeds ``max_credits``; in both cases nothing is sent. Above ``confirm_above``
    credits it asks with ``input()``. ``background`` (default: when showing in a kernel) submits
    in a thread so the cell returns at once. ``model`` is positional-only, so a schema parameter
    may itself be called ``model`` (Grok Imagine's is); ``parameters`` takes any name that clashes
    with this function's own keywords.

    URL parameters take finished Jobs, Media and local image files too (see ``client.generate``);
    every combination's inputs are checked before anything is sent, and each file is uploaded
    once however many combinations use it. ``wait_inputs`` waits for unfinished input jobs.

    ``tag`` labels every job. The session's budgets are checked for the whole sweep before any
    request: a sweep that would cross one is refused whole (``BudgetExceededError``). In a kernel,
    Keep / Reject buttons for each completed job appear under the grid.
    """
    from vydra_nb.api.inputs import stand_ins

    grid = {**(parameters or {}), **grid}
    client = client or current_session().client
    m = model if isinstance(model, Model) else client.model(model)
    axes = sweep_axes(m, prompts, grid)
    raw = combinations(m, prompts, grid)
    bodies: list[dict[str, Any]] = []
    for i, params in enumerate(raw):
        try:
            bodies.append(client.prepare(m, params, wait_inputs=wait_inputs)[1])
        except ValidationError as exc:
            raise ValidationError(f"Combination {i + 1} ({_describe(params, m)}) is invalid: {exc} Nothing was sent.",
                                  field=exc.field) from None
    costs = [m.price(stand_ins(b)) for b in bodies]
    unknown = sum(1 for c in costs if c is None)
    total = sum(c or 0 for c in costs)
    result = Sweep(model=m, combinations=bodies, costs=costs, total_credits=total, dry_run=dry_run, axes=axes,
                   inputs=raw, tag=tag, rate=client.usd_rate())
    note = f"; the price of {unknown} is unknown" if unknown else ""
    in_kernel = False
    if show:
        from vydra_nb.views.job_view import widgets_available

        in_kernel = widgets_available()
    asks = confirm_above is not None and total > confirm_above
    # In a kernel the live grid carries the price; printed, it would outlive the grid when a
    # waiting cell clears it (and nbval, which ignores clear_output, would still see it).
    if dry_run or asks or not in_kernel or (max_credits is not None and total > max_credits):
        print(result.summary() + note + ".")
    if max_credits is not None and total > max_credits:
        raise VydraError(f"{result.summary()} is above max_credits={max_credits:,}; nothing was sent.")
    if not dry_run:  # the whole sweep against the budgets, before anything is sent
        client.check_budget(None if unknown else total, tag=tag, what=f"This sweep of {len(bodies)} {m.slug} jobs")
    if dry_run:
        result._done.set()
        return result
    if confirm_above is not None and total > confirm_above:
        answer = input(f"Submit {len(bodies)} jobs for {total:,} credits? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing was sent.")
            result.declined = True
            result._done.set()
            return result
    tracker = tracker or current_session().tracker
    if show:
        result.widget = _grid(result, tracker)
        if in_kernel:
            import ipywidgets as W
            from IPython.display import display

            from vydra_nb.views.display import esc, widget_only

            live = W.VBox([W.HTML(f"<b>{esc(result.summary() + note)}</b>"), result.widget])
            # The widget alone: the Sweep itself renders the results as plain HTML. By display id,
            # so that once every job has ended the grid gives way to that plain HTML and its
            # widgets are closed (see ``_end_views``).
            result._live = live
            result._handle = display(widget_only(live._repr_mimebundle_()), raw=True, display_id=True)
            from vydra_nb.views.verdicts import VerdictPanel

            result.verdicts = VerdictPanel()  # its own output: it stays when the grid turns plain
            display(widget_only(result.verdicts._repr_mimebundle_()), raw=True)
    if background is None:
        background = show and in_kernel
    if background:
        result._thread = threading.Thread(target=_submit_all, args=(result, client, tracker), name="vydra-sweep",
                                          daemon=True)
        result._thread.start()
    else:
        _submit_all(result, client, tracker)
    return result


def _verdict_label(result: Sweep, index: int) -> str:
    """What tells combination ``index`` apart from the others: its values of what varies."""
    body = result.combinations[index]
    varying = [k for k in body if len({repr(c.get(k)) for c in result.combinations}) > 1]
    prompt = result.model.prompt_field
    return ", ".join(str(body[k]) if k == prompt else f"{k}={body[k]}" for k in varying) or f"job {index + 1}"


def _describe(params: Mapping[str, Any], model: Model) -> str:
    from vydra_nb.views.comparison import value_label
    from vydra_nb.views.display import shorten

    def one(k: str, v: Any) -> str:
        if k == model.prompt_field:
            return f"{k}={shorten(str(v), 30)!r}"
        if isinstance(v, (str, int, float, bool)) or v is None:
            return f"{k}={v!r}"
        return f"{k}={value_label(k, v)}"

    return ", ".join(one(k, v) for k, v in params.items())


def _grid(result: Sweep, tracker: Tracker) -> Any:
    """The live labelled grid: a placeholder per combination until its job is submitted."""
    from vydra_nb.views.live_grid import LiveGrid

    return LiveGrid(result.entries(), result.axes, tracker=tracker)


_VIEWS_LOCK = threading.Lock()


def _watch(result: Sweep, job: Job, view: Any) -> None:
    """When ``job`` ends, its view in the grid collapses to a plain card (its other ~20 widget
    models closed); when every job has ended, the whole grid goes (``_end_views``)."""
    holder = {"view": view}

    def changed(j: Job) -> None:
        if not j.done:
            return
        ended = holder.pop("view", None)
        if ended is not None:
            ended.collapse()  # after the view's own listener (subscribed first) rendered the end
        _end_views(result)

    job.subscribe(changed)
    if job.done:
        changed(job)


def _plain_bundle(result: Sweep) -> dict[str, str]:
    from vydra_nb.views.display import esc

    html = result._repr_html_()
    if result.submit_error is not None:
        html += (f'<div class="vydra-error">Submission stopped after {len(result.jobs)} jobs: '
                 f"{esc(result.submit_error)}</div>")
    return {"text/plain": repr(result), "text/html": html}


def _end_views(result: Sweep) -> None:
    """Once submission is over and every job has ended, the live grid has nothing left to show:
    its output is rewritten (by display id) with the plain results, then every widget in it is
    closed. Later changes (a download adds the file) rewrite the plain output again."""
    if result.widget is None or not result._done.is_set() or not all(j.done for j in result.jobs):
        return
    bundle = _plain_bundle(result) if result._handle is not None else None
    with _VIEWS_LOCK:
        first = result._shown_html is None
        if bundle is not None:
            if bundle["text/html"] == result._shown_html:
                return
            result._handle.update(bundle, raw=True)  # before closing: no output may show a closed model
            result._shown_html = bundle["text/html"]
        elif first:
            result._shown_html = ""
        else:
            return
    if first:
        from vydra_nb.views.job_view import close_widgets

        close_widgets(result._live, result.widget)


def _submit_all(result: Sweep, client: APIClient, tracker: Tracker) -> None:
    """Submit sequentially; the client's limiter paces the requests. Stops at the first error."""
    try:
        for index, body in enumerate(result.combinations):
            job = client.generate(result.model, body, validate=False, tag=result.tag)
            result.jobs.append(job)
            if result.verdicts is not None:
                result.verdicts.add(job, label=_verdict_label(result, index))
            if result.widget is not None:
                view = result.widget.set_job(index, job)
                _watch(result, job, view)
            tracker.track(job)
    except BaseException as exc:  # kept for the caller; the jobs already sent go on
        result.submit_error = exc
        logging.getLogger("vydra_nb").warning("sweep stopped after %d of %d jobs: %s",
                                              len(result.jobs), len(result.combinations), exc)
        if result.widget is not None:
            import ipywidgets as W

            from vydra_nb.views.display import esc

            note = W.HTML(f'<div class="vydra-error">Submission stopped after {len(result.jobs)} jobs: {esc(exc)}</div>')
            result.error_note = note
            if result._live is not None:
                result._live.children = [*result._live.children, note]
        if result._thread is None:
            raise
    finally:
        result._done.set()
        _end_views(result)


def prompts_from_lines(text: str) -> list[str]:
    """Prompt lines of a cell body (blank lines dropped), for the ``%%vydra`` sweep form."""
    return [line.strip() for line in text.splitlines() if line.strip()]


__all__ = ["Sweep", "sweep", "combinations", "prompts_from_lines", "sweep_axes"]
