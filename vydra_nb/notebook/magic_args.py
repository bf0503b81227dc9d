"""Parsing ``%%vydra`` lines into typed objects, with no network and no side effects.

The flags of a cell come from the model's ``inputSchema``: ``aspect_ratio`` (or ``aspectRatio``)
is ``--aspect-ratio``, values are converted to the schema's type, booleans get ``--x/--no-x`` and
enums are checked. A comma-separated value for an enum, integer or number parameter asks for a
sweep over those values (each once: every value is a paid job). Repeating an array parameter's flag
adds to its list; repeating any other flag with a different value is a mistake, not "the last wins". Parsing is kept apart from acting on it so it can be tested on its own,
and every mistake is a ``UsageError`` with one line that says what to do.
"""

from __future__ import annotations

import difflib
import math
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError

from vydra_nb.api.errors import one_line, shown
from vydra_nb.api.models import Model, Parameter, bounds_text

# The longest piece of a parser or formatter message quoted in a cell's error.
MESSAGE_CHARS = 160

# Flags every cell understands, besides the model's own.
GENERIC_FLAGS = {
    "-o": "name of a variable to store the Job (or Sweep) in",
    "--wait": "block until the job ends (Ctrl-C stops waiting, not the job)",
    "--dry-run": "show the request and its cost; send nothing",
    "--max-credits": "refuse to submit if it would cost more than N credits",
    "--each-line": "treat every non-empty line of the cell as its own prompt (a sweep)",
    "--yes": "do not ask before an expensive submission",
    "--sandbox": "use the local sandbox (started on demand) instead of the real service",
    "--timeout": "with --wait: stop waiting after S seconds",
}


@dataclass
class CellCommand:
    """A parsed ``%%vydra`` line plus its body."""

    model: str
    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    output_var: str | None = None
    wait: bool = False
    dry_run: bool = False
    max_credits: int | None = None
    each_line: bool = False
    yes: bool = False
    sandbox: bool = False
    timeout: float | None = None
    prompts: list[str] = field(default_factory=list)

    @property
    def is_sweep(self) -> bool:
        return bool(self.grid) or len(self.prompts) > 1


def split_line(line: str) -> list[str]:
    try:
        return shlex.split(line, posix=True)
    except ValueError as exc:
        raise UsageError(f"Could not read the %%vydra line ({one_line(str(exc), MESSAGE_CHARS)}); check its quotes.") from None


def model_slug(line: str) -> str:
    """The first word of the line: the model. Flags before it are not allowed."""
    tokens = split_line(line)
    if not tokens or tokens[0].startswith("-"):
        raise UsageError("Name a model first: %%vydra MODEL [flags]; see `%vydra models`.")
    return tokens[0]


def flag_names(param: Parameter) -> list[str]:
    names = [param.flag]
    if param.type == "boolean":
        names.append("--no-" + param.flag[2:])
    return names


def _convert(param: Parameter, raw: str) -> Any:
    """One value of ``param`` from its command-line text.

    What the schema says beyond type, enum and bounds (an http(s) ``uri``, a ``minLength`` of
    more than spaces, Unicode text) is checked once for every caller by ``Model.validate``, which
    the magics run on every body before a dry run prints it or anything is sent.
    """
    kind = param.type
    try:
        if kind == "integer":
            value: Any = int(raw)
        elif kind == "number":
            value = float(raw)
            if not math.isfinite(value):  # JSON has no NaN or Infinity: the request could not be sent
                raise ValueError
        elif kind == "boolean":
            low = raw.lower()
            if low not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError
            value = low in ("true", "yes", "1")
        elif kind == "array":
            value = [v.strip() for v in raw.split(",") if v.strip()]
        else:
            value = raw
    except ValueError:
        what = {"integer": "a whole number", "number": "a number", "boolean": "true or false"}.get(kind or "", kind)
        what = "a finite number" if kind == "number" else what
        raise UsageError(f"{param.flag} needs {what}, not {shown(raw)}.") from None
    if param.enum is not None and value not in param.enum:
        allowed = ", ".join(map(str, param.enum))
        raise UsageError(f"{param.flag} must be one of {allowed} (got {shown(raw)}).")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if param.minimum is not None and value < param.minimum or param.maximum is not None and value > param.maximum:
            raise UsageError(f"{param.flag} must be {bounds_text(param.minimum, param.maximum)} (got {shown(raw)[1:-1]}).")
    return value


def _sweepable(param: Parameter) -> bool:
    return param.enum is not None or param.type in ("integer", "number")


