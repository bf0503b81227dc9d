"""API objects that are not jobs: ``Model`` (with its schema, validation and pricing) and ``Organization``.

Everything here is driven by what ``GET /models`` returns: a model the server adds tomorrow gets
its parameters, prompt field, validation and price from its ``inputSchema`` with no code change.
Parsing is tolerant: unknown fields are kept in ``extra``, missing optional ones become None.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vydra_nb.api.errors import ValidationError, shown


def is_http_url(value: Any) -> bool:
    """What the API accepts for ``"format": "uri"``: an absolute http(s) URL (vydra-api.md)."""
    from urllib.parse import urlsplit

    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _num(value: Any) -> str:
    """A bound as a person writes it: ``0``, not ``0.0``."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def bounds_text(minimum: Any = None, maximum: Any = None, *, exclusive_minimum: Any = None,
                exclusive_maximum: Any = None) -> str | None:
    """``between 4 and 12``, ``>= 0``, ``< 10``: the allowed range in words, or None without bounds."""
    lower = f">= {_num(minimum)}" if _is_number(minimum) else None
    upper = f"<= {_num(maximum)}" if _is_number(maximum) else None
    if _is_number(exclusive_minimum):
        lower = f"> {_num(exclusive_minimum)}"
    if _is_number(exclusive_maximum):
        upper = f"< {_num(exclusive_maximum)}"
    if lower and upper and lower.startswith(">=") and upper.startswith("<="):
        return f"between {_num(minimum)} and {_num(maximum)}"
    if lower and upper:
        return f"{lower} and {upper}"
    return lower or upper


# Parameter names that hold the text of a request, best first: ``Job.prompt`` reads the first one
# present in a job's parameters. Which field a cell body fills is decided by ``is_prompt_like``.
PROMPT_FIELD_NAMES = ("prompt", "text", "customPrompt", "custom_prompt", "input_text", "script",
                      "description", "query", "input")

# Exact names (besides any name containing "prompt") that a cell body may fill.
PROMPT_LIKE_NAMES = ("text", "input_text", "script")


def is_prompt_like(name: str) -> bool:
    """A parameter a cell body may fill: its name says it holds the prompt.

    ``prompt``, ``customPrompt``, ``video_prompt`` (anything with "prompt" in it, except a negative
    prompt, which says what *not* to generate), or exactly ``text``, ``script`` or ``input_text``.
    An optional ``language`` or ``voice_id`` string is not a prompt, so a model whose only strings
    are such settings takes no text prompt rather than silently putting the body in one of them.
    """
    low = name.lower()
    return ("prompt" in low and "negative" not in low) or low in PROMPT_LIKE_NAMES

# Schema extension keywords a server may use to price a parameter's values (e.g. Grok image vs video).
PRICE_KEYWORDS = ("x-vydra-credits", "x-credits", "x-pricing")

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "an object",
    "null": "null",
}


# Integers outside SQLite's (and every sane counter's) signed 64-bit range are treated as garbage.
# A server that says a job cost 1e300 credits is wrong or hostile; keeping such a number made the
# history store's INSERT raise OverflowError, so the job, paid for, went unrecorded.
INT_LIMIT = 2**63 - 1


def as_int(value: Any) -> int | None:
    """A tolerant integer: ints, integral floats and numeric strings within the signed 64-bit range;
    anything else (including 1e300, inf, NaN and 4000-digit numbers) is None."""
    if isinstance(value, bool) or value is None:
        return None
    result: int | None = None
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and math.isfinite(value):
        result = int(value)
    elif isinstance(value, str) and len(value) <= 64:
        try:
            number = float(value.strip())
        except ValueError:
            return None
        result = int(number) if math.isfinite(number) else None
    if result is None or not -INT_LIMIT <= result <= INT_LIMIT:
        return None
    return result


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else (None if value is None else str(value))


