"""Parsing ``%%vydra`` and ``%vydra`` lines into typed objects, with no network and no side effects.

The flags of a cell come from the model's ``inputSchema``: ``aspect_ratio`` (or ``aspectRatio``)
is ``--aspect-ratio``, values are converted to the schema's type, booleans get ``--x/--no-x`` and
enums are checked. A comma-separated value for an enum, integer or number parameter asks for a
sweep over those values (each once: every value is a paid job). Repeating an array parameter's flag
adds to its list; repeating any other flag with a different value is a mistake, not "the last wins".

The cell's own flags (``GENERIC_FLAGS``: ``-o/--out``, ``--wait``, ``--timeout``, ``--yes/-y``...)
always mean what they mean on every model. A schema parameter whose flag would be one of them (a
model with a ``timeout`` or ``out`` property) is not hidden: its flag is ``--param-NAME``
(``--param-timeout``, ``--no-param-wait`` for a boolean), which ``%vydra help MODEL`` shows. Any
parameter may be written ``--param-NAME``: that spelling always means the model's parameter.

The line commands (``%vydra jobs --status S``...) are parsed by argparse (IPython's
``MagicArgumentParser``), whose help is what ``%vydra?`` and ``%vydra help COMMAND`` show.

Parsing is kept apart from acting on it so it can be tested on its own, and every mistake is a
``UsageError`` with one line that says what to do.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import shlex
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser

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
    "--tag": "label the job(s) for grouping a project's spend (spend_summary(by='tag'), tag budgets)",
}
# Other spellings of the generic flags.
GENERIC_ALIASES = {"--out": "-o", "-y": "--yes"}
# Every flag the cell itself reads: a schema parameter whose flag is one of these is --param-NAME.
CELL_FLAGS = frozenset(GENERIC_FLAGS) | frozenset(GENERIC_ALIASES)
# ``--param-NAME`` always names the model's parameter NAME.
PARAM_PREFIX = "--param-"


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
    tag: str | None = None

    @property
    def is_sweep(self) -> bool:
        return bool(self.grid) or len(self.prompts) > 1


def split_line(line: str, comments: bool = False) -> list[str]:
    """The words of a magic line, with shell quoting; with ``comments``, a word that starts with
    ``#`` ends the line (``%vydra sandbox --speed 30  # or a real key``)."""
    try:
        return shlex.split(line, comments=comments, posix=True)
    except ValueError as exc:
        raise UsageError(f"Could not read the %%vydra line ({one_line(str(exc), MESSAGE_CHARS)}); check its quotes.") from None


def model_slug(line: str) -> str:
    """The first word of the line: the model. Flags before it are not allowed."""
    tokens = split_line(line)
    if not tokens or tokens[0].startswith("-"):
        raise UsageError("Name a model first: %%vydra MODEL [flags]; see `%vydra models`.")
    return tokens[0]


def flag_names(param: Parameter, flag: str | None = None) -> list[str]:
    """The flag of ``param`` (its own, or ``flag`` given by ``param_flags``), and for a boolean its ``--no-`` form."""
    flag = flag or param.flag
    names = [flag]
    if param.type == "boolean":
        names.append("--no-" + flag[2:])
    return names


def param_flags(model: Model) -> dict[str, str]:
    """The flag of each of the model's parameters on a ``%%vydra`` line, in schema order.

    A parameter keeps its own flag (``--aspect-ratio``) unless the cell reads that flag itself
    (``--timeout``) or another parameter has it already (``aspectRatio`` and ``aspect_ratio``);
    then it is ``--param-NAME`` (prefixed again in the unlikely case that is taken too).
    """
    params = model.parameters
    flags: dict[str, str] = {}
    taken = set(CELL_FLAGS)
    moved = []
    for p in params:
        if p.flag in taken:
            moved.append(p)
        else:
            flags[p.name] = p.flag
            taken.add(p.flag)
    for p in moved:
        flag = p.flag
        while flag in taken:
            flag = PARAM_PREFIX + flag[2:]
        flags[p.name] = flag
        taken.add(flag)
    return {p.name: flags[p.name] for p in params}


def shadowed(model: Model) -> dict[str, str]:
    """Parameters whose own flag is one of the cell's flags: name -> the cell flag (``{"timeout": "--timeout"}``)."""
    return {p.name: p.flag for p in model.parameters if p.flag in CELL_FLAGS}


