"""The client over real HTTP against the sandbox: every endpoint, error path and retry rule."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import vydra_nb
from vydra_nb import sandbox as sandbox_mod
from vydra_nb.api.ratelimit import GENERATE, Limit

from .conftest import make_client
from .rawserver import Reply, raw_server


def balance(box: sandbox_mod.Sandbox) -> int:
    return int(box.state()["balance"])


# -- models ------------------------------------------------------------------------------------
def test_models_list_filters_and_cache(client: vydra_nb.Client) -> None:
    models = client.models()
    slugs = {m.slug for m in models}
    assert {"veo3", "grok-imagine", "kling-motion-control", "elevenlabs-tts", "whisper"} <= slugs
    veo = client.model("veo3")
    assert veo.credits_per_unit == 175 and veo.provider == "kie-ai" and veo.is_active
    assert veo.prompt_field == "prompt"
    assert "aspect_ratio" in veo.properties
    assert any(not m.is_active for m in models)
    assert all(m.provider == "xai" for m in client.models(provider="xai"))
    assert all(m.is_active for m in client.models(active=True))
    sent = client.requests_sent
    client.models()
    client.model("veo3")
    assert client.requests_sent == sent, "the model list is cached"
    client.models(refresh=True)
    assert client.requests_sent == sent + 1


def test_unknown_model_names_close_matches(client: vydra_nb.Client) -> None:
    with pytest.raises(vydra_nb.NotFoundError) as info:
        client.model("veo")
    assert "veo3" in info.value.suggestions
    assert "veo3" in str(info.value)
    inactive = {m.slug for m in client.models() if not m.is_active}
    assert inactive and not inactive & set(info.value.suggestions)  # never suggest what would be refused


def test_grok_price_depends_on_mode(client: vydra_nb.Client) -> None:
    assert client.estimate("grok-imagine", prompt="x", model="text-to-image") == 8
    assert client.estimate("grok-imagine", prompt="x", model="text-to-video", duration=6) == 150
    assert client.estimate("veo3", prompt="x") == 175


# -- local validation: no request, no credits ---------------------------------------------------
@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio", "16:9"),
        ({"prompt": "x", "colour": "red"}, "colour", "no parameter"),
        ({"aspect_ratio": "9:16"}, "prompt", "needs 'prompt'"),
        ({"prompt": 42}, "prompt", "string"),
    ],
)
def test_invalid_parameters_send_nothing(
    sb: sandbox_mod.Sandbox, client: vydra_nb.Client, params: dict, field: str, words: str
) -> None:
    client.models()
    sent, before = client.requests_sent, balance(sb)
    with pytest.raises(vydra_nb.ValidationError) as info:
        client.generate("veo3", **params)
    assert info.value.field == field
    assert words in str(info.value)
    assert client.requests_sent == sent
    assert balance(sb) == before


@pytest.mark.parametrize(
    ("model", "params", "field", "words"),
    [
        ("elevenlabs-sts", {"audio_url": "not a url"}, "audio_url", "http(s) URL"),
        ("elevenlabs-sts", {"audio_url": "file:///etc/passwd"}, "audio_url", "http(s) URL"),
        ("veo3", {"prompt": "   "}, "prompt", "besides spaces"),
        ("video-trim", {"video_url": "https://e.example/a.mp4", "start": float("nan"), "end": 3}, "start", "finite"),
        ("veo3", {"prompt": "a\ud800b"}, "prompt", "surrogate"),
    ],
)
def test_values_json_schema_lets_through_are_refused_before_sending(
    sb: sandbox_mod.Sandbox, client: vydra_nb.Client, model: str, params: dict, field: str, words: str
) -> None:
    """The server would refuse these (or requests could not even encode NaN): refuse them for free."""
    client.models()
    sent, before = client.requests_sent, balance(sb)
    with pytest.raises(vydra_nb.ValidationError) as info:
        client.generate(model, params)
    assert info.value.field == field and words in str(info.value) and "\n" not in str(info.value)
    assert client.requests_sent == sent and balance(sb) == before


def test_inactive_model_is_refused_locally(client: vydra_nb.Client) -> None:
    inactive = next(m for m in client.models() if not m.is_active)
    sent = client.requests_sent
    with pytest.raises(vydra_nb.ValidationError, match="not active"):
        client.generate(inactive.slug, prompt="x")
    assert client.requests_sent == sent


def test_server_side_validation_error_is_typed(sb: sandbox_mod.Sandbox, client: vydra_nb.Client) -> None:
    with pytest.raises(vydra_nb.ValidationError) as info:
        client.generate("veo3", validate=False, aspect_ratio="9:16")
    assert info.value.status_code == 400
    assert "prompt" in str(info.value)


# -- the job lifecycle -------------------------------------------------------------------------
def test_generate_wait_download(sb: sandbox_mod.Sandbox, client: vydra_nb.Client, tmp_path: Path) -> None:
    seen: list[str] = []
    client.add_job_listener(lambda job: seen.append(job.status))
    before = balance(sb)
    job = client.generate("veo3", prompt="A lake at sunset", aspect_ratio="9:16")
    assert seen and seen[0] == "pending", "listeners hear of the job before generate() returns"
    assert job.id.startswith("job_") and job.model == "veo3"
    assert job.credits_charged == 175 and balance(sb) == before - 175
    assert job.created_at is not None
    job.wait(timeout=60)
    assert job.status == "completed" and job.progress == 100
    assert job.output and job.output["videoUrl"].endswith(".mp4")
    assert job.completed_at is not None
    path = job.download(tmp_path)
    assert path == tmp_path / f"{job.id}.mp4"
    assert path.stat().st_size > 1000
    assert path.read_bytes()[4:8] == b"ftyp"
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no partial files left behind"
    assert job.local_path == path


def test_download_defaults_to_data_folder(shared_client: vydra_nb.Client) -> None:
    job = shared_client.generate("nano-banana", prompt="a red apple").wait(timeout=60)
    path = job.download()
    assert path.parent == vydra_nb.api.settings.data_home() / "downloads"
    assert path.suffix == ".png"


def test_download_size_cap(shared_client: vydra_nb.Client, tmp_path: Path) -> None:
    job = shared_client.generate("nano-banana", prompt="a pear").wait(timeout=60)
    with pytest.raises(vydra_nb.DownloadError, match="cap"):
        job.download(tmp_path, max_bytes=100)
    assert list(tmp_path.iterdir()) == []


def test_failed_job_raises_with_code_and_refund(sb: sandbox_mod.Sandbox, client: vydra_nb.Client) -> None:
    before = balance(sb)
    job = client.generate("veo3", prompt="something [fail]")
    with pytest.raises(vydra_nb.JobFailedError) as info:
        job.wait(timeout=60)
    assert info.value.code == "CONTENT_VIOLATION"
    assert job.status == "failed" and job.credits_refunded == 175
    assert balance(sb) == before


def test_cancel_refunds_once(sb: sandbox_mod.Sandbox, client: vydra_nb.Client) -> None:
    before = balance(sb)
    job = client.generate("kling-motion-control", image_url="https://example.com/a.png", video_url="https://example.com/b.mp4")
    result = job.cancel()
    assert result.success and result.credits_refunded == 350 and not result.already_refunded
    again = client.cancel(job.id)
    assert again.already_refunded
    assert balance(sb) == before
    job.refresh()
    assert job.status == "cancelled"
    with pytest.raises(vydra_nb.JobCancelledError):
        job.wait(timeout=5)


def test_wait_timeout_leaves_job_running(client: vydra_nb.Client) -> None:
    job = client.generate("kling-motion-control", image_url="https://example.com/a.png", video_url="https://example.com/b.mp4")
    with pytest.raises(vydra_nb.JobTimeoutError, match="goes on"):
        job.wait(timeout=0.05)
    assert not job.done
    job.cancel()


def test_job_lookup_and_not_found(client: vydra_nb.Client) -> None:
    job = client.generate("elevenlabs-tts", text="hello there")
    again = client.job(job.id)
    assert again.id == job.id and again.credits_charged == 5
    with pytest.raises(vydra_nb.NotFoundError):
        client.job("job_doesnotexist")


def test_wait_polls_adaptively(shared_client: vydra_nb.Client) -> None:
    """A 90 s (real-time) job is seen within ~1.5 s (real) of its end with far fewer polls than 1/s."""
    job = shared_client.generate("veo3", prompt="adaptive polling")
    sent = shared_client.requests_sent
    job.wait(timeout=60)
    polls = shared_client.requests_sent - sent
    assert polls <= 20, polls


# -- organization and credits -----------------------------------------------------------------
def test_organization_and_credit_warning() -> None:
    with sandbox_mod.start(credits=600, speed=100) as box:
        c = make_client(box)
        org = c.organization()
        assert org.credits_remaining == 600 and org.plan in ("free", "creator", "pro", "enterprise")
        with pytest.warns(vydra_nb.CreditWarning, match="425"):
            c.generate("veo3", prompt="costly")  # the submission that crosses the threshold says so
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            c.organization()  # warned once per crossing, not on every call


def test_insufficient_credits() -> None:
    with sandbox_mod.start(credits=100, speed=100) as box:
        c = make_client(box)
        with pytest.raises(vydra_nb.InsufficientCreditsError) as info:
            c.generate("veo3", prompt="too expensive")
        assert info.value.credits_required == 175 and info.value.credits_remaining == 100
        assert "175" in str(info.value) and "100" in str(info.value)
        assert box.state()["balance"] == 100


# -- auth and secrets --------------------------------------------------------------------------
def test_bad_key_is_authentication_error_without_the_key(sb: sandbox_mod.Sandbox) -> None:
    canary = "vydra_live_CANARY0123456789abcdef"
    c = vydra_nb.Client(api_key=canary, base_url=sb.url, time_scale=0.01)
    with pytest.raises(vydra_nb.AuthenticationError) as info:
        c.organization()
    assert "VYDRA_API_KEY" in str(info.value)
    for text in (str(info.value), repr(info.value), repr(c), str(c), repr(vars(c)), repr(c._transport)):
        assert canary not in text


def test_missing_key_message() -> None:
    c = vydra_nb.Client(base_url="http://127.0.0.1:9/api/v1")
    with pytest.raises(vydra_nb.ConfigurationError) as info:
        c.models()
    assert "VYDRA_API_KEY" in str(info.value) and "sandbox" in str(info.value)


def test_key_from_environment(sb: sandbox_mod.Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VYDRA_API_KEY", sb.api_key)
    monkeypatch.setenv("VYDRA_BASE_URL", sb.url)
    assert vydra_nb.Client().organization().credits_remaining == 10_000


def test_default_base_url_is_www() -> None:
    assert vydra_nb.Client(api_key="k" * 20).base_url == "https://www.vydra.ai/api/v1"
    assert vydra_nb.Client(api_key="k" * 20, base_url="https://vydra.ai/api/v1/").base_url == "https://www.vydra.ai/api/v1"


@pytest.mark.parametrize("url", ["http://example.com/api/v1", "http://10.0.0.5/api/v1", "ftp://x/y"])
def test_key_refused_over_plain_http_to_remote_hosts(url: str) -> None:
    with pytest.raises(vydra_nb.ConfigurationError):
        vydra_nb.Client(api_key="vydra_live_secret_abcdef", base_url=url)


def test_redirects_are_not_followed_and_never_carry_the_key() -> None:
    with raw_server(lambda req: Reply(200, {"data": [], "count": 0})) as other:
        with raw_server(lambda req: Reply(301, {}, headers={"Location": other.url + "/models"})) as api:
            c = vydra_nb.Client(api_key="vydra_live_secret_redirect", base_url=api.url, max_retries=0)
            with pytest.raises(vydra_nb.ConfigurationError, match="redirect"):
                c.models()
        assert other.seen == [], "the redirect target was never contacted"


def test_server_echo_of_the_key_is_scrubbed() -> None:
    key = "vydra_live_ECHOED_secret_123"
    with raw_server(lambda req: Reply(400, {"error": f"bad request from {req.headers.get('Authorization')}"})) as api:
        c = vydra_nb.Client(api_key=key, base_url=api.url)
        with pytest.raises(vydra_nb.ValidationError) as info:
            c.generate("veo3", validate=False, prompt="x")
    assert key not in str(info.value) and key not in repr(info.value.body)


def test_media_downloads_never_carry_the_key(tmp_path: Path) -> None:
    key = "vydra_live_media_secret_99"
    with raw_server(lambda req: Reply(200, raw=b"\x89PNG fake", headers={"Content-Type": "image/png"})) as cdn:
        media_url = cdn.url.replace("/api/v1", "") + "/media/x.png"
        job_view = {"id": "job_1", "status": "completed", "output": {"imageUrl": media_url}}
        with raw_server(lambda req: Reply(200, job_view)) as api:
            c = vydra_nb.Client(api_key=key, base_url=api.url)
            path = c.job("job_1").download(tmp_path)
        assert path.read_bytes() == b"\x89PNG fake"
        assert all("Authorization" not in s.headers for s in cdn.seen)


# -- rate limits -------------------------------------------------------------------------------
def test_burst_waits_for_its_turn_without_429s(sb: sandbox_mod.Sandbox, client: vydra_nb.Client) -> None:
    client.models()
    start = time.monotonic()
    jobs = [client.generate("elevenlabs-tts", text=f"line {i}") for i in range(25)]
    elapsed = time.monotonic() - start
    assert len({j.id for j in jobs}) == 25
    assert client._transport.rate_limited == 0
    window = 60 / sb.speed
    assert elapsed >= 2 * window * 0.9, "25 generations at 10 per window need two extra windows"


def test_server_429_is_waited_out_and_retried(sb: sandbox_mod.Sandbox) -> None:
    # A client with loose local limits runs into the server's limit, waits Retry-After, retries.
    c = make_client(sb, rate_limits={GENERATE: Limit(1000, 60)})
    jobs = [c.generate("elevenlabs-tts", text=f"burst {i}") for i in range(14)]
    assert len({j.id for j in jobs}) == 14
    assert c._transport.rate_limited >= 1
    assert sb.state()["charged"] == 14 * 5, "a 429 creates no job and charges nothing"


def test_429_exposes_retry_after_from_the_message() -> None:
    with raw_server(lambda req: Reply(429, {"error": "Rate limit exceeded. Try again in 60 seconds."})) as api:
        c = vydra_nb.Client(api_key="vydra_live_abcdefgh", base_url=api.url, time_scale=0.0001)
        c._transport.max_rate_wait = 0.0
        with pytest.raises(vydra_nb.RateLimitError) as info:
            c.organization()
    assert info.value.retry_after == 60


def test_rate_limit_headers_tighten_the_window() -> None:
    from vydra_nb.api.ratelimit import SlidingWindow

    now = [0.0]
    window = SlidingWindow(Limit(10, 60), clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    window.tighten(limit=10, remaining=0, reset_in=30)
    assert window.delay() == pytest.approx(30)
    assert window.acquire() == pytest.approx(30), "the slot is taken once the server's window resets"


# -- retries and money safety ------------------------------------------------------------------
def test_reads_are_retried_through_server_errors(sb: sandbox_mod.Sandbox) -> None:
    c = make_client(sb, max_retries=6)
    sb.set_faults("500=0.3,503=0.2,seed=3")
    try:
        for _ in range(10):
            assert c.organization().credits_remaining == 10_000
    finally:
        sb.set_faults(None)


def test_ambiguous_generation_is_never_resent_without_idempotency() -> None:
    with raw_server(lambda req: Reply(500, {"error": "Internal error"})) as api:
        c = vydra_nb.Client(api_key="vydra_live_abcdefgh", base_url=api.url, time_scale=0.001)
        with pytest.raises(vydra_nb.OutcomeUnknownError) as info:
            c.generate("veo3", validate=False, prompt="x")
        assert api.count("POST") == 1, "a 5xx on a generation is not retried"
        assert info.value.idempotency_key.startswith("vydra-nb-")
    with raw_server(lambda req: Reply(drop=True)) as api:
        c = vydra_nb.Client(api_key="vydra_live_abcdefgh", base_url=api.url, time_scale=0.001)
        with pytest.raises(vydra_nb.OutcomeUnknownError, match="avoid paying twice"):
            c.generate("veo3", validate=False, prompt="x")
        assert api.count("POST") == 1, "a dropped connection after sending is not retried"


@pytest.fixture
def idempotent_sb() -> Iterator[sandbox_mod.Sandbox]:
    """A sandbox that echoes and honours Idempotency-Key: an easier server than the reference
    promises, asked for by name to test the replay path the client takes only when it is shown."""
    with sandbox_mod.start(credits=10_000, speed=100, seed=11, idempotency=True) as box:
        yield box


def test_without_an_echo_the_client_never_replays_a_paid_request(sb: sandbox_mod.Sandbox) -> None:
    """The default sandbox, like the reference, says nothing of Idempotency-Key: a lost answer is an
    OutcomeUnknownError, charged once, never a second POST."""
    c = make_client(sb)
    c.generate("elevenlabs-tts", text="no echo here")
    assert not c._transport.honours_idempotency
    before = sb.state()["charged"]
    sb.set_faults("dropafter=1.0,seed=1")
    try:
        with pytest.raises(vydra_nb.OutcomeUnknownError):
            c.generate("veo3", prompt="lost answer")
    finally:
        sb.set_faults(None)
    assert sb.state()["charged"] - before == 175


def test_generation_after_a_lost_answer_is_charged_once(idempotent_sb: sandbox_mod.Sandbox) -> None:
    sb = idempotent_sb
    c = make_client(sb)
    c.generate("elevenlabs-tts", text="learn that the server honours Idempotency-Key")
    assert c._transport.honours_idempotency
    before = sb.state()["charged"]
    sb.set_faults("dropafter=1.0,seed=1")
    try:
        with pytest.raises(vydra_nb.VydraError):
            c.generate("veo3", prompt="lost answer")
    finally:
        sb.set_faults(None)
    assert sb.state()["charged"] - before == 175, "retries with the same key replayed, never recharged"
    sb.set_faults("500after=0.5,dropafter=0.3,seed=5")
    try:
        job = c.generate("veo3", prompt="flaky answer")
    except vydra_nb.OutcomeUnknownError:
        job = None
    finally:
        sb.set_faults(None)
    # Both faults strike after the job was created: the replay with the same key returns that job.
    assert sb.state()["charged"] - before == 350
    if job is not None:
        assert job.credits_charged == 175


def test_connection_refused_is_a_clear_error() -> None:
    c = vydra_nb.Client(api_key="vydra_live_abcdefgh", base_url="http://127.0.0.1:9/api/v1", time_scale=0.001)
    with pytest.raises(vydra_nb.APIConnectionError, match="Could not reach"):
        c.generate("veo3", validate=False, prompt="x")


def test_non_json_answer_is_a_response_error() -> None:
    with raw_server(lambda req: Reply(200, raw=b"<html>hi</html>", headers={"Content-Type": "text/html"})) as api:
        c = vydra_nb.Client(api_key="vydra_live_abcdefgh", base_url=api.url)
        with pytest.raises(vydra_nb.ResponseError, match="not JSON"):
            c.organization()


# -- threads -----------------------------------------------------------------------------------
def test_client_is_thread_safe(sb: sandbox_mod.Sandbox, client: vydra_nb.Client) -> None:
    errors: list[BaseException] = []
    jobs: list[vydra_nb.Job] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            job = client.generate("elevenlabs-tts", text=f"thread {i}")
            with lock:
                jobs.append(job)
            for _ in range(3):
                job.refresh()
            client.organization()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len({j.id for j in jobs}) == 12
    state = sb.state()
    assert state["charged"] == 60 and state["balance"] == 10_000 - 60 + state["refunded"]


# -- the live flavour --------------------------------------------------------------------------
def test_live_flavour_is_understood() -> None:
    with sandbox_mod.start(credits=5000, speed=100, flavor="live") as box:
        c = make_client(box)
        image = c.generate("grok-imagine", prompt="a fox", model="text-to-image")
        assert image.status == "completed", "synchronous answers are complete at once"
        assert image.media and image.media[0].kind == "image"
        video = c.generate("veo3", prompt="a fox running")
        statuses = set()
        video.subscribe(lambda j: statuses.add(j.raw_status))
        video.wait(timeout=60)
        assert video.media and video.media[0].url.startswith("http")
        assert video.status == "completed"
        with pytest.raises(vydra_nb.NotFoundError) as info:
            c.job("job_nope")
        assert info.value.code == "JOB_NOT_FOUND"
        listed = c.list_jobs(limit=10)
        assert {j.id for j in listed} >= {video.id}


def test_spec_flavour_has_no_job_listing(client: vydra_nb.Client) -> None:
    with pytest.raises(vydra_nb.NotFoundError):
        client.list_jobs()


def test_network_errors_name_the_real_cause() -> None:
    """A DNS failure is not "connection refused": each says what it is, in one line."""
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    refused = vydra_nb.Client(api_key="k_test", base_url=f"http://127.0.0.1:{port}/api/v1", history=False, max_retries=0)
    with pytest.raises(vydra_nb.APIConnectionError, match="connection refused"):
        refused.organization()
    unresolvable = vydra_nb.Client(api_key="k_test", base_url="https://no-such-host.invalid/api/v1", history=False,
                                   max_retries=0)
    with pytest.raises(vydra_nb.APIConnectionError, match="could not be resolved") as info:
        unresolvable.organization()
    assert "refused" not in str(info.value) and "\n" not in str(info.value)


def test_a_too_long_prompt_says_the_rule_that_failed(shared_client: vydra_nb.Client) -> None:
    model = shared_client.model("veo3")
    limit = model.properties["prompt"].get("maxLength")
    if limit is None:
        pytest.skip("the sandbox's veo3 prompt has no maxLength")
    with pytest.raises(vydra_nb.ValidationError) as info:
        shared_client.generate("veo3", prompt="word " * (limit // 5 + 1))
    assert f"the limit is {limit:,}" in str(info.value) and "characters" in str(info.value)
