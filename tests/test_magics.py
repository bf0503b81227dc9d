"""The magics: parsing without a network, then a real InteractiveShell against the sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import vydra_nb
from vydra_nb.api.models import Model
from vydra_nb.notebook.magic_args import interpolate, parse_cell, request_bodies
from vydra_nb.session import current as current_session

from .conftest import end_vydra_session, magics_of

VEO_LIKE = Model.from_api(
    {
        "slug": "vidgen",
        "name": "A video model",
        "provider": "acme",
        "creditsPerUnit": 100,
        "pricingUnit": "video",
        "isActive": True,
        "inputSchema": {
            "type": "object",
            "additionalProperties": False,
            "required": ["prompt"],
            "properties": {
                "prompt": {"type": "string"},
                "aspectRatio": {"type": "string", "enum": ["16:9", "9:16", "1:1"], "default": "16:9"},
                "duration": {"type": "integer", "minimum": 4, "maximum": 12},
                "keep_sound": {"type": "boolean"},
                "guidance": {"type": "number"},
            },
        },
    }
)


# -- parsing (no network) ----------------------------------------------------------------------
def test_schema_flags_are_typed() -> None:
    cmd = parse_cell("vidgen --aspect-ratio 9:16 --duration 8 --keep-sound --guidance=2.5 -o clip --wait", "A fox", VEO_LIKE)
    assert cmd.params == {"aspectRatio": "9:16", "duration": 8, "keep_sound": True, "guidance": 2.5}
    assert cmd.output_var == "clip" and cmd.wait and cmd.prompts == ["A fox"]
    assert parse_cell("vidgen --no-keep-sound", "x", VEO_LIKE).params == {"keep_sound": False}
    assert request_bodies(cmd, VEO_LIKE) == [{**cmd.params, "prompt": "A fox"}]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("vidgen --aspect-ratio 4:3", "one of 16:9, 9:16, 1:1"),
        ("vidgen --duration ten", "whole number"),
        ("vidgen --duration 40", "between 4 and 12"),
        ("vidgen --aspect-ration 9:16", "Did you mean --aspect-ratio"),
        ("vidgen --duration", "needs a value"),
        ("vidgen -o 1abc", "variable name"),
        ("vidgen stray", "cell body"),
        ('vidgen --aspect-ratio "9:16', "quotes"),
        ("vidgen --max-credits lots", "non-negative number"),
    ],
)
def test_bad_lines_are_one_line_usage_errors(line: str, words: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_cell(line, "prompt", VEO_LIKE)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_comma_values_make_a_sweep() -> None:
    cmd = parse_cell("vidgen --aspect-ratio 16:9,9:16 --duration 4,8 --each-line", "a cat\n\na dog\n", VEO_LIKE)
    assert cmd.grid == {"aspectRatio": ["16:9", "9:16"], "duration": [4, 8]}
    assert cmd.prompts == ["a cat", "a dog"] and cmd.is_sweep
    bodies = request_bodies(cmd, VEO_LIKE)
    assert len(bodies) == 8 and {"prompt": "a dog", "aspectRatio": "9:16", "duration": 8} in bodies


def test_interpolation() -> None:
    ns = {"subject": "a heron", "n": 3, "cfg": {"mood": "calm"}}
    assert interpolate("{subject} x{n} {{literal}} {cfg[mood]}", ns) == "a heron x3 {literal} calm"
    with pytest.raises(UsageError, match="undefined variable.*missing_one, other"):
        interpolate("{missing_one} and {other} and {subject}", ns)
    with pytest.raises(UsageError, match="variable name"):
        interpolate("{} and {0}", ns)
    with pytest.raises(UsageError, match="stray brace"):
        interpolate("a { b", ns)


# -- a real shell against the sandbox ---------------------------------------------------------


def balance(shell: InteractiveShell) -> int:
    return int(magics_of(shell).session.sandbox.state()["balance"])


def test_cell_returns_job_and_stores_it(ip: InteractiveShell) -> None:
    ip.user_ns["animal"] = "heron"
    job = ip.run_cell_magic("vydra", "veo3 --aspect-ratio 9:16 -o clip", "A {animal} at dawn")
    assert isinstance(job, vydra_nb.Job)
    assert ip.user_ns["clip"] is job
    assert job.params == {"prompt": "A heron at dawn", "aspect_ratio": "9:16"}
    assert balance(ip) == 5000 - 175
    job.wait(timeout=60)
    assert job.status == "completed"


def test_cell_value_lands_in_underscore(ip: InteractiveShell) -> None:
    result = ip.run_cell("%%vydra elevenlabs-tts --wait\nHello there", store_history=True)
    assert result.error_in_exec is None, result.error_in_exec
    job = ip.user_ns["_"]
    assert isinstance(job, vydra_nb.Job) and job.status == "completed"


def test_wait_blocks_until_done(ip: InteractiveShell) -> None:
    job = ip.run_cell_magic("vydra", "nano-banana --wait", "a lemon")
    assert job.status == "completed" and job.media


def test_dry_run_sends_nothing(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    client = magics_of(ip).client
    client.models()
    sent = client.requests_sent
    out = ip.run_cell_magic("vydra", "grok-imagine --model text-to-video --duration 6 --dry-run", "a comet")
    assert out is None
    text = capsys.readouterr().out
    body = json.loads(text[text.index("{"): text.rindex("}") + 1])
    assert body == {"model": "text-to-video", "duration": 6, "prompt": "a comet"}
    assert "150 credits" in text and "$0.44" in text and "Nothing was sent" in text
    assert client.requests_sent == sent and balance(ip) == 5000
    assert magics_of(ip).session.sandbox.api_key not in text


def test_max_credits_and_confirmation(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="above --max-credits 100; nothing was sent"):
        ip.run_cell_magic("vydra", "veo3 --max-credits 100", "too dear")
    ip.run_line_magic("config", "VydraMagics.confirm_above = 100")
    try:
        with pytest.raises(UsageError, match="add --yes"):
            ip.run_cell_magic("vydra", "veo3", "needs a yes")
        assert balance(ip) == 5000
        job = ip.run_cell_magic("vydra", "veo3 --yes", "confirmed")
        assert job.credits_charged == 175
        answers = iter(["n", "y"])
        monkeypatch.setattr("builtins.input", lambda question: next(answers))
        with pytest.raises(UsageError, match="Not submitted"):
            ip.run_cell_magic("vydra", "veo3", "asked, declined")
        assert ip.run_cell_magic("vydra", "veo3", "asked, accepted").credits_charged == 175
        assert balance(ip) == 5000 - 350
    finally:
        ip.run_line_magic("config", "VydraMagics.confirm_above = 1000")


@pytest.mark.parametrize(
    ("line", "body", "words"),
    [
        ("veo", "x", "Did you mean veo3"),
        ("veo3 --aspect-ratio 4:3", "x", "one of"),
        ("veo3", "{undefined_thing}", "undefined_thing"),
        ("veo3 --colour red", "x", "no flag --colour"),
        ("veo3", "\n", "needs 'prompt'"),
    ],
)
def test_bad_cells_send_no_request(ip: InteractiveShell, line: str, body: str, words: str) -> None:
    client = magics_of(ip).client
    client.models()
    sent = client.requests_sent
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("vydra", line, body)
    assert words in str(info.value)
    assert client.requests_sent == sent
    assert balance(ip) == 5000


def test_insufficient_credits_is_one_line(ip: InteractiveShell) -> None:
    ip.run_line_magic("vydra", "sandbox --speed 100 --credits 100")
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("vydra", "veo3", "expensive")
    assert "needs 175 credits and 100 remain" in str(info.value)


def test_missing_key_says_how_to_set_it() -> None:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "vydra_nb")
    current_session().reset()
    with pytest.raises(UsageError, match="VYDRA_API_KEY.*sandbox"):
        shell.run_line_magic("vydra", "credits")
    current_session().reset()


def test_line_commands(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("vydra", "credits")
    assert "5,000 credits remaining" in capsys.readouterr().out
    job = ip.run_line_magic("vydra", "generate kling-motion-control --image-url https://e.com/a.png --video-url https://e.com/b.mp4")
    ip.run_line_magic("vydra", f"cancel {job.id}")
    assert "350 credits refunded" in capsys.readouterr().out
    again = ip.run_line_magic("vydra", f"job {job.id}")
    assert again.id == job.id and again.status == "cancelled"
    ip.run_line_magic("vydra", "help veo3")
    text = capsys.readouterr().out
    assert "--aspect-ratio" in text and "16:9, 9:16, 1:1" in text and "175 credits" in text
    ip.run_line_magic("vydra", "help")
    assert "%%vydra MODEL" in capsys.readouterr().out
    with pytest.raises(UsageError, match="Did you mean `%vydra models`"):
        ip.run_line_magic("vydra", "modles")


def test_models_and_jobs_tables(ip: InteractiveShell) -> None:
    models = ip.run_line_magic("vydra", "models --provider xai")
    assert set(models["provider"]) == {"xai"}
    job = ip.run_cell_magic("vydra", "elevenlabs-tts --wait", "recorded")
    jobs = ip.run_line_magic("vydra", "jobs --limit 5")
    assert job.id in set(jobs["id"])
    # A compact table by default (0.1 printed all 22 columns); --all-columns for the rest.
    assert list(jobs.columns) == ["id", "model", "status", "credits", "prompt", "age", "file"]
    assert jobs.set_index("id").loc[job.id, "credits"] == 5 and jobs.set_index("id").loc[job.id, "age"].endswith("ago")
    wide = ip.run_line_magic("vydra", "jobs --limit 5 --all-columns")
    assert {"credits_charged", "params", "backend", "verdict"} <= set(wide.columns)


def test_completion(ip: InteractiveShell) -> None:
    m = magics_of(ip)
    assert "veo3" in m.completions("%%vydra ve")
    assert "--aspect-ratio" in m.completions("%%vydra veo3 --asp")
    assert m.completions("%%vydra veo3 --aspect-ratio ") == ["16:9", "9:16", "1:1"]
    assert "models" in m.completions("%vydra mo")
    from IPython.core.completer import provisionalcompleter

    line = "%%vydra veo3 --aspect-ratio 9"
    with provisionalcompleter():
        assert "9:16" in {c.text for c in ip.Completer.completions(line, len(line))}


def test_sandbox_label_and_no_key_in_outputs(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    key = magics_of(ip).session.sandbox.api_key
    ip.run_line_magic("vydra", "sandbox --speed 100")
    out = capsys.readouterr().out
    assert "SANDBOX" in out and key not in out


def test_load_ext_is_light() -> None:
    code = (
        "import sys, time\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "before = set(sys.modules)\n"
        "t = time.perf_counter(); ip.run_line_magic('load_ext', 'vydra_nb'); dt = time.perf_counter() - t\n"
        "heavy = [m for m in ('pandas', 'ipywidgets', 'av', 'PIL', 'requests', 'numpy', 'matplotlib') if m in set(sys.modules) - before]\n"
        "print(heavy, dt)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy, seconds = out.rsplit("]", 1)
    assert heavy.strip() == "[", f"%load_ext imported {heavy}]"
    assert float(seconds) < 0.5


def test_cell_sweep_submits_every_combination(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result = ip.run_cell_magic("vydra", "nano-banana --aspect-ratio 1:1,16:9 --each-line --wait -o grid", "a pear\na plum\n")
    assert ip.user_ns["grid"] is result
    assert len(result.jobs) == 4 and all(j.status == "completed" for j in result.jobs)
    assert {(j.params["prompt"], j.params["aspect_ratio"]) for j in result.jobs} == {
        ("a pear", "1:1"), ("a pear", "16:9"), ("a plum", "1:1"), ("a plum", "16:9")}
    assert "32 credits" in capsys.readouterr().out, "the total is shown before submitting"
    assert balance(ip) == 5000 - 32


def test_jobs_sync_merges_server_jobs_or_says_why_not(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("vydra", "jobs --sync")
    assert "no job listing (GET /jobs answered 404)" in capsys.readouterr().out
    from .conftest import make_client

    with vydra_nb.sandbox.start(credits=1000, speed=100, flavor="live") as live:
        other = make_client(live, history=False)  # a job submitted elsewhere (say, the dashboard)
        outside = other.generate("elevenlabs-tts", text="made elsewhere")
        current_session().use_client(make_client(live))
        jobs = ip.run_line_magic("vydra", "jobs --sync --limit 50")
        assert "Synced" in capsys.readouterr().out
        assert outside.id in set(jobs["id"])


def test_login_resumes_jobs_left_unfinished_by_an_earlier_session(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A key typed at ``%vydra login`` picks up unfinished jobs, as a key in the environment does at load."""
    from vydra_nb.session import current as current_session
    
    with vydra_nb.sandbox.start(credits=1000, speed=30) as box:  # a veo3 job takes ~3 s
        earlier = vydra_nb.Client(api_key=box.api_key, base_url=box.url, time_scale=1 / 30)
        job = earlier.generate("veo3", prompt="left running by a kernel that died")
        earlier.close()
        assert current_session().history().get(job.id)["status"] in ("pending", "running")
        monkeypatch.setenv("VYDRA_BASE_URL", box.url)
        monkeypatch.setattr("getpass.getpass", lambda prompt="": box.api_key)
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "vydra_nb")
        shell.run_line_magic("config", "VydraMagics.resume_on_load = True")  # the default; tests above turn it off
        current_session().reset()
        try:
            shell.run_line_magic("vydra", "login")
            assert "Resumed tracking 1 unfinished job(s)" in capsys.readouterr().out
            assert current_session().tracker.join_idle(30)
            assert current_session().history().get(job.id)["status"] == "completed"
        finally:
            shell.run_line_magic("config", "VydraMagics.resume_on_load = False")
            end_vydra_session(shell)


