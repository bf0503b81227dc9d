"""The sandbox's model catalog: what ``GET /models`` lists and how a request body is checked.

Every family of the reference's pricing table is here, with a real JSON Schema as ``inputSchema``,
because clients are meant to be schema-driven: the catalog is the contract they discover at run
time, so it must be a faithful, machine-readable one. Validation is written by hand over the small
subset of JSON Schema the catalog uses, because the error *wording* is part of the contract
("Missing required field: prompt (string)") and a generic validator words things differently.

A price that depends on a parameter is declared in the schema itself with the extension keyword
``x-vydra-credits`` on that property (``{"text-to-image": 8, "text-to-video": 150, ...}``), so a
client can read the real price from the schema instead of hard-coding it.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

#: Keyword used on a property whose value decides the price.
CREDITS_KEYWORD = "x-vydra-credits"

#: Image and video dimensions per aspect ratio.
VIDEO_SIZES: dict[str, tuple[int, int]] = {"16:9": (640, 360), "9:16": (360, 640), "1:1": (480, 480)}
IMAGE_SIZES: dict[str, tuple[int, int]] = {"16:9": (1024, 576), "9:16": (576, 1024), "1:1": (768, 768)}

ASPECT_RATIOS = ["16:9", "9:16", "1:1"]
VOICES = ["rachel", "adam", "bella", "antoni", "elli", "josh"]
ASMR_THEMES = ["kinetic_sand", "soap_cutting", "slime", "glass_fruit", "wood_carving", "honeycomb"]


@dataclass(frozen=True)
class Model:
    """One catalog entry; ``kind`` tells the job runner what the model produces."""

    slug: str
    name: str
    provider: str
    credits_per_unit: int
    pricing_unit: str
    description: str
    input_schema: dict[str, Any]
    is_active: bool = True
    #: what the model produces: video, image, speech, voice, transcript, trim, compose, extract
    kind: str = "video"
    #: real-service job duration in seconds (divided by the sandbox speed)
    duration_s: float = 60.0
    #: length of the produced video in seconds, where fixed
    media_duration: float = 8.0
    #: per-mode job durations for models whose mode changes the work (grok-imagine)
    mode_durations: dict[str, float] = field(default_factory=dict)
    #: listed and served by the live flavor only (what vydra-notes.md reports beyond the reference)
    live_only: bool = False
    #: the live flavor answers it at once (200 with the result) instead of 202 and a job
    synchronous: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "name": self.name,
            "provider": self.provider,
            "creditsPerUnit": self.credits_per_unit,
            "pricingUnit": self.pricing_unit,
            "description": self.description,
            "inputSchema": self.input_schema,
            "isActive": self.is_active,
        }


def _schema(properties: dict[str, Any], required: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
        **extra,
    }


def _prompt(description: str = "What to generate") -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": 5000, "description": description}


def _url(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "uri", "description": description}


def _aspect(default: str | None = "16:9") -> dict[str, Any]:
    prop: dict[str, Any] = {"type": "string", "enum": list(ASPECT_RATIOS), "description": "Aspect ratio of the output"}
    if default is not None:
        prop["default"] = default
    return prop


def _voice() -> dict[str, Any]:
    return {"type": "string", "enum": list(VOICES), "default": VOICES[0], "description": "Voice to speak with"}


def build_catalog() -> list[Model]:
    """The models the sandbox serves, in listing order.

    Twelve in the spec flavor, like the reference's example count; the live flavor adds the
    ``live_only`` ones.
    """
    return [
        Model(
            slug="veo3", name="Google Veo 3 — Video Generation", provider="kie-ai",
            credits_per_unit=175, pricing_unit="video",
            description="Generate high-quality videos from text prompts",
            input_schema=_schema(
                {"prompt": _prompt("Text description of the video"), "aspect_ratio": _aspect("16:9"),
                 "image_url": _url("Optional still image to animate (for example from POST /upload)")},
                ["prompt"],
            ),
            kind="video", duration_s=90, media_duration=8,
        ),
        Model(
            slug="veo2", name="Google Veo 2 — Video Generation (retired)", provider="kie-ai",
            credits_per_unit=150, pricing_unit="video",
            description="Previous-generation Veo text-to-video; superseded by veo3",
            input_schema=_schema(
                {"prompt": _prompt("Text description of the video"), "aspect_ratio": _aspect("16:9")},
                ["prompt"],
            ),
            is_active=False, kind="video", duration_s=90, media_duration=8,
        ),
        Model(
            slug="kling-motion-control", name="Kling Motion Control", provider="kie-ai",
            credits_per_unit=350, pricing_unit="video",
            description="Transfer the motion of a reference video onto a character image",
            input_schema=_schema(
                {
                    "image_url": _url("Image of the character to animate"),
                    "video_url": _url("Reference video whose motion is transferred"),
                    "prompt": {**_prompt("Optional description of the result"), "minLength": 0},
                    "keep_original_sound": {"type": "boolean", "default": False,
                                            "description": "Keep the reference video's audio track"},
                },
                ["image_url", "video_url"],
            ),
            kind="video", duration_s=150, media_duration=5,
        ),
        Model(
            slug="grok-imagine", name="Grok Imagine", provider="xai",
            credits_per_unit=8, pricing_unit="generation",
            description="Images and short videos from text or an image; video modes cost 150 credits",
            input_schema=_schema(
                {
                    "prompt": _prompt("Creative description"),
                    "model": {
                        "type": "string",
                        "enum": ["text-to-image", "text-to-video", "image-to-video"],
                        "default": "text-to-image",
                        "description": "Generation mode; sets the price",
                        CREDITS_KEYWORD: {"text-to-image": 8, "text-to-video": 150, "image-to-video": 150},
                    },
                    "aspect_ratio": _aspect(None),
                    "duration": {"type": "integer", "enum": [6, 10], "default": 6,
                                 "description": "Video length in seconds (video modes only)"},
                    "image_url": _url("Source image (image-to-video only)"),
                },
                ["prompt"],
                allOf=[{
                    "if": {"properties": {"model": {"const": "image-to-video"}}, "required": ["model"]},
                    "then": {"required": ["image_url"]},
                }],
            ),
            kind="grok", duration_s=60,
            mode_durations={"text-to-image": 8, "text-to-video": 60, "image-to-video": 60},
        ),
        Model(
            slug="asmr-generator", name="ASMR Generator", provider="kie-ai",
            credits_per_unit=175, pricing_unit="video",
            description="Themed satisfying ASMR videos, from a preset theme or a custom prompt",
            input_schema=_schema(
                {
                    "theme": {"type": "string", "enum": list(ASMR_THEMES), "description": "Preset theme"},
                    "customPrompt": _prompt("Custom description instead of a preset theme"),
                },
                [],
                anyOf=[{"required": ["theme"]}, {"required": ["customPrompt"]}],
            ),
            kind="video", duration_s=90, media_duration=10,
        ),
        Model(
            slug="elevenlabs-tts", name="ElevenLabs Text-to-Speech", provider="elevenlabs",
            credits_per_unit=5, pricing_unit="request",
            description="Natural speech from text",
            input_schema=_schema({"text": _prompt("Text to speak"), "voice": _voice()}, ["text"]),
            kind="speech", duration_s=5,
        ),
        Model(
            slug="elevenlabs-sts", name="ElevenLabs Speech-to-Speech", provider="elevenlabs",
            credits_per_unit=10, pricing_unit="request",
            description="Convert a recording into another voice",
            input_schema=_schema({"audio_url": _url("Recording to convert"), "voice": _voice()}, ["audio_url"]),
            kind="voice", duration_s=10,
        ),
        Model(
            slug="whisper", name="Whisper Transcription", provider="fal-ai",
            credits_per_unit=3, pricing_unit="minute",
            description="Transcribe speech to text; billed per started minute of audio",
            input_schema=_schema(
                {"audio_url": _url("Audio to transcribe"),
                 "language": {"type": "string", "default": "en", "description": "Language code"}},
                ["audio_url"],
            ),
            kind="transcript", duration_s=15,
        ),
        Model(
            slug="video-trim", name="Video Trim", provider="vydra",
            credits_per_unit=2, pricing_unit="request",
            description="Cut a video to a time range",
            input_schema=_schema(
                {
                    "video_url": _url("Video to trim"),
                    "start": {"type": "number", "minimum": 0, "description": "Start time in seconds"},
                    "end": {"type": "number", "minimum": 0, "description": "End time in seconds"},
                },
                ["video_url", "start", "end"],
            ),
            kind="trim", duration_s=5,
        ),
        Model(
            slug="video-compose", name="Video Compose", provider="vydra",
            credits_per_unit=5, pricing_unit="request",
            description="Concatenate videos into one, optionally with a soundtrack (a voice-over) laid over them",
            input_schema=_schema(
                {"video_urls": {"type": "array", "items": {"type": "string", "format": "uri"},
                                "minItems": 1, "maxItems": 20, "description": "Videos in playing order"},
                 "audio_url": _url("Optional soundtrack laid over the result from its start (a voice-over); "
                                   "the clips' own sound stays underneath, quieter")},
                ["video_urls"],
            ),
            kind="compose", duration_s=5,
        ),
        Model(
            slug="video-extract", name="Video Extract", provider="vydra",
            credits_per_unit=3, pricing_unit="request",
            description="Extract the audio track or a still frame from a video",
            input_schema=_schema(
                {
                    "video_url": _url("Source video"),
                    "what": {"type": "string", "enum": ["audio", "frame"], "default": "audio",
                             "description": "What to extract"},
                    "at": {"type": "number", "minimum": 0, "default": 0,
                           "description": "Frame time in seconds (frame only)"},
                },
                ["video_url"],
            ),
            kind="extract", duration_s=5,
        ),
        Model(
            slug="nano-banana", name="Nano Banana", provider="fal-ai",
            credits_per_unit=8, pricing_unit="image",
            description="Image generation, or editing when an image_url is given",
            input_schema=_schema(
                {"prompt": _prompt("Description, or the edit to make"),
                 "image_url": _url("Image to edit (optional)"),
                 "aspect_ratio": _aspect("1:1")},
                ["prompt"],
            ),
            kind="image", duration_s=10,
        ),
        # vydra-notes.md: "Some routes use a slash in the slug (/models/elevenlabs/tts, answered
        # synchronously)". Live flavor only, so the spec flavor lists the reference's twelve.
        Model(
            slug="elevenlabs/tts", name="ElevenLabs TTS", provider="elevenlabs",
            credits_per_unit=5, pricing_unit="request",
            description="Natural speech from text, answered at once",
            input_schema=_schema({"text": _prompt("Text to speak"), "voice": _voice()}, ["text"]),
            kind="speech", duration_s=5, live_only=True, synchronous=True,
        ),
    ]


class Catalog:
    """Lookup and filtering over the model list."""

    def __init__(self, models: list[Model] | None = None, live: bool = False) -> None:
        models = models if models is not None else build_catalog()
        self.models = [m for m in models if live or not m.live_only]
        self._by_slug = {m.slug: m for m in self.models}
        self._charges: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, slug: str) -> Model | None:
        return self._by_slug.get(slug)

    def set_price(self, slug: str, credits: int, *, variant: str | None = None, charge: int | None = None) -> Model:
        """Change what a model costs from now on: the listed ``creditsPerUnit``, or, with ``variant``
        (``"text-to-video"`` or ``"model=text-to-video"``), the ``x-vydra-credits`` price of one
        value of a priced parameter. Jobs already created keep what they were charged.

        ``charge`` makes submissions cost that instead of the listing, whatever it says (a billing
        discrepancy, which a client should notice); ``charge=None`` charges the listing again.
        ValueError for an unknown model or variant, or a price that is not a whole number >= 0.
        """
        for name, value in (("credits", credits), ("charge", charge)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a whole number of credits >= 0, not {value!r}")
        with self._lock:
            model = self._by_slug.get(slug)
            if model is None:
                raise ValueError(f"no model {slug!r} in the sandbox's catalog")
            if variant is None:
                changed = dataclasses.replace(model, credits_per_unit=credits)
            else:
                schema = copy.deepcopy(model.input_schema)
                name, sep, value = variant.partition("=")
                for prop_name, prop in schema.get("properties", {}).items():
                    table = prop.get(CREDITS_KEYWORD)
                    key = value if sep else name
                    if table and (not sep or prop_name == name) and key in table:
                        table[key] = credits
                        break
                else:
                    raise ValueError(f"{slug} has no priced variant {variant!r}")
                changed = dataclasses.replace(model, input_schema=schema)
            self.models = [changed if m.slug == slug else m for m in self.models]
            self._by_slug[slug] = changed
            if charge is None:
                self._charges.pop(slug, None)
            else:
                self._charges[slug] = charge
            return changed

    def charge(self, slug: str, listed: int) -> int:
        """What a submission is charged: the listed price, unless ``set_price(charge=...)`` said otherwise."""
        return self._charges.get(slug, listed)

    def filter(self, provider: str | None = None, is_active: bool | None = None) -> list[Model]:
        return [
            m for m in self.models
            if (provider is None or m.provider == provider) and (is_active is None or m.is_active == is_active)
        ]


# --------------------------------------------------------------------------- validation

class InputError(ValueError):
    """A request body that the model's schema refuses; ``str()`` is the documented message."""

    def __init__(self, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.field = field_name


_PY_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
             "array": "array", "object": "object"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_type(value: Any, expected: str) -> bool:
    actual = _json_type(value)
    if expected == "number":
        return actual in ("integer", "number")
    if expected == "integer":
        return actual == "integer" or (actual == "number" and float(value).is_integer())
    return actual == expected


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else ("true" if value is True else "false" if value is False
                                                        else str(value))


def _is_url(value: str) -> bool:
    parsed = urlparse(value)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def _check_value(name: str, value: Any, prop: dict[str, Any]) -> Any:
    """Check one value against its property schema; return it normalised (10.0 -> 10 for integers)."""
    expected = prop.get("type")
    if expected and not _is_type(value, expected):
        raise InputError(f"Invalid type for {name}: expected {expected}, got {_json_type(value)}", name)
    if expected == "integer":
        value = int(value)
    if "enum" in prop and value not in prop["enum"]:
        allowed = ", ".join(str(v) for v in prop["enum"])
        raise InputError(f"Invalid value for {name}: {_show(value)} (allowed: {allowed})", name)
    if "minimum" in prop and value < prop["minimum"]:
        raise InputError(f"Invalid value for {name}: {_show(value)} (minimum: {prop['minimum']})", name)
    if "maximum" in prop and value > prop["maximum"]:
        raise InputError(f"Invalid value for {name}: {_show(value)} (maximum: {prop['maximum']})", name)
    if isinstance(value, str):
        if prop.get("minLength") and len(value.strip()) < prop["minLength"]:
            raise InputError(f"Invalid value for {name}: {_show(value)} (minimum length: {prop['minLength']})", name)
        if prop.get("maxLength") is not None and len(value) > prop["maxLength"]:
            raise InputError(f"Invalid value for {name}: too long (maximum length: {prop['maxLength']})", name)
        if prop.get("format") == "uri" and not _is_url(value):
            raise InputError(f"Invalid value for {name}: {_show(value)} (expected an http(s) URL)", name)
    if isinstance(value, list):
        if "minItems" in prop and len(value) < prop["minItems"]:
            raise InputError(f"Invalid value for {name}: expected at least {prop['minItems']} items", name)
        if "maxItems" in prop and len(value) > prop["maxItems"]:
            raise InputError(f"Invalid value for {name}: expected at most {prop['maxItems']} items", name)
        items = prop.get("items")
        if items:
            value = [_check_value(f"{name}[{i}]", v, items) for i, v in enumerate(value)]
    return value


def _missing(names: list[str], props: dict[str, Any]) -> InputError:
    kind = props.get(names[0], {}).get("type", "value")
    return InputError(f"Missing required field: {' or '.join(names)} ({kind})", names[0])


def _present(body: dict[str, Any], name: str, props: dict[str, Any]) -> bool:
    """Absent, null and empty-when-required strings all count as missing."""
    value = body.get(name)
    if value is None:
        return False
    if isinstance(value, str) and props.get(name, {}).get("minLength", 0) >= 1 and not value.strip():
        return False
    return True


def validate_input(model: Model, body: dict[str, Any]) -> dict[str, Any]:
    """Check ``body`` against the model's schema; return the parameters with defaults filled in.

    Check order: unknown fields, required fields, then each value (type, enum, bounds, format),
    then the conditional rules (anyOf / if-then). Raises :class:`InputError`.
    """
    schema = model.input_schema
    props: dict[str, Any] = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        for name in body:
            if name not in props:
                raise InputError(f"Unknown field: {name}", name)
    for name in schema.get("required", []):
        if not _present(body, name, props):
            raise _missing([name], props)
    params: dict[str, Any] = {}
    for name, value in body.items():
        if value is None:
            continue
        params[name] = _check_value(name, value, props[name])
    for alternatives in [schema["anyOf"]] if "anyOf" in schema else []:
        names = [n for alt in alternatives for n in alt.get("required", [])]
        if not any(_present(body, n, props) for n in names):
            raise _missing(names, props)
    for rule in schema.get("allOf", []):
        cond = rule.get("if", {})
        if all(params.get(k, props.get(k, {}).get("default")) == v.get("const")
               for k, v in cond.get("properties", {}).items()):
            for name in rule.get("then", {}).get("required", []):
                if not _present(body, name, props):
                    raise _missing([name], props)
    for name, prop in props.items():
        if name not in params and "default" in prop:
            params[name] = prop["default"]
    return params


def price(model: Model, params: dict[str, Any], audio_minutes: float | None = None) -> int:
    """Credits a request costs: the schema's ``x-vydra-credits`` wins, per-minute units scale."""
    for name, prop in model.input_schema.get("properties", {}).items():
        table = prop.get(CREDITS_KEYWORD)
        if table and params.get(name) in table:
            return int(table[params[name]])
    if model.pricing_unit == "minute":
        minutes = max(1, math.ceil(audio_minutes)) if audio_minutes else 1
        return model.credits_per_unit * minutes
    return model.credits_per_unit


def job_duration(model: Model, params: dict[str, Any]) -> float:
    """Real-service duration of a job in seconds, before the speed factor and jitter."""
    if model.mode_durations:
        return float(model.mode_durations.get(params.get("model", ""), model.duration_s))
    return float(model.duration_s)


def produces(model: Model, params: dict[str, Any]) -> str:
    """The output kind for these parameters: video, image, audio, transcript."""
    if model.kind == "grok":
        return "image" if params.get("model", "text-to-image") == "text-to-image" else "video"
    if model.kind in ("speech", "voice"):
        return "audio"
    if model.kind == "extract":
        return "audio" if params.get("what", "audio") == "audio" else "image"
    if model.kind in ("trim", "compose"):
        return "video"
    return model.kind
