"""Issue 14: the notebook layer with IPython's own tools, and what a hostile server can put in a cell.

Through the public surface only: a real ``InteractiveShell`` with ``%load_ext vydra_nb``, the
sandbox for ordinary models, and tests/rawserver.py for models and answers no sandbox would give
(a schema whose parameters are named like the cell's own flags, a 402 whose numbers overflow,
descriptions written to be rendered).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import vydra_nb
from vydra_nb.api.models import Model
from vydra_nb.notebook.magic_args import parse_cell, request_bodies
from vydra_nb.session import current as current_session

from .conftest import magics_of
from .rawserver import Reply, Seen, raw_server


def error_of(shell: InteractiveShell, cell: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run a cell as a user would: what IPython shows must be one line, for a UsageError."""
    capsys.readouterr()
    result = shell.run_cell(cell, store_history=False)
    seen = capsys.readouterr()
    text = (seen.out + seen.err).strip()
    assert isinstance(result.error_in_exec, UsageError), text[:500]
    assert "\n" not in text and text.startswith("UsageError: "), text[:500]
    return str(result.error_in_exec)


def model_json(slug: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"slug": slug, "name": slug, "provider": "acme", "creditsPerUnit": 3, "pricingUnit": "image",
            "isActive": True, "inputSchema": {"type": "object", "properties": properties, "required": []}, **extra}


@contextmanager
def raw_backend(models: list[dict[str, Any]], post: Callable[[Seen], Reply] | None = None) -> Iterator[Any]:
    """The session's client talks to a scripted server with these models (and this answer to POSTs)."""

    def script(req: Seen) -> Reply:
        if req.method == "GET" and req.path.split("?")[0].endswith("/models"):
            return Reply(body={"data": models, "count": len(models)})
        if req.method == "POST" and post is not None:
            return post(req)
        return Reply(500, {"error": "not scripted"})

    owner = current_session()
    saved = owner.existing_client
    with raw_server(script) as server:
        client = vydra_nb.Client(api_key="k_test", base_url=server.url, max_retries=0, history=False)
        owner.use_client(client)
        try:
            yield server
        finally:
            client.close()
            owner.use_client(saved)


def bundles(cap: Any) -> list[dict[str, Any]]:
    return [out.data for out in cap.outputs]


def assert_escaped_bundle(data: dict[str, Any]) -> None:
    """Server text shown as a mimebundle: plain text, and the same text escaped inside <pre>."""
    assert set(data) == {"text/plain", "text/html"}, set(data)
    assert data["text/html"] == f"<pre>{html.escape(data['text/plain'])}</pre>"


# -- 1. a 402 whose numbers overflow ----------------------------------------------------------------
TINY = model_json("tiny", {"prompt": {"type": "string"}})


