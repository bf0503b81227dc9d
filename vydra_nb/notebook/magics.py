"""``%%vydra`` and ``%vydra``: generating media from a notebook cell.

Loading the extension must be fast, so this module imports neither requests, pandas, ipywidgets
nor any media library at import time; each command imports what it needs when it runs. User
mistakes (a bad flag, an unknown model, a 402) become one-line ``UsageError``s; bugs still raise.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import sys
import threading
import weakref
from collections import ChainMap
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from IPython.core.error import StdinNotImplementedError, UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, needs_local_scope, no_var_expand
from traitlets import Bool, Float, Int, Unicode, observe

from vydra_nb.api.errors import VydraError, one_line, shown
from vydra_nb.api.settings import host_matches
from vydra_nb.notebook.magic_args import (
    GENERIC_FLAGS,
    JOB_STATUSES,
    LINE_PARSERS,
    PARAM_PREFIX,
    Lazy,
    cell_flag_table,
    cell_help,
    command_summaries,
    flag_names,
    line_help,
    model_slug,
    param_flags,
    parse_cell,
    parse_line_command,
    request_bodies,
    shadowed,
    split_line,
)

if TYPE_CHECKING:
    from vydra_nb.api.jobs import Job
    from vydra_nb.api.models import Model
    from vydra_nb.session import Session
    from vydra_nb.session.client import Client

log = logging.getLogger("vydra_nb")

ERROR_CHARS = 300  # the longest error a cell shows; longer texts are cut with "…"

# Each command and what `%vydra help` says of it, from its parser (magic_args.LINE_PARSERS).
COMMANDS: Mapping[str, str] = Lazy(command_summaries)

# Line commands whose arguments are ids and plain options: ``{expr}`` and ``$var`` in them are
# expanded from the user's variables, as IPython does for other line magics. ``generate`` (a cell
# line without a body) and ``%%vydra`` lines are left alone: prompts use our own ``{name}`` filling.
EXPANDED_COMMANDS = frozenset({"job", "cancel", "jobs", "models", "credits", "sandbox", "help", "budget"})

__all__ = ["COMMANDS", "JOB_STATUSES", "VydraMagics", "load", "unload"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _named(kind: Callable[[str], Any], name: str) -> Callable[[_F], _F]:
    """``cell_magic(name)`` as the decorator it is (IPython annotates it as a union mypy cannot apply)."""
    return cast("Callable[[_F], _F]", kind(name))


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn VydraError (a user-facing failure) into a one-line UsageError without a traceback.

    The message is flattened to one line and capped: it may quote a server's answer, which is
    outside our control, and IPython shows a UsageError exactly as its text.
    """
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VydraError as exc:
            raise UsageError(one_line(str(exc), ERROR_CHARS)) from None

    return wrapper


def show_text(text: str) -> None:
    """Show text that holds a server's words (descriptions, names) or a request body.

    As a mimebundle: escaped HTML for notebook front ends, which autolink plain text (so a
    ``javascript://x`` in a description would become a link), and the same text for terminals and
    saved notebooks read as text. The ``text/plain`` part is exactly what was printed before.
    """
    import html

    from IPython.display import display

    display({"text/plain": text, "text/html": f"<pre>{html.escape(text)}</pre>"}, raw=True)