def as_datetime(value: Any) -> datetime | None:
    """ISO-8601 (with ``Z``) or unix seconds; None for anything unparseable."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, (int, float)):
            from datetime import timezone

            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                from datetime import timezone

                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed
    except (ValueError, OverflowError, OSError):
        return None
    return None


@dataclass(frozen=True)
class Parameter:
    """One property of a model's ``inputSchema``, flattened for forms, flags and help."""

    name: str
    type: str | None
    required: bool
    default: Any = None
    enum: tuple[Any, ...] | None = None
    description: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    prices: dict[str, int] | None = None

    @property
    def flag(self) -> str:
        """The command-line spelling: ``aspect_ratio`` and ``aspectRatio`` both become ``--aspect-ratio``."""
        out = []
        for i, ch in enumerate(self.name):
            if ch.isupper() and i and self.name[i - 1].islower():
                out.append("-")
            out.append("-" if ch == "_" else ch.lower())
        return "--" + "".join(out)


def _schema_type(prop: dict[str, Any]) -> str | None:
    t = prop.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    if t is None and "enum" in prop and prop["enum"]:
        sample = prop["enum"][0]
        t = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(sample))
    return t if isinstance(t, str) else None


@dataclass(eq=False)
class Model:
    """A model from ``GET /models``."""

    slug: str
    name: str | None = None
    provider: str | None = None
    credits_per_unit: int | None = None
    pricing_unit: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] = field(default_factory=dict, repr=False)
    is_active: bool = True
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Model":
        known = {"slug", "name", "provider", "creditsPerUnit", "pricingUnit", "description", "inputSchema", "isActive"}
        schema = data.get("inputSchema")
        active = data.get("isActive")
        return cls(
            slug=str(data["slug"]),
            name=as_str(data.get("name")),
            provider=as_str(data.get("provider")),
            credits_per_unit=as_int(data.get("creditsPerUnit")),
            pricing_unit=as_str(data.get("pricingUnit")),
            description=as_str(data.get("description")),
            input_schema=schema if isinstance(schema, dict) else {},
            is_active=active if isinstance(active, bool) else True,
            extra={k: v for k, v in data.items() if k not in known},
        )

    # -- schema -----------------------------------------------------------------------------
    @property
    def properties(self) -> dict[str, dict[str, Any]]:
        props = self.input_schema.get("properties")
        if not isinstance(props, dict):
            return {}
        return {k: v for k, v in props.items() if isinstance(k, str) and isinstance(v, dict)}

    @property
    def required(self) -> list[str]:
        req = self.input_schema.get("required")
        return [r for r in req if isinstance(r, str)] if isinstance(req, list) else []

    @property
    def parameters(self) -> list[Parameter]:
        required = set(self.required)
        out = []
        for name, prop in self.properties.items():
            enum = prop.get("enum")
            prices = next((prop[k] for k in PRICE_KEYWORDS if isinstance(prop.get(k), dict)), None)
            out.append(
                Parameter(
                    name=name,
                    type=_schema_type(prop),
                    required=name in required,
                    default=prop.get("default"),
                    enum=tuple(enum) if isinstance(enum, list) else None,
                    description=as_str(prop.get("description")),
                    minimum=prop.get("minimum") if isinstance(prop.get("minimum"), (int, float)) else None,
                    maximum=prop.get("maximum") if isinstance(prop.get("maximum"), (int, float)) else None,
                    prices={str(k): n for k, v in prices.items() if (n := as_int(v)) is not None} if prices else None,
                )
            )
        return out

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    @property
    def prompt_field(self) -> str | None:
        """The field a cell body fills: a free-text string whose name is prompt-like (see
        ``is_prompt_like``), or None: the model takes no text prompt.

        Preference: ``prompt``, then ``text``, then other names containing "prompt" (required ones
        first, then in schema order), then ``input_text`` and ``script``.
        """
        candidates = [
            p for p in self.parameters
            if is_prompt_like(p.name) and p.type in ("string", None) and p.enum is None
            and "format" not in self.properties[p.name]
        ]

        def rank(p: Parameter) -> tuple[int, int]:
            low = p.name.lower()
            order = 0 if low == "prompt" else 1 if low == "text" else 2 if "prompt" in low else 3
            return order, 0 if p.required else 1

        return min(candidates, key=rank).name if candidates else None

    # -- pricing ----------------------------------------------------------------------------
    def price(self, params: dict[str, Any] | None = None) -> int | None:
        """Credits one submission with ``params`` costs, as far as the model list says.

        A parameter whose schema prices its values (``x-vydra-credits``) overrides the model's
        ``creditsPerUnit`` for the value chosen (or its default). Per-minute pricing counts one unit:
        the length of an input file is not known before the server reads it.
        """
        params = params or {}
        price = self.credits_per_unit
        for p in self.parameters:
            if p.prices:
                value = params.get(p.name, p.default)
                if value is not None and str(value) in p.prices:
                    price = p.prices[str(value)]
        return price

    def price_variants(self) -> list[tuple[str | None, int | None]]:
        """(label, credits) for each distinct priced value, e.g. ``[("text-to-image", 8), ...]``."""
        for p in self.parameters:
            if p.prices:
                return [(f"{p.name}={value}", credits) for value, credits in p.prices.items()]
        return [(None, self.credits_per_unit)]

    def price_variant(self, params: dict[str, Any] | None = None) -> str | None:
        """The priced variant ``params`` choose, labelled as in ``price_variants`` (``"model=text-to-video"``);
        None for a one-price model. Price history keeps variants apart: Grok's image and video
        prices are two prices, not a price change."""
        params = params or {}
        for p in self.parameters:
            if p.prices:
                value = params.get(p.name, p.default)
                return f"{p.name}={value}" if value is not None else None
        return None

    # -- validation -------------------------------------------------------------------------
    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check ``params`` against ``inputSchema`` before anything is sent; return them unchanged.

        Raises ValidationError naming the field and what is allowed. A schema the validator cannot
        read is not held against the user: the server will judge.
        """
        if not self.is_active:
            raise ValidationError(
                f"Model {self.slug} is not active on the server; pick another with `%vydra models`.",
                field=None,
            )
        props = self.properties
        if self.input_schema.get("additionalProperties") is False or props:
            for key in params:
                if props and key not in props:
                    close = difflib.get_close_matches(key, list(props), n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise ValidationError(
                        f"{self.slug} has no parameter {key!r}.{hint} Parameters: {', '.join(props)}.",
                        field=key,
                    )
        # What JSON Schema cannot say comes first (so "" in a minLength field also reads "besides
        # spaces"), and holds even when the schema itself cannot be read.
        for key, value in params.items():
            prop = props.get(key)
            self._check_value(key, value, prop if isinstance(prop, dict) else {})
        try:
            from jsonschema import exceptions as js_exc
            from jsonschema.validators import validator_for

            cls = validator_for(self.input_schema)
            cls.check_schema(self.input_schema)
        except Exception:  # an unreadable schema: let the server judge
            return params
        errors = list(cls(self.input_schema).iter_errors(params))
        if errors:
            raise ValidationError(self._describe(js_exc.best_match(errors), props), field=self._field_of(js_exc.best_match(errors)))
        return params

    @staticmethod
    def _check_value(key: str, value: Any, prop: dict[str, Any]) -> None:
        """What the server refuses but JSON Schema alone lets through: a non-http(s) ``uri``, a
        ``minLength`` string of spaces, NaN or infinity (JSON has neither, so the request could not
        even be encoded), and lone surrogates (not Unicode text)."""
        raw_items = prop.get("items")
        items: dict[str, Any] = raw_items if isinstance(raw_items, dict) else {}
        values = value if isinstance(value, list) else [value]
        uri = "uri" in (prop.get("format"), items.get("format"))
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValidationError(f"{key} must be a finite number (got {item}).", field=key)
            if not isinstance(item, str):
                continue
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError(f"{key} holds an invalid character (a lone surrogate): not Unicode text.",
                                      field=key) from None
            if uri and not is_http_url(item):
                raise ValidationError(f"{key} needs an http(s) URL, a finished Job or a local image file (got {shown(item)}).",
                                      field=key)
        min_length = prop.get("minLength")
        if isinstance(value, str) and isinstance(min_length, int) and len(value.strip()) < min_length:
            raise ValidationError(
                f"{key} needs at least {min_length} character(s) besides spaces (got {shown(value)}).", field=key
            )

    @staticmethod
    def _field_of(error: Any) -> str | None:
        if error.path:
            return str(error.path[0])
        if error.validator == "required" and isinstance(error.validator_value, list):
            missing = [f for f in error.validator_value if f not in (error.instance or {})]
            return missing[0] if missing else None
        return None

    def _describe(self, error: Any, props: dict[str, dict[str, Any]]) -> str:
        name = self._field_of(error)
        value = error.instance
        if error.validator == "required" and name:
            t = _schema_type(props.get(name, {}))
            return f"{self.slug} needs {name!r} ({_TYPE_NAMES.get(t or '', 'a value')})."
        if error.validator == "enum":
            allowed = ", ".join(map(str, error.validator_value))
            return f"{name} must be one of {allowed} (got {value!r})."
        if error.validator == "type":
            expected = error.validator_value
            expected = expected if isinstance(expected, list) else [expected]
            words = " or ".join(_TYPE_NAMES.get(str(t), str(t)) for t in expected)
            return f"{name} must be {words} (got {value!r})."
        if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            p = props.get(name or "", {})
            bounds = bounds_text(p.get("minimum"), p.get("maximum"), exclusive_minimum=p.get("exclusiveMinimum"),
                                 exclusive_maximum=p.get("exclusiveMaximum"))
            return f"{name} must be {bounds or error.message} (got {value!r})."
        if error.validator in ("maxLength", "minLength") and isinstance(value, str):
            limit = error.validator_value
            if error.validator == "maxLength":
                return f"{name} is {len(value):,} characters; the limit is {limit:,}. Shorten it."
            return f"{name} is {len(value):,} characters; it needs at least {limit:,}."
        if error.validator in ("maxItems", "minItems") and isinstance(value, list):
            bound = "at most" if error.validator == "maxItems" else "at least"
            return f"{name} has {len(value):,} items; it takes {bound} {error.validator_value:,}."
        if error.validator == "pattern" and isinstance(value, str):
            return f"{name} does not match the pattern {error.validator_value!r} the model requires."
        if error.validator in ("anyOf", "oneOf") and not name:
            options = [sorted(s.get("required", [])) for s in error.validator_value if isinstance(s, dict)]
            words = " or ".join("/".join(o) for o in options if o)
            return f"{self.slug} needs {words or 'a valid combination of parameters'}."
        where = f"{name}: " if name else f"{self.slug}: "
        return where + error.message[:200] + "."


@dataclass(eq=False)
class Organization:
    """``GET /organization``: the balance and the plan."""

    id: str | None
    name: str | None
    credits_remaining: int | None
    plan: str | None
    updated_at: datetime | None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Organization":
        known = {"id", "name", "creditsRemaining", "plan", "updatedAt"}
        return cls(
            id=as_str(data.get("id")),
            name=as_str(data.get("name")),
            credits_remaining=as_int(data.get("creditsRemaining")),
            plan=as_str(data.get("plan")),
            updated_at=as_datetime(data.get("updatedAt")),
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass(frozen=True)
class CancelResult:
    """``DELETE /jobs/{id}``: whether it worked and what came back."""

    job_id: str
    success: bool
    message: str | None
    credits_refunded: int | None
    already_refunded: bool

    def __str__(self) -> str:
        if self.already_refunded:
            return f"{self.job_id}: already ended; its {self.credits_refunded or 0} credits were refunded before."
        return f"{self.job_id}: {self.message or 'cancelled'}; {self.credits_refunded or 0} credits refunded."