@pytest.mark.parametrize("raw", [
    b'{"error": "Insufficient credits", "creditsRequired": 1e999, "creditsRemaining": 5}',
    b'{"error": "Insufficient credits", "creditsRequired": -1e999, "creditsRemaining": 1e999}',
    b'{"error": "Insufficient credits", "creditsRequired": ' + b"9" * 400 + b"}",
], ids=["inf", "minus-inf", "400-digits"])
def test_a_402_whose_credits_overflow_is_one_line_in_a_cell(ip: InteractiveShell, raw: bytes,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with raw_backend([TINY], post=lambda req: Reply(402, raw=raw)) as server:
        message = error_of(ip, "%%vydra tiny --yes\na lake", capsys)
        assert server.count("POST") == 1
    assert message.startswith("Insufficient credits: Insufficient credits."), message
    assert "inf" not in message.lower().replace("insufficient", "")


# -- 2. tab completion ------------------------------------------------------------------------------
@pytest.mark.parametrize("line", [
    '%%vydra veo3 --prompt "it\\"s',
    "%%vydra veo3 --prompt 'it",
    "%%vydra veo3 --aspect-ratio \\",
    '%vydra job "abc',
    "%vydra jobs --status 'pro",
    '%vydra generate veo3 --aspect-ratio "9',
    '%%vydra "',
    "%vydra help '",
    "%%vydra",
    "%vydra",
    "%vydra ",
])
def test_completion_never_raises_on_a_half_typed_line(ip: InteractiveShell, line: str) -> None:
    from IPython.core.completer import provisionalcompleter

    got = magics_of(ip).completions(line)
    assert isinstance(got, list) and all(isinstance(w, str) for w in got)
    with provisionalcompleter():  # the path IPython takes at a Tab press
        list(ip.Completer.completions(line, len(line)))


def test_completion_of_line_commands(ip: InteractiveShell) -> None:
    m = magics_of(ip)
    assert "veo3" in m.completions("%vydra generate ve")
    assert m.completions("%vydra generate kling-motion-control --keep") == ["--keep-original-sound"]
    assert m.completions("%vydra generate kling-motion-control --no-") == ["--no-keep-original-sound"]
    assert m.completions("%vydra generate veo3 --aspect-ratio ") == ["16:9", "9:16", "1:1"]
    assert m.completions("%vydra generate veo3 --aspect-ratio=9") == ["9:16"]
    assert "--dry-run" in m.completions("%vydra generate veo3 --")
    assert m.completions("%%vydra veo3 --aspect-ratio=1") == ["16:9", "1:1"]
    assert "veo3" in m.completions("%vydra help ve")
    assert "jobs" in m.completions("%vydra help jo")
    assert m.completions("%vydra job ") == [] and m.completions("%vydra cancel job_") == []
    assert m.completions("%vydra jobs --st") == ["--status"]
    assert m.completions("%vydra jobs --status pro") == ["processing"]
    assert m.completions("%vydra jobs --status=c") == ["completed", "cancelled"]
    assert m.completions("%vydra jobs --limit ") == []
    assert m.completions("%vydra sandbox --") == ["--credits", "--speed", "--stop"]
    assert m.completions("%vydra models --provider x") == ["xai"]
    assert m.completions("%vydra credits ") == []
    from IPython.core.completer import provisionalcompleter

    line = "%vydra jobs --st"
    with provisionalcompleter():
        assert "--status" in {c.text for c in ip.Completer.completions(line, len(line))}


# -- 3. schema parameters named like the cell's own flags ------------------------------------------
CLASHY = model_json("clashy", {
    "prompt": {"type": "string"},
    "timeout": {"type": "integer", "minimum": 1, "maximum": 600, "description": "seconds the provider may take"},
    "out": {"type": "string", "enum": ["mp4", "webm"]},
    "yes": {"type": "boolean"},
    "dry_run": {"type": "boolean"},
})


def dry_run_bodies(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    return [decoder.raw_decode(text, text.index("{", i))[0] for i in
            [k for k in range(len(text)) if text.startswith("POST ", k)]]


def test_schema_parameters_named_like_cell_flags_stay_reachable(ip: InteractiveShell,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with raw_backend([CLASHY]) as server:
        capsys.readouterr()
        ip.run_cell_magic("vydra", "clashy --param-timeout 30 --param-out webm --param-yes --no-param-dry-run "
                                   "--dry-run --yes -o kept", "a lake")
        bodies = dry_run_bodies(capsys.readouterr().out)
        assert bodies == [{"timeout": 30, "out": "webm", "yes": True, "dry_run": False, "prompt": "a lake"}]
        # The cell's own flags keep their meaning on this model: nothing of theirs reaches the body.
        ip.run_cell_magic("vydra", "clashy --yes --dry-run", "a lake")
        assert dry_run_bodies(capsys.readouterr().out) == [{"prompt": "a lake"}]
        # Mistakes with the cell's flag name the parameter's spelling.
        message = error_of(ip, "%%vydra clashy --timeout 30 --dry-run\na lake", capsys)
        assert message == ("--timeout limits how long --wait waits, and this cell does not wait; add --wait, "
                           "or give clashy's own `timeout` parameter as --param-timeout."), message
        message = error_of(ip, "%%vydra clashy --out webm --dry-run\na lake", capsys)
        assert message == ("--out is ambiguous: clashy has its own `out` parameter. Write --param-out VALUE for it, "
                           "or -o NAME to keep the job in a variable."), message
        message = error_of(ip, "%%vydra clashy -o 1.webm --dry-run\na lake", capsys)
        assert message == "-o needs a Python variable name, not '1.webm'; clashy's own `out` parameter is --param-out.", message
        message = error_of(ip, "%%vydra clashy --param-timeout 0 --dry-run\na lake", capsys)
        assert message == "--param-timeout must be between 1 and 600 (got 0).", message
        message = error_of(ip, "%%vydra clashy --no-dry-run --dry-run\na lake", capsys)
        assert "Did you mean --no-param-dry-run?" in message, message
        # Help says which flag is which, and completion offers the parameter's spelling.
        ip.run_line_magic("vydra", "help clashy")
        text = capsys.readouterr().out
        assert "--param-timeout " in text and "--param-yes/--no-param-yes" in text and "--param-out " in text
        assert ("`timeout` is named like the cell's own --timeout, which keeps its meaning: give clashy's "
                "`timeout` as --param-timeout.") in text
        assert ("`out` is named like --out, the cell's -o: give clashy's `out` as --param-out (--out alone is "
                "refused here as ambiguous).") in text
        m = magics_of(ip)
        assert m.completions("%%vydra clashy --param-t") == ["--param-timeout"]
        assert m.completions("%%vydra clashy --ti") == ["--timeout"]
        assert m.completions("%%vydra clashy --param-out ") == ["mp4", "webm"]
        assert server.count("POST") == 0


def test_any_parameter_may_be_spelled_param_name() -> None:
    """``--param-NAME`` names any parameter; a parameter whose own flag it is keeps it (``param_x``)."""
    model = Model.from_api(model_json("m", {"prompt": {"type": "string"}, "aspectRatio": {"type": "string"},
                                            "param_x": {"type": "integer"}, "x": {"type": "integer"},
                                            "timeout": {"type": "number"}, "param_timeout": {"type": "integer"}}))
    cmd = parse_cell("m --param-aspect-ratio 9:16 --param-x 2 --x 1 --param-param-timeout 2.5 --param-timeout 4 "
                     "--timeout 9 --wait", "p", model)
    assert request_bodies(cmd, model) == [
        {"aspectRatio": "9:16", "param_x": 2, "x": 1, "timeout": 2.5, "param_timeout": 4, "prompt": "p"}]
    assert cmd.timeout == 9 and cmd.wait


# -- 4. server text is shown inert -------------------------------------------------------------------
EVIL = "<img src=x onerror=alert(1)> javascript://x <script>alert(2)</script>"


def test_help_shows_server_text_as_escaped_html(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    evil_model = model_json("evil", {"prompt": {"type": "string", "description": EVIL}}, description=EVIL, name=EVIL)
    with raw_backend([evil_model]):
        with capture_output() as cap:
            ip.run_line_magic("vydra", "help evil")
        (data,) = bundles(cap)
        assert_escaped_bundle(data)
        assert "<img" not in data["text/html"] and "<script" not in data["text/html"] and "<a" not in data["text/html"]
        assert data["text/plain"].startswith(f"evil — {EVIL}\n  {EVIL}\n  provider acme; price: 3 credits per image")
        assert f"--prompt                    string — {EVIL}" in data["text/plain"]
        capsys.readouterr()
        ip.run_line_magic("vydra", "help evil")  # a terminal shows the text itself
        assert capsys.readouterr().out == data["text/plain"] + "\n"


def test_dry_run_shows_the_body_as_escaped_html(ip: InteractiveShell) -> None:
    with capture_output() as cap:
        ip.run_cell_magic("vydra", "veo3 --aspect-ratio 9:16 --dry-run", EVIL)
    (data,) = bundles(cap)
    assert_escaped_bundle(data)
    assert "<img" not in data["text/html"] and "<script" not in data["text/html"]
    url = magics_of(ip).client.base_url
    assert data["text/plain"] == (f"POST {url}/models/veo3 · SANDBOX\n"
                                  + json.dumps({"aspect_ratio": "9:16", "prompt": EVIL}, indent=2, ensure_ascii=False)
                                  + "\nCost: 175 credits ($0.51) per video. Nothing was sent (--dry-run).")


# -- 5. IPython's own machinery ----------------------------------------------------------------------
def test_question_mark_help_lists_every_command_and_option(ip: InteractiveShell,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    ip.run_cell("%vydra?", store_history=False)
    text = capsys.readouterr().out
    for words in ("%vydra models [--provider P] [--all]", "%vydra jobs [--status S] [--limit N]", "--sync",
                  "%vydra sandbox [--credits N] [--speed X] [--stop]", "%vydra job ID", "%vydra cancel ID",
                  "%vydra generate MODEL [flags]", "%vydra credits", "%vydra help [MODEL|COMMAND]"):
        assert words in text, words
    ip.run_cell("%vydra jobs?", store_history=False)
    text = capsys.readouterr().out
    assert "%vydra jobs [--status S]" in text and "only jobs in this state" in text and "Object" not in text
    ip.run_cell("%%vydra?", store_history=False)
    assert "--param-timeout" in capsys.readouterr().out
    ip.run_line_magic("vydra", "help sandbox")
    assert "--credits N" in capsys.readouterr().out


def test_line_options_are_parsed_by_argparse_in_our_words(ip: InteractiveShell,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert error_of(ip, "%vydra jobs --lim 5", capsys) == (
        "Unknown option '--lim' for `%vydra jobs`. Did you mean --limit? Options: --status, --limit, --model, --sync, --resume, --all-columns.")
    assert error_of(ip, "%vydra models --all=yes", capsys) == "--all takes no value (got 'yes')."
    assert error_of(ip, "%vydra sandbox --speed -inf", capsys) == "--speed needs a positive number, not -inf."
    assert error_of(ip, "%vydra jobs --status", capsys) == "--status needs a value."
    assert error_of(ip, "%vydra job", capsys) == "Usage: %vydra job ID"
    assert error_of(ip, "%vydra cancel a b", capsys) == "Unexpected 'b'. Usage: %vydra cancel ID"
    assert error_of(ip, "%vydra studio now", capsys) == "`%vydra studio` takes no options (got 'now')."
    assert error_of(ip, "%vydra credits --x", capsys) == "`%vydra credits` takes no options (got '--x')."
    jobs = ip.run_line_magic("vydra", "jobs --status=processing --limit=3")
    assert len(jobs) <= 3
    # A comment after a line command is a comment (the README writes one), not an option.
    result = ip.run_cell("%vydra sandbox --speed 30 --credits 7   # or set VYDRA_API_KEY", store_history=False)
    assert result.error_in_exec is None, result.error_in_exec
    assert magics_of(ip).session.sandbox.state()["balance"] == 7
    assert ip.run_line_magic("vydra", "jobs --limit 2 #--limit=x").shape[0] <= 2


def test_line_commands_see_the_callers_variables(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    from vydra_nb.notebook.magics import VydraMagics

    assert VydraMagics.vydra_line.needs_local_scope and VydraMagics.vydra_cell.needs_local_scope
    job = ip.run_line_magic("vydra", "generate video-trim --video-url https://e.com/v.mp4 --start 0 --end 1")
    only_here = job  # a local variable of this function, not in the user namespace
    assert only_here is job
    assert "only_here" not in ip.user_ns
    assert ip.run_line_magic("vydra", "job {only_here.id}").id == job.id  # the caller's frame, as %time does
    assert ip.run_line_magic("vydra", "job $only_here.id").id == job.id
    magics = magics_of(ip)
    ip.user_ns["mood"] = "calm"
    magics.vydra_cell("elevenlabs-tts --dry-run", "A {animal}, {mood}", local_ns={"animal": "heron"})
    assert '"text": "A heron, calm"' in capsys.readouterr().out
    # A local name hides a user one of the same name, as in Python.
    magics.vydra_cell("elevenlabs-tts --dry-run", "{mood}", local_ns={"mood": "stormy"})
    assert '"text": "stormy"' in capsys.readouterr().out


def test_reloading_the_extension_keeps_one_completer_and_unloading_removes_it(ip: InteractiveShell) -> None:
    def ours() -> tuple[int, int]:
        matchers = [m for m in ip.Completer.custom_matchers if "vydra" in getattr(m, "__qualname__", "")]
        transformers = [t for t in ip.input_transformers_cleanup if "vydra" in getattr(t, "__qualname__", "")]
        return len(matchers), len(transformers)

    assert ours() == (1, 1)
    ip.run_line_magic("reload_ext", "vydra_nb")
    ip.run_line_magic("reload_ext", "vydra_nb")
    assert ours() == (1, 1)
    line = "%vydra jobs --st"
    from IPython.core.completer import provisionalcompleter

    with provisionalcompleter():
        assert [c.text for c in ip.Completer.completions(line, len(line))].count("--status") == 1
    ip.run_line_magic("unload_ext", "vydra_nb")
    try:
        assert ours() == (0, 0)
    finally:
        ip.run_line_magic("load_ext", "vydra_nb")
    assert ours() == (1, 1)


# -- 6. a sandbox with nothing in it ------------------------------------------------------------------
def test_sandbox_credits_zero_means_zero(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    ip.run_line_magic("vydra", "sandbox --credits 0")
    assert " · 0 fake credits · " in capsys.readouterr().out
    assert magics_of(ip).session.sandbox.state()["balance"] == 0
    message = error_of(ip, "%%vydra nano-banana --yes\na pear", capsys)
    assert message.startswith("Insufficient credits: this needs 8 credits and 0 remain"), message
