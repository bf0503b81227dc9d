"""The ``live`` flavor: what vydra-notes.md says the live service does beyond the reference."""
from __future__ import annotations

import time

import pytest
import requests

from .conftest import Api, assert_invariant


@pytest.fixture
def live(make_sandbox):
    return make_sandbox(flavor="live")


@pytest.fixture
def lapi(live):
    return Api(live)


def test_unknown_flavor_rejected(make_sandbox):
    with pytest.raises(ValueError):
        make_sandbox(flavor="staging")


@pytest.mark.parametrize("headers,code", [
    ({}, "MISSING_AUTH"),
    ({"Authorization": "Token abc"}, "INVALID_FORMAT"),
    ({"Authorization": "Bearer vydra_live_nope"}, "KEY_NOT_FOUND"),
])
def test_401_codes(live, headers, code):
    r = requests.get(f"{live.url}/models", headers=headers, timeout=5)
    assert r.status_code == 401 and r.json() == {"error": "Invalid API key", "code": code}


def test_error_codes(lapi, make_sandbox):
    r = lapi.submit("veo3", {})
    assert r.status_code == 400
    assert r.json()["error"] == "Missing required field: prompt (string)" and r.json()["code"] == "INVALID_INPUT"
    assert r.json()["details"] == {"field": "prompt"}
    assert lapi.submit("veo9", {"prompt": "x"}).json() == {"error": "Model not found", "code": "MODEL_NOT_FOUND"}
    assert lapi.get("/jobs/job_nope").json() == {"error": "Job not found", "code": "JOB_NOT_FOUND"}
    poor = Api(make_sandbox(flavor="live", credits=10))
    assert poor.submit("veo3", {"prompt": "x"}).json() == {
        "error": "Insufficient credits", "code": "INSUFFICIENT_CREDITS", "creditsRequired": 175, "creditsRemaining": 10}


def test_rate_limit_headers(lapi):
    before = time.time()
    r = lapi.get("/models")
    assert r.headers["X-RateLimit-Limit"] == "50" and r.headers["X-RateLimit-Remaining"] == "49"
    assert before <= int(r.headers["X-RateLimit-Reset"]) <= before + 5
    r = lapi.get("/organization")
    assert r.headers["X-RateLimit-Limit"] == "100" and r.headers["X-RateLimit-Remaining"] == "99"
    r = lapi.submit("veo3", {"prompt": "x"})
    assert r.headers["X-RateLimit-Limit"] == "10"
    assert "X-RateLimit-Limit" not in requests.get(f"{lapi.sb.url}/health", timeout=5).headers


def test_spec_flavor_has_no_extras(api):
    r = api.get("/models")
    assert "X-RateLimit-Limit" not in r.headers
    assert "code" not in api.submit("veo3", {}).json()


def test_429_body(make_sandbox):
    sb = make_sandbox(flavor="live", speed=6)
    api = Api(sb)
    for _ in range(10):
        assert api.post("/models/elevenlabs-tts", {"text": "hi"}).status_code == 202
    r = api.post("/models/elevenlabs-tts", {"text": "hi"})
    assert r.status_code == 429
    body = r.json()
    retry = int(r.headers["Retry-After"])
    assert body == {"error": f"Rate limit exceeded. Try again in {retry} seconds.", "code": "RATE_LIMIT_EXCEEDED",
                    "retryAfter": retry, "limits": {"type": "generation", "limit": 10, "used": 10}}
    assert r.headers["X-RateLimit-Remaining"] == "0"


@pytest.mark.parametrize("slug,body", [
    ("grok-imagine", {"prompt": "a cat"}),
    ("nano-banana", {"prompt": "a banana", "aspect_ratio": "9:16"}),
])
def test_image_models_answer_synchronously(lapi, live, slug, body):
    r = lapi.submit(slug, body)
    assert r.status_code == 200
    data = r.json()
    assert set(data) == {"status", "jobId", "imageUrl", "resultUrls", "creditsCharged"}
    assert data["status"] == "completed" and data["resultUrls"] == [data["imageUrl"]]
    assert data["imageUrl"].startswith(f"{live.root}/media/") and data["creditsCharged"] == 8
    view = lapi.job(data["jobId"])
    assert view["status"] == "completed" and view["progress"] == 100
    assert data["imageUrl"] in str(view["output"])
    assert live.state()["charged"] == 8


def test_failing_image_job_stays_asynchronous(lapi):
    r = lapi.submit("nano-banana", {"prompt": "[fail]"})
    assert r.status_code == 202
    assert lapi.wait(r.json()["jobId"])["status"] == "failed"


def test_processing_status(make_sandbox):
    sb = make_sandbox(flavor="live", speed=10, progress="linear")  # veo3: 5-16 s, pending 3-15 % of it
    api = Api(sb)
    job_id = api.submit("veo3", {"prompt": "x"}).json()["jobId"]
    view = api.wait(job_id, statuses=("processing",), timeout=5)
    assert 0 <= view["progress"] < 100 and "startedAt" in view


@pytest.mark.parametrize("slug,body,key", [
    ("veo3", {"prompt": "x"}, "videoUrls"),
    ("kling-motion-control", {"image_url": "https://e.com/a.png", "video_url": "https://e.com/b.mp4"}, "result"),
    ("asmr-generator", {"customPrompt": "soap"}, "outputUrl"),
    ("elevenlabs-tts", {"text": "hello"}, "data"),
])
def test_media_urls_under_other_keys(make_sandbox, slug, body, key):
    sb = make_sandbox(flavor="live", speed=200)
    api = Api(sb)
    view = api.wait(api.submit(slug, body).json()["jobId"])
    assert view["status"] == "completed"
    assert key in view["output"]
    assert f"{sb.root}/media/" in str(view["output"][key])
    for spec_key in ("videoUrl", "audioUrl", "imageUrl"):
        assert spec_key not in view["output"]


def test_jobs_listing(make_sandbox):
    sb = make_sandbox(flavor="live", speed=200)
    api = Api(sb)
    other = Api(sb, sb.add_key())
    ids = [api.submit("elevenlabs-tts", {"text": f"t{i}"}).json()["jobId"] for i in range(4)]
    failing = api.submit("elevenlabs-tts", {"text": "[fail]"}).json()["jobId"]
    other.submit("elevenlabs-tts", {"text": "theirs"})
    api.wait(failing)
    for job_id in ids:
        api.wait(job_id)
    body = api.get("/jobs").json()
    assert body["total"] == 5 and body["count"] == 5
    assert [j["id"] for j in body["data"]] == [failing, *reversed(ids)]  # newest first
    page = api.get("/jobs", params={"limit": 2, "offset": 1}).json()
    assert page["count"] == 2 and page["total"] == 5 and [j["id"] for j in page["data"]] == list(reversed(ids))[:2]
    failed = api.get("/jobs", params={"status": "failed"}).json()
    assert failed["total"] == 1 and failed["data"][0]["id"] == failing
    assert api.get("/jobs", params={"limit": 0}).status_code == 400
    assert_invariant(sb.state())
