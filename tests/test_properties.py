"""Property tests: whatever a user types into a ``%%vydra`` cell, the answer is one of two things.

Either a clear one-line ``UsageError`` (what IPython shows is ``UsageError: ...`` on one short
line, no traceback) and NOTHING reaches the server, or, with ``--dry-run``, request bodies that
satisfy the model's ``inputSchema`` and that the reference server would accept. Never another
exception type. The cells run through a real ``InteractiveShell`` (input transformers, the magic,
the display formatter) against a real sandbox over HTTP; stdout/stderr are strict UTF-8 streams,
like a terminal's, so output that cannot be printed is caught too.

"Nothing sent" is judged twice: by the client's request counter and by the sandbox's own state
(its job counts and credit ledger), so a request that slipped past the client's bookkeeping
still fails the test.

The schemas come from ``GET /models`` at run time, so every model in the sandbox catalog is
covered, including ones added later. The oracle for valid input is jsonschema (with format
checking, ``uri`` meaning an http(s) URL as the reference says) plus the sandbox's own
independent validator: a dry-run that the server would then refuse is a broken promise too.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import requests
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import vydra_nb
from vydra_nb.api.models import Model
from vydra_nb.sandbox.catalog import Catalog, InputError, price, validate_input
from vydra_nb.session import current as current_session

# Moderate by default so the file runs in well under a minute; VYDRA_PROPERTY_EXAMPLES=1000 digs deeper.
SETTINGS = settings(
    max_examples=int(os.environ.get("VYDRA_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)

# What str.splitlines (and so IPython's cell splitter) treats as a line end: a magic *line* can
# not hold these, so valid values never contain them (the fuzz tests still do).
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
MAX_ERROR_CHARS = 400

NAMESPACE = {"subject": "a heron", "n": 3, "cfg": {"mood": "calm"}}


# -- the session ------------------------------------------------------------------------------
@dataclass
class Session:
    shell: InteractiveShell
    models: list[dict[str, Any]]  # GET /models, raw

    @property
    def magics(self) -> Any:
        return self.shell.magics_manager.registry["VydraMagics"]

    @property
    def box(self) -> Any:
        return self.magics.session.sandbox

    def raw(self, slug: str) -> dict[str, Any]:
        return next(m for m in self.models if m["slug"] == slug)


@pytest.fixture(scope="module")
def session() -> Iterator[Session]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "vydra_nb")
    shell.run_line_magic("config", "VydraMagics.resume_on_load = False")
    shell.run_line_magic("vydra", "sandbox --speed 100 --credits 10000000")
    magics = shell.magics_manager.registry["VydraMagics"]
    box = magics.session.sandbox
    resp = requests.get(f"{box.url}/models", headers={"Authorization": f"Bearer {box.api_key}"}, timeout=10)
    resp.raise_for_status()
    shell.user_ns.update(NAMESPACE)
    magics.client.models()  # the one models request, made before any example counts requests
    try:
        yield Session(shell, resp.json()["data"])
    finally:
        for name in NAMESPACE:
            shell.user_ns.pop(name, None)
        current_session().reset()


@dataclass
class Outcome:
    error: BaseException | None
    output: str
    sent: int  # requests the client made
    jobs: int  # jobs the sandbox created
    charges: int  # ledger movements
    bodies: list[dict[str, Any]] = field(default_factory=list)
    cost: int | None = None


def _sandbox_counts(s: Session) -> tuple[int, int]:
    state = requests.get(f"{s.box.root}/_sandbox/state", timeout=10).json()
    return sum(state["jobs"].values()), len(state["ledger"])


def run_cell(s: Session, line: str, body: str) -> Outcome:
    """Run ``%%vydra line`` + body like a user would, capturing what the shell shows.

    IPython itself refuses a cell magic with an empty body, so a body-less request goes the way
    the help says: ``%vydra generate MODEL [flags]`` (the same code path, with no prompt).
    """
    client = s.magics.client
    # Jobs of earlier real submissions are polled in the background; let them end first, so
    # every request counted below belongs to this cell.
    # Their results are then saved by a download thread, whose "saved to" line (the text view
    # prints from background threads, by design) must not land in this cell's output either.
    assert current_session().tracker.join_idle(timeout=30), "earlier jobs never ended"
    deadline = time.monotonic() + 30
    while any(t.name == "vydra-download" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    sent0 = client.requests_sent
    jobs0, charges0 = _sandbox_counts(s)
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    with redirect_stdout(stream), redirect_stderr(stream):
        # A line magic ends at the first line break; what follows would be Python (IPython's
        # SyntaxError, not ours), so a body-less line keeps to one line.
        one_line = line.translate({ord(c): " " for c in LINE_BREAKS})
        cell = f"%%vydra {line}\n{body}" if body else f"%vydra generate {one_line}"
        result = s.shell.run_cell(cell, store_history=False)
    stream.flush()
    jobs1, charges1 = _sandbox_counts(s)
    assert result.error_before_exec is None, repr(result.error_before_exec)
    out = Outcome(result.error_in_exec, raw.getvalue().decode("utf-8"), client.requests_sent - sent0,
                  jobs1 - jobs0, charges1 - charges0)
    _note(f"line={line!r} body={body[:200]!r} -> {type(out.error).__name__}: {out.output[:500]!r}")
    return out


def _note(text: str) -> None:
    """hypothesis.note inside a property; plain tests show the failing cell in their assertion."""
    try:
        note(text)
    except InvalidArgument:
        pass


def check_outcome(s: Session, out: Outcome, slug: str) -> None:
    """The property itself: a short UsageError with nothing sent, or a valid dry run."""
    if out.error is not None:
        assert isinstance(out.error, (UsageError, vydra_nb.VydraError)), (
            f"unexpected {type(out.error).__name__}: {out.error!r}")
        shown = out.output.strip()
        assert "Traceback" not in shown and "\n" not in shown, f"not one line: {shown[:2000]!r}"
        assert shown.startswith(("UsageError:", vydra_nb.VydraError.__name__)), shown[:300]
        assert len(shown) <= MAX_ERROR_CHARS, f"a wall of text ({len(shown)} chars): {shown[:300]!r}..."
        assert out.sent == 0 and out.jobs == 0 and out.charges == 0, "an invalid cell reached the server"
        return
    assert "Nothing was sent (--dry-run)." in out.output, f"no error and no dry run: {out.output[:500]!r}"
    assert out.sent == 0 and out.jobs == 0 and out.charges == 0, "a dry run reached the server"
    out.bodies, out.cost = parse_dry_run(out.output)
    assert out.bodies, out.output[:500]
    raw = s.raw(slug)
    catalog_model = Catalog().get(slug)
    for body in out.bodies:
        errors = list(validator(raw["inputSchema"]).iter_errors(body))
        assert not errors, f"dry run printed a body its schema refuses: {body!r}: {errors[0].message}"
        try:
            validate_input(catalog_model, dict(body))
        except InputError as exc:
            raise AssertionError(f"dry run of {body!r} would be refused by the server: {exc}") from None
    if raw.get("pricingUnit") != "minute":
        expected = sum(price(catalog_model, validate_input(catalog_model, dict(b))) for b in out.bodies)
        assert out.cost == expected, f"dry run said {out.cost} credits, the server charges {expected}"


def parse_dry_run(text: str) -> tuple[list[dict[str, Any]], int | None]:
    """The JSON bodies after each ``POST`` line, and the total from the ``Cost:`` line."""
    decoder = json.JSONDecoder()
    bodies = []
    for m in re.finditer(r"^POST [^\n]*\n", text, flags=re.M):
        body, _ = decoder.raw_decode(text, m.end())
        bodies.append(body)
    cost = re.search(r"^Cost: (?:\d+ requests, )?(\d+|\?) credits", text, flags=re.M)
    return bodies, (int(cost.group(1)) if cost and cost.group(1) != "?" else None)


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parsed = urlparse(value)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


FORMATS = jsonschema.FormatChecker()
FORMATS.checks("uri")(_is_http_url)


def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=FORMATS)


# -- strategies -----------------------------------------------------------------------------
def line_text(**kwargs: Any) -> st.SearchStrategy[str]:
    """Any text a single magic line can carry (no line breaks, no surrogates)."""
    return st.text(st.characters(codec="utf-8", exclude_characters=LINE_BREAKS), **kwargs)


ANY_CHAR = st.one_of(
    st.characters(codec=None),  # everything printable and not, control characters included
    st.characters(categories=["Cs"]),  # lone surrogates
    st.sampled_from(list(LINE_BREAKS) + ["\x00", "\t", "\u200b", "\ufeff", "é", "🦊"]),
)

PLACEHOLDERS = st.sampled_from([
    "{subject}", "{n}", "{n:03d}", "{subject!r}", "{cfg[mood]}", "{subject.upper}", "{{", "}}", "{{x}}",
    "{", "}", "{}", "{0}", "{missing}", "{ subject }", "{subject", "subject}", "{a\nb}", "{n:\n}",
    "{cfg[nope]}", "{subject.nope}", "{n!z}", "{n:zz}", "{__class__}", "{1abc}", "{é}", "{subject[0]}",
])

BODIES = st.one_of(
    st.lists(st.one_of(st.text(ANY_CHAR, max_size=30), PLACEHOLDERS), max_size=8).map("".join),
    st.builds(lambda c, k: c * k, st.sampled_from(["x", "é", "{{", "🦊", " "]), st.integers(4990, 5010)),
    st.just("y" * 60_000),
)


def fuzz_tokens(model: dict[str, Any] | None) -> st.SearchStrategy[list[str]]:
    props = (model or {}).get("inputSchema", {}).get("properties", {})
    flags = [Model.from_api(model).parameter(n).flag for n in props] if model else []
    values: list[str] = []
    for prop in props.values():
        values += [str(v) for v in prop.get("enum", [])]
    word = st.one_of(
        st.sampled_from(flags + [f.replace("--", "--no-") for f in flags] or ["--x"]),
        st.sampled_from(["-o", "--out", "--wait", "--each-line", "--yes", "-y", "--sandbox", "--timeout",
                         "--max-credits", "--", "-", "=", "--=", "-o=", "--dry-run=", "'", '"', "\\"]),
        st.sampled_from(values or ["1"]),
        st.sampled_from(["1", "-1", "0", "6,10", "nan", "inf", "-inf", "1e999", "1_0", "٦", "1,", ",",
                         "true", "no", "https://e.com/a.png", "ftp://e.com/a", "16:9,9:16", "x,y,z"]),
        line_text(max_size=12),
        st.text(ANY_CHAR, max_size=8),
    )

    def assemble(parts: list[tuple[str, int]]) -> list[str]:
        out = []
        for text, how in parts:
            if how == 0:
                out.append(text)
            elif how == 1:
                out.append(shlex.quote(text))
            elif how == 2 and out:
                out[-1] = f"{out[-1]}={text}"
            else:
                out.append(f'"{text}"')
        return out

    return st.lists(st.tuples(word, st.integers(0, 3)), max_size=8).map(assemble)


# -- 1. anything at all ---------------------------------------------------------------------
@SETTINGS
@given(data=st.data())
def test_any_cell_is_a_short_usage_error_or_a_valid_dry_run(session: Session, data: st.DataObject) -> None:
    s = session
    slugs = [m["slug"] for m in s.models]
    slug = data.draw(st.one_of(st.sampled_from(slugs), line_text(max_size=20)), label="slug")
    model = next((m for m in s.models if m["slug"] == slug), None)
    tokens = data.draw(fuzz_tokens(model), label="tokens")
    body = data.draw(BODIES, label="body")
    # --dry-run comes straight after the model, so no fuzz can swallow it: nothing is ever charged.
    line = " ".join([slug, "--dry-run", *tokens])
    out = run_cell(s, line, body)
    check_outcome(s, out, slug)


# -- 2. every model, valid and invalid values from its schema -----------------------------------
URL = st.builds(
    lambda host, path: f"https://{host}.example.com/{path}",
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_./%~", max_size=20),
)
NOT_URL = st.one_of(
    st.sampled_from(["not a url", "ftp://e.com/a.png", "e.com/a.png", "https://", "mailto:a@b.c", "javascript:alert(1)", "/a.png"]),
    # Not blank (a list drops empty items, as a trailing comma should) and no URL once stripped.
    line_text(min_size=1, max_size=20).filter(lambda v: v.strip() and not _is_http_url(v.strip()) and "," not in v),
)
TEXT = line_text(min_size=1, max_size=40).filter(lambda v: v.strip() != "")


@dataclass
class Choice:
    flag_text: list[str]  # the tokens on the line
    value: Any  # what the body should then hold (None: the flag is absent)
    valid: bool


def value_strategy(model: Model, name: str, prop: dict[str, Any]) -> st.SearchStrategy[Choice]:
    """A flag for one property: absent, a valid value, or a value its schema refuses."""
    param = model.parameter(name)
    assert param is not None
    flag = param.flag
    kind = param.type
    enum = prop.get("enum")

    def give(text: str, value: Any, valid: bool, eq: bool = False) -> Choice:
        return Choice([f"{flag}={text}"] if eq else [flag, text], value, valid)

    absent = st.just(Choice([], None, True))
    good: st.SearchStrategy[Choice]
    bad: st.SearchStrategy[Choice]
    if enum is not None:
        good = st.builds(lambda v, eq: give(str(v), v, True, eq), st.sampled_from(enum), st.booleans())
        bad = st.builds(lambda t: give(t, t, False),
                        line_text(min_size=1, max_size=300).filter(lambda t: "," not in t and t.strip() not in map(str, enum)))
    elif kind == "integer":
        lo, hi = prop.get("minimum", -10**9), prop.get("maximum", 10**9)
        good = st.builds(lambda v: give(str(v), v, True), st.integers(lo, hi))
        bad = st.one_of(
            st.builds(lambda v: give(str(v), v, False), st.integers(max_value=lo - 1) if "minimum" in prop else st.nothing()),
            st.builds(lambda t: give(t, t, False), st.sampled_from(["ten", "6.5", "nan", "", "0x10", "1e3"])),
        )
    elif kind == "number":
        lo, hi = prop.get("minimum", -1e9), prop.get("maximum", 1e9)
        good = st.builds(lambda v: give(repr(v), v, True),
                         st.floats(lo, hi, allow_nan=False, allow_infinity=False) | st.integers(int(lo), int(hi)).map(float))
        bad = st.one_of(
            st.builds(lambda v: give(repr(v), v, False),
                      st.floats(max_value=lo, exclude_max=True, allow_nan=False, allow_infinity=False).filter(lambda v: v < lo)),
            st.builds(lambda t: give(t, t, False), st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "abc", ""])),
        )
    elif kind == "boolean":
        def boolean(v: bool, how: int) -> Choice:
            if how == 0:
                return Choice([flag if v else "--no-" + flag[2:]], v, True)
            word = {True: ["true", "yes", "1", "True", "YES"], False: ["false", "no", "0", "False"]}[v][how % 4]
            return give(word, v, True, eq=True)
        good = st.builds(boolean, st.booleans(), st.integers(0, 3))
        bad = st.builds(lambda t: give(t, t, False, eq=True), st.sampled_from(["maybe", "2", "on?", "tru"]))
    elif kind == "array":
        lo, hi = prop.get("minItems", 0), prop.get("maxItems", 30)
        good = st.builds(lambda urls: give(",".join(urls), urls, True), st.lists(URL, min_size=max(lo, 1), max_size=hi))
        bad = st.one_of(
            st.builds(lambda urls: give(",".join(urls), urls, False), st.lists(URL, min_size=1, max_size=lo - 1)) if lo > 1 else st.nothing(),
            st.builds(lambda urls: give(",".join(urls), urls, False), st.lists(URL, min_size=hi + 1, max_size=hi + 3)),
            st.builds(lambda urls, junk: give(",".join([*urls, junk]), [*urls, junk], False), st.lists(URL, min_size=lo, max_size=lo), NOT_URL),
        )
    elif prop.get("format") == "uri":
        good = st.builds(lambda u, eq: give(u, u, True, eq), URL, st.booleans())
        bad = st.builds(lambda t: give(t, t, False), NOT_URL)
    else:
        max_len = prop.get("maxLength", 5000)
        good = st.builds(lambda t: give(t, t, True), TEXT)
        too_long = st.builds(lambda k: give("z" * k, "z" * k, False), st.integers(max_len + 1, max_len + 50))
        blank = st.builds(lambda t: give(t, t, False), st.sampled_from(["", " ", "   ", "\t", "\u3000"]))
        bad = st.one_of(too_long if "maxLength" in prop else st.nothing(),
                        blank if prop.get("minLength", 0) >= 1 else st.nothing())
    return st.one_of(absent, good, bad)


@SETTINGS
@given(data=st.data())
def test_every_models_schema_values(session: Session, data: st.DataObject) -> None:
    """Valid values give exactly the expected body; any value the schema refuses is a UsageError."""
    s = session
    raw = data.draw(st.sampled_from(s.models), label="model")
    slug = raw["slug"]
    model = Model.from_api(raw)
    props = raw["inputSchema"].get("properties", {})
    names = data.draw(st.permutations(sorted(props)), label="order")
    choices = {n: data.draw(value_strategy(model, n, props[n]), label=n) for n in names}
    prompt_field = model.prompt_field
    plain = TEXT.filter(lambda t: "{" not in t and "}" not in t)  # braces: see the placeholder tests
    body_text = data.draw(st.one_of(st.just(""), plain, st.builds(lambda t: f"  {t}\n\n", plain)), label="body") if prompt_field else ""

    groups = [" ".join(shlex.quote(t) for t in choices[n].flag_text) for n in names]
    groups.insert(data.draw(st.integers(0, len(groups)), label="dry-run at"), "--dry-run")
    out = run_cell(s, " ".join([slug, *(g for g in groups if g)]), body_text)
    check_outcome(s, out, slug)

    expected = {n: c.value for n, c in choices.items() if c.flag_text}
    all_values_valid = all(c.valid for c in choices.values())
    twice = bool(body_text.strip()) and prompt_field in expected
    if body_text.strip():
        expected[prompt_field] = body_text.strip()
    schema_ok = not list(validator(raw["inputSchema"]).iter_errors(expected))
    try:
        validate_input(Catalog().get(slug), dict(expected))
        server_ok = True
    except InputError:
        server_ok = False
    if not all_values_valid or not raw.get("isActive", True) or twice:
        assert out.error is not None, f"{slug}: a refused value or state was accepted: {out.bodies}"
    elif schema_ok and server_ok:
        assert out.error is None, f"{slug}: a valid cell was refused: {out.error}"
        assert len(out.bodies) == 1
        assert out.bodies[0] == expected
    else:  # every value is fine on its own, the combination is not (a required field is missing)
        assert out.error is not None, f"{slug}: {expected} was accepted but the schema refuses it"


# -- 3. sweeps: every combination valid, the total is the sum --------------------------------
@SETTINGS
@given(
    ratios=st.lists(st.sampled_from(["16:9", "9:16", "1:1"]), min_size=1, max_size=3, unique=True),
    durations=st.lists(st.sampled_from([6, 10]), min_size=1, max_size=2, unique=True),
    mode=st.sampled_from(["text-to-image", "text-to-video"]),
    lines=st.lists(TEXT.filter(lambda t: "{" not in t and "}" not in t), min_size=1, max_size=3),
)
def test_sweeps_dry_run_every_combination(session: Session, ratios: list[str], durations: list[int], mode: str,
                                          lines: list[str]) -> None:
    line = (f"grok-imagine --dry-run --model {mode} --aspect-ratio {','.join(ratios)} "
            f"--duration {','.join(map(str, durations))} --each-line")
    out = run_cell(session, line, "\n".join(lines))
    check_outcome(session, out, "grok-imagine")
    assert out.error is None, out.output
    prompts = [ln.strip() for ln in lines if ln.strip()]
    want = {(p, r, d) for p in prompts for r in ratios for d in durations}
    assert {(b["prompt"], b["aspect_ratio"], b["duration"]) for b in out.bodies} == want
    assert len(out.bodies) == len(prompts) * len(ratios) * len(durations)


# -- 4. prompts and placeholders ------------------------------------------------------------
PIECES = st.one_of(
    st.builds(lambda t: (t.replace("{", "{{").replace("}", "}}"), t), line_text(max_size=15)),
    st.sampled_from([("{subject}", "a heron"), ("{n}", "3"), ("{n:03d}", "003"), ("{cfg[mood]}", "calm"),
                     ("{{", "{"), ("}}", "}"), ("{{subject}}", "{subject}"), ("{subject!r}", "'a heron'")]),
)


@SETTINGS
@given(pieces=st.lists(PIECES, min_size=1, max_size=8))
def test_placeholders_fill_exactly(session: Session, pieces: list[tuple[str, str]]) -> None:
    """{name} is filled from the namespace and {{ }} are literal, and nothing else changes."""
    body = "".join(p for p, _ in pieces)
    want = "".join(w for _, w in pieces).strip()
    assume(0 < len(want) <= 5000)
    out = run_cell(session, "elevenlabs-tts --dry-run", body)
    check_outcome(session, out, "elevenlabs-tts")
    assert out.error is None, out.output
    assert out.bodies == [{"text": want}]


@SETTINGS
@given(
    before=line_text(max_size=10),
    bad=st.sampled_from(["{missing}", "{", "}", "{}", "{0}", "{a\nb}", "{n:\n}", "{n!z}", "{cfg[nope]}",
                         "{subject.nope}", "{ subject }", "{1abc}", "{n:zz}"]),
    after=line_text(max_size=10),
)
def test_bad_placeholders_are_one_line_errors(session: Session, before: str, bad: str, after: str) -> None:
    body = before.replace("{", "{{").replace("}", "}}") + bad + after.replace("{", "{{").replace("}", "}}")
    out = run_cell(session, "veo3 --dry-run", body)
    check_outcome(session, out, "veo3")
    assert out.error is not None, f"{body!r} was accepted: {out.bodies}"


# -- 5. a few real submissions: the charge is what the dry run said ---------------------------
REAL = [
    ("veo3 --aspect-ratio 9:16", "a lake at dawn"),
    ("nano-banana --aspect-ratio 16:9", "a pear, {subject}"),
    ("elevenlabs-tts --voice adam", "Hello {{world}}"),
    ("grok-imagine --model text-to-video --duration 10", "a comet"),
    ("kling-motion-control --image-url https://e.com/a.png --video-url https://e.com/b.mp4 --keep-original-sound", ""),
    ("video-extract --video-url https://e.com/v.mp4 --what frame --at 1.5", ""),
]


@pytest.mark.parametrize(("line", "body"), REAL)
def test_real_submission_charges_what_the_dry_run_said(session: Session, line: str, body: str) -> None:
    slug = line.split()[0]
    dry = run_cell(session, f"{line} --dry-run", body)
    check_outcome(session, dry, slug)
    assert dry.error is None and dry.cost is not None
    balance = session.box.state()["balance"]
    real = run_cell(session, f"{line} --yes -o submitted", body)
    assert real.error is None, real.output
    job = session.shell.user_ns.pop("submitted")
    assert real.jobs == 1 and real.charges == 1, "exactly one job, charged once"
    assert job.params == dry.bodies[0], "the body sent is the body the dry run showed"
    charge = next(e for e in session.box.state()["ledger"] if e["job_id"] == job.id)
    assert charge["kind"] == "charge" and charge["amount"] == dry.cost == job.credits_charged
    assert session.box.state()["balance"] == balance - dry.cost
    assert "Traceback" not in real.output


# -- 6. output that cannot be encoded is refused, not crashed on ------------------------------
@pytest.mark.parametrize("body", ["a \ud800 b", "\udcff", "ok \U0001f98a \ud83e"])
def test_lone_surrogates_are_refused_before_sending(session: Session, body: str) -> None:
    """A lone surrogate cannot be printed to a UTF-8 stream nor mean anything to a provider."""
    for line in ("elevenlabs-tts --dry-run", "elevenlabs-tts --yes"):
        out = run_cell(session, line, body)
        check_outcome(session, out, "elevenlabs-tts")
        assert out.error is not None
    out = run_cell(session, "whisper --dry-run --audio-url https://e.com/a.mp3 --language", "x \udc80")
    check_outcome(session, out, "whisper")


# -- 7. the cases the properties found, pinned -------------------------------------------------
LONG = "x" * 20_000


@pytest.mark.parametrize(
    ("line", "body", "words"),
    [
        ("video-trim --video-url https://e.com/v.mp4 --start nan --end 2", "", "finite number"),
        ("video-trim --video-url https://e.com/v.mp4 --start 1 --end inf", "", "finite number"),
        ("video-trim --video-url https://e.com/v.mp4 --start 1e999 --end 2", "", "finite number"),
        ("video-extract --video-url https://e.com/v.mp4 --at=-Infinity", "", "finite number"),
        ("elevenlabs-sts --audio-url 'not a url'", "", "http(s) URL"),
        ("elevenlabs-sts --audio-url ftp://e.com/a.mp3", "", "http(s) URL"),
        ("elevenlabs-sts --audio-url --voice", "", "http(s) URL"),
        ("video-compose --video-urls https://e.com/1.mp4,e.com/2.mp4", "", "http(s) URL"),
        (f"veo3 --aspect-ratio {LONG}", "a lake", "one of"),
        (f"veo3 {LONG}", "a lake", "cell body"),
        (f"veo3 --{LONG}", "a lake", "no flag"),
        (f"veo3 -o {LONG}!", "a lake", "variable name"),
        (f"veo3 --max-credits {LONG}", "a lake", "non-negative"),
        ("veo3 --max-credits nan", "a lake", "non-negative"),
        ("veo3 --max-credits inf", "a lake", "non-negative"),
        ("veo3 --wait --timeout nan", "a lake", "non-negative"),
        ("veo3 --prompt ' '", "", "besides spaces"),
        ("asmr-generator --custom-prompt ''", "", "besides spaces"),
        ("veo3", "{a\nb}", "variable name"),
        ("veo3", "{n:\n}", "placeholders"),
        ("veo3", " ".join(f"{{v{i}}}" for i in range(2000)), "undefined"),
        ("veo3", "z" * 60_000, "prompt"),
    ],
)
def test_found_cases_are_short_usage_errors(session: Session, line: str, body: str, words: str) -> None:
    slug = line.split()[0]
    out = run_cell(session, f"{line} --dry-run", body)
    check_outcome(session, out, slug)
    assert isinstance(out.error, UsageError), out.output[:300]
    assert words in str(out.error), str(out.error)


def test_a_servers_multiline_error_is_shown_on_one_short_line(session: Session) -> None:
    """The server's words are outside our control; the cell still shows one short line."""
    from .rawserver import Reply, Seen, raw_server

    tiny = {"slug": "tiny", "creditsPerUnit": 1, "pricingUnit": "request", "isActive": True,
            "inputSchema": {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]}}
    ramble = "Bad request.\nTraceback (most recent call last):\n" + "  frame\n" * 500

    def script(req: Seen) -> Reply:
        if req.method == "GET" and req.path.endswith("/models"):
            return Reply(body={"data": [tiny], "count": 1})
        return Reply(status=400, body={"error": ramble, "message": ramble})

    owner = current_session()
    saved = owner.existing_client
    with raw_server(script) as server:
        tiny_client = vydra_nb.Client(api_key="k_test", base_url=server.url, max_retries=0, history=False)
        owner.use_client(tiny_client)
        try:
            out = run_cell(session, "tiny --yes", "hello")
        finally:
            tiny_client.close()
            owner.use_client(saved)
        assert server.count("POST") == 1
    assert isinstance(out.error, UsageError), out.output[:300]
    shown = out.output.strip()
    assert "\n" not in shown and len(shown) <= MAX_ERROR_CHARS, shown[:500]
    assert "Bad request." in shown