def _namespace(user_ns: Mapping[str, Any], local_ns: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The names a ``{placeholder}`` may use: the caller's local variables first, then the user's."""
    if local_ns is None or local_ns is user_ns:
        return user_ns
    return ChainMap(dict(local_ns), dict(user_ns))


@magics_class
class VydraMagics(Magics):
    """The ``%vydra`` magics. Settings: ``%config VydraMagics.<name> = value``."""

    confirm_above = Int(
        1000, help="Ask before submitting anything that costs more than this many credits (0: never ask)."
    ).tag(config=True)
    low_credit_threshold = Int(500, help="Warn when the balance falls below this many credits.").tag(config=True)
    default_wait = Bool(False, help="Make every %%vydra cell wait for its job, as if --wait were given.").tag(config=True)
    download_dir = Unicode("", help="Folder for downloaded results (empty: VYDRA_NB_HOME/downloads).").tag(config=True)
    auto_download = Bool(True, help="Download completed results, since provider URLs expire in about a day.").tag(config=True)
    resume_on_load = Bool(True, help="On %load_ext, resume tracking jobs that had not ended.").tag(config=True)
    sandbox_speed = Float(10.0, help="Speed of a sandbox started by --sandbox or %vydra sandbox.").tag(config=True)
    sandbox_credits = Int(10_000, help="Starting credits of a sandbox started on demand.").tag(config=True)
    usd_per_credit = Float(
        None, allow_none=True,
        help="USD per credit for every dollar figure (None: the plan's rate; see vydra_nb.api.money).",
    ).tag(config=True)

    def __init__(self, shell: Any = None, *, session: Session | None = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        from vydra_nb.session import current

        self.session = session or current()
        self._shown: weakref.WeakSet[Job] = weakref.WeakSet()  # jobs whose view this cell already shows
        self._push_settings()

    # -- settings: the session reads them live ----------------------------------------------
    @observe("auto_download", "low_credit_threshold", "download_dir", "usd_per_credit")
    def _settings_changed(self, change: Any = None) -> None:
        self._push_settings()

    def _push_settings(self) -> None:
        """Copy the traits the core reads into the session's settings (on load and on every change)."""
        from pathlib import Path

        settings = self.session.settings
        settings.auto_download = self.auto_download
        settings.low_credit_threshold = self.low_credit_threshold
        settings.download_dir = Path(self.download_dir).expanduser() if self.download_dir else None
        settings.usd_per_credit = self.usd_per_credit

    def _dollars(self, credits: int | None) -> str:
        """``$0.51``: at the client's rate (its plan's, or ``usd_per_credit``), half up to the cent."""
        return self.client.usd_rate().format(credits)

    # -- session ----------------------------------------------------------------------------
    @property
    def user_ns(self) -> dict[str, Any]:
        """The user's variables (an empty dict for magics made without a shell)."""
        return self.shell.user_ns if self.shell is not None else {}

    @property
    def client(self) -> Client:
        """The session's client: the sandbox's, or one from `%vydra login` / VYDRA_API_KEY."""
        return self.session.client

    def use_sandbox(self, *, credits: int | None = None, speed: float | None = None) -> Any:
        """Start a sandbox (or keep the running one when nothing new is asked) as this session's backend."""
        box = self.session.sandbox
        if box is None or speed is not None or credits is not None:
            box = self.session.start_sandbox(
                credits=self.sandbox_credits if credits is None else credits,
                speed=self.sandbox_speed if speed is None else speed,
            )
        return box

    def _backend_label(self) -> str:
        client = self.session.existing_client
        return "SANDBOX" if client is not None and client.is_sandbox else "vydra.ai"

    # -- %%vydra ----------------------------------------------------------------------------
    @needs_local_scope
    @no_var_expand
    @_named(cell_magic, "vydra")
    @user_errors
    def vydra_cell(self, line: str, cell: str, local_ns: Mapping[str, Any] | None = None) -> Any:
        slug = model_slug(line)
        if "--sandbox" in split_line(line) and self.session.sandbox is None:
            self.use_sandbox()
        model = self.client.model(slug)
        cmd = parse_cell(line, cell, model, _namespace(self.user_ns, local_ns))
        if cmd.timeout is not None and not (cmd.wait or self.default_wait):
            own = shadowed(model)
            hint = (f", or give {slug}'s own `timeout` parameter as {param_flags(model)['timeout']}"
                    if "timeout" in own else "")
            raise UsageError(f"--timeout limits how long --wait waits, and this cell does not wait; add --wait{hint}.")
        from vydra_nb.api.inputs import stand_ins

        bodies = request_bodies(cmd, model)
        client = self.client
        wait_inputs: bool | float = (cmd.timeout or True) if (cmd.wait or self.default_wait) else False
        # Every combination is checked before any is sent: its schema, and its inputs (a Job has
        # finished, or with --wait is waited for; a local file is an image within the upload limit).
        prepared = [client.prepare(model, body, wait_inputs=wait_inputs)[1] for body in bodies]
        prices = [model.price(stand_ins(b)) for b in prepared]
        total = None if any(p is None for p in prices) else sum(p for p in prices if p is not None)
        if cmd.dry_run:
            return self._dry_run(model, prepared, total, cmd)
        if cmd.max_credits is not None:
            if total is None:
                raise UsageError(f"The price of {slug} is not known, so --max-credits {cmd.max_credits} cannot be checked.")
            if total > cmd.max_credits:
                raise UsageError(
                    f"This costs {total} credits ({self._dollars(total)}), above --max-credits {cmd.max_credits}; nothing was sent."
                )
        # Every budget of the session, before the question and before anything is sent.
        client.check_budget(total, tag=cmd.tag, what=self._what(slug, len(bodies)))
        if total is not None and not cmd.yes:
            self._confirm(total, len(bodies))
        if cmd.is_sweep:
            return self._sweep(cmd, model, bodies, wait_inputs)
        job = client.generate(model, prepared[0], wait_inputs=wait_inputs, tag=cmd.tag)
        if cmd.output_var:
            self.user_ns[cmd.output_var] = job
        if cmd.wait or self.default_wait:
            self._show(job)
            finished = self._wait(job, cmd.timeout)
            if finished:
                # The live view has done its work: replace it with the final result, which the
                # returned Job displays. Every front end (nbval and nbconvert too) then holds the
                # finished player, without relying on display updates they may not apply.
                from IPython.display import clear_output

                clear_output()
            else:
                self._shown.add(job)
        return job

    def _dry_run(self, model: Model, bodies: list[dict[str, Any]], total: int | None, cmd: Any = None) -> None:
        """Show each request and the cost (one mimebundle: the body holds a prompt and a server's slug)."""
        import json

        from vydra_nb.api.inputs import LocalFile

        label = " · SANDBOX" if self.client.is_sandbox else ""
        lines = []
        files: dict[str, tuple[LocalFile, str | None]] = {}

        def shown_value(value: Any) -> Any:
            if isinstance(value, list):
                return [shown_value(v) for v in value]
            if isinstance(value, LocalFile):
                known = self.client.known_upload(value.sha256)
                files[value.sha256] = (value, known.url if known is not None else None)
                return known.url if known is not None else f"<upload of {value.describe()}>"
            return value

        for body in bodies:
            lines.append(f"POST {self.client.base_url}/models/{model.slug}{label}")
            lines.append(json.dumps({k: shown_value(v) for k, v in body.items()}, indent=2, ensure_ascii=False))
        for file, url in files.values():
            if url is None:
                lines.append(f"Upload first (free, once): {file.shown} -> POST {self.client.base_url}/upload")
            else:
                lines.append(f"Uploaded before (the same content): {file.shown} is at {url}; no upload.")
        unit = f"per {model.pricing_unit}" if model.pricing_unit else "each"
        shown = total if total is not None else "?"
        if len(bodies) > 1:
            cost = f"{len(bodies)} requests, {shown} credits ({self._dollars(total)}) in all"
        else:
            cost = f"{shown} credits ({self._dollars(total)}) {unit}"
        lines.append(f"Cost: {cost}. Nothing was sent (--dry-run).")
        # What the same cell without --dry-run would do: a dry run that says nothing of a refusal
        # to come is taken for a green light.
        max_credits = cmd.max_credits if cmd is not None else None
        if max_credits is not None and total is None:
            lines.append(f"Warning: the price is not known, so the real run would be refused by --max-credits {max_credits}.")
        elif max_credits is not None and total is not None and total > max_credits:
            lines.append(f"Warning: the real run would be refused: {total} credits is above --max-credits {max_credits}.")
        elif (refusal := self._budget_refusal(total, cmd, model.slug, len(bodies))) is not None:
            lines.append(f"Warning: the real run would be refused: {refusal}")
        elif self._asks_first(total) and not (cmd and cmd.yes):
            lines.append(f"Note: the real run would ask before submitting: {total} credits is above "
                         f"VydraMagics.confirm_above={self.confirm_above} (--yes skips the question).")
        show_text("\n".join(lines))

    @staticmethod
    def _what(slug: str, count: int) -> str:
        """How a budget refusal names the submission: "This veo3 job", "This sweep of 6 veo3 jobs"."""
        return f"This sweep of {count} {slug} jobs" if count > 1 else f"This {slug} job"

    def _budget_refusal(self, total: int | None, cmd: Any, slug: str, count: int) -> str | None:
        """What the session's budgets would say of a real run of this dry run, if they refuse it."""
        from vydra_nb.api.errors import BudgetExceededError

        try:
            self.client.check_budget(total, tag=getattr(cmd, "tag", None), what=self._what(slug, count))
        except BudgetExceededError as exc:
            return str(exc).replace("; nothing was sent", "")
        return None

    def _asks_first(self, total: int | None) -> bool:
        """Whether a submission of ``total`` credits asks for confirmation (``confirm_above``)."""
        return bool(self.confirm_above) and total is not None and total > self.confirm_above

    def _confirm(self, total: int, count: int) -> None:
        if not self._asks_first(total):
            return
        question = (f"This submits {count} job(s) for {total} credits ({self._dollars(total)}), above "
                    f"VydraMagics.confirm_above={self.confirm_above}. Submit? [y/N] ")
        try:
            answer = input(question)
        except (StdinNotImplementedError, EOFError, RuntimeError, OSError):
            raise UsageError(
                f"This costs {total} credits ({self._dollars(total)}), above VydraMagics.confirm_above="
                f"{self.confirm_above}; add --yes to submit without asking."
            ) from None
        if answer.strip().lower() not in ("y", "yes"):
            raise UsageError("Not submitted.")

    def _sweep(self, cmd: Any, model: Model, bodies: list[dict[str, Any]], wait_inputs: bool | float = False) -> Any:
        from vydra_nb.analysis.sweeps import sweep

        grid = {**{k: [v] for k, v in cmd.params.items()}, **cmd.grid}
        # Cost was shown and confirmed above; the sweep prints it again with its grid of views.
        result = sweep(model, cmd.prompts or None, parameters=grid, client=self.client,
                       confirm_above=None, max_credits=cmd.max_credits, wait_inputs=wait_inputs, tag=cmd.tag)
        if cmd.output_var:
            self.user_ns[cmd.output_var] = result
        if cmd.wait or self.default_wait:
            try:
                result.wait(cmd.timeout)
            except KeyboardInterrupt:
                print("Stopped waiting; the sweep's jobs go on. Cancel one with `%vydra cancel ID`.", file=sys.stderr)
                return result
            except (TimeoutError, VydraError) as exc:
                print(str(exc), file=sys.stderr)
                return result
            for job in result.jobs:
                self._save(job)
            # As for one job: the live grid gives way to the final results, which the returned
            # Sweep renders as plain HTML that every front end keeps.
            from IPython.display import clear_output

            clear_output()
        return result

    def _show(self, job: Job) -> None:
        """The live view while ``--wait`` blocks; cleared and replaced by the result at the end."""
        try:
            from vydra_nb.views.job_view import show_job, widgets_available
        except ImportError:  # pragma: no cover
            return
        show_job(job, transient=widgets_available())

    def _wait(self, job: Job, timeout: float | None) -> bool:
        """Wait for the job (and save its result); False when the user or the timeout stopped it."""
        from vydra_nb.api.errors import JobTimeoutError

        try:
            job.wait(timeout=timeout, raise_on_failure=False)
        except KeyboardInterrupt:
            print(f"Stopped waiting; job {job.id} goes on. Cancel it with `%vydra cancel {job.id}`.", file=sys.stderr)
            return False
        except JobTimeoutError as exc:
            print(str(exc), file=sys.stderr)
            return False
        self._save(job)
        return True

    def _save(self, job: Job) -> None:
        """Download a completed result within the cell (``auto_download``), so the final output
        already points at the saved file."""
        if self.auto_download and job.status == "completed" and job.local_path is None:
            try:
                job.download()
            except VydraError as exc:
                print(f"Could not save {job.id}'s result: {exc}", file=sys.stderr)

    vydra_cell.__doc__ = cell_help()

    # -- %vydra -----------------------------------------------------------------------------
    @needs_local_scope
    @no_var_expand
    @_named(line_magic, "vydra")
    @user_errors
    def vydra_line(self, line: str, local_ns: Mapping[str, Any] | None = None) -> Any:
        tokens = split_line(line)
        if tokens and tokens[0] != "generate":  # a generate line holds a cell's flags, kept as typed
            tokens = split_line(line, comments=True)
        if not tokens:
            return self._help([])
        if tokens[0] in EXPANDED_COMMANDS and ("$" in line or "{" in line):
            tokens = split_line(self._expand(line, local_ns), comments=True)
        command, args = tokens[0], tokens[1:]
        handler = getattr(self, f"_cmd_{command}", None) if command in LINE_PARSERS else None
        if handler is None:
            import difflib

            close = difflib.get_close_matches(command, list(COMMANDS), n=1)
            hint = f" Did you mean `%vydra {close[0]}`?" if close else ""
            raise UsageError(f"Unknown command {shown(command)}.{hint} Try `%vydra help`.")
        return handler(args)

    vydra_line.__doc__ = line_help()

    def _expand(self, line: str, local_ns: Mapping[str, Any] | None = None) -> str:
        """``{expr}`` and ``$var`` expanded as IPython expands other magics' lines.

        The line magic opts out of IPython's expansion (``@no_var_expand``) so that a ``generate``
        line reaches us as typed; for the commands that take ids this does what IPython would
        have done, with IPython's own formatter, over the user's namespace and the caller's local
        variables (``@needs_local_scope``: a ``%vydra`` line inside a function sees that
        function's variables, as ``%time`` would). What cannot be expanded stays as typed, as in
        IPython's ``var_expand``.
        """
        from IPython.utils.text import DollarFormatter

        names = dict(self.user_ns)
        if local_ns is not None:
            names.update(local_ns)
        try:
            return DollarFormatter().vformat(line, args=[], kwargs=names)
        except Exception:  # noqa: BLE001 - IPython's rule: a line it cannot expand is used as typed
            return line

    def _cmd_generate(self, args: list[str]) -> Any:
        """``%vydra generate MODEL [flags]``: a cell with no body, for models that take no prompt."""
        if not args:
            raise UsageError(f"Usage: {LINE_PARSERS['generate'].usage_line()}")
        return self.vydra_cell(shlex.join(args), "")

    def _cmd_help(self, args: list[str]) -> None:
        topic = parse_line_command("help", args).topic
        return self._help([topic] if topic else [])

    def _help(self, args: list[str]) -> None:
        if not args:
            print("%%vydra MODEL [flags]   (the cell body is the prompt)")
            for flag, text in GENERIC_FLAGS.items():
                print(f"    {flag:<16}{text}")
            print("%vydra COMMAND")
            for name, text in COMMANDS.items():
                print(f"    {name:<9}{text}")
            print("Model flags come from each model's schema: `%vydra help MODEL`. A model parameter named "
                  f"like a flag above (say `timeout`) is {PARAM_PREFIX}timeout. `%vydra help COMMAND`: its options.")
            return
        if args[0] in LINE_PARSERS:
            print(LINE_PARSERS[args[0]].format_help().rstrip())
            return
        model = self.client.model(args[0])
        price = ", ".join(f"{c} credits" + (f" ({label})" if label else "") for label, c in model.price_variants())
        state = "" if model.is_active else "  [inactive]"
        lines = [f"{model.slug} — {model.name or ''}{state}\n  {model.description or ''}",
                 f"  provider {model.provider}; price: {price} per {model.pricing_unit or 'request'}"]
        if model.prompt_field:
            lines.append(f"  the cell body fills `{model.prompt_field}`")
        from vydra_nb.api.models import bounds_text

        params = model.parameters
        flags = param_flags(model)
        # Long flags (--keep-original-sound/--no-keep-original-sound) widen the column: the two
        # columns never run together.
        width = max([28, *(len("/".join(flag_names(p, flags[p.name]))) + 2 for p in params)])
        for p in params:
            bits = [p.type or "any"]
            if p.enum:
                bits.append("one of " + ", ".join(map(str, p.enum)))
            if p.minimum is not None and p.maximum is not None:
                bits.append(f"{p.minimum}..{p.maximum}")
            elif p.minimum is not None or p.maximum is not None:
                bits.append(bounds_text(p.minimum, p.maximum) or "")
            if p.default is not None:
                bits.append(f"default {p.default}")
            if p.required:
                bits.append("required")
            names = "/".join(flag_names(p, flags[p.name]))
            lines.append(f"    {names:<{width}}{'; '.join(bits)}" + (f" — {p.description}" if p.description else ""))
        for name, cell_flag in shadowed(model).items():
            if cell_flag == "--out":  # only an alias of -o: refused on this model rather than guessed
                lines.append(f"  `{name}` is named like --out, the cell's -o: give {model.slug}'s `{name}` as "
                             f"{flags[name]} (--out alone is refused here as ambiguous).")
            else:
                lines.append(f"  `{name}` is named like the cell's own {cell_flag}, which keeps its meaning: "
                             f"give {model.slug}'s `{name}` as {flags[name]}.")
        show_text("\n".join(lines))

    def _cmd_models(self, args: list[str]) -> Any:
        from vydra_nb.analysis.frames import models_df

        opts = parse_line_command("models", args)
        provider, active_only = opts.provider, not opts.all
        if provider is not None:
            every = self.client.models()
            matching = [m for m in every if m.provider == provider]
            if not matching:
                providers = ", ".join(sorted({m.provider for m in every if m.provider})) or "none"
                raise UsageError(f"No models from provider {shown(provider)}; providers: {providers}.")
            if active_only and not any(m.is_active for m in matching):
                raise UsageError(f"Provider {shown(provider)} has no active models; add --all to see its inactive ones.")
        return models_df(provider=provider, active_only=active_only, client=self.client)

    def _cmd_credits(self, args: list[str]) -> None:
        import warnings

        parse_line_command("credits", args)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            org = self.client.organization()
        remaining = org.credits_remaining
        print(f"{remaining:,} credits remaining ({self._dollars(remaining)}) · plan {org.plan} · {self._backend_label()}"
              if remaining is not None else f"Balance unknown · plan {org.plan}")
        if remaining is not None and remaining < self.low_credit_threshold:
            print(f"Warning: below {self.low_credit_threshold} credits; top up before long jobs.", file=sys.stderr)

    def _cmd_jobs(self, args: list[str]) -> Any:
        opts = parse_line_command("jobs", args)  # --status is checked and mapped to the history's word
        if opts.sync:
            self._sync()
        if opts.resume:
            count = self.resume()
            print(f"Resumed tracking {count} unfinished job(s).")
        from vydra_nb.analysis.frames import jobs_df

        df = jobs_df(model=opts.model, status=opts.status).head(opts.limit)
        return df if opts.all_columns else compact_jobs(df)

    SYNC_PAGE = 100
    SYNC_MAX = 2000  # 20 status checks: a fifth of a minute's budget, far past any lost job's age

    def _sync(self) -> None:
        """Merge the server's job list into the history, newest first, page by page.

        It reads on past jobs already known: a job whose submission answer was lost (an
        ``OutcomeUnknownError``) may sit behind any number of newer ones.
        """
        from vydra_nb.api.errors import NotFoundError
        synced = 0
        try:
            while synced < self.SYNC_MAX:
                page = self.client.list_jobs(limit=self.SYNC_PAGE, offset=synced)
                self.session.history().record_many(page)
                synced += len(page)
                if len(page) < self.SYNC_PAGE:
                    break
        except NotFoundError:
            print("This server has no job listing (GET /jobs answered 404): the history holds the jobs "
                  "submitted from vydra-nb only.")
            return
        more = " (the newest; older ones were left alone)" if synced >= self.SYNC_MAX else ""
        print(f"Synced {synced} job(s) from the server into the history{more}.")

    def resume(self) -> int:
        """Track again every unfinished job of this backend recorded in the history."""
        return self.session.resume()

    def _cmd_job(self, args: list[str]) -> Any:
        job_id = parse_line_command("job", args).id
        from vydra_nb.tracking.history import job_from_row

        row = self.session.history().get(job_id)
        try:
            client = self.client
        except VydraError as exc:  # no key, no sandbox: what the history knows is still worth showing
            if row is None:
                raise
            return self._from_history(row, f"the service cannot be asked ({one_line(str(exc), 80)})")
        known = client.registry.get(client.host, job_id)
        if known is not None and known.done:
            return known
        if row is not None:
            if row.get("status") == "lost":
                return self._from_history(row, "the sandbox that ran it is gone")
            if not host_matches(row.get("host"), client.base_url):
                return self._from_history(row, f"it ran on {row.get('host')}, not on the server in use")
            if row.get("status") in ("completed", "failed", "cancelled"):
                return client.adopt(job_from_row(row))
        try:
            job = client.job(job_id)
        except VydraError as exc:
            if row is None:
                with self._job_not_found(job_id):
                    raise
            return self._from_history(row, f"the service cannot be asked ({one_line(str(exc), 80)})")
        if row is not None and not job.params:
            job.params = row.get("params") or {}
        return job

    def _from_history(self, row: dict[str, Any], why: str) -> Any:
        """The history's record of a job, shown plainly (status, prompt, cost, saved file, a player
        for a saved file), saying that it comes from the history and why."""
        from IPython.display import HTML

        from vydra_nb.tracking.history import job_from_row
        from vydra_nb.views import display as D

        job = job_from_row(row)
        print(f"Job {job.id}: from the history, since {why}.")
        return HTML(D.job_html(job))

    def _cmd_cancel(self, args: list[str]) -> None:
        job_id = parse_line_command("cancel", args).id
        client = self.client
        live = client.registry.get(client.host, job_id)
        with self._job_not_found(job_id):
            result = client.cancel(job_id, job=live)  # updates the live view and the history
        print(str(result))

    @contextlib.contextmanager
    def _job_not_found(self, job_id: str) -> Iterator[None]:
        """A 404 for a job id names the id and the server asked: "Job not found." alone does not
        say whether the id was mistyped or belongs to another backend."""
        from vydra_nb.api.errors import NotFoundError

        try:
            yield
        except NotFoundError as exc:
            if exc.status_code != 404:
                raise
            raise UsageError(f"Job {shown(job_id)} not found on {self.client.base_url}.") from None

    def _cmd_login(self, args: list[str]) -> None:
        import getpass

        parse_line_command("login", args)
        key = getpass.getpass("Vydra API key (kept in memory only): ").strip()
        if not key:
            raise UsageError("No key entered; nothing changed.")
        self.session.login(key)
        del key
        org = self.client.organization()
        print(f"Logged in to {self.client.base_url} · {org.name} · plan {org.plan} · "
              f"{org.credits_remaining:,} credits" if org.credits_remaining is not None else "Logged in.")
        if self.resume_on_load:  # what %load_ext does when the key comes from the environment
            count = self.resume()
            if count:
                print(f"Resumed tracking {count} unfinished job(s) from earlier sessions.")

    def _cmd_logout(self, args: list[str]) -> None:
        parse_line_command("logout", args)
        self.session.logout()
        print("Forgot the API key for this session.")

    def _cmd_sandbox(self, args: list[str]) -> None:
        # The parser checks --speed (positive) and --credits (at least 0), so a typo is a one-line
        # UsageError, not the sandbox's ValueError traceback.
        opts = parse_line_command("sandbox", args)
        if opts.stop:
            lost = self.session.stop_sandbox()
            if lost is None:
                print("No sandbox is running; nothing changed.")
                return
            if lost:
                print(f"{lost} unfinished sandbox job(s) went with it; the history marks them lost.")
            print("Sandbox stopped; the session uses the real service again.")
            return
        old = self.session.sandbox
        if old is not None and (opts.credits is not None or opts.speed is not None):
            lost = self.session.stop_sandbox() or 0
            went = f"; {lost} unfinished job(s) went with it (marked lost in the history)" if lost else ""
            print(f"Stopped the sandbox at {old.url} and its fake credits{went}.")
        elif old is not None:
            print(f"A sandbox is already running at {old.url}: keeping it and its jobs "
                  "(give --credits or --speed for a new one, --stop to stop it).")
        box = self.use_sandbox(credits=opts.credits, speed=opts.speed)
        print(f"SANDBOX at {box.url} · {box.state()['balance']:,} fake credits · speed ×{box.speed:g}. "
              "Nothing here costs money.")

    def _cmd_budget(self, args: list[str]) -> None:
        """``%vydra budget [N] [--per session|day|tag NAME] [--clear]``: set, show or clear budgets."""
        from vydra_nb.notebook.magic_args import budget_args

        opts = parse_line_command("budget", budget_args(args))
        budgets = self.session.budgets
        per = opts.per
        explicit = any(a == "--per" or a.startswith("--per=") for a in args)
        if opts.clear:
            if opts.limit is not None:
                raise UsageError("Give either a budget or --clear, not both.")
            removed = budgets.clear(per if explicit else None)
            print("Removed the " + ", ".join(f"{b.scope} budget" for b in removed) + "." if removed
                  else "No such budget; nothing changed.")
            return
        if opts.limit is not None:
            budgets.set(opts.limit, per=per)
        self._show_budgets()

    def _show_budgets(self) -> None:
        """Each budget: its size, what is used (spent and in flight) and what is left, on this backend."""
        client = self.client
        statuses = self.session.budgets.status(client.backend)
        if not statuses:
            print("No budget is set. `%vydra budget 2000` caps this session's spend; add --per day, or "
                  "--per tag NAME for a project's tagged jobs.")
            return
        rate = client.usd_rate()
        kind = "sandbox credits" if client.is_sandbox else "credits"
        width = max(len(st.budget.scope) for st in statuses)
        for st in statuses:
            b = st.budget
            when = " today" if b.per == "day" else ""
            print(f"{b.scope + ' budget':<{width + 7}} {b.limit:>9,} {kind}: {st.used:,} used{when}, "
                  f"{st.left:,} left ({rate.format(st.left)})")
        print("Refused before sending: a submission, sweep or studio click that would cross one. "
              "Cancelled and failed jobs give their credits back.")

    def _cmd_studio(self, args: list[str]) -> Any:
        from vydra_nb.notebook.studio import studio

        parse_line_command("studio", args)
        return studio(self.client)

    def display_job(self, job: Job) -> None:
        """How a Job shows itself in a cell: the live view, unless this cell already showed it."""
        if job in self._shown:
            self._shown.discard(job)
            return
        from vydra_nb.views.job_view import show_job

        show_job(job, tracker=self.session.tracker)

    # -- completion -------------------------------------------------------------------------
    def completions(self, line: str) -> list[str]:
        """What may come next on a ``%%vydra``/``%vydra`` line (for the tab completer).

        Never raises: a half-typed line (an open quote, a trailing backslash) is the normal case
        here, and an exception in a completer prints a traceback at every Tab press. Unknown
        models and servers that cannot be reached offer nothing.
        """
        try:
            return self._completions(_words_so_far(line))
        except VydraError:
            return []
        except Exception:  # noqa: BLE001 - see above; kept for debugging, never shown while typing
            log.debug("completion of %r failed", line[:200], exc_info=True)
            return []

    def _completions(self, words: list[str]) -> list[str]:
        if not words:
            return []
        magic, rest = words[0], words[1:]
        if magic == "%%vydra":
            return self._cell_completions(rest)
        if magic != "%vydra" or not rest:
            return []
        if len(rest) == 1:
            return [c for c in COMMANDS if c.startswith(rest[0])]
        command, args = rest[0], rest[1:]
        if command == "generate":
            return self._cell_completions(args)
        if command == "help":
            return (self._slugs(args[0]) + [c for c in COMMANDS if c.startswith(args[0])]) if len(args) == 1 else []
        parser = LINE_PARSERS.get(command)
        if parser is None or not parser.options:
            return []  # job ID, cancel ID, credits...: nothing to offer
        prefix = args[-1]
        previous = args[-2] if len(args) >= 2 else ""
        if prefix.startswith("-") and "=" in prefix:
            previous, _, prefix = prefix.partition("=")
        if previous in parser.value_options:
            return [v for v in self._option_values(command, previous) if v.startswith(prefix)]
        return [o for o in parser.options if o.startswith(prefix)] if not prefix or prefix.startswith("-") else []

    def _option_values(self, command: str, option: str) -> list[str]:
        if option == "--status":
            return list(JOB_STATUSES)
        if option == "--provider":
            return sorted({m.provider for m in self.client.models() if m.provider})
        return []

    def _cell_completions(self, rest: list[str]) -> list[str]:
        """``%%vydra MODEL --flag VALUE...`` (also the words after ``%vydra generate``)."""
        if len(rest) <= 1:
            return self._slugs(rest[0] if rest else "")
        model = self.client.model(rest[0])
        prefix, previous = rest[-1], rest[-2]
        if prefix.startswith("-") and "=" in prefix:
            previous, _, prefix = prefix.partition("=")
        table = cell_flag_table(model)
        if previous in table:
            param, _, _ = table[previous]
            if param.enum is not None and param.type != "boolean":
                return [str(v) for v in param.enum if str(v).startswith(prefix)]
        if prefix and not prefix.startswith("-"):
            return []
        flags = param_flags(model)
        offered = [f for p in model.parameters for f in flag_names(p, flags[p.name])] + list(GENERIC_FLAGS)
        return [f for f in offered if f.startswith(prefix)]

    def _slugs(self, prefix: str) -> list[str]:
        try:
            return [m.slug for m in self.client.models() if m.slug.startswith(prefix) and m.is_active]
        except VydraError:
            return []


def _words_so_far(line: str) -> list[str]:
    """The words of a line being typed, the last one possibly unfinished ("" after a space).

    An open quote or a trailing backslash is not an error here: the text after it is the word
    being typed.
    """
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    words: list[str] = []
    try:
        words.extend(lexer)
    except ValueError:  # "No closing quotation", "No escaped character": the word in progress
        words.append(lexer.token)
        return words
    if line[-1:].isspace():
        words.append("")
    return words


_MATCHER_NAME = "_make_matcher.<locals>.vydra_matcher"


def _make_matcher(magics: VydraMagics) -> Callable[..., Any]:
    from IPython.core.completer import SimpleCompletion, context_matcher

    @context_matcher()
    def vydra_matcher(context: Any) -> dict[str, Any]:
        line = context.line_with_cursor
        if not line.lstrip().startswith(("%%vydra", "%vydra")):
            return {"completions": [], "suppress": False}
        words = magics.completions(line.lstrip())
        return {"completions": [SimpleCompletion(text=w, type="vydra") for w in words], "suppress": bool(words)}

    return vydra_matcher


# `%vydra jobs?`: IPython would look up an object named `jobs`; this shows the command's help
# (or, for `%vydra veo3?`, the model's), as `%vydra?` shows the magic's.
_HELP_END = re.compile(r"^(\s*)%vydra[ \t]+([\w.-]+)[ \t]*\?{1,2}[ \t]*$")


def vydra_help_end(lines: list[str]) -> list[str]:
    """An input transformer (IPython's ``input_transformers_cleanup``): ``%vydra WORD?`` -> ``%vydra help WORD``.

    Only a line that is exactly that, and never in a ``%%`` cell, whose body is not Python.
    """
    if not lines or lines[0].lstrip().startswith("%%"):
        return lines
    out = []
    for line in lines:
        match = _HELP_END.match(line.rstrip("\r\n"))
        out.append(f"{match.group(1)}%vydra help {match.group(2)}\n" if match else line)
    return out


def compact_jobs(df: Any) -> Any:
    """What `%vydra jobs` shows by default: id, model, status, credits, prompt, age and file, not the
    twenty-odd columns of ``jobs_df()`` (``--all-columns`` shows those)."""
    import pandas as pd

    out = pd.DataFrame(index=df.index)
    for column in ("id", "model", "status"):
        out[column] = df[column]
    out["credits"] = df["credits_charged"].fillna(0).astype("Int64") - df["credits_refunded"].fillna(0).astype("Int64")
    out["prompt"] = df["prompt"].map(lambda p: p if not isinstance(p, str) or len(p) <= 60 else p[:59] + "…")
    now = pd.Timestamp.now(tz="UTC")
    out["age"] = (now - df["created_at"]).map(_age_text)
    out["file"] = df["local_path"].map(lambda p: p.rsplit("/", 1)[-1] if isinstance(p, str) and p else "")
    return out


def _age_text(delta: Any) -> str:
    import pandas as pd

    if delta is None or pd.isna(delta):
        return ""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(0, seconds)}s ago"


