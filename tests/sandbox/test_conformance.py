"""The sandbox against vydra-api.md, point by point: every endpoint, shape, status and wording."""
from __future__ import annotations

import http.client
import re
import time

import jsonschema
import pytest
import requests

from .conftest import Api, assert_invariant

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
JOB_ID = re.compile(r"^job_[0-9a-f]+$")

#: A valid body for every active model, and the price the pricing table gives it.
EXAMPLES = {
    "veo3": ({"prompt": "A serene lake at sunset", "aspect_ratio": "9:16"}, 175),
    "kling-motion-control": ({"image_url": "https://example.com/a.png", "video_url": "https://example.com/b.mp4",
                              "prompt": "Optional description", "keep_original_sound": True}, 350),
    "grok-imagine": ({"prompt": "Creative description", "model": "text-to-image", "aspect_ratio": "16:9"}, 8),
    "asmr-generator": ({"theme": "kinetic_sand"}, 175),
    "elevenlabs-tts": ({"text": "Hello there", "voice": "rachel"}, 5),
    "elevenlabs-sts": ({"audio_url": "https://example.com/a.wav", "voice": "adam"}, 10),
    "whisper": ({"audio_url": "https://example.com/a.wav"}, 3),
    "video-trim": ({"video_url": "https://example.com/a.mp4", "start": 1, "end": 3}, 2),
    "video-compose": ({"video_urls": ["https://example.com/a.mp4", "https://example.com/b.mp4"]}, 5),
    "video-extract": ({"video_url": "https://example.com/a.mp4", "what": "frame", "at": 1.5}, 3),
    "nano-banana": ({"prompt": "A banana in space"}, 8),
}


# ----------------------------------------------------------------------------- auth and health

def test_health_needs_no_key(sb):
    r = requests.get(f"{sb.url}/health", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_api_key_shape(sb):
    assert re.fullmatch(r"vydra_sandbox_[0-9a-f]{32}", sb.api_key)
    assert sb.url == f"{sb.root}/api/v1" and sb.root.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("method,path", [("GET", "/models"), ("POST", "/models/veo3"), ("GET", "/jobs/job_x"),
                                         ("DELETE", "/jobs/job_x"), ("GET", "/organization")])
@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc", "Bearer "])
def test_401_everywhere(sb, method, path, header):
    headers = {"Authorization": header} if header is not None else {}
    r = requests.request(method, sb.url + path, headers=headers, json={"prompt": "x"}, timeout=5)
    assert r.status_code == 401
    assert r.json() == {"error": "Invalid API key"}
    assert sb.state()["charged"] == 0


# ----------------------------------------------------------------------------- GET /models

def test_models_listing(api):
    r = api.get("/models")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"data", "count"}
    assert body["count"] == len(body["data"]) == 12
    slugs = {m["slug"] for m in body["data"]}
    assert set(EXAMPLES) | {"veo2"} == slugs
    for m in body["data"]:
        assert set(m) == {"slug", "name", "provider", "creditsPerUnit", "pricingUnit", "description",
                          "inputSchema", "isActive"}
        assert m["provider"] in {"kie-ai", "xai", "fal-ai", "elevenlabs", "vydra"}
        assert isinstance(m["creditsPerUnit"], int) and isinstance(m["isActive"], bool)
        schema = m["inputSchema"]
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        for prop in schema["properties"].values():
            assert "type" in prop and "description" in prop
    veo3 = next(m for m in body["data"] if m["slug"] == "veo3")
    assert veo3["name"] == "Google Veo 3 — Video Generation"
    assert (veo3["provider"], veo3["creditsPerUnit"], veo3["pricingUnit"]) == ("kie-ai", 175, "video")
    assert veo3["inputSchema"]["properties"]["aspect_ratio"]["enum"] == ["16:9", "9:16", "1:1"]
    assert veo3["inputSchema"]["properties"]["aspect_ratio"]["default"] == "16:9"
    assert veo3["inputSchema"]["required"] == ["prompt"]
    grok = next(m for m in body["data"] if m["slug"] == "grok-imagine")
    assert grok["provider"] == "xai" and grok["creditsPerUnit"] == 8
    assert grok["inputSchema"]["properties"]["model"]["x-vydra-credits"] == {
        "text-to-image": 8, "text-to-video": 150, "image-to-video": 150}