def parse_cell(line: str, body: str, model: Model, namespace: Mapping[str, Any] | None = None) -> CellCommand:
    """Parse ``%%vydra MODEL [flags]`` and its body for ``model``; interpolate ``{names}``."""
    tokens = split_line(line)
    cmd = CellCommand(model=model.slug)
    params_by_flag: dict[str, tuple[Parameter, bool]] = {}
    for p in model.parameters:
        params_by_flag[p.flag] = (p, True)
        if p.type == "boolean":
            params_by_flag["--no-" + p.flag[2:]] = (p, False)
    it = iter(tokens[1:])
    given: dict[str, tuple[str, Any]] = {}  # what each parameter (or generic option) was given, as typed

    def once(key: str, shown_as: str, value: Any, param: Parameter | None = None) -> None:
        """A flag given twice must agree with itself: which one should win is anybody's guess."""
        before = given.setdefault(key, (shown_as, value))
        if before[1] != value:
            hint = " (a comma-separated list sweeps over several values)" if param and _sweepable(param) else ""
            raise UsageError(f"{param.flag if param else key} is given twice with different values "
                             f"({before[0]} and {shown_as}); give it once{hint}.")

    bare_boolean: tuple[str, Parameter] | None = None  # a boolean flag just before, given without a value
    for token in it:
        flag, eq, inline = token.partition("=")
        after_boolean, bare_boolean = bare_boolean, None
        if after_boolean and not token.startswith("-") and token.strip() and not any(c.isspace() for c in token):
            typed, boolean = after_boolean
            yes_flag, no_flag = flag_names(boolean)
            raise UsageError(f"{typed} takes no value (got {shown(token)}); use {yes_flag} or {no_flag}.")

        def value() -> str:
            if eq:
                return inline
            nxt = next(it, None)
            if nxt is None:
                raise UsageError(f"{flag} needs a value.")
            return nxt

        if flag in ("-o", "--out"):
            name = value()
            if not name.isidentifier():
                raise UsageError(f"-o needs a Python variable name, not {shown(name)}.")
            once("-o", shown(name), name)
            cmd.output_var = name
        elif flag == "--wait":
            cmd.wait = True
        elif flag == "--dry-run":
            cmd.dry_run = True
        elif flag == "--each-line":
            cmd.each_line = True
        elif flag in ("--yes", "-y"):
            cmd.yes = True
        elif flag == "--sandbox":
            cmd.sandbox = True
        elif flag in ("--max-credits", "--timeout"):
            raw = value()
            try:
                number = float(raw)
                if not number >= 0 or not math.isfinite(number):  # "nan" and "inf" parse as floats
                    raise ValueError
            except ValueError:
                raise UsageError(f"{flag} needs a non-negative number, not {shown(raw)}.") from None
            once(flag, shown(raw), number)
            if flag == "--max-credits":
                cmd.max_credits = int(number)
            else:
                cmd.timeout = number
        elif flag in params_by_flag:
            param, positive = params_by_flag[flag]
            if param.type == "boolean" and not eq:
                once(param.name, flag, positive, param)
                cmd.params[param.name] = positive
                bare_boolean = (flag, param)
                continue
            raw = value()
            if param.type == "array":  # repeating an array flag adds to the list
                items = _convert(param, raw)
                cmd.params[param.name] = [*cmd.params.get(param.name, []), *items]
                continue
            if "," in raw and _sweepable(param):
                values = [_convert(param, part.strip()) for part in raw.split(",") if part.strip()]
                if len(values) > 1:
                    _refuse_duplicates(param, values)
                    once(param.name, shown(raw), values, param)
                    cmd.grid[param.name] = values
                    cmd.params.pop(param.name, None)
                    continue
                raw = raw.strip(", ")
            converted = _convert(param, raw)
            once(param.name, shown(raw), converted, param)
            cmd.params[param.name] = converted
            cmd.grid.pop(param.name, None)
        else:
            raise UsageError(_unknown_flag(token, model))
    prompt_field = model.prompt_field
    text = interpolate(body, namespace or {}).strip()
    if cmd.each_line:
        cmd.prompts = [ln.strip() for ln in text.splitlines() if ln.strip()]
    elif text:
        cmd.prompts = [text]
    if cmd.prompts and prompt_field is None:
        raise UsageError(f"{model.slug} takes no text prompt; leave the cell body empty and use flags (`%vydra help {model.slug}`).")
    if cmd.prompts and prompt_field in cmd.params:
        raise UsageError(f"The prompt is given twice: in the cell body and as {flag_of(model, prompt_field)}.")
    return cmd


def _refuse_duplicates(param: Parameter, values: list[Any]) -> None:
    """Each value of a sweep is a separate paid job: the same value twice pays twice for one result."""
    seen: list[Any] = []
    for v in values:
        if any(v == s and type(v) is type(s) for s in seen):
            raise UsageError(f"{param.flag} lists {v} twice; each value of a sweep is a separate paid job, so give it once.")
        seen.append(v)


