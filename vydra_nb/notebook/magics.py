"""``%%vydra`` and ``%vydra``: generating media from a notebook cell.

Loading the extension must be fast, so this module imports neither requests, pandas, ipywidgets
nor any media library at import time; each command imports what it needs when it runs. User
mistakes (a bad flag, an unknown model, a 402) become one-line ``UsageError``s; bugs still raise.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from IPython.core.error import StdinNotImplementedError, UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Bool, Float, Int, Unicode, observe

from vydra_nb.api.settings import USD_PER_CREDIT
from vydra_nb.api.errors import VydraError, one_line, shown
from vydra_nb.notebook.magic_args import GENERIC_FLAGS, flag_names, model_slug, parse_cell, request_bodies, split_line

if TYPE_CHECKING:
    from vydra_nb.api.jobs import Job
    from vydra_nb.api.models import Model
    from vydra_nb.session import Session
    from vydra_nb.session.client import Client

log = logging.getLogger("vydra_nb")

ERROR_CHARS = 300  # the longest error a cell shows; longer texts are cut with "…"

COMMANDS = {
    "models": "[--provider P] [--all]   models and prices",
    "credits": "                         balance and plan",
    "jobs": "[--status S] [--limit N] [--sync] [--resume]   recent jobs from the history",
    "generate": "MODEL [flags]            submit without a prompt (e.g. video utilities)",
    "job": "ID                        show (and track) a job",
    "cancel": "ID                        cancel a job; credits are refunded",
    "login": "                          enter an API key (kept in memory only)",
    "logout": "                         forget the key",
    "sandbox": "[--credits N] [--speed X] [--stop]   use a local sandbox server",
    "studio": "                         the prompt-iteration widget",
    "help": "[MODEL]                   commands, or a model's parameters and price",
}

# Line commands whose arguments are ids and plain options: ``{expr}`` and ``$var`` in them are
# expanded from the user's variables, as IPython does for other line magics. ``generate`` (a cell
# line without a body) and ``%%vydra`` lines are left alone: prompts use our own ``{name}`` filling.
EXPANDED_COMMANDS = frozenset({"job", "cancel", "jobs", "models", "credits", "sandbox", "help"})

# The statuses `%vydra jobs --status` accepts; "processing" is how some servers say "running",
# and the history stores it as "running".
JOB_STATUSES = {"pending": "pending", "processing": "running", "running": "running",
                "completed": "completed", "failed": "failed", "cancelled": "cancelled"}

# What the option parser calls each type in its messages, as the cell flags do.
_KIND_WORDS = {int: "a whole number", float: "a number", str: "a value"}


def _dollars(credits: int | None) -> str:
    return "?" if credits is None else f"${credits * USD_PER_CREDIT:,.2f}"


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

    def __init__(self, shell: Any = None, *, session: Session | None = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        from vydra_nb.session import current

        self.session = session or current()
        self._shown: weakref.WeakSet[Job] = weakref.WeakSet()  # jobs whose view this cell already shows
        self._push_settings()

    # -- settings: the session reads them live ----------------------------------------------
    @observe("auto_download", "low_credit_threshold", "download_dir")
    def _settings_changed(self, change: Any = None) -> None:
        self._push_settings()

    def _push_settings(self) -> None:
        """Copy the traits the core reads into the session's settings (on load and on every change)."""
        from pathlib import Path

        settings = self.session.settings
        settings.auto_download = self.auto_download
        settings.low_credit_threshold = self.low_credit_threshold
        settings.download_dir = Path(self.download_dir).expanduser() if self.download_dir else None

    # -- session ----------------------------------------------------------------------------
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
    @no_var_expand
    @cell_magic("vydra")
    @user_errors
    def vydra_cell(self, line: str, cell: str) -> Any:
        """%%vydra MODEL [--param VALUE ...] [-o NAME] [--wait] [--dry-run] [--max-credits N]

        The cell body is the prompt; {names} are filled from your variables ({{ for a brace).
        """
        slug = model_slug(line)
        if "--sandbox" in split_line(line) and self.session.sandbox is None:
            self.use_sandbox()
        model = self.client.model(slug)
        cmd = parse_cell(line, cell, model, self.shell.user_ns if self.shell else {})
        bodies = request_bodies(cmd, model)
        client = self.client
        for body in bodies:  # every combination is checked before any is sent
            client.prepare(model, body)
        prices = [model.price(b) for b in bodies]
        total = None if any(p is None for p in prices) else sum(p for p in prices if p is not None)
        if cmd.dry_run:
            return self._dry_run(model, bodies, total, cmd)
        if cmd.max_credits is not None:
            if total is None:
                raise UsageError(f"The price of {slug} is not known, so --max-credits {cmd.max_credits} cannot be checked.")
            if total > cmd.max_credits:
                raise UsageError(
                    f"This costs {total} credits ({_dollars(total)}), above --max-credits {cmd.max_credits}; nothing was sent."
                )
        if total is not None and not cmd.yes:
            self._confirm(total, len(bodies))
        if cmd.is_sweep:
            return self._sweep(cmd, model, bodies)
        job = client.generate(model, bodies[0])
        if cmd.output_var:
            self.shell.user_ns[cmd.output_var] = job
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
        import json

        label = " · SANDBOX" if self.client.is_sandbox else ""
        for body in bodies:
            print(f"POST {self.client.base_url}/models/{model.slug}{label}")
            print(json.dumps(body, indent=2, ensure_ascii=False))
        unit = f"per {model.pricing_unit}" if model.pricing_unit else "each"
        shown = total if total is not None else "?"
        if len(bodies) > 1:
            cost = f"{len(bodies)} requests, {shown} credits ({_dollars(total)}) in all"
        else:
            cost = f"{shown} credits ({_dollars(total)}) {unit}"
        print(f"Cost: {cost}. Nothing was sent (--dry-run).")
        # What the same cell without --dry-run would do: a dry run that says nothing of a refusal
        # to come is taken for a green light.
        max_credits = cmd.max_credits if cmd is not None else None
        if max_credits is not None and total is None:
            print(f"Warning: the price is not known, so the real run would be refused by --max-credits {max_credits}.")
        elif max_credits is not None and total is not None and total > max_credits:
            print(f"Warning: the real run would be refused: {total} credits is above --max-credits {max_credits}.")
        elif self._asks_first(total) and not (cmd and cmd.yes):
            print(f"Note: the real run would ask before submitting: {total} credits is above "
                  f"VydraMagics.confirm_above={self.confirm_above} (--yes skips the question).")

    def _asks_first(self, total: int | None) -> bool:
        """Whether a submission of ``total`` credits asks for confirmation (``confirm_above``)."""
        return bool(self.confirm_above) and total is not None and total > self.confirm_above

    def _confirm(self, total: int, count: int) -> None:
        if not self._asks_first(total):
            return
        question = (f"This submits {count} job(s) for {total} credits ({_dollars(total)}), above "
                    f"VydraMagics.confirm_above={self.confirm_above}. Submit? [y/N] ")
        try:
            answer = input(question)
        except (StdinNotImplementedError, EOFError, RuntimeError, OSError):
            raise UsageError(
                f"This costs {total} credits ({_dollars(total)}), above VydraMagics.confirm_above="
                f"{self.confirm_above}; add --yes to submit without asking."
            ) from None
        if answer.strip().lower() not in ("y", "yes"):
            raise UsageError("Not submitted.")

    def _sweep(self, cmd: Any, model: Model, bodies: list[dict[str, Any]]) -> Any:
        from vydra_nb.analysis.sweeps import sweep

        grid = {**{k: [v] for k, v in cmd.params.items()}, **cmd.grid}
        # Cost was shown and confirmed above; the sweep prints it again with its grid of views.
        result = sweep(model, cmd.prompts or None, parameters=grid, client=self.client,
                       confirm_above=None, max_credits=cmd.max_credits)
        if cmd.output_var:
            self.shell.user_ns[cmd.output_var] = result
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

    # -- %vydra -----------------------------------------------------------------------------
    @no_var_expand
    @line_magic("vydra")
    @user_errors
    def vydra_line(self, line: str) -> Any:
        """%vydra models | credits | jobs | job ID | cancel ID | login | logout | sandbox | studio | help"""
        tokens = split_line(line)
        if not tokens:
            return self._help([])
        if tokens[0] in EXPANDED_COMMANDS and ("$" in line or "{" in line):
            tokens = split_line(self._expand(line))
        command, args = tokens[0], tokens[1:]
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            import difflib

            close = difflib.get_close_matches(command, list(COMMANDS), n=1)
            hint = f" Did you mean `%vydra {close[0]}`?" if close else ""
            raise UsageError(f"Unknown command {command!r}.{hint} Try `%vydra help`.")
        return handler(args)

    def _expand(self, line: str) -> str:
        """``{expr}`` and ``$var`` expanded by IPython's own ``var_expand``, in the user's frame.

        The line magic opts out of IPython's expansion (``@no_var_expand``) so that a ``generate``
        line reaches us as typed; for the commands that take ids this does what IPython would
        have done. ``var_expand`` reads the local variables of the frame ``depth`` levels above
        its caller: IPython passes its own distance to the user's frame (``_stack_depth``) from
        ``run_line_magic``, so we add how far below ``run_line_magic`` this method runs (a
        ``%vydra`` line inside a function sees that function's variables, as ``%time`` would).
        Called other than through ``run_line_magic``, only the user namespace is used.
        """
        from IPython.core.interactiveshell import InteractiveShell

        target = InteractiveShell.run_line_magic.__code__
        frame, depth = sys._getframe(0), 0
        while frame is not None and frame.f_code is not target:
            frame, depth = frame.f_back, depth + 1
        if frame is None:  # deeper than the stack: var_expand falls back on the user namespace
            return self.shell.var_expand(line, depth + 1)
        stack_depth = frame.f_locals.get("_stack_depth", 1)
        return self.shell.var_expand(line, depth + (stack_depth if isinstance(stack_depth, int) else 1))

    def _cmd_generate(self, args: list[str]) -> Any:
        """``%vydra generate MODEL [flags]``: a cell with no body, for models that take no prompt."""
        if not args:
            raise UsageError("Usage: %vydra generate MODEL [flags]")
        return self.vydra_cell(shlex.join(args), "")

    def _cmd_help(self, args: list[str]) -> None:
        return self._help(args)

    def _help(self, args: list[str]) -> None:
        if not args:
            print("%%vydra MODEL [flags]   (the cell body is the prompt)")
            for flag, text in GENERIC_FLAGS.items():
                print(f"    {flag:<16}{text}")
            print("%vydra COMMAND")
            for name, text in COMMANDS.items():
                print(f"    {name:<9}{text}")
            print("Model flags come from each model's schema: `%vydra help MODEL`.")
            return
        model = self.client.model(args[0])
        price = ", ".join(f"{c} credits" + (f" ({label})" if label else "") for label, c in model.price_variants())
        state = "" if model.is_active else "  [inactive]"
        print(f"{model.slug} — {model.name or ''}{state}\n  {model.description or ''}")
        print(f"  provider {model.provider}; price: {price} per {model.pricing_unit or 'request'}")
        if model.prompt_field:
            print(f"  the cell body fills `{model.prompt_field}`")
        from vydra_nb.api.models import bounds_text

        params = model.parameters
        # Long flags (--keep-original-sound/--no-keep-original-sound) widen the column: the two
        # columns never run together.
        width = max([28, *(len("/".join(flag_names(p))) + 2 for p in params)])
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
            flags = "/".join(flag_names(p))
            print(f"    {flags:<{width}}{'; '.join(bits)}" + (f" — {p.description}" if p.description else ""))

    def _opts(self, args: list[str], spec: dict[str, type], command: str = "") -> dict[str, Any]:
        """Tiny option parser: ``--name value`` for typed options, ``--flag`` for booleans."""
        out: dict[str, Any] = {}
        it = iter(args)
        for token in it:
            name, eq, inline = token.partition("=")
            if name not in spec:
                if not spec:
                    raise UsageError(f"`%vydra {command}` takes no options (got {shown(token)}).")
                raise UsageError(f"Unknown option {shown(token)} for `%vydra {command}`; options: {', '.join(spec)}.")
            kind = spec[name]
            key = name.lstrip("-").replace("-", "_")
            if kind is bool:
                if eq:
                    raise UsageError(f"{name} takes no value (got {shown(inline)}).")
                out[key] = True
                continue
            raw = inline if eq else next(it, None)
            if raw is None:
                raise UsageError(f"{name} needs a value.")
            try:
                out[key] = kind(raw)
            except ValueError:
                raise UsageError(f"{name} needs {_KIND_WORDS.get(kind, kind.__name__)}, not {shown(raw)}.") from None
        return out

    def _cmd_models(self, args: list[str]) -> Any:
        from vydra_nb.analysis.frames import models_df

        opts = self._opts(args, {"--provider": str, "--all": bool}, "models")
        provider, active_only = opts.get("provider"), not opts.get("all")
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

        self._opts(args, {}, "credits")
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            org = self.client.organization()
        remaining = org.credits_remaining
        print(f"{remaining:,} credits remaining ({_dollars(remaining)}) · plan {org.plan} · {self._backend_label()}"
              if remaining is not None else f"Balance unknown · plan {org.plan}")
        if remaining is not None and remaining < self.low_credit_threshold:
            print(f"Warning: below {self.low_credit_threshold} credits; top up before long jobs.", file=sys.stderr)

    def _cmd_jobs(self, args: list[str]) -> Any:
        opts = self._opts(args, {"--status": str, "--limit": int, "--sync": bool, "--resume": bool, "--model": str}, "jobs")
        status = opts.get("status")
        if status is not None:
            if status.lower() not in JOB_STATUSES:
                raise UsageError(f"--status must be one of {', '.join(JOB_STATUSES)} (got {shown(status)}).")
            status = JOB_STATUSES[status.lower()]
        limit = opts.get("limit", 20)
        if limit < 1:
            raise UsageError(f"--limit needs a whole number of at least 1, not {limit}.")
        if opts.get("sync"):
            self._sync()
        if opts.get("resume"):
            count = self.resume()
            print(f"Resumed tracking {count} unfinished job(s).")
        from vydra_nb.analysis.frames import jobs_df

        df = jobs_df(model=opts.get("model"), status=status)
        return df.head(limit)

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
        if len(args) != 1:
            raise UsageError("Usage: %vydra job ID")
        from vydra_nb.tracking.history import job_from_row

        client = self.client
        known = client.registry.get(client.host, args[0])
        if known is not None and known.done:
            return known
        row = self.session.history().get(args[0])
        if row is not None and row.get("status") in ("completed", "failed", "cancelled"):
            return client.adopt(job_from_row(row))
        with self._job_not_found(args[0]):
            job = client.job(args[0])
        if row is not None and not job.params:
            job.params = row.get("params") or {}
        return job

    def _cmd_cancel(self, args: list[str]) -> None:
        if len(args) != 1:
            raise UsageError("Usage: %vydra cancel ID")
        client = self.client
        live = client.registry.get(client.host, args[0])
        with self._job_not_found(args[0]):
            result = client.cancel(args[0], job=live)  # updates the live view and the history
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
        self.session.logout()
        print("Forgot the API key for this session.")

    def _cmd_sandbox(self, args: list[str]) -> None:
        opts = self._opts(args, {"--credits": int, "--speed": float, "--stop": bool}, "sandbox")
        speed, credits = opts.get("speed"), opts.get("credits")
        # Checked here so a typo is a one-line UsageError, not the sandbox's ValueError traceback.
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise UsageError(f"--speed needs a positive number, not {speed}.")
        if credits is not None and credits < 0:
            raise UsageError(f"--credits needs a whole number of at least 0, not {credits}.")
        if opts.get("stop"):
            if not self.session.stop_sandbox():
                print("No sandbox is running; nothing changed.")
                return
            print("Sandbox stopped; the session uses the real service again.")
            return
        box = self.use_sandbox(credits=opts.get("credits"), speed=opts.get("speed"))
        print(f"SANDBOX at {box.url} · {box.state()['balance']:,} fake credits · speed ×{box.speed:g}. "
              "Nothing here costs money.")

    def _cmd_studio(self, args: list[str]) -> Any:
        from vydra_nb.notebook.studio import studio

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
        """What may come next on a ``%%vydra``/``%vydra`` line (for the tab completer)."""
        tokens = shlex.split(line) if line.count('"') % 2 == 0 and line.count("'") % 2 == 0 else line.split()
        if line.endswith(" "):
            tokens.append("")
        if not tokens:
            return []
        magic, rest = tokens[0], tokens[1:]
        prefix = rest[-1] if rest else ""
        if magic == "%vydra":
            if len(rest) <= 1:
                return [c for c in COMMANDS if c.startswith(prefix)]
            if rest[0] == "help" and len(rest) == 2:
                return self._slugs(prefix)
            return []
        if magic != "%%vydra":
            return []
        if len(rest) <= 1:
            return self._slugs(prefix)
        try:
            model = self.client.model(rest[0])
        except VydraError:
            return []
        previous = rest[-2] if len(rest) >= 2 else ""
        for p in model.parameters:
            if previous == p.flag and p.enum is not None and p.type != "boolean":
                return [str(v) for v in p.enum if str(v).startswith(prefix)]
        flags = [f for p in model.parameters for f in flag_names(p)] + list(GENERIC_FLAGS)
        return [f for f in flags if f.startswith(prefix)] if prefix.startswith("-") or not prefix else []

    def _slugs(self, prefix: str) -> list[str]:
        try:
            return [m.slug for m in self.client.models() if m.slug.startswith(prefix) and m.is_active]
        except VydraError:
            return []


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
    if magics.resume_on_load:
        threading.Thread(target=_resume_quietly, args=(magics,), name="vydra-resume", daemon=True).start()
    return magics


def unload(shell: Any) -> None:
    """Remove what ``load`` added: the completer and the Job display hook (IPython offers no way
    to remove registered magics; a later load replaces them)."""
    completer = getattr(shell, "Completer", None)
    if completer is not None:
        completer.custom_matchers[:] = [m for m in completer.custom_matchers
                                        if getattr(m, "__qualname__", "") != _MATCHER_NAME]
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