def _shadow_hint(model: Model, cell_flag: str) -> str:
    """For a mistake with a generic flag: the model's own parameter of that name, if it has one."""
    canonical = GENERIC_ALIASES.get(cell_flag, cell_flag)
    flags = param_flags(model)
    names = [n for n, f in shadowed(model).items() if GENERIC_ALIASES.get(f, f) == canonical]
    return "".join(f"; {model.slug}'s own `{n}` parameter is {flags[n]}" for n in names)


def _convert(param: Parameter, raw: str, flag: str | None = None) -> Any:
    """One value of ``param`` from its command-line text.

    What the schema says beyond type, enum and bounds (an http(s) ``uri``, a ``minLength`` of
    more than spaces, Unicode text) is checked once for every caller by ``Model.validate``, which
    the magics run on every body before a dry run prints it or anything is sent.
    """
    kind = param.type
    flag = flag or param.flag
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
        raise UsageError(f"{flag} needs {what}, not {shown(raw)}.") from None
    if param.enum is not None and value not in param.enum:
        allowed = ", ".join(map(str, param.enum))
        raise UsageError(f"{flag} must be one of {allowed} (got {shown(raw)}).")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if param.minimum is not None and value < param.minimum or param.maximum is not None and value > param.maximum:
            raise UsageError(f"{flag} must be {bounds_text(param.minimum, param.maximum)} (got {shown(raw)[1:-1]}).")
    return value


def _sweepable(param: Parameter) -> bool:
    return param.enum is not None or param.type in ("integer", "number")


def cell_flag_table(model: Model) -> dict[str, tuple[Parameter, bool, str]]:
    """Every spelling of the model's own flags -> (parameter, value of the bare flag, flag shown in messages).

    The flags ``param_flags`` gives, and ``--param-NAME`` (``--no-param-NAME``) for every parameter.
    """
    flags = param_flags(model)
    table: dict[str, tuple[Parameter, bool, str]] = {}
    for p in model.parameters:
        for spelling, positive in zip(flag_names(p, flags[p.name]), (True, False), strict=False):
            table[spelling] = (p, positive, flags[p.name])
    for p in model.parameters:
        for spelling, positive in zip(flag_names(p, PARAM_PREFIX + p.flag[2:]), (True, False), strict=False):
            table.setdefault(spelling, (p, positive, flags[p.name]))
    return table