def flag_of(model: Model, name: str) -> str:
    param = model.parameter(name)
    return param.flag if param else name


def _unknown_flag(token: str, model: Model) -> str:
    model_flags = [f for p in model.parameters for f in flag_names(p)]
    name = token.split("=")[0]
    if not token.startswith("-"):
        # A word without dashes may be a model flag whose dashes were forgotten ("aspect-ratio");
        # it is never offered a generic flag: "yes" is a value, not a request for --yes.
        close = difflib.get_close_matches("--" + name, model_flags, n=1, cutoff=0.8) if len(name) <= 100 else []
        hint = f" Did you mean {close[0]}?" if close else ""
        return f"Unexpected {shown(token)}: the prompt goes in the cell body, flags look like --name value.{hint}"
    close = difflib.get_close_matches(name, model_flags + list(GENERIC_FLAGS), n=1) if len(name) <= 100 else []
    hint = f" Did you mean {close[0]}?" if close else ""
    return f"{model.slug} has no flag {shown(name)[1:-1]}.{hint} See `%vydra help {model.slug}`."


def interpolate(body: str, namespace: Mapping[str, Any]) -> str:
    """Fill ``{name}`` placeholders from the user's namespace; ``{{`` and ``}}`` are literal braces.

    Only names (with optional attribute, index and format spec) are allowed, and every unknown
    name is reported at once, before anything is sent.
    """
    formatter = string.Formatter()
    try:
        fields = [f for _, f, _, _ in formatter.parse(body) if f is not None]
    except ValueError as exc:
        raise UsageError(f"The prompt has a stray brace ({one_line(str(exc), MESSAGE_CHARS)}); write {{{{ or }}}} for a literal brace.") from None
    missing = []
    for name in fields:
        root = name.split(".")[0].split("[")[0]
        if not root.isidentifier():  # "{}", "{0}", "{ x }", "{a\nb}": not a variable, maybe a stray brace
            raise UsageError(f"Placeholders in a prompt need a variable name, like {{subject}}, not {shown('{' + name + '}')}; "
                             "write {{ for a brace.")
        if "(" in name:
            raise UsageError(f"Placeholders take a variable, attribute or index, not calls: {shown('{' + name + '}')}; "
                             "compute the value into a variable first.")
        if root not in namespace:
            missing.append(root)
    if missing:
        names = one_line(", ".join(dict.fromkeys(missing)), 120)
        raise UsageError(f"The prompt uses undefined variable(s): {names}. Define them, or write {{{{ for a literal brace.")
    for name in fields:
        _check_lookup(formatter, name, namespace)
    try:
        return formatter.vformat(body, (), namespace)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"Could not fill the prompt's placeholders: {type(exc).__name__}: {one_line(str(exc), MESSAGE_CHARS)}") from None


def _check_lookup(formatter: string.Formatter, name: str, namespace: Mapping[str, Any]) -> None:
    """Look one placeholder up, and say plainly which key, index or attribute is not there."""
    where = shown("{" + name + "}")
    try:
        formatter.get_field(name, (), namespace)
    except KeyError as exc:
        key = exc.args[0] if exc.args else "?"
        quoted = isinstance(key, str) and len(key) >= 2 and key[0] == key[-1] and key[0] in "'\""
        hint = f"; write keys without quotes, as in {{{name.split('[')[0]}[{key[1:-1]}]}}" if quoted else ""
        raise UsageError(one_line(f"The placeholder {where} looks up key {shown(key, 40)}, which is not there{hint}.", MESSAGE_CHARS)) from None
    except IndexError:
        raise UsageError(f"The placeholder {where} looks up an index that is out of range.") from None
    except AttributeError as exc:
        attr = getattr(exc, "name", None)
        what = f"attribute {shown(attr, 40)}" if attr else "an attribute"
        raise UsageError(f"The placeholder {where} looks up {what}, which is not there.") from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"Could not fill the placeholder {where}: {one_line(str(exc), 100)}.") from None


def request_bodies(cmd: CellCommand, model: Model) -> list[dict[str, Any]]:
    """Every request body the command asks for (one, or the sweep's combinations)."""
    import itertools

    prompt_field = model.prompt_field
    prompts: list[str | None] = list(cmd.prompts) or [None]
    names = list(cmd.grid)
    bodies = []
    for prompt in prompts:
        for combo in itertools.product(*(cmd.grid[n] for n in names)):
            body = dict(cmd.params)
            body.update(zip(names, combo))
            if prompt is not None and prompt_field:
                body[prompt_field] = prompt
            bodies.append(body)
    return bodies