# -- the new-user review ------------------------------------------------------------------------
def _error_of(shell: InteractiveShell, cell: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run a cell as a user would; the one line IPython shows for its UsageError."""
    capsys.readouterr()
    result = shell.run_cell(cell, store_history=False)
    shown = capsys.readouterr()
    text = (shown.out + shown.err).strip()
    assert isinstance(result.error_in_exec, UsageError), text[:500]
    assert "\n" not in text, text[:500]
    return str(result.error_in_exec)


def test_line_commands_expand_variables_like_other_magics(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    """`%vydra job {clip.id}` and `%vydra cancel $jid` find the job; `generate` and cells stay as typed."""
    clip = ip.run_line_magic("vydra", "generate kling-motion-control --image-url https://e.com/a.png --video-url https://e.com/b.mp4")
    ip.user_ns.update(clip=clip, jid=clip.id)
    result = ip.run_cell("%vydra cancel $jid", store_history=False)
    assert result.error_in_exec is None, result.error_in_exec
    assert "350 credits refunded" in capsys.readouterr().out
    result = ip.run_cell("shown = %vydra job {clip.id}", store_history=False)
    assert result.error_in_exec is None, result.error_in_exec
    assert ip.user_ns["shown"].id == clip.id and ip.user_ns["shown"].status == "cancelled"
    # Inside a function, the function's own variables are seen, as IPython does for %time.
    result = ip.run_cell("def lookup(j):\n    got = %vydra job {j.id}\n    return got\nfound = lookup(clip)", store_history=False)
    assert result.error_in_exec is None, result.error_in_exec
    assert ip.user_ns["found"].id == clip.id
    ip.user_ns["count"] = 2
    jobs = ip.run_cell("%vydra jobs --limit $count", store_history=False).result
    assert len(jobs) <= 2
    # Prompts are ours to fill: `{name}` in a cell is interpolated once, by us, and `$` is kept.
    ip.user_ns["animal"] = "heron"
    job = ip.run_cell_magic("vydra", "elevenlabs-tts -o said", "A {animal} costs $5")
    assert job.params["text"] == "A heron costs $5"
    # generate's flags are filled like a cell's, once, by us: `{x}` from the variables, `{{` for a brace.
    ip.user_ns["x"] = "https://e.com/replaced.mp4"
    out = ip.run_cell("%vydra generate video-extract --video-url {x} --dry-run", store_history=False)
    assert out.error_in_exec is None, out.error_in_exec
    assert '"video_url": "https://e.com/replaced.mp4"' in capsys.readouterr().out
    out = ip.run_cell("%vydra generate video-extract --video-url https://e.com/v{{x}}.mp4 --dry-run", store_history=False)
    assert out.error_in_exec is None, out.error_in_exec
    assert "https://e.com/v{x}.mp4" in capsys.readouterr().out


def test_job_not_found_names_the_id_and_the_server(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    url = magics_of(ip).client.base_url
    for command in ("job", "cancel"):
        message = _error_of(ip, f"%vydra {command} job_nothere", capsys)
        assert message == f"Job 'job_nothere' not found on {url}.", message


def test_the_body_fills_only_a_prompt_like_field(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    """Whisper's optional `language` string is not a prompt: the body is refused, not put there."""
    message = _error_of(ip, "%%vydra whisper --audio-url https://e.com/a.mp3 --dry-run\nen-GB please", capsys)
    assert "whisper takes no text prompt" in message
    ip.run_line_magic("vydra", "help whisper")
    assert "the cell body fills" not in capsys.readouterr().out

    def model(props: dict[str, Any], required: list[str] | None = None) -> Model:
        return Model.from_api({"slug": "m", "inputSchema": {"type": "object", "properties": props, "required": required or []}})

    s = {"type": "string"}
    assert model({"language": s, "voice_id": s, "description": s}).prompt_field is None
    assert model({"language": s, "text": s}).prompt_field == "text"
    assert model({"negative_prompt": s, "prompt": s}).prompt_field == "prompt"
    assert model({"style": s, "customPrompt": s}).prompt_field == "customPrompt"
    assert model({"input_text": s}).prompt_field == "input_text"
    assert model({"script": s, "music_prompt": s}).prompt_field == "music_prompt"
    assert model({"image_prompt": {**s, "format": "uri"}}).prompt_field is None
    assert model({"prompt": {**s, "enum": ["a", "b"]}}).prompt_field is None


def test_help_and_range_errors_say_one_sided_bounds(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("vydra", "help video-trim")
    text = capsys.readouterr().out
    assert "None" not in text and "number; >= 0; required" in text
    message = _error_of(ip, "%vydra generate video-trim --video-url https://e.com/v.mp4 --start -1 --end 2", capsys)
    assert message == "--start must be >= 0 (got -1).", message
    ip.run_line_magic("vydra", "help kling-motion-control")
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "--no-keep-original-sound" in ln)
    assert "--no-keep-original-sound  boolean" in line, line
    # The schema check (the Python API's path) words it the same way.
    trim = magics_of(ip).client.model("video-trim")
    with pytest.raises(vydra_nb.ValidationError, match=r"start must be >= 0 \(got -1\)"):
        trim.validate({"video_url": "https://e.com/v.mp4", "start": -1, "end": 2})


def test_line_command_options_are_worded_plainly(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    assert _error_of(ip, "%vydra credits extra", capsys) == "`%vydra credits` takes no options (got 'extra')."
    assert "--limit needs a whole number, not 'x'" in _error_of(ip, "%vydra jobs --limit x", capsys)
    assert "--speed needs a number, not 'abc'" in _error_of(ip, "%vydra sandbox --speed abc", capsys)
    assert "--limit needs a whole number of at least 1" in _error_of(ip, "%vydra jobs --limit -1", capsys)


def test_placeholders_say_what_is_wrong(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.user_ns.update(x={"a": 1}, style="noir")
    message = _error_of(ip, "%%vydra veo3 --dry-run\nA {x['a']} film", capsys)
    assert "key \"'a'\"" in message and "without quotes, as in {x[a]}" in message, message
    assert "KeyError" not in message
    message = _error_of(ip, "%%vydra veo3 --dry-run\nA {style.upper()} film", capsys)
    assert "Placeholders take a variable, attribute or index, not calls" in message, message
    assert "AttributeError" not in message
    assert "key 'nope'" in _error_of(ip, "%%vydra veo3 --dry-run\nA {x[nope]} film", capsys)


def test_boolean_flags_take_no_value_and_generic_flags_are_not_offered(ip: InteractiveShell,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    line = "%vydra generate kling-motion-control --image-url https://e.com/a.png --video-url https://e.com/b.mp4"
    message = _error_of(ip, f"{line} --keep-original-sound yes", capsys)
    assert message == ("--keep-original-sound takes no value (got 'yes'); use --keep-original-sound or "
                       "--no-keep-original-sound."), message
    message = _error_of(ip, "%vydra generate veo3 wait", capsys)
    assert "--wait" not in message and "Did you mean" not in message, message
    assert "Did you mean --yes" not in _error_of(ip, "%vydra generate veo3 --aspect-ratio 9:16 yes", capsys)


def test_repeated_flags_accumulate_arrays_and_refuse_conflicts(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("vydra", "generate video-compose --video-urls https://e.com/1.mp4 "
                               "--video-urls https://e.com/2.mp4,https://e.com/3.mp4 --dry-run")
    text = capsys.readouterr().out
    body = json.loads(text[text.index("{"): text.rindex("}") + 1])
    assert body == {"video_urls": ["https://e.com/1.mp4", "https://e.com/2.mp4", "https://e.com/3.mp4"]}
    message = _error_of(ip, "%%vydra veo3 --aspect-ratio 16:9 --aspect-ratio 9:16 --dry-run\na lake", capsys)
    assert message.startswith("--aspect-ratio is given twice with different values ('16:9' and '9:16')"), message
    ip.run_cell_magic("vydra", "veo3 --aspect-ratio 9:16 --aspect-ratio=9:16 --dry-run", "the same twice is fine")
    assert '"aspect_ratio": "9:16"' in capsys.readouterr().out


def test_jobs_status_and_models_provider_are_checked(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    message = _error_of(ip, "%vydra jobs --status done", capsys)
    assert message == ("--status must be one of pending, processing, running, completed, failed, cancelled "
                       "(got 'done')."), message
    job = ip.run_cell_magic("vydra", "elevenlabs-tts --wait", "finished")
    assert job.id in set(ip.run_line_magic("vydra", "jobs --status completed")["id"])
    assert job.id not in set(ip.run_line_magic("vydra", "jobs --status processing")["id"])
    message = _error_of(ip, "%vydra models --provider kie", capsys)
    assert message == "No models from provider 'kie'; providers: elevenlabs, fal-ai, kie-ai, vydra, xai.", message
    assert set(ip.run_line_magic("vydra", "models --provider kie-ai")["provider"]) == {"kie-ai"}


def test_a_sweep_never_pays_twice_for_the_same_value(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    client = magics_of(ip).client
    client.models()
    sent = client.requests_sent
    message = _error_of(ip, "%%vydra nano-banana --aspect-ratio 1:1,16:9,1:1 --yes\na pear", capsys)
    assert message == "--aspect-ratio lists 1:1 twice; each value of a sweep is a separate paid job, so give it once."
    assert client.requests_sent == sent and balance(ip) == 5000


def test_sandbox_stop_when_none_runs(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("vydra", "sandbox --stop")
    assert "Sandbox stopped" in capsys.readouterr().out
    ip.run_line_magic("vydra", "sandbox --stop")
    assert capsys.readouterr().out.strip() == "No sandbox is running; nothing changed."


def test_unknown_model_suggests_active_models_only(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    message = _error_of(ip, "%%vydra veo --dry-run\na lake", capsys)
    assert "Did you mean veo3" in message and "veo2" not in message, message
    assert "veo2" not in _error_of(ip, "%vydra help veo", capsys)


def test_dry_run_says_what_the_real_run_would_do(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell_magic("vydra", "veo3 --dry-run --max-credits 100", "a lake")
    text = capsys.readouterr().out
    assert "Warning: the real run would be refused: 175 credits is above --max-credits 100." in text
    ip.run_cell_magic("vydra", "veo3 --dry-run --max-credits 200", "a lake")
    assert "Warning" not in capsys.readouterr().out
    ip.run_line_magic("config", "VydraMagics.confirm_above = 100")
    try:
        ip.run_cell_magic("vydra", "veo3 --dry-run", "a lake")
        assert ("Note: the real run would ask before submitting: 175 credits is above "
                "VydraMagics.confirm_above=100") in capsys.readouterr().out
        ip.run_cell_magic("vydra", "veo3 --dry-run --yes", "a lake")
        assert "Note" not in capsys.readouterr().out
    finally:
        ip.run_line_magic("config", "VydraMagics.confirm_above = 1000")
    assert balance(ip) == 5000


def test_resume_matches_host_and_port(ip: InteractiveShell) -> None:
    """Every sandbox is 127.0.0.1: only the port tells this one's jobs from those of one long gone."""
    from vydra_nb.session import current as current_session

    magics = magics_of(ip)
    url = magics.client.base_url
    with vydra_nb.sandbox.start(credits=1000, speed=1) as gone:  # slow: its job stays unfinished
        other = vydra_nb.Client(api_key=gone.api_key, base_url=gone.url)
        stale = other.generate("veo3", prompt="a sandbox that will be gone")
        other.close()
    with current_session().history()._tx() as conn:  # a row written before ports were recorded
        conn.execute("INSERT INTO jobs (id, status, updated_at, host) VALUES ('job_old', 'running', 0, '127.0.0.1')")
    assert magics.resume() == 0, "jobs of other (gone) sandboxes must not be tracked again"
    row = current_session().history().get(stale.id)
    port = url.split("//")[1].split("/")[0].split(":")[1]
    assert row["status"] in ("pending", "running") and row["host"] == f"127.0.0.1:{gone.url.split(':')[2].split('/')[0]}"
    assert row["host"] != f"127.0.0.1:{port}"

    from vydra_nb.tracking.history import host_key, host_matches

    assert host_key(url) == f"127.0.0.1:{port}" and host_matches(host_key(url), url)
    assert host_key("https://www.vydra.ai/api/v1") == "www.vydra.ai"
    assert host_key("https://api.example.com:8443/v1") == "api.example.com:8443"
    assert host_matches("www.vydra.ai", "https://www.vydra.ai/api/v1")  # old rows of the real service still resume
    assert not host_matches("127.0.0.1", url)