@pytest.mark.parametrize(
    "line",
    ["sandbox --speed 0", "sandbox --speed nan", "sandbox --speed -inf", "sandbox --credits -5",
     "sandbox --speed fast", "jobs --limit nan", "modles", "job", "cancel", f"help {LONG}", "jobs --status"],
)
def test_line_commands_refuse_nonsense_in_one_line(session: Session, line: str) -> None:
    """The %vydra line commands keep the same promise; the session's sandbox survives them."""
    box = session.box
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    with redirect_stdout(stream), redirect_stderr(stream):
        result = session.shell.run_cell(f"%vydra {line}", store_history=False)
    shown = raw.getvalue().decode().strip()
    assert isinstance(result.error_in_exec, UsageError), shown[:500]
    assert "\n" not in shown and len(shown) <= MAX_ERROR_CHARS, shown[:500]
    assert session.box is box and box.running


# -- 8. tab completion: whatever is half-typed, a list and never an exception -------------------
@SETTINGS
@given(
    start=st.sampled_from(["%%vydra ", "%vydra ", "%vydra generate ", "%vydra jobs ", "%vydra help ", "%vydra sandbox ",
                           "%%vydra veo3 ", "%%vydra grok-imagine --model ", "%vydra generate video-trim --start "]),
    words=st.lists(st.one_of(st.sampled_from(['"', "'", "\\", "--", "-", "=", "--status", "--aspect-ratio", "9:16",
                                              '"it\\"s', "--limit=", "{x", "$y"]),
                             line_text(max_size=10)), max_size=6),
    space=st.booleans(),
)
def test_completion_never_raises(session: Session, start: str, words: list[str], space: bool) -> None:
    line = start + " ".join(words) + (" " if space else "")
    got = session.magics.completions(line)
    assert isinstance(got, list) and all(isinstance(w, str) for w in got), got