def parse_cell(line: str, body: str, model: Model, namespace: Mapping[str, Any] | None = None) -> CellCommand:
    """Parse ``%%vydra MODEL [flags]`` and its body for ``model``; interpolate ``{names}``.

    The cell's own flags (``GENERIC_FLAGS`` and their aliases ``--out``, ``-y``) are read first and
    always mean the same thing; the model's parameters are the flags ``param_flags`` gives (a
    parameter named like a cell flag, ``timeout`` say, is ``--param-timeout``) and, for any
    parameter, ``--param-NAME``. Where a model has such a parameter, a mistake with the cell's
    flag names the parameter's spelling, and the alias ``--out`` is refused as ambiguous (``-o``
    is the cell's, ``--param-out`` the model's). The magic also refuses ``--timeout`` on a cell
    that does not wait, where it would be silently ignored.
    """
    tokens = split_line(line)
    cmd = CellCommand(model=model.slug)
    params_by_flag = cell_flag_table(model)
    from vydra_nb.api.inputs import uri_fields  # here, not at import: it brings requests in

    names: Mapping[str, Any] = namespace or {}
    url_fields = uri_fields(model)
    it = iter(tokens[1:])
    given: dict[str, tuple[str, Any]] = {}  # what each parameter (or generic option) was given, as typed

    def once(key: str, shown_as: str, value: Any, param: Parameter | None = None, flag: str | None = None) -> None:
        """A flag given twice must agree with itself: which one should win is anybody's guess."""
        before = given.setdefault(key, (shown_as, value))
        if before[1] != value:
            hint = " (a comma-separated list sweeps over several values)" if param and _sweepable(param) else ""
            raise UsageError(f"{flag or key} is given twice with different values "
                             f"({before[0]} and {shown_as}); give it once{hint}.")

    bare_boolean: tuple[str, Parameter, str] | None = None  # a boolean flag just before, given without a value
    for token in it:
        flag, eq, inline = token.partition("=")
        after_boolean, bare_boolean = bare_boolean, None
        if after_boolean and not token.startswith("-") and token.strip() and not any(c.isspace() for c in token):
            typed, boolean, its_flag = after_boolean
            yes_flag, no_flag = flag_names(boolean, its_flag)
            raise UsageError(f"{typed} takes no value (got {shown(token)}); use {yes_flag} or {no_flag}.")

        def value(flag: str = flag, eq: str = eq, inline: str = inline) -> str:
            """The flag's value: after ``=``, or the next word."""
            if eq:
                return inline
            nxt = next(it, None)
            if nxt is None:
                raise UsageError(f"{flag} needs a value{_shadow_hint(model, flag)}.")
            return nxt

        if flag == "--out" and "out" in shadowed(model):
            raise UsageError(f"--out is ambiguous: {model.slug} has its own `out` parameter. Write "
                             f"{param_flags(model)['out']} VALUE for it, or -o NAME to keep the job in a variable.")
        if flag in ("-o", "--out"):
            name = value()
            if not name.isidentifier():
                raise UsageError(f"-o needs a Python variable name, not {shown(name)}{_shadow_hint(model, flag)}.")
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
        elif flag == "--tag":
            tag = fill_flag(value(), names, flag)
            if not isinstance(tag, str) or not tag.strip() or len(tag.strip()) > 100:
                raise UsageError(f"--tag needs a short name (at most 100 characters), like --tag lake-promo, not {shown(tag)}.")
            once("--tag", shown(tag), tag.strip())
            cmd.tag = tag.strip()
        elif flag in ("--max-credits", "--timeout"):
            raw = _as_text(fill_flag(value(), names, flag), flag)
            try:
                number = float(raw)
                if not number >= 0 or not math.isfinite(number):  # "nan" and "inf" parse as floats
                    raise ValueError
            except ValueError:
                raise UsageError(f"{flag} needs a non-negative number, not {shown(raw)}{_shadow_hint(model, flag)}.") from None
            once(flag, shown(raw), number)
            if flag == "--max-credits":
                cmd.max_credits = int(number)
            else:
                cmd.timeout = number
        elif flag in params_by_flag:
            param, positive, its_flag = params_by_flag[flag]
            if param.type == "boolean" and not eq:
                once(param.name, flag, positive, param, its_flag)
                cmd.params[param.name] = positive
                bare_boolean = (flag, param, its_flag)
                continue
            filled = fill_flag(value(), names, its_flag) if param.type != "object" else value()
            if not isinstance(filled, str):  # a whole {placeholder}: the object itself
                _object_value(cmd, param, filled, its_flag, is_uri=param.name in url_fields, once=once)
                continue
            raw = filled
            if param.type == "array":  # repeating an array flag adds to the list
                items = _convert(param, raw, its_flag)
                cmd.params[param.name] = [*cmd.params.get(param.name, []), *items]
                continue
            if "," in raw and _sweepable(param):
                values = [_convert(param, part.strip(), its_flag) for part in raw.split(",") if part.strip()]
                if len(values) > 1:
                    _sweep_over(cmd, param, values, shown(raw), its_flag, once)
                    continue
                raw = raw.strip(", ")
            converted = _convert(param, raw, its_flag)
            once(param.name, shown(raw), converted, param, its_flag)
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


_WHOLE = re.compile(r"\{([^{}]+)\}")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def fill_flag(raw: str, namespace: Mapping[str, Any], flag: str) -> Any:
    """A flag's value with ``{expr}`` filled from the user's variables, as the cell body is.

    A value that is one placeholder alone (``{still}``, ``{jobs[0]}``, or ``$still``) is the object
    itself: a ``Job``, a ``Path``, a list to sweep over. Placeholders inside other text are filled as
    text (``./frames/{name}.png``); ``{{`` is a literal brace. Unknown names are one-line errors.
    """
    whole = _WHOLE.fullmatch(raw.strip())
    dollar = _DOLLAR.fullmatch(raw.strip())
    if dollar is not None:
        name = dollar.group(1)
        if name not in namespace:
            raise UsageError(f"{flag} uses an undefined variable: {name}. Define it first.")
        return namespace[name]
    if whole is not None and not any(c in whole.group(1) for c in ":!'\""):
        name = whole.group(1)
        interpolate("{" + name + "}", namespace, where=flag)  # the same checks and messages as the body
        return string.Formatter().get_field(name, (), namespace)[0]
    if "{" in raw or "}" in raw:
        return interpolate(raw, namespace, where=flag)
    return raw


