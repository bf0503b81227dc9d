"""``studio()``: a form per model, generated from its ``inputSchema``, and a gallery of results.

For exploratory prompt iteration: change a word, submit, compare side by side (a gallery, or a
grid labelled by what differs), reload any earlier variant's settings, and chain: a URL field
has a file picker (the image is checked and uploaded once), and "use as input" on a finished
result puts its URL into the next model's field. Everything is derived from ``GET /models``: a model the server adds tomorrow
gets its form with no code change. Validation is the model's own (``Model.validate``), so the
reason shown beside the disabled Submit button is exactly what the client would raise.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import ipywidgets as W

from vydra_nb.api.client import APIClient
from vydra_nb.api.errors import ValidationError, VydraError
from vydra_nb.api.inputs import field_kind, uri_fields
from vydra_nb.api.jobs import Job
from vydra_nb.api.models import Model, Parameter
from vydra_nb.session import current as current_session
from vydra_nb.tracking.tracker import Tracker
from vydra_nb.views import display as D
from vydra_nb.views.job_view import JobView
from vydra_nb.views.verdicts import VerdictButtons

_UNSET = object()
EMPTY_LABEL = "—"


def _label(model: Model) -> str:
    return f"{model.provider or 'other'} · {model.name or model.slug} ({model.slug})"


class Studio(W.VBox):
    """The studio widget. Public attributes (tests assert on them):

    ``model_picker`` (Dropdown of slugs), ``form`` (VBox), ``fields`` (name -> input widget),
    ``price`` (HTML), ``credits`` (HTML), ``reason`` (HTML), ``submit`` (Button), ``gallery``
    (GridBox of cards), ``cards`` (list of ``(card, job, params, cost)``), ``jobs``.
    """

    def __init__(self, client: APIClient | None = None, *, tracker: Tracker | None = None,
                 model: str | None = None, tag: str | None = None) -> None:
        session = current_session()
        self.client = client or session.client
        self.tracker = tracker or session.tracker
        self.models = sorted(
            (m for m in self.client.models() if m.is_active), key=lambda m: ((m.provider or "~").lower(), m.slug)
        )
        self.model: Model | None = None
        self.fields: dict[str, W.Widget] = {}
        self._params_by_field: dict[str, Parameter] = {}
        self._initial: dict[str, Any] = {}
        self.jobs: list[Job] = []
        self.cards: list[tuple[W.Widget, Job, dict[str, Any], int | None]] = []
        self.last_error: str | None = None
        self.tag = tag  # every submission carries it (spend by tag, tag budgets)

        self.model_picker = W.Dropdown(options=[(_label(m), m.slug) for m in self.models], description="Model",
                                       layout=W.Layout(width="520px"))
        self.description = W.HTML()
        self.form = W.VBox()
        self.price = W.HTML()
        self.credits = W.HTML()
        self.reason = W.HTML()
        self.submit = W.Button(description="Submit", button_style="primary", icon="play")
        self.gallery = W.GridBox(layout=W.Layout(grid_template_columns="repeat(auto-fill, minmax(360px, 1fr))",
                                                 grid_gap="8px"))
        self.gallery.add_class("vydra-gallery")
        # The same results as a labelled comparison: rows and columns named by what differs.
        self.comparison = W.HTML()
        self.comparison.add_class("vydra-studio-grid")
        self.layout_picker = W.ToggleButtons(options=["gallery", "grid"], value="gallery",
                                             tooltips=["newest first", "labelled by what differs"])
        self.layout_picker.observe(lambda _c: self._show_layout(), names="value")
        self.results = W.VBox([self.gallery])
        self.pickers: dict[str, W.FileUpload] = {}
        self.note = W.HTML()
        self.submit.on_click(self._on_submit_click)
        self.model_picker.observe(self._on_model, names="value")
        badge = '<span class="vydra-badge vydra-sandbox">SANDBOX</span>' if self.client.is_sandbox else ""
        super().__init__(children=[
            W.HTML(D.STYLE + f"<b>Vydra studio</b> {badge}"), self.model_picker, self.description, self.form,
            W.HBox([self.submit, self.price, self.credits], layout=W.Layout(align_items="center")),
            self.reason, self.note, self.layout_picker, self.results,
        ])
        self.add_class("vydra-studio")
        self.refresh_credits()
        if self.models:
            # Open on the model asked for, else the first that takes a prompt: the form is then
            # one text box away from valid.
            first = next((m for m in self.models if m.slug == model), None) or next(
                (m for m in self.models if m.prompt_field), self.models[0])
            self._build_form(first)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        """The widget, and a line for front ends without widgets (a saved notebook on GitHub), in
        place of ipywidgets' ``Studio(children=(...))`` dump."""
        data = super()._repr_mimebundle_(**kwargs)
        if not data:
            return data
        slug = self.model.slug if self.model is not None else "no model"
        text = f"Vydra studio on {slug}: run this notebook in Jupyter to use the form, the price and the gallery."
        return {**{k: v for k, v in data.items() if k != "text/plain"}, "text/plain": text}

    # -- form -------------------------------------------------------------------------------
    def _on_model(self, change: dict[str, Any]) -> None:
        model = next((m for m in self.models if m.slug == change["new"]), None)
        if model is not None:
            self._build_form(model)

    def _make_field(self, p: Parameter, prompt_field: str | None) -> W.Widget:
        desc = p.name + (" *" if p.required else "")
        style = {"description_width": "140px"}
        layout = W.Layout(width="520px")
        tooltip = p.description or None
        if p.enum is not None:
            options: list[tuple[str, Any]] = [(str(v), v) for v in p.enum]
            if not p.required and p.default is None:
                options.insert(0, (EMPTY_LABEL, None))
            value = p.default if p.default in p.enum else options[0][1]
            return W.Dropdown(options=options, value=value, description=desc, style=style, layout=layout,
                              tooltip=tooltip)
        if p.type == "boolean":
            return W.Checkbox(value=bool(p.default), description=desc, style=style, indent=True)
        if p.type in ("integer", "number"):
            integer = p.type == "integer"
            lo = p.minimum if p.minimum is not None else -1e12
            hi = p.maximum if p.maximum is not None else 1e12
            start = p.default if isinstance(p.default, (int, float)) else max(lo, min(hi, 0))
            cls = W.BoundedIntText if integer else W.BoundedFloatText
            conv = int if integer else float
            return cls(value=conv(start), min=conv(lo), max=conv(hi), description=desc, style=style,
                       layout=W.Layout(width="300px"), tooltip=tooltip)
        placeholder = (p.description or "") + ("" if p.required else " (optional)")
        if p.name == prompt_field or p.type in ("array", "object"):
            if p.type == "array":
                placeholder = (p.description or "") + " (one per line)"
            return W.Textarea(value="", description=desc, placeholder=placeholder, style=style,
                              layout=W.Layout(width="520px", height="80px" if p.name == prompt_field else "60px"))
        value = p.default if isinstance(p.default, str) else ""
        return W.Text(value=value, description=desc, placeholder=placeholder, style=style, layout=layout)

    def _build_form(self, model: Model) -> None:
        self.model = model
        if self.model_picker.value != model.slug:
            self.model_picker.value = model.slug  # re-enters _on_model -> _build_form once
            return
        prompt_field = model.prompt_field
        params = sorted(model.parameters, key=lambda p: (p.name != prompt_field, not p.required))
        self.fields = {}
        self._params_by_field = {}
        self._initial = {}
        self.pickers = {}
        url_fields = uri_fields(model)
        rows: list[W.Widget] = []
        for p in params:
            widget = self._make_field(p, prompt_field)
            # Which model's form a field belongs to, in the page too: a front end that has not yet
            # drawn the new form still shows the old one, and nothing may be typed into that.
            widget.add_class(field_class(model.slug, p.name))
            self._initial[p.name] = widget.value
            widget.observe(lambda _change: self.update_state(), names="value")
            self.fields[p.name] = widget
            self._params_by_field[p.name] = p
            if p.name in url_fields:
                # A file from this computer: checked, uploaded (free, once per content), and its
                # hosted URL put in the field. A URL or a local path can be typed there too.
                picker = W.FileUpload(accept="image/png,image/jpeg,image/webp,image/gif", multiple=False,
                                      description="upload", icon="upload", layout=W.Layout(width="110px"),
                                      tooltip=f"Upload an image for {p.name} (PNG, JPEG, WebP or GIF, up to 20 MB)")
                picker.observe(lambda change, name=p.name: self._on_pick(name, change["new"]), names="value")
                self.pickers[p.name] = picker
                rows.append(W.HBox([widget, picker], layout=W.Layout(align_items="center")))
            else:
                rows.append(widget)
        self.form.children = rows
        price = model.credits_per_unit
        unit = f" per {model.pricing_unit}" if model.pricing_unit else ""
        self.description.value = (f'<span class="vydra-meta">{D.esc(model.description or "")} · '
                                  f'{D.esc(price)} credits{D.esc(unit)}</span>')
        self.update_state()

    def params(self) -> dict[str, Any]:
        """The request body the form describes: empty optional fields and untouched defaults are not sent."""
        out: dict[str, Any] = {}
        for name, widget in self.fields.items():
            p = self._params_by_field[name]
            value = widget.value
            if isinstance(widget, (W.Text, W.Textarea)):
                value = value.strip()
                if not value:
                    continue
                if p.type == "array":
                    value = [line.strip() for line in value.splitlines() if line.strip()]
                elif p.type == "object":
                    try:
                        value = json.loads(value)
                    except ValueError:
                        pass  # validation names the field
            elif value is None:
                continue
            elif not p.required and value == self._initial.get(name, _UNSET):
                continue  # an optional field left as the form started: the server's default applies
            out[name] = value
        return out

    def validation_error(self) -> str | None:
        """Why the form cannot be submitted now, or None: the client's own checks, so a local
        path in a URL field is checked as an upload would be (exists, an image, within 20 MB)."""
        if self.model is None:
            return "No active model to choose."
        try:
            self.client.prepare(self.model, self.params())
        except ValidationError as exc:
            return str(exc)
        return None

    # -- files and chaining -------------------------------------------------------------------
    def _on_pick(self, name: str, value: Any) -> None:
        """A file was chosen in ``name``'s picker: upload it in a thread (the click's thread is the kernel's)."""
        files = list(value or ())
        if not files:
            return
        chosen = files[0]
        data = bytes(chosen.get("content", b"")) if isinstance(chosen, dict) else bytes(getattr(chosen, "content", b""))
        filename = str(chosen.get("name", "upload") if isinstance(chosen, dict) else getattr(chosen, "name", "upload"))
        self.note.value = f'<span class="vydra-meta">uploading {D.esc(filename)}…</span>'
        threading.Thread(target=self.upload_file, args=(name, data, filename), name="vydra-studio-upload",
                         daemon=True).start()

    def upload_file(self, name: str, data: bytes, filename: str) -> str | None:
        """Check and upload ``data`` for the field ``name`` and put its hosted URL in the field
        (the same content is uploaded once). Returns the URL, or None when refused."""
        try:
            up = self.client.upload(data, filename=filename, field=name)
        except VydraError as exc:  # shown beside the picker: the form's own reason may say something else
            self.note.value = f'<span class="vydra-error">Not uploaded: {D.esc(exc)}</span>'
            return None
        finally:
            picker = self.pickers.get(name)
            if picker is not None:
                try:
                    picker.value = ()
                except Exception:  # an older ipywidgets keeps the value read-only
                    pass
        widget = self.fields.get(name)
        if widget is not None:
            self._put_url(name, up.url)
        again = " (uploaded before: no request)" if up.cached else ""
        self.note.value = f'<span class="vydra-meta">{D.esc(name)} ← {D.esc(filename)}{D.esc(again)}</span>'
        self.last_error = None
        self.update_state()
        return up.url

    def _put_url(self, name: str, url: str) -> None:
        widget = self.fields[name]
        p = self._params_by_field[name]
        if p.type == "array":
            lines = [line for line in str(widget.value).splitlines() if line.strip()]
            widget.value = "\n".join([*lines, url])
        else:
            widget.value = url

    def use_as_input(self, job: Job) -> str | None:
        """Start the next step from a finished result: put its URL in the current model's field
        that takes its kind of media (``image_url`` for an image), or switch to the first model
        that has such a field. Returns the field filled, or None (the reason is shown)."""
        media = job.media
        if job.status != "completed" or not media:
            self.last_error = f"Job {job.id} has no finished result to use yet."
            self.update_state()
            return None
        kind = media[0].kind

        def field_for(model: Model) -> str | None:
            fields = uri_fields(model)
            exact = [n for n in fields if field_kind(n) == kind]
            loose = [n for n in fields if field_kind(n) is None]
            found = exact or loose
            return found[0] if found else None

        # The next step: the model on screen if it is another model that takes this kind of
        # media; else the first other model that does, those taking nothing else first (veo3
        # before Kling, which also needs a video); the job's own model last (an edit).
        current = self.model
        target = field_for(current) if current is not None and current.slug != job.model else None
        if target is None:
            candidates = [m for m in self.models if field_for(m) is not None]
            candidates.sort(key=lambda m: (m.slug == job.model, len(uri_fields(m)) > 1))
            if candidates:
                chosen = candidates[0]
                if chosen is not current:
                    self.load_settings(chosen.slug, {})
                target = field_for(chosen)
        if target is None or self.model is None:
            self.last_error = f"No model here takes {'an' if kind in ('image', 'audio') else 'a'} {kind or 'file'} as input."
            self.update_state()
            return None
        self._put_url(target, media[0].url)
        self.note.value = (f'<span class="vydra-meta">{D.esc(self.model.slug)}: {D.esc(target)} ← '
                           f'{D.esc(job.model or "job")} {D.esc(job.id)}</span>')
        self.last_error = None
        self.update_state()
        return target

    # -- the labelled grid ----------------------------------------------------------------------
    def entries(self) -> list[Any]:
        """The studio's results as comparison entries: what was submitted, with the model as a
        parameter when more than one model was used."""
        from vydra_nb.views.comparison import Entry

        models = {job.model for _c, job, _p, _cost in self.cards}
        out = []
        for _card, job, params, cost in reversed(self.cards):  # oldest first
            shown = {"model": job.model, **params} if len(models) > 1 and "model" not in params else dict(params)
            out.append(Entry(params=shown, job=job, estimate=cost))
        return out

    def grid_html(self) -> str:
        """The labelled comparison of every result so far (rows: prompts; columns: what else differs)."""
        from vydra_nb.views.comparison import axes_from_entries, comparison_html

        entries = self.entries()
        if not entries:
            return '<span class="vydra-meta">No results yet: submit a few variants to compare them here.</span>'
        return comparison_html(entries, axes_from_entries(entries))

    def _show_layout(self) -> None:
        if self.layout_picker.value == "grid":
            self.comparison.value = self.grid_html()
            self.results.children = [self.comparison]
        else:
            self.results.children = [self.gallery]

    def _refresh_grid(self, _job: Any = None) -> None:
        if self.layout_picker.value == "grid":
            value = self.grid_html()
            if value != self.comparison.value:
                self.comparison.value = value

    def update_state(self) -> None:
        """Recompute the price, the reason and the Submit button's state from the form."""
        if self.model is None:
            self.submit.disabled = True
            self.reason.value = "No active model to choose."
            return
        cost = self.model.price(self.params())
        usd = f" ({self.client.usd_rate().format(cost)})" if cost is not None else ""
        self.price.value = f"<b>{D.esc(cost if cost is not None else '?')} credits</b>{D.esc(usd)}"
        problem = self.validation_error()
        self.submit.disabled = problem is not None
        self.submit.tooltip = problem or "Submit this generation"
        text = problem or self.last_error
        self.reason.value = f'<span class="vydra-error">{D.esc(text)}</span>' if text else ""

    def refresh_credits(self) -> None:
        try:
            org = self.client.organization()
            self.credits.value = f'<span class="vydra-meta">{D.esc(org.credits_remaining)} credits left</span>'
        except VydraError as exc:
            self.credits.value = f'<span class="vydra-meta">credits unknown: {D.esc(D.shorten(str(exc), 60))}</span>'

    # -- submit -----------------------------------------------------------------------------
    def _on_submit_click(self, _button: Any = None) -> None:
        """The click runs on the kernel's shell thread; submitting may wait on the rate limiter."""
        self.submit.disabled = True
        self.submit.description = "Submitting…"
        threading.Thread(target=self.submit_form, name="vydra-studio-submit", daemon=True).start()

    def submit_form(self) -> Job | None:
        """Submit the form as it is now; add a card to the gallery. Returns the job (None on error)."""
        model, params = self.model, self.params()
        job = None
        try:
            if model is None:
                raise VydraError("No model selected.")
            cost = model.price(params)
            job = self.client.generate(model, params, tag=self.tag)  # budgets refuse before sending
            self.last_error = None
            self._add_card(job, model, params, cost)
            self.tracker.track(job)
        except VydraError as exc:
            self.last_error = f"Not submitted: {exc}"
        finally:
            self.submit.description = "Submit"
            self.update_state()
            self.refresh_credits()
        return job

    def _add_card(self, job: Job, model: Model, params: dict[str, Any], cost: int | None) -> None:
        view = JobView(job, tracker=self.tracker)
        shown = ", ".join(f"{k}={D.shorten(str(v), 40)}" for k, v in params.items() if k != model.prompt_field)
        details = W.HTML(
            f'<div class="vydra-prompt">{D.esc(D.shorten(job.prompt or "", 300))}</div>'
            f'<div class="vydra-meta">{D.esc(model.slug)} · {D.esc(shown)} · '
            f'{D.esc(cost if cost is not None else "?")} credits</div>'
        )
        reuse = W.Button(description="use these settings", icon="undo", layout=W.Layout(width="180px"))
        reuse.on_click(lambda _b, m=model.slug, p=dict(params): self.load_settings(m, p))
        chain = W.Button(description="use as input", icon="share", layout=W.Layout(width="150px"),
                         tooltip="Put this result into the next model's input field", disabled=not job.media)
        chain.on_click(lambda _b, j=job: self.use_as_input(j))

        def ended(j: Job, button: W.Button = chain) -> None:
            button.disabled = not (j.status == "completed" and j.media)
            self._refresh_grid(j)

        job.subscribe(ended)
        verdict = VerdictButtons(job)  # Keep / Reject, shown once the job has completed
        card = W.VBox([view, details, W.HBox([reuse, chain]), verdict],
                      layout=W.Layout(border="1px solid #ddd", padding="6px"))
        card.add_class("vydra-card")
        card.verdict_buttons = verdict
        card.reuse_button = reuse
        card.chain_button = chain
        card.view = view
        self.jobs.append(job)
        self.cards.append((card, job, dict(params), cost))
        self.gallery.children = [card, *self.gallery.children]  # newest first
        self._refresh_grid()

    def load_settings(self, slug: str, params: dict[str, Any]) -> None:
        """Put a model and its parameters back into the form ("use these settings")."""
        model = next((m for m in self.models if m.slug == slug), None)
        if model is None:
            self.last_error = f"{slug} is no longer active."
            self.update_state()
            return
        if self.model is not model:
            self.model_picker.value = slug
        for name, widget in self.fields.items():
            p = self._params_by_field[name]
            value: Any = params.get(name, _UNSET)
            if value is _UNSET:
                if isinstance(widget, (W.Text, W.Textarea)):
                    widget.value = p.default if isinstance(p.default, str) else ""
                elif isinstance(widget, W.Dropdown):
                    widget.value = p.default if p.default in (p.enum or ()) else widget.options[0][1]
                elif p.default is not None:
                    widget.value = p.default
                continue
            if isinstance(widget, (W.Text, W.Textarea)):
                widget.value = "\n".join(map(str, value)) if isinstance(value, list) else (
                    json.dumps(value) if isinstance(value, dict) else str(value))
            else:
                widget.value = value
        self.update_state()


def field_class(slug: str, name: str) -> str:
    """The CSS class of a studio form field: ``vydra-field-veo3-prompt`` (reduced to ``[a-z0-9-]``)."""
    return "vydra-field-" + re.sub(r"[^a-z0-9-]+", "-", f"{slug}-{name}".lower()).strip("-")


def studio(client: APIClient | None = None, model: str | None = None, *, tag: str | None = None) -> Studio:
    """The prompt-iteration widget for ``client`` (default: the session's client), open on ``model``;
    ``tag`` labels every job it submits. Each result's card has Keep / Reject buttons."""
    return Studio(client, model=model, tag=tag)