def load(shell: Any) -> VydraMagics:
    """Register the magics, the completer, and how Job objects display; resume unfinished jobs.

    Loading again (``%reload_ext``) first undoes the previous load, so there is one completer
    and one display hook whatever the number of loads.
    """
    unload(shell)
    magics = VydraMagics(shell)
    shell.register_magics(magics)
    formatter = shell.display_formatter.ipython_display_formatter
    formatter.for_type_by_name("vydra_nb.api.jobs", "Job", magics.display_job)
    completer = getattr(shell, "Completer", None)
    if completer is not None:
        completer.custom_matchers.append(_make_matcher(magics))
    transformers = getattr(shell, "input_transformers_cleanup", None)
    if transformers is not None:
        transformers.append(vydra_help_end)
    if magics.resume_on_load:
        threading.Thread(target=_resume_quietly, args=(magics,), name="vydra-resume", daemon=True).start()
    return magics


def unload(shell: Any) -> None:
    """Remove what ``load`` added: the completer, the ``%vydra WORD?`` transformer and the Job
    display hook (IPython offers no way to remove registered magics; a later load replaces them).

    Matched by name, not identity: after ``%reload_ext`` the module's functions are new objects.
    """
    completer = getattr(shell, "Completer", None)
    if completer is not None:
        completer.custom_matchers[:] = [m for m in completer.custom_matchers
                                        if getattr(m, "__qualname__", "") != _MATCHER_NAME]
    transformers = getattr(shell, "input_transformers_cleanup", None)
    if transformers is not None:
        transformers[:] = [t for t in transformers if getattr(t, "__qualname__", "") != vydra_help_end.__qualname__
                           or getattr(t, "__module__", "") != __name__]
    formatter = shell.display_formatter.ipython_display_formatter
    jobs_module = sys.modules.get("vydra_nb.api.jobs")
    if jobs_module is not None:
        formatter.type_printers.pop(jobs_module.Job, None)
    formatter.deferred_printers.pop(("vydra_nb.api.jobs", "Job"), None)


def _resume_quietly(magics: VydraMagics) -> None:
    """Resume in the background so %load_ext stays fast; only when a key is configured."""
    import os

    from vydra_nb.api.settings import ENV_API_KEY, data_home

    if not os.environ.get(ENV_API_KEY) or not (data_home() / "history.sqlite3").exists():
        return
    try:
        count = magics.resume()
        if count:
            log.info("resumed tracking %d unfinished job(s)", count)
    except Exception:  # resuming is a convenience; it must never break loading
        log.exception("could not resume unfinished jobs")