def _as_text(value: Any, flag: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise UsageError(f"{flag} needs a number, not {type(value).__name__} {shown(value)}.")


def _object_value(cmd: CellCommand, param: Parameter, value: Any, flag: str, *, is_uri: bool,
                  once: Callable[..., None]) -> None:
    """A flag given an object through a placeholder: Jobs, paths and URLs for URL parameters (a
    list sweeps over them, or fills an array parameter); values, or a list of values to sweep
    over, for the others."""
    items = list(value) if isinstance(value, (list, tuple)) else None
    if param.type == "array":
        cmd.params[param.name] = [*cmd.params.get(param.name, []), *(items if items is not None else [value])]
        return
    if is_uri:
        if items is not None and len(items) > 1:
            _sweep_over(cmd, param, items, shown(value), flag, once)
            return
        if items is not None:
            if not items:
                raise UsageError(f"{flag} was given an empty list.")
            value = items[0]
        once(param.name, shown(value), value, param, flag)
        cmd.params[param.name] = value
        return
    if items is not None:
        if not items:
            raise UsageError(f"{flag} was given an empty list.")
        if len(items) > 1 and not _sweepable(param):
            raise UsageError(f"{flag} takes one value (got a list of {len(items)}); a list sweeps only over "
                             "enums and numbers.")
        values = [_convert(param, _scalar_text(v, flag), flag) for v in items]
        if len(values) > 1:
            _sweep_over(cmd, param, values, shown(value), flag, once)
            return
        value = items[0]
    converted = _convert(param, _scalar_text(value, flag), flag)
    once(param.name, shown(value), converted, param, flag)
    cmd.params[param.name] = converted
    cmd.grid.pop(param.name, None)


def _scalar_text(value: Any, flag: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise UsageError(f"{flag} takes a value, not a {type(value).__name__} ({shown(value)}).")


def _sweep_over(cmd: CellCommand, param: Parameter, values: list[Any], shown_as: str, flag: str,
                once: Callable[..., None]) -> None:
    """Sweep ``param`` over ``values``: each a separate paid job, so none twice, and given once."""
    _refuse_duplicates(flag, values)
    once(param.name, shown_as, values, param, flag)
    cmd.grid[param.name] = values
    cmd.params.pop(param.name, None)


def _refuse_duplicates(flag: str, values: list[Any]) -> None:
    """Each value of a sweep is a separate paid job: the same value twice pays twice for one result."""
    seen: list[Any] = []
    for v in values:
        if any(v == s and type(v) is type(s) for s in seen):
            raise UsageError(f"{flag} lists {v} twice; each value of a sweep is a separate paid job, so give it once.")
        seen.append(v)


def flag_of(model: Model, name: str) -> str:
    """The flag of the model's parameter ``name`` on a cell line (``name`` itself if there is none)."""
    return param_flags(model).get(name, name)


def _unknown_flag(token: str, model: Model) -> str:
    flags = param_flags(model)
    model_flags = [f for p in model.parameters for f in flag_names(p, flags[p.name])]
    name = token.split("=")[0]
    if not token.startswith("-"):
        # A word without dashes may be a model flag whose dashes were forgotten ("aspect-ratio");
        # it is never offered a generic flag: "yes" is a value, not a request for --yes.
        close = difflib.get_close_matches("--" + name, model_flags, n=1, cutoff=0.8) if len(name) <= 100 else []
        hint = f" Did you mean {close[0]}?" if close else ""
        return f"Unexpected {shown(token)}: the prompt goes in the cell body, flags look like --name value.{hint}"
    # The cell's own flags have no --no- form: offering --dry-run for --no-dry-run would say the opposite.
    candidates = model_flags if name.startswith("--no-") else model_flags + list(GENERIC_FLAGS)
    close = difflib.get_close_matches(name, candidates, n=1) if len(name) <= 100 else []
    hint = f" Did you mean {close[0]}?" if close else ""
    return f"{model.slug} has no flag {shown(name)[1:-1]}.{hint} See `%vydra help {model.slug}`."


def interpolate(body: str, namespace: Mapping[str, Any], *, where: str = "The prompt") -> str:
    """Fill ``{name}`` placeholders from the user's namespace; ``{{`` and ``}}`` are literal braces.

    Only names (with optional attribute, index and format spec) are allowed, and every unknown
    name is reported at once, before anything is sent. ``where`` names the text in messages
    ("The prompt", or a flag such as ``--image-url``).
    """
    formatter = string.Formatter()
    try:
        fields = [f for _, f, _, _ in formatter.parse(body) if f is not None]
    except ValueError as exc:
        raise UsageError(f"{where} has a stray brace ({one_line(str(exc), MESSAGE_CHARS)}); write {{{{ or }}}} for a literal brace.") from None
    missing = []
    for name in fields:
        root = name.split(".")[0].split("[")[0]
        if not root.isidentifier():  # "{}", "{0}", "{ x }", "{a\nb}": not a variable, maybe a stray brace
            what = "a prompt" if where == "The prompt" else where
            raise UsageError(f"Placeholders in {what} need a variable name, like {{subject}}, not {shown('{' + name + '}')}; "
                             "write {{ for a brace.")
        if "(" in name:
            raise UsageError(f"Placeholders take a variable, attribute or index, not calls: {shown('{' + name + '}')}; "
                             "compute the value into a variable first.")
        if root not in namespace:
            missing.append(root)
    if missing:
        names = one_line(", ".join(dict.fromkeys(missing)), 120)
        raise UsageError(f"{where} uses undefined variable(s): {names}. Define them, or write {{{{ for a literal brace.")
    for name in fields:
        _check_lookup(formatter, name, namespace)
    try:
        return formatter.vformat(body, (), namespace)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        what = "the prompt" if where == "The prompt" else where
        raise UsageError(f"Could not fill the placeholders of {what}: {type(exc).__name__}: {one_line(str(exc), MESSAGE_CHARS)}") from None


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
            body.update(zip(names, combo, strict=True))
            if prompt is not None and prompt_field:
                body[prompt_field] = prompt
            bodies.append(body)
    return bodies


# -- %vydra line commands -------------------------------------------------------------------------
# The statuses `%vydra jobs --status` accepts; "processing" is how some servers say "running",
# and the history stores it as "running".
JOB_STATUSES = {"pending": "pending", "processing": "running", "running": "running",
                "completed": "completed", "failed": "failed", "cancelled": "cancelled"}


def _whole_number(at_least: int) -> Callable[[str], int]:
    def whole_number(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"needs a whole number, not {shown(raw)}.") from None
        if value < at_least:
            raise argparse.ArgumentTypeError(f"needs a whole number of at least {at_least}, not {value}.")
        return value

    return whole_number


def _positive_number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs a number, not {shown(raw)}.") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"needs a positive number, not {raw.strip()}.")
    return value


def _job_status(raw: str) -> str:
    if raw.lower() not in JOB_STATUSES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(JOB_STATUSES)} (got {shown(raw)}).")
    return JOB_STATUSES[raw.lower()]


def _budget_scope(raw: str) -> str:
    """``session``, ``day``, or ``tag:NAME`` (``--per tag NAME`` is joined to that before parsing)."""
    text = raw.strip()
    if text in ("session", "day") or (text.startswith("tag:") and text[4:].strip()):
        return text
    if text == "tag":
        raise argparse.ArgumentTypeError("needs the tag's name: --per tag NAME.")
    raise argparse.ArgumentTypeError(f"must be session, day or tag NAME (got {shown(raw)}).")


def budget_args(args: list[str]) -> list[str]:
    """``--per tag NAME`` as the parser reads it (``--per tag:NAME``)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word in ("--per", "--per=tag") and (word == "--per=tag" or (i + 1 < len(args) and args[i + 1] == "tag")):
            step = 1 if word == "--per=tag" else 2
            if i + step < len(args) and not args[i + step].startswith("-"):
                out += ["--per", f"tag:{args[i + step]}"]
                i += step + 1
                continue
        out.append(word)
        i += 1
    return out


class LineParser(MagicArgumentParser):
    """argparse for one ``%vydra`` command; its mistakes are one-line ``UsageError``s in our words.

    A value-taking option takes the next word whatever it looks like (``--speed -inf`` is a bad
    speed, not a missing one), and options are never abbreviated: ``--lim`` is a typo, not ``--limit``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.options: list[str] = []  # every option string, in the order declared
        self.value_options: set[str] = set()  # those that take a value
        self.positionals: list[str] = []
        super().__init__(*args, **kwargs)
        self.allow_abbrev = False

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.options += action.option_strings
        if action.option_strings and action.nargs != 0:
            self.value_options.update(action.option_strings)
        if not action.option_strings:
            self.positionals.append(action.dest)
        return action

    @property
    def command(self) -> str:
        return self.prog.split(" ", 1)[-1]

    def usage_line(self) -> str:
        """``%vydra jobs [--status S] ...``: the usage without the reST block IPython puts around it."""
        return " ".join(self.format_usage().replace("::", "").split())

    def parse(self, args: list[str]) -> argparse.Namespace:
        joined: list[str] = []
        words = iter(args)
        for word in words:
            following = next(words, None) if word in self.value_options else None
            joined.append(word if following is None else f"{word}={following}")
        namespace, extra = self.parse_known_args(joined)
        if extra:
            first = extra[0].split("=", 1)[0] if extra[0].startswith("-") else extra[0]
            if not self.options and not self.positionals:
                raise UsageError(f"`%vydra {self.command}` takes no options (got {shown(extra[0])}).")
            if not self.options or not extra[0].startswith("-"):
                raise UsageError(f"Unexpected {shown(extra[0])}. Usage: {self.usage_line()}")
            close = difflib.get_close_matches(first, self.options, n=1) if len(first) <= 100 else []
            hint = f" Did you mean {close[0]}?" if close else ""
            raise UsageError(f"Unknown option {shown(first)} for `%vydra {self.command}`.{hint} "
                             f"Options: {', '.join(self.options)}.")
        return namespace

    def error(self, message: str) -> NoReturn:
        """argparse's complaints, reworded as the cell flags word theirs."""
        argument = re.match(r"argument ([^:]+): (.*)", message, flags=re.S)
        if argument:
            option, what = argument.group(1).split("/")[-1], argument.group(2)
            if what == "expected one argument":
                text = f"{option} needs a value."
            elif what.startswith("ignored explicit argument "):
                text = f"{option} takes no value (got {what.removeprefix('ignored explicit argument ')})."
            else:
                text = f"{option} {what}"
        elif message.startswith("the following arguments are required"):
            text = f"Usage: {self.usage_line()}"
        else:
            text = f"`%vydra {self.command}`: {message}."
        raise UsageError(one_line(text, 300))


# What each command does, its arguments, and the one line `%vydra help` shows for it.
def _build_line_parsers() -> dict[str, LineParser]:
    def command(name: str, summary: str, description: str = "", usage: str | None = None) -> LineParser:
        return LineParser(prog=f"vydra {name}", usage=usage, description=f"{summary}.\n\n{description}".strip())

    parsers: dict[str, LineParser] = {}
    p = parsers["models"] = command("models", "Models and prices, as a table")
    p.add_argument("--provider", metavar="P", help="only this provider's models")
    p.add_argument("--all", action="store_true", help="include inactive models")
    parsers["credits"] = command("credits", "Balance and plan")
    p = parsers["jobs"] = command("jobs", "Recent jobs from the history, as a table")
    p.add_argument("--status", metavar="S", type=_job_status, help=f"only jobs in this state: {', '.join(JOB_STATUSES)}")
    p.add_argument("--limit", metavar="N", type=_whole_number(1), default=20, help="at most N jobs (default 20)")
    p.add_argument("--model", metavar="M", help="only jobs of this model")
    p.add_argument("--sync", action="store_true", help="first merge the server's job list into the history")
    p.add_argument("--resume", action="store_true", help="first track again every unfinished job")
    p.add_argument("--all-columns", action="store_true",
                   help="every column of jobs_df() (default: id, model, status, credits, prompt, age, file)")
    p = parsers["generate"] = command("generate", "Submit without a prompt (video utilities, speech-to-speech)",
                                      "The flags are those of a %%vydra cell: `%vydra help MODEL`.",
                                      usage="%(prog)s MODEL [flags]")
    p.add_argument("model", metavar="MODEL", help="the model's slug")
    p.add_argument("flags", metavar="FLAGS", nargs=argparse.REMAINDER, help="the model's flags and the cell's own")
    p = parsers["job"] = command("job", "Show (and track) a job")
    p.add_argument("id", metavar="ID", help="the job's id, e.g. {clip.id} or $job_id")
    p = parsers["cancel"] = command("cancel", "Cancel a job; its credits are refunded")
    p.add_argument("id", metavar="ID", help="the job's id")
    parsers["login"] = command("login", "Enter an API key (kept in memory only)")
    parsers["logout"] = command("logout", "Forget the key")
    p = parsers["sandbox"] = command("sandbox", "Use a local sandbox server: nothing costs money",
                                     "Without options, keeps a sandbox already running.")
    p.add_argument("--credits", metavar="N", type=_whole_number(0), help="its starting fake credits")
    p.add_argument("--speed", metavar="X", type=_positive_number, help="how many times faster than real jobs")
    p.add_argument("--stop", action="store_true", help="stop it and use the real service again")
    parsers["studio"] = command("studio", "The prompt-iteration widget")
    p = parsers["budget"] = command(
        "budget", "Cap what this session, a day or a tag may spend; show what is left",
        "Without N, shows every budget: its size, what is used and what is left. A submission, sweep or "
        "studio click that would cross a budget is refused whole, before anything is sent; cancelled and "
        "failed jobs give their credits back. A day budget counts every kernel's spend since local "
        "midnight, and survives a restart.",
        usage="%(prog)s [N] [--per session|day|tag NAME] [--clear]")
    p.add_argument("limit", metavar="N", nargs="?", type=_whole_number(0), help="the budget, in credits")
    p.add_argument("--per", metavar="WHAT", type=_budget_scope, default="session",
                   help="session (the default), day, or tag NAME")
    p.add_argument("--clear", action="store_true", help="remove the budget (every budget, without --per)")
    p = parsers["help"] = command("help", "Commands, or a model's parameters and price")
    p.add_argument("topic", metavar="MODEL|COMMAND", nargs="?", help="a model's slug, or one of these commands")
    return parsers


_V = TypeVar("_V")


class Lazy(Mapping[str, _V]):
    """A mapping built on first use: ``%load_ext vydra_nb`` must not pay for a dozen argparse
    parsers (and their help texts) that a session may never need."""

    def __init__(self, build: Callable[[], Mapping[str, _V]]) -> None:
        self._build = build
        self._built: Mapping[str, _V] | None = None

    def _all(self) -> Mapping[str, _V]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def __getitem__(self, key: str) -> _V:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


LINE_PARSERS: Mapping[str, LineParser] = Lazy(_build_line_parsers)


def parse_line_command(command: str, args: list[str]) -> argparse.Namespace:
    """The options of ``%vydra COMMAND args...``; every mistake is a one-line ``UsageError``."""
    return LINE_PARSERS[command].parse(args)


def command_summaries() -> dict[str, str]:
    """``{"jobs": "[--status S] [--limit N] ...   recent jobs from the history, as a table"}``."""
    out = {}
    for name, parser in LINE_PARSERS.items():
        usage = parser.usage_line().removeprefix(f"%vydra {name}").strip()
        summary = (parser.description or "").split("\n")[0].rstrip(".")
        out[name] = f"{usage:<24}  {summary[:1].lower()}{summary[1:]}"
    return out


def line_help() -> str:
    """What ``%vydra?`` shows: every command with its options."""
    parts = ["%vydra COMMAND [options]: the line commands. `%%vydra MODEL` generates (see `%%vydra?`).",
             "`%vydra help COMMAND` (or `%vydra COMMAND?`) shows one of them; `%vydra help MODEL` a model's flags."]
    for parser in LINE_PARSERS.values():
        parts.append(parser.format_help().rstrip())
    return "\n\n".join(parts)


def cell_help() -> str:
    """What ``%%vydra?`` shows: the cell's own flags and the rule for a model's flags."""
    lines = ["%%vydra MODEL [--<schema-param> VALUE ...] [-o NAME] [--wait] [--dry-run] [--max-credits N]",
             "",
             "The cell body is the prompt; {names} are filled from your variables ({{ for a brace).",
             "Model flags come from its schema (`%vydra help MODEL`); the cell's own flags:",
             ""]
    lines += [f"  {flag:<16}{text}" for flag, text in GENERIC_FLAGS.items()]
    lines += ["",
              "A model parameter named like one of these (a `timeout`, say) is given as --param-timeout;",
              "--param-NAME works for any parameter. -y is --yes, --out is -o."]
    return "\n".join(lines)