@pytest.mark.parametrize("query,expected", [
    ({"provider": "xai"}, {"grok-imagine"}),
    ({"provider": "elevenlabs"}, {"elevenlabs-tts", "elevenlabs-sts"}),
    ({"provider": "fal-ai"}, {"whisper", "nano-banana"}),
    ({"isActive": "false"}, {"veo2"}),
    ({"provider": "kie-ai", "isActive": "true"}, {"veo3", "kling-motion-control", "asmr-generator"}),
    ({"provider": "nobody"}, set()),
])
def test_models_filters(api, query, expected):
    body = api.get("/models", params=query).json()
    assert {m["slug"] for m in body["data"]} == expected and body["count"] == len(expected)


def test_models_active_filter_excludes_inactive(api):
    body = api.get("/models", params={"isActive": "true"}).json()
    assert body["count"] == 11 and all(m["isActive"] for m in body["data"])


def test_models_bad_filter(api):
    r = api.get("/models", params={"isActive": "maybe"})
    assert r.status_code == 400 and r.json() == {"error": "Invalid value for isActive: 'maybe' (allowed: true, false)"}


def test_examples_are_valid_against_published_schemas(api):
    models = {m["slug"]: m for m in api.get("/models").json()["data"]}
    for slug, (body, _) in EXAMPLES.items():
        jsonschema.validate(body, models[slug]["inputSchema"])


# ----------------------------------------------------------------------------- POST /models/{slug}

def test_submit_202_shape_and_charge(api, sb):
    r = api.submit("veo3", {"prompt": "A serene lake at sunset", "aspect_ratio": "9:16"})
    assert r.status_code == 202
    body = r.json()
    assert set(body) == {"jobId", "status", "message", "creditsCharged", "externalJobId"}
    assert JOB_ID.match(body["jobId"]) and body["externalJobId"].startswith("ext_")
    assert body["status"] == "pending"
    assert body["message"] == "Job created. Poll /jobs/{jobId} for status."
    assert body["creditsCharged"] == 175
    assert api.get("/organization").json()["creditsRemaining"] == 10_000 - 175
    assert "Idempotency-Key" not in r.headers


@pytest.mark.parametrize("slug", sorted(EXAMPLES))
def test_every_model_accepts_its_example_at_its_price(api, sb, slug):
    body, credits = EXAMPLES[slug]
    r = api.submit(slug, body)
    assert r.status_code == 202, r.text
    assert r.json()["creditsCharged"] == credits
    assert sb.state()["charged"] == credits


@pytest.mark.parametrize("mode,credits", [("text-to-image", 8), ("text-to-video", 150), ("image-to-video", 150)])
def test_grok_price_depends_on_mode(api, mode, credits):
    body = {"prompt": "x", "model": mode, "duration": 10}
    if mode == "image-to-video":
        body["image_url"] = "https://example.com/a.png"
    r = api.submit("grok-imagine", body)
    assert r.status_code == 202 and r.json()["creditsCharged"] == credits


def test_grok_default_mode_is_image_price(api):
    assert api.submit("grok-imagine", {"prompt": "x"}).json()["creditsCharged"] == 8


@pytest.mark.parametrize("slug,body,message", [
    ("veo3", {}, "Missing required field: prompt (string)"),
    ("veo3", {"prompt": ""}, "Missing required field: prompt (string)"),
    ("veo3", {"prompt": "x", "aspect_ratio": "4:3"}, "Invalid value for aspect_ratio: '4:3' (allowed: 16:9, 9:16, 1:1)"),
    ("veo3", {"prompt": "x", "foo": 1}, "Unknown field: foo"),
    ("veo3", {"prompt": 42}, "Invalid type for prompt: expected string, got integer"),
    ("grok-imagine", {"prompt": "x", "duration": 7}, "Invalid value for duration: 7 (allowed: 6, 10)"),
    ("grok-imagine", {"prompt": "x", "model": "image-to-video"}, "Missing required field: image_url (string)"),
    ("kling-motion-control", {"image_url": "https://e.com/a.png"}, "Missing required field: video_url (string)"),
    ("kling-motion-control", {"image_url": "nope", "video_url": "https://e.com/b.mp4"},
     "Invalid value for image_url: 'nope' (expected an http(s) URL)"),
    ("kling-motion-control", {"image_url": "https://e.com/a.png", "video_url": "https://e.com/b.mp4",
                              "keep_original_sound": "yes"},
     "Invalid type for keep_original_sound: expected boolean, got string"),
    ("asmr-generator", {}, "Missing required field: theme or customPrompt (string)"),
    ("asmr-generator", {"theme": "lava"}, "Invalid value for theme: 'lava' (allowed: kinetic_sand, soap_cutting, "
                                          "slime, glass_fruit, wood_carving, honeycomb)"),
    ("elevenlabs-tts", {"voice": "adam"}, "Missing required field: text (string)"),
    ("video-compose", {"video_urls": []}, "Invalid value for video_urls: expected at least 1 items"),
    ("video-trim", {"video_url": "https://e.com/a.mp4", "start": -1, "end": 2}, "Invalid value for start: -1 (minimum: 0)"),
    ("video-trim", {"video_url": "https://e.com/a.mp4", "start": 3, "end": 2},
     "Invalid value for end: 2 (must be greater than start)"),
    ("video-extract", {"video_url": "https://e.com/a.mp4", "what": "subtitles"},
     "Invalid value for what: 'subtitles' (allowed: audio, frame)"),
])
def test_validation_wording(api, sb, slug, body, message):
    r = api.submit(slug, body)
    assert r.status_code == 400
    assert r.json() == {"error": message}
    assert sb.state()["charged"] == 0


@pytest.mark.parametrize("raw,message", [
    (b"[1, 2]", "Request body must be a JSON object"),
    (b'"prompt"', "Request body must be a JSON object"),
    (b"", "Request body must be a JSON object"),
    (b"{not json", "Invalid JSON in request body"),
])
def test_body_must_be_json_object(api, raw, message):
    r = api.s.post(f"{api.sb.url}/models/veo3", data=raw, headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 400 and r.json() == {"error": message}


def test_unknown_model_404(api):
    r = api.submit("veo9", {"prompt": "x"})
    assert r.status_code == 404 and r.json() == {"error": "Model not found"}


def test_inactive_model_400(api, sb):
    r = api.submit("veo2", {"prompt": "x"})
    assert r.status_code == 400 and r.json() == {"error": "Model veo2 is not active"}
    assert sb.state()["charged"] == 0


def test_check_order(make_sandbox):
    sb = make_sandbox(credits=100)
    api = Api(sb)
    # unknown slug beats a bad body, inactive beats a bad body, validation beats credits
    assert api.submit("nope", [1]).json() == {"error": "Model not found"}
    assert api.submit("veo2", [1]).json() == {"error": "Model veo2 is not active"}
    assert api.submit("veo3", [1]).json() == {"error": "Request body must be a JSON object"}
    assert api.submit("veo3", {"bad": 1}).status_code == 400
    assert api.submit("veo3", {"prompt": "x"}).status_code == 402


def test_402_insufficient_credits(make_sandbox):
    sb = make_sandbox(credits=300)
    api = Api(sb)
    assert api.submit("veo3", {"prompt": "x"}).status_code == 202
    r = api.submit("kling-motion-control", EXAMPLES["kling-motion-control"][0])
    assert r.status_code == 402
    assert r.json() == {"error": "Insufficient credits", "creditsRequired": 350, "creditsRemaining": 125}
    state = sb.state()
    assert state["jobs"] == {"pending": 1} or sum(state["jobs"].values()) == 1
    assert state["balance"] == 125


# ----------------------------------------------------------------------------- GET /jobs/{id}

def test_job_lifecycle(make_sandbox):
    api = Api(make_sandbox(progress="linear"))  # the smooth 0-99 progress is an option
    job_id = api.submit("veo3", {"prompt": "A serene lake", "aspect_ratio": "9:16"}).json()["jobId"]
    seen, progress = [], []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        view = api.job(job_id)
        seen.append(view["status"])
        if view["status"] == "completed":
            break
        assert set(view) <= {"id", "status", "progress", "workflow", "creditsCharged", "createdAt", "startedAt"}
        assert {"id", "status", "progress", "workflow", "creditsCharged", "createdAt"} <= set(view)
        assert isinstance(view["progress"], int) and 0 <= view["progress"] <= 100
        if view["status"] == "running":
            assert ISO_Z.match(view["startedAt"])
            progress.append(view["progress"])
        time.sleep(0.02)
    assert seen[-1] == "completed"
    assert "running" in seen
    assert progress == sorted(progress) and len(set(progress)) > 2
    order = {"pending": 0, "running": 1, "completed": 2}
    assert [order[s] for s in seen] == sorted(order[s] for s in seen)
    assert view["id"] == job_id and view["workflow"] == "veo3" and view["progress"] == 100
    assert view["creditsCharged"] == 175
    for key in ("createdAt", "startedAt", "completedAt"):
        assert ISO_Z.match(view[key])
    assert view["createdAt"] <= view["startedAt"] <= view["completedAt"]
    out = view["output"]
    assert set(out) == {"videoUrl", "duration", "resolution"}
    assert out["videoUrl"].startswith(f"{api.sb.root}/media/") and out["videoUrl"].endswith(".mp4")
    assert out["duration"] == 8 and out["resolution"] == "360x640"


def test_first_view_is_pending(make_sandbox):
    sb = make_sandbox(speed=1, progress="linear")  # veo3: pending for a few seconds at real speed
    api = Api(sb)
    job_id = api.submit("veo3", {"prompt": "x"}).json()["jobId"]
    view = api.job(job_id)
    assert view["status"] == "pending" and view["progress"] == 0 and "startedAt" not in view


def test_first_view_of_a_kie_model_has_no_progress_by_default(make_sandbox):
    sb = make_sandbox(speed=1)  # default progress="provider": kie.ai reports states only
    api = Api(sb)
    view = api.job(api.submit("veo3", {"prompt": "x"}).json()["jobId"])
    assert view["status"] == "pending" and "progress" not in view and "startedAt" not in view


@pytest.mark.parametrize("slug,body,keys", [
    ("grok-imagine", {"prompt": "x"}, {"imageUrl", "width", "height"}),
    ("nano-banana", {"prompt": "x", "aspect_ratio": "16:9"}, {"imageUrl", "width", "height"}),
    ("elevenlabs-tts", {"text": "hello world"}, {"audioUrl", "duration"}),
    ("whisper", {"audio_url": "https://example.com/a.wav"}, {"text", "transcriptUrl", "duration"}),
    ("grok-imagine", {"prompt": "x", "model": "text-to-video", "duration": 10, "aspect_ratio": "1:1"},
     {"videoUrl", "duration", "resolution"}),
])
def test_output_shapes(api, slug, body, keys):
    view = api.wait(api.submit(slug, body).json()["jobId"])
    assert view["status"] == "completed" and set(view["output"]) == keys
    if slug == "grok-imagine" and "duration" in body:
        assert view["output"]["duration"] == 10 and view["output"]["resolution"] == "480x480"
    if slug == "nano-banana":
        assert (view["output"]["width"], view["output"]["height"]) == (1024, 576)


def test_job_not_found(api):
    r = api.get("/jobs/job_doesnotexist")
    assert r.status_code == 404 and r.json() == {"error": "Job not found"}
    r = api.delete("/jobs/job_doesnotexist")
    assert r.status_code == 404 and r.json() == {"error": "Job not found"}


def test_other_keys_jobs_are_invisible(sb, api):
    other = Api(sb, sb.add_key())
    job_id = api.submit("veo3", {"prompt": "x"}).json()["jobId"]
    assert other.get(f"/jobs/{job_id}").json() == {"error": "Job not found"}
    assert other.delete(f"/jobs/{job_id}").status_code == 404
    assert api.get(f"/jobs/{job_id}").status_code == 200


# ----------------------------------------------------------------------------- failure marker

def test_fail_marker_content_violation(make_sandbox):
    sb = make_sandbox(progress="linear")  # to see the progress it failed at
    api = Api(sb)
    job_id = api.submit("veo3", {"prompt": "a lake [fail]"}).json()["jobId"]
    view = api.wait(job_id)
    assert view["status"] == "failed"
    assert view["error"] == {"message": "Content moderation failed", "code": "CONTENT_VIOLATION"}
    assert view["creditsRefunded"] == 175 and view["refundStatus"] == "refunded"
    assert 0 < view["progress"] < 100
    state = sb.state()
    assert state["balance"] == 10_000 and state["refunded"] == 175
    assert_invariant(state)
    # reading it again refunds nothing more
    api.job(job_id)
    assert sb.state()["refunded"] == 175


def test_fail_marker_with_code(api):
    view = api.wait(api.submit("elevenlabs-tts", {"text": "hi [fail:PROVIDER_ERROR]"}).json()["jobId"])
    assert view["status"] == "failed" and view["error"]["code"] == "PROVIDER_ERROR"
    assert view["creditsRefunded"] == 5


# ----------------------------------------------------------------------------- DELETE /jobs/{id}

def test_cancel_refund_and_already_refunded(make_sandbox):
    sb = make_sandbox(speed=1)
    api = Api(sb)
    job_id = api.submit("kling-motion-control", EXAMPLES["kling-motion-control"][0]).json()["jobId"]
    r = api.delete(f"/jobs/{job_id}")
    assert r.status_code == 200
    assert r.json() == {"success": True, "message": "Job cancelled",
                        "refund": {"creditsRefunded": 350, "alreadyRefunded": False}}
    view = api.job(job_id)
    assert view["status"] == "cancelled" and view["creditsRefunded"] == 350 and view["refundStatus"] == "refunded"
    r = api.delete(f"/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["success"] is True
    assert r.json()["refund"]["alreadyRefunded"] is True
    state = sb.state()
    assert state["balance"] == 10_000 and state["refunded"] == 350 and state["jobs"] == {"cancelled": 1}
    assert_invariant(state)


def test_cancel_completed_is_400(api):
    job_id = api.submit("elevenlabs-tts", {"text": "hi"}).json()["jobId"]
    api.wait(job_id)
    r = api.delete(f"/jobs/{job_id}")
    assert r.status_code == 400 and r.json() == {"error": "Job already completed and cannot be cancelled"}


def test_cancel_failed_is_already_refunded(api, sb):
    job_id = api.submit("elevenlabs-tts", {"text": "[fail]"}).json()["jobId"]
    api.wait(job_id)
    r = api.delete(f"/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["refund"]["alreadyRefunded"] is True
    assert sb.state()["refunded"] == 5


def test_cancelled_job_stays_cancelled(api):
    job_id = api.submit("elevenlabs-tts", {"text": "hi"}).json()["jobId"]
    api.delete(f"/jobs/{job_id}")
    time.sleep(0.2)  # well past its natural completion at speed 100
    assert api.job(job_id)["status"] == "cancelled"


# ----------------------------------------------------------------------------- GET /organization

def test_organization(api):
    body = api.get("/organization").json()
    assert set(body) == {"id", "name", "creditsRemaining", "plan", "updatedAt"}
    assert body["creditsRemaining"] == 10_000 and body["plan"] == "creator" and ISO_Z.match(body["updatedAt"])
    api.submit("veo3", {"prompt": "x"})
    assert api.get("/organization").json()["creditsRemaining"] == 10_000 - 175


def test_plan_option(make_sandbox):
    assert Api(make_sandbox(plan="pro")).get("/organization").json()["plan"] == "pro"


# ----------------------------------------------------------------------------- rate limits

def _flood(api, method, path, body=None, n=200):
    for i in range(n):
        r = api.s.request(method, api.sb.url + path, json=body, timeout=5)
        if r.status_code == 429:
            return i, r
    raise AssertionError("never limited")


@pytest.mark.parametrize("category,method,path,limit", [
    ("listing", "GET", "/models", 50),
    ("status", "GET", "/organization", 100),
])
def test_rate_limit_numbers(make_sandbox, category, method, path, limit):
    sb = make_sandbox(speed=6)  # 10 s windows: the flood fits comfortably
    api = Api(sb)
    count, r = _flood(api, method, path)
    assert count == limit
    assert r.json() == {"error": f"Rate limit exceeded. Try again in {r.headers['Retry-After']} seconds."}
    assert 1 <= int(r.headers["Retry-After"]) <= 10


def test_generation_limit_and_429_creates_nothing(make_sandbox):
    sb = make_sandbox(speed=6)
    api = Api(sb)
    count, r = _flood(api, "POST", "/models/elevenlabs-tts", {"text": "hi"}, n=20)
    assert count == 10 and r.status_code == 429
    state = sb.state()
    assert sum(state["jobs"].values()) == 10 and state["charged"] == 50
    # categories are separate: status and listing still work
    assert api.get("/organization").status_code == 200 and api.get("/models").status_code == 200


def test_status_category_shared_by_jobs_and_organization(make_sandbox):
    sb = make_sandbox(speed=6)
    api = Api(sb)
    for _ in range(50):
        assert api.get("/organization").status_code == 200
    for _ in range(50):
        assert api.get("/jobs/job_nope").status_code == 404
    assert api.delete("/jobs/job_nope").status_code == 429


def test_rate_limit_window_slides(make_sandbox):
    sb = make_sandbox(speed=30)  # 2 s windows
    api = Api(sb)
    count, r = _flood(api, "GET", "/models")
    retry = int(r.headers["Retry-After"])
    assert count == 50 and 1 <= retry <= 2
    time.sleep(retry + 0.05)
    assert api.get("/models").status_code == 200


def test_rate_limits_are_per_key(make_sandbox):
    sb = make_sandbox(speed=6)
    api, other = Api(sb), Api(sb, sb.add_key())
    _flood(api, "GET", "/models")
    assert other.get("/models").status_code == 200


# ----------------------------------------------------------------------------- idempotency

def test_idempotency_key_ignored_by_default(api, sb):
    """Nothing public documents idempotency keys: by default the header means nothing."""
    headers = {"Idempotency-Key": "abc-123"}
    first = api.submit("veo3", {"prompt": "x"}, headers=headers)
    second = api.submit("veo3", {"prompt": "x"}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["jobId"] != second.json()["jobId"]
    for r in (first, second):
        assert "Idempotency-Key" not in r.headers and "Idempotent-Replayed" not in r.headers
    assert sb.state()["charged"] == 350 and sum(sb.state()["jobs"].values()) == 2
    other = api.submit("veo3", {"prompt": "y"}, headers=headers)  # no 409 either
    assert other.status_code == 202 and "Idempotency-Key" not in other.headers
    invalid = api.submit("veo3", {}, headers=headers)
    assert invalid.status_code == 400 and "Idempotency-Key" not in invalid.headers


def test_idempotent_replay(make_sandbox):
    sb = make_sandbox(idempotency=True)
    api = Api(sb)
    headers = {"Idempotency-Key": "abc-123"}
    first = api.submit("veo3", {"prompt": "x"}, headers=headers)
    assert first.status_code == 202 and first.headers["Idempotency-Key"] == "abc-123"
    assert "Idempotent-Replayed" not in first.headers
    second = api.submit("veo3", {"prompt": "x"}, headers=headers)
    assert second.status_code == 202 and second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true" and second.headers["Idempotency-Key"] == "abc-123"
    assert sb.state()["charged"] == 175
    conflict = api.submit("veo3", {"prompt": "y"}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.json() == {"error": "Idempotency-Key reused with a different request"}
    assert conflict.headers["Idempotency-Key"] == "abc-123"
    invalid = api.submit("veo3", {}, headers={"Idempotency-Key": "bad-body"})
    assert invalid.status_code == 400 and invalid.headers["Idempotency-Key"] == "bad-body"
    other_model = api.submit("nano-banana", {"prompt": "x"}, headers=headers)
    assert other_model.status_code == 409
    fresh = api.submit("veo3", {"prompt": "x"}, headers={"Idempotency-Key": "another"})
    assert fresh.json()["jobId"] != first.json()["jobId"]
    assert sb.state()["charged"] == 350


def test_idempotency_key_order_of_fields_is_irrelevant(make_sandbox):
    sb = make_sandbox(idempotency=True)
    api = Api(sb)
    h = {"Idempotency-Key": "k"}
    a = api.submit("veo3", {"prompt": "x", "aspect_ratio": "1:1"}, headers=h)
    b = api.s.post(f"{sb.url}/models/veo3", data='{"aspect_ratio": "1:1", "prompt": "x"}', headers=h, timeout=5)
    assert b.json()["jobId"] == a.json()["jobId"]


# ----------------------------------------------------------------------------- misc

def test_jobs_listing_is_not_in_spec_flavor(api):
    r = api.get("/jobs")
    assert r.status_code == 404 and r.json() == {"error": "Not found"}


def test_unknown_route(api):
    assert api.get("/nothing").json() == {"error": "Not found"}
    assert requests.get(f"{api.sb.root}/elsewhere", timeout=5).status_code == 404


def test_keep_alive_with_content_length(sb):
    port = int(sb.root.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(3):
        conn.request("GET", "/api/v1/models", headers={"Authorization": f"Bearer {sb.api_key}"})
        r = conn.getresponse()
        assert r.status == 200 and int(r.getheader("Content-Length")) > 0 and r.version == 11
        r.read()
    sock = conn.sock
    conn.request("GET", "/api/v1/health")
    conn.getresponse().read()
    assert conn.sock is sock  # the same connection served every request
    conn.close()


def test_requests_session_reuses_connection(api):
    for _ in range(5):
        assert api.get("/organization").status_code == 200
    assert len(api.sb._server._open) == 1  # one socket served them all


def test_state_and_control_endpoints(api, sb):
    api.submit("veo3", {"prompt": "x"})
    state = requests.get(f"{sb.root}/_sandbox/state", timeout=5).json()
    assert state["charged"] == 175 and state["initialCredits"] == 10_000
    assert state["ledger"][0]["kind"] == "charge" and state["ledger"][0]["amount"] == 175
    assert_invariant(state)
    r = requests.post(f"{sb.root}/_sandbox/faults", json={"faults": "503=1"}, timeout=5)
    assert r.status_code == 200
    assert api.get("/organization").status_code == 503
    r = requests.post(f"{sb.root}/_sandbox/faults", json={"faults": "bogus=1"}, timeout=5)
    assert r.status_code == 400 and "bogus" in r.json()["error"]
    requests.post(f"{sb.root}/_sandbox/faults", json={"faults": None}, timeout=5)
    assert api.get("/organization").status_code == 200


def test_stop_is_idempotent_and_frees_everything(make_sandbox):
    sb = make_sandbox()
    media_dir = sb.store.dir
    assert media_dir.exists()
    sb.stop()
    sb.stop()
    assert not media_dir.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sb.url}/health", timeout=2)


def test_context_manager():
    from vydra_nb import sandbox
    with sandbox.start(speed=10) as sb:
        assert requests.get(f"{sb.url}/health", timeout=5).ok
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sb.url}/health", timeout=2)


def test_sandbox_imports_nothing_from_the_client():
    import ast
    import pathlib
    pkg = pathlib.Path(__import__("vydra_nb.sandbox", fromlist=["x"]).__file__).parent
    for path in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name} imports from outside the sandbox"
                assert node.level == 1 or not (node.module or "").startswith("vydra_nb"), path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("vydra_nb") for a in node.names), path.name


# ----------------------------------------------------------------------------- real media

@pytest.fixture
def media():
    return pytest.importorskip("vydra_nb.sandbox.media")


@pytest.fixture
def fast(make_sandbox):
    return Api(make_sandbox(speed=400))


def _done(api, slug, body):
    r = api.submit(slug, body)
    assert r.status_code == 202, r.text
    view = api.wait(r.json()["jobId"])
    assert view["status"] == "completed", view
    return view["output"]


def test_video_is_served_decodable_and_seekable(fast, media, tmp_path):
    av = pytest.importorskip("av")
    out = _done(fast, "veo3", {"prompt": "A serene lake at sunset", "aspect_ratio": "9:16"})
    r = requests.get(out["videoUrl"], timeout=30)  # no auth needed
    assert r.status_code == 200 and r.headers["Content-Type"] == "video/mp4"
    assert int(r.headers["Content-Length"]) == len(r.content) > 1000 and r.headers["Accept-Ranges"] == "bytes"
    path = tmp_path / "v.mp4"
    path.write_bytes(r.content)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (360, 640)
        assert stream.codec_context.name == "h264"
        frames = sum(1 for _ in container.decode(stream))
        assert frames > 0
        assert abs(container.duration / 1e6 - 8) < 0.5
    part = requests.get(out["videoUrl"], headers={"Range": "bytes=10-109"}, timeout=10)
    assert part.status_code == 206 and part.content == r.content[10:110]
    assert part.headers["Content-Range"] == f"bytes 10-109/{len(r.content)}"
    tail = requests.get(out["videoUrl"], headers={"Range": "bytes=-16"}, timeout=10)
    assert tail.status_code == 206 and tail.content == r.content[-16:]
    open_end = requests.get(out["videoUrl"], headers={"Range": f"bytes={len(r.content) - 5}-"}, timeout=10)
    assert open_end.content == r.content[-5:]
    bad = requests.get(out["videoUrl"], headers={"Range": f"bytes={len(r.content) + 10}-"}, timeout=10)
    assert bad.status_code == 416
    head = requests.head(out["videoUrl"], timeout=10)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(r.content)


def test_image_png(fast, media):
    out = _done(fast, "nano-banana", {"prompt": "a banana", "aspect_ratio": "9:16"})
    r = requests.get(out["imageUrl"], timeout=30)
    assert r.headers["Content-Type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out["width"], out["height"]) == (576, 1024)
    assert media.probe  # the renderer's probe agrees
    import io

    from PIL import Image
    assert Image.open(io.BytesIO(r.content)).size == (576, 1024)


def test_speech_then_whisper_round_trip(fast, media, make_sandbox):
    speech = _done(fast, "elevenlabs-tts", {"text": "The quick brown fox jumps over the lazy dog"})
    r = requests.get(speech["audioUrl"], timeout=30)
    assert r.headers["Content-Type"] == "audio/wav" and r.content[:4] == b"RIFF"
    assert speech["duration"] > 0
    sub = fast.submit("whisper", {"audio_url": speech["audioUrl"]})
    assert sub.json()["creditsCharged"] == 3  # a few seconds of audio: one started minute
    view = fast.wait(sub.json()["jobId"])
    assert view["output"]["text"] == "The quick brown fox jumps over the lazy dog"
    assert abs(view["output"]["duration"] - speech["duration"]) < 0.05
    transcript = requests.get(view["output"]["transcriptUrl"], timeout=10)
    assert transcript.headers["Content-Type"].startswith("text/plain")
    assert "quick brown fox" in transcript.text
    converted = _done(fast, "elevenlabs-sts", {"audio_url": speech["audioUrl"], "voice": "adam"})
    assert requests.get(converted["audioUrl"], timeout=30).content[:4] == b"RIFF"


def test_utilities_really_operate_on_sandbox_media(fast, media, tmp_path):
    av = pytest.importorskip("av")
    a = _done(fast, "veo3", {"prompt": "first"})
    b = _done(fast, "veo3", {"prompt": "second"})
    trimmed = _done(fast, "video-trim", {"video_url": a["videoUrl"], "start": 1, "end": 3})
    assert trimmed["duration"] == 2 and trimmed["resolution"] == "640x360"
    composed = _done(fast, "video-compose", {"video_urls": [a["videoUrl"], b["videoUrl"]]})
    assert composed["duration"] == 16
    for out, seconds in ((trimmed, 2), (composed, 16)):
        path = tmp_path / "x.mp4"
        path.write_bytes(requests.get(out["videoUrl"], timeout=60).content)
        with av.open(str(path)) as container:
            assert abs(container.duration / 1e6 - seconds) < 0.6
    frame = _done(fast, "video-extract", {"video_url": a["videoUrl"], "what": "frame", "at": 2})
    assert (frame["width"], frame["height"]) == (640, 360)
    assert requests.get(frame["imageUrl"], timeout=30).content[:4] == b"\x89PNG"
    audio = _done(fast, "video-extract", {"video_url": a["videoUrl"], "what": "audio"})
    assert requests.get(audio["audioUrl"], timeout=30).content[:4] == b"RIFF"
    late = fast.submit("video-trim", {"video_url": a["videoUrl"], "start": 9, "end": 12})
    assert late.status_code == 400 and late.json()["error"].startswith("Invalid value for start: 9")


def test_media_for_foreign_urls_is_synthetic(fast, media):
    out = _done(fast, "video-trim", {"video_url": "https://example.com/x.mp4", "start": 0, "end": 2})
    assert out["duration"] == 2
    assert requests.get(out["videoUrl"], timeout=30).headers["Content-Type"] == "video/mp4"


def test_media_cache_is_bounded_and_rerenders(make_sandbox, media):
    sb = make_sandbox(speed=400, media_limit_mb=0.001)
    api = Api(sb)
    first = _done(api, "nano-banana", {"prompt": "one"})["imageUrl"]
    second = _done(api, "nano-banana", {"prompt": "two"})["imageUrl"]
    one = requests.get(first, timeout=30).content
    requests.get(second, timeout=30)
    assert [p.name for p in sb.store.dir.iterdir()] == [second.rsplit("/", 1)[1]]
    assert requests.get(first, timeout=30).content == one  # evicted, rendered again, same bytes


def test_unknown_media_404(sb):
    r = requests.get(f"{sb.root}/media/job_nope.mp4", timeout=5)
    assert r.status_code == 404 and r.json() == {"error": "Not found"}


# ----------------------------------------------------------------------------- command line

def test_main_prints_exports_and_stops_on_sigterm():
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "vydra_nb.sandbox", "--speed", "50", "--credits", "500",
                             "--key", "vydra_sandbox_test", "--flavor", "live"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first, second = proc.stdout.readline().strip(), proc.stdout.readline().strip()
        assert re.fullmatch(r"export VYDRA_BASE_URL=http://127\.0\.0\.1:\d+/api/v1", first), first
        assert second == "export VYDRA_API_KEY=vydra_sandbox_test"
        url = first.split("=", 1)[1]
        r = requests.get(f"{url}/organization", headers={"Authorization": "Bearer vydra_sandbox_test"}, timeout=5)
        assert r.json()["creditsRemaining"] == 500 and "X-RateLimit-Limit" in r.headers
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_main_rejects_bad_faults(capsys):
    from vydra_nb.sandbox.__main__ import main
    assert main(["--faults", "nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_without_the_renderer_everything_but_media_bytes_works(api, monkeypatch):
    from vydra_nb.sandbox import assets

    def unavailable():
        raise assets.MediaUnavailable("media rendering unavailable: test")

    monkeypatch.setattr(assets, "_media", unavailable)
    out = api.wait(api.submit("elevenlabs-tts", {"text": "one two three four five"}).json()["jobId"])["output"]
    assert out["duration"] == 2  # estimated from the text
    r = requests.get(out["audioUrl"], timeout=5)
    assert r.status_code == 503 and "unavailable" in r.json()["error"]
