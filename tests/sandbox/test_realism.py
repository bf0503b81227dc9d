"""Issue 15: the sandbox is never easier than the real service.

Over plain HTTP: progress modes (the default reports none for kie.ai models), per-job durations,
idempotency keys ignored unless asked for, plan limits with a concurrency cap, ``/account/rate-limits``,
``POST /upload``, and the live service's shapes (``workflowSlug``, ``statusMessage``, slugs with a
slash). Timing is read from the sandbox's own clock (``/_sandbox/jobs/{id}`` answers a job's status,
progress and running fraction at one instant), so no assertion races a timer.
"""
from __future__ import annotations

import io
import math
import struct
import time
import zlib
from typing import Any

import pytest
import requests

from vydra_nb.sandbox.ratelimit import PLANS, RateLimiter

from .conftest import Api, assert_invariant

KLING = {"image_url": "https://example.com/a.png", "video_url": "https://example.com/b.mp4"}


def timeline(sb, job_id: str) -> dict[str, Any]:
    r = requests.get(f"{sb.root}/_sandbox/jobs/{job_id}", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def sample(sb, job_ids: list[str], timeout: float = 20) -> dict[str, list[dict[str, Any]]]:
    """Each job's clock, read over and over until every job has ended."""
    seen: dict[str, list[dict[str, Any]]] = {j: [] for j in job_ids}
    deadline = time.monotonic() + timeout
    pending = set(job_ids)
    while pending:
        assert time.monotonic() < deadline, "jobs never ended"
        for job_id in list(pending):
            t = timeline(sb, job_id)
            seen[job_id].append(t)
            if t["status"] in ("completed", "failed", "cancelled"):
                pending.discard(job_id)
        time.sleep(0.005)
    return seen


def views_until_done(api: Api, job_id: str, timeout: float = 20) -> list[dict[str, Any]]:
    """Every public view of a job until it ends (waiting on the job, not on a timer)."""
    views = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = api.job(job_id)
        views.append(view)
        if view["status"] in ("completed", "failed", "cancelled"):
            return views
        time.sleep(0.01)
    raise AssertionError(f"{job_id} never ended")


def submit_ids(api: Api, slug: str, body: dict[str, Any], n: int) -> list[str]:
    ids = []
    for _ in range(n):
        r = api.submit(slug, body)
        assert r.status_code == 202, r.text
        ids.append(r.json()["jobId"])
    return ids


# ----------------------------------------------------------------------------- progress modes

def test_unknown_progress_mode_rejected(make_sandbox):
    with pytest.raises(ValueError, match="progress"):
        make_sandbox(progress="smooth")
    with pytest.raises(ValueError, match="durations"):
        make_sandbox(durations="fast")


@pytest.mark.parametrize("flavor", ["spec", "live"])
def test_none_reports_no_progress_in_any_state(make_sandbox, flavor):
    sb = make_sandbox(speed=100, progress="none", flavor=flavor)
    api = Api(sb)
    job_id = api.submit("elevenlabs-tts" if flavor == "spec" else "whisper",
                        {"text": "hi"} if flavor == "spec" else {"audio_url": "https://e.com/a.wav"}).json()["jobId"]
    views = views_until_done(api, job_id)
    assert all("progress" not in v for v in views), views
    running = "running" if flavor == "spec" else "processing"
    order = {"pending": 0, running: 1, "completed": 2}
    assert [order[v["status"]] for v in views] == sorted(order[v["status"]] for v in views)
    assert views[-1]["status"] == "completed"


def test_none_still_moves_through_every_state(make_sandbox):
    sb = make_sandbox(speed=20, progress="none")  # veo3: 2.7-8.1 s, queued for 3-15 % of it
    api = Api(sb)
    job_id = api.submit("veo3", {"prompt": "x"}).json()["jobId"]
    first = api.job(job_id)
    assert first["status"] == "pending" and "progress" not in first
    running = api.wait(job_id, statuses=("running",))
    assert "progress" not in running and "startedAt" in running
    api.delete(f"/jobs/{job_id}")
    cancelled = api.job(job_id)
    assert cancelled["status"] == "cancelled" and "progress" not in cancelled


def test_provider_default_no_percentage_for_kie_ai_coarse_for_others(make_sandbox):
    sb = make_sandbox(speed=100)  # progress="provider" is the default
    api = Api(sb)
    kie = submit_ids(api, "kling-motion-control", KLING, 1) + submit_ids(api, "veo3", {"prompt": "x"}, 1)
    other = submit_ids(api, "grok-imagine", {"prompt": "x", "model": "text-to-video"}, 2)
    for job_id in kie:
        assert all("progress" not in v for v in views_until_done(api, job_id))
    for job_id in other:
        views = views_until_done(api, job_id)
        assert all(isinstance(v["progress"], int) for v in views)
        assert views[-1]["progress"] == 100
    models = {m["slug"]: m["provider"] for m in api.get("/models").json()["data"]}
    assert {models["veo3"], models["kling-motion-control"]} == {"kie-ai"}


def test_linear_follows_the_clock(make_sandbox):
    sb = make_sandbox(speed=100, progress="linear")
    ids = submit_ids(Api(sb), "veo3", {"prompt": "x"}, 3)
    for job_id, samples in sample(sb, ids).items():
        running = [s for s in samples if s["status"] == "running"]
        assert len(running) > 5, job_id
        for s in running:
            assert abs(s["progress"] - min(99, int(s["runningFraction"] * 100))) <= 1, s
        assert len({s["progress"] for s in running}) > 5
        assert samples[-1]["progress"] == 100


def test_coarse_holds_then_jumps(make_sandbox):
    sb = make_sandbox(speed=60, progress="coarse", plan="enterprise")
    ids = submit_ids(Api(sb), "veo3", {"prompt": "x"}, 6)  # 0.9-2.7 s each
    for job_id, samples in sample(sb, ids).items():
        values = [s["progress"] for s in samples if s["status"] == "running"]
        assert values == sorted(values), job_id
        distinct = sorted(set(values))
        assert len(distinct) <= 10, distinct
        assert all(b - a >= 9 for a, b in zip(distinct, distinct[1:], strict=False)), distinct
        assert len(values) > 3 * len(distinct)  # each value is held a while
        assert all(v < 100 for v in values) and samples[-1]["progress"] == 100


def test_erratic_is_monotonic_but_irregular(make_sandbox):
    sb = make_sandbox(speed=60, progress="erratic", plan="enterprise")
    ids = submit_ids(Api(sb), "veo3", {"prompt": "x"}, 8)
    worst = 0.0
    early_bursts = stalls_near_the_end = 0
    for samples in sample(sb, ids).values():
        running = [s for s in samples if s["status"] == "running"]
        values = [s["progress"] for s in running]
        assert values == sorted(values) and all(0 <= v <= 99 for v in values)
        worst = max([worst] + [abs(s["progress"] - 100 * s["runningFraction"]) for s in running])
        early_bursts += any(s["progress"] >= 70 and s["runningFraction"] <= 0.45 for s in running)
        stalls_near_the_end += any(s["progress"] >= 90 and s["runningFraction"] <= 0.75 for s in running)
    assert worst >= 25  # far from the clock at some point: a client cannot extrapolate
    assert early_bursts + stalls_near_the_end >= 2


def test_erratic_public_views_are_monotonic(make_sandbox):
    sb = make_sandbox(speed=100, progress="erratic")
    api = Api(sb)
    job_id = api.submit("grok-imagine", {"prompt": "x", "model": "text-to-video"}).json()["jobId"]
    progress = [v["progress"] for v in views_until_done(api, job_id)]
    assert progress == sorted(progress) and progress[-1] == 100


def test_progress_shape_is_deterministic_per_seed(make_sandbox):
    def shapes(seed: int) -> list[tuple[float, ...]]:
        sb = make_sandbox(speed=1, progress="coarse", seed=seed)
        ids = submit_ids(Api(sb), "grok-imagine", {"prompt": "x", "model": "text-to-video"}, 3)
        return [tuple(sb.jobs.get(i).curve.knots) for i in ids]

    assert shapes(3) == shapes(3)
    assert shapes(3) != shapes(4)


# ----------------------------------------------------------------------------- status messages

def test_live_views_carry_a_status_message(make_sandbox):
    sb = make_sandbox(speed=20, flavor="live")  # veo3: 2.7-8.1 s, queued for 3-15 % of it
    api = Api(sb)
    kie = api.submit("veo3", {"prompt": "x"}).json()["jobId"]
    first = api.job(kie)
    assert first["status"] == "pending" and first["statusMessage"] in ("waiting", "queuing")
    assert api.wait(kie, statuses=("processing",))["statusMessage"] == "generating"
    api.delete(f"/jobs/{kie}")
    assert api.job(kie)["statusMessage"] == "cancelled"
    fast = Api(make_sandbox(speed=200, flavor="live"))
    done = fast.wait(fast.submit("veo3", {"prompt": "x"}).json()["jobId"])
    assert done["status"] == "completed" and done["statusMessage"] == "success"
    other = fast.submit("grok-imagine", {"prompt": "x", "model": "text-to-video"}).json()["jobId"]
    for v in views_until_done(fast, other):
        assert isinstance(v["statusMessage"], str) and v["statusMessage"]
        assert v["statusMessage"] not in ("waiting", "queuing", "generating", "success")
    failed = fast.wait(fast.submit("elevenlabs-tts", {"text": "[fail]"}).json()["jobId"])
    assert failed["statusMessage"] == "Content moderation failed"


def test_spec_views_have_no_status_message(api):
    view = api.job(api.submit("veo3", {"prompt": "x"}).json()["jobId"])
    assert "statusMessage" not in view and "workflowSlug" not in view


# ----------------------------------------------------------------------------- durations

def _factors(sb, api: Api, n: int) -> list[float]:
    ids = submit_ids(api, "elevenlabs-tts", {"text": "hi"}, n)
    return [timeline(sb, i)["factor"] for i in ids]


def test_durations_spread_per_job_and_skew_long(make_sandbox):
    sb = make_sandbox(speed=1000, plan="enterprise")  # durations="realistic" is the default
    factors = _factors(sb, Api(sb), 40)
    assert all(0.6 <= f <= 1.8 for f in factors), factors
    assert min(factors) < 0.8 and max(factors) > 1.4, factors
    assert sorted(factors)[len(factors) // 2] > 0.95  # skewed long: the median is past the base
    assert len({round(f, 6) for f in factors}) == len(factors)


def test_durations_are_deterministic_and_speed_only_scales_them(make_sandbox):
    a = make_sandbox(speed=1000, seed=9)
    b = make_sandbox(speed=500, seed=9)
    ids_a = submit_ids(Api(a), "elevenlabs-tts", {"text": "hi"}, 5)
    ids_b = submit_ids(Api(b), "elevenlabs-tts", {"text": "hi"}, 5)
    for ja, jb in zip(ids_a, ids_b, strict=True):
        ta, tb = timeline(a, ja), timeline(b, jb)
        assert ta["factor"] == pytest.approx(tb["factor"])
        assert tb["duration"] == pytest.approx(2 * ta["duration"])
        assert ta["duration"] == pytest.approx(5 / 1000 * ta["factor"])


@pytest.mark.parametrize("mode,low,high", [("jitter", 0.9, 1.1), ("exact", 1.0, 1.0)])
def test_old_durations_by_name(make_sandbox, mode, low, high):
    sb = make_sandbox(speed=1000, durations=mode)
    for f in _factors(sb, Api(sb), 10):
        assert low - 1e-9 <= f <= high + 1e-9


def test_a_job_ends_when_its_own_duration_says(make_sandbox):
    sb = make_sandbox(speed=100, progress="none")
    job_id = Api(sb).submit("veo3", {"prompt": "x"}).json()["jobId"]
    samples = sample(sb, [job_id])[job_id]
    for s in samples:
        assert (s["status"] == "completed") == (s["elapsed"] >= s["duration"]), s
        assert (s["status"] == "pending") == (s["elapsed"] < s["pendingS"]), s


# ----------------------------------------------------------------------------- plan limits

def test_unknown_plan_rejected(make_sandbox):
    with pytest.raises(ValueError, match="plan"):
        make_sandbox(plan="gold")


@pytest.mark.parametrize("flavor", ["spec", "live"])
def test_free_plan_third_concurrent_job_is_refused(make_sandbox, flavor):
    sb = make_sandbox(speed=50, plan="free", flavor=flavor)  # veo3: 1.1-3.2 s
    api = Api(sb)
    first, second = submit_ids(api, "veo3", {"prompt": "x"}, 2)
    r = api.post("/models/veo3", {"prompt": "x"})
    assert r.status_code == 429
    retry = int(r.headers["Retry-After"])
    ends = [timeline(sb, j) for j in (first, second)]  # read just after the 429
    remaining = [t["duration"] - t["elapsed"] for t in ends]
    soonest = min(remaining)
    assert max(1, math.ceil(soonest)) <= retry <= max(1, math.ceil(soonest + 0.5))  # rounded up, >= 1
    if flavor == "live":
        assert r.json() == {"error": f"Rate limit exceeded. Try again in {retry} seconds.",
                            "code": "RATE_LIMIT_EXCEEDED", "retryAfter": retry,
                            "limits": {"type": "concurrent", "limit": 2, "used": 2}}
    else:
        assert r.json() == {"error": f"Rate limit exceeded. Try again in {retry} seconds."}
    state = sb.state()
    assert state["charged"] == 350 and sum(state["jobs"].values()) == 2  # nothing created or charged
    # once one of them ends, the next goes through
    ended = first if remaining[0] <= remaining[1] else second
    api.wait(ended)
    r = api.post("/models/veo3", {"prompt": "x"})
    assert r.status_code == 202, r.text
    assert_invariant(sb.state())


def test_cancelling_frees_a_slot_and_keys_share_the_cap(make_sandbox):
    sb = make_sandbox(speed=1, plan="free")
    api, other = Api(sb), Api(sb, sb.add_key())
    job_id = api.submit("veo3", {"prompt": "x"}).json()["jobId"]
    assert other.submit("veo3", {"prompt": "x"}).status_code == 202
    assert api.post("/models/veo3", {"prompt": "x"}).status_code == 429
    assert other.post("/models/veo3", {"prompt": "x"}).status_code == 429  # per organization
    assert api.delete(f"/jobs/{job_id}").status_code == 200
    assert other.post("/models/veo3", {"prompt": "x"}).status_code == 202


def test_concurrency_is_checked_after_validation_and_before_credits(make_sandbox):
    sb = make_sandbox(speed=1, plan="free", credits=400)
    api = Api(sb)
    submit_ids(api, "veo3", {"prompt": "x"}, 2)
    assert api.post("/models/veo3", {}).status_code == 400
    assert api.post("/models/nope", {"prompt": "x"}).status_code == 404
    assert api.post("/models/veo3", {"prompt": "x"}).status_code == 429  # not 402: 50 credits left


def test_synchronous_answers_do_not_hold_a_slot_but_are_refused_at_the_cap(make_sandbox):
    sb = make_sandbox(speed=1, plan="free", flavor="live")
    api = Api(sb)
    assert api.post("/models/nano-banana", {"prompt": "x"}).status_code == 200
    submit_ids(api, "veo3", {"prompt": "x"}, 2)  # the image did not take a slot
    assert api.post("/models/nano-banana", {"prompt": "x"}).status_code == 429


def test_plan_rpm_is_per_organization(make_sandbox):
    sb = make_sandbox(speed=6, plan="free", flavor="live")  # 10 s minute windows
    a, b = Api(sb), Api(sb, sb.add_key())
    for _ in range(6):
        assert a.post("/models/veo3", {}).status_code == 400  # refused requests count too
    for _ in range(4):
        assert b.post("/models/veo3", {}).status_code == 400
    r = b.post("/models/veo3", {})
    assert r.status_code == 429
    assert r.json()["limits"] == {"type": "rpm", "limit": 10, "used": 10}
    assert r.headers["X-RateLimit-Limit"] == "10" and r.headers["X-RateLimit-Remaining"] == "0"


def test_plan_rph_window(make_sandbox):
    sb = make_sandbox(speed=1800, plan="free", flavor="live")  # minute: 33 ms, hour: 2 s
    api = Api(sb)
    accepted = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = api.post("/models/veo3", {})
        if r.status_code == 400:
            accepted += 1
            continue
        assert r.status_code == 429
        kind = r.json()["limits"]["type"]
        if kind == "rph":
            assert r.json()["limits"] == {"type": "rph", "limit": 100, "used": 100}
            assert 1 <= int(r.headers["Retry-After"]) <= 2
            break
        assert kind in ("generation", "rpm")
        time.sleep(0.005)
    else:
        raise AssertionError("the hourly window never refused")
    assert 100 <= accepted


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_plan_windows_unit(plan):
    """The three windows with a fake clock: each refuses at its limit and slides."""
    limits = PLANS[plan]
    clock = FakeClock()
    limiter = RateLimiter(1.0, clock=clock, plan=limits, limits={"generation": 10**9})
    for _ in range(limits.rpm):
        assert limiter.hit("k", "generation", org="o").allowed
    v = limiter.hit("k", "generation", org="o")
    assert not v.allowed and v.category == "rpm" and v.retry_after == 60
    sent = limits.rpm
    while sent < limits.rph:  # fill the hour a minute at a time
        clock.now += 60
        for _ in range(min(limits.rpm, limits.rph - sent)):
            assert limiter.hit("k", "generation", org="o").allowed
            sent += 1
    clock.now += 60
    v = limiter.hit("k", "generation", org="o")
    assert not v.allowed and v.category == "rph"
    assert limiter.usage("o")["rph"] == limits.rph
    other = limiter.hit("k", "status", org="o")
    assert other.allowed  # plan windows concern generation only
    assert limits.rpm <= limits.rph <= limits.rpd and limits.concurrent >= 1
    assert limits.rph / limits.rpm <= 60  # the hourly limit is reachable within an hour


def test_plan_rpd_unit():
    clock = FakeClock()
    limiter = RateLimiter(1.0, clock=clock, plan=PLANS["free"], limits={"generation": 10**9})
    for hour in range(5):
        for minute in range(10):  # 10 a minute, 100 an hour
            clock.now = 1000.0 + hour * 3600 + minute * 60
            for _ in range(10):
                assert limiter.hit("k", "generation", org="o").allowed
    clock.now = 1000.0 + 5 * 3600
    v = limiter.hit("k", "generation", org="o")
    assert not v.allowed and v.category == "rpd" and v.limit == 500
    assert v.retry_after == 86400 - 5 * 3600
    clock.now = 1000.0 + 86400
    assert limiter.hit("k", "generation", org="o").allowed  # the first hour's slid out


@pytest.mark.parametrize("flavor", ["spec", "live"])
def test_account_rate_limits(make_sandbox, flavor):
    sb = make_sandbox(speed=1, plan="free", flavor=flavor)
    api = Api(sb)
    body = api.get("/account/rate-limits").json()
    assert body["limits"] == {"rpm": 10, "rph": 100, "rpd": 500, "concurrent": 2}
    assert body["usage"] == {"rpm": 0, "rph": 0, "rpd": 0, "concurrent": 0}
    api.post("/models/veo3", {"prompt": "x"})
    api.post("/models/veo3", {})
    body = api.get("/account/rate-limits").json()
    assert body["usage"] == {"rpm": 2, "rph": 2, "rpd": 2, "concurrent": 1}
    assert set(body) >= {"limits", "usage"}
    assert api.post("/account/rate-limits").status_code == 405
    assert requests.get(f"{sb.url}/account/rate-limits", timeout=5).status_code == 401


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_every_plan_works(make_sandbox, plan):
    sb = make_sandbox(plan=plan)
    api = Api(sb)
    assert api.get("/organization").json()["plan"] == plan
    assert api.get("/account/rate-limits").json()["limits"] == PLANS[plan].to_json()
    assert api.submit("elevenlabs-tts", {"text": "x"}).status_code == 202


def test_default_plan_is_still_creator(sb):
    assert Api(sb).get("/account/rate-limits").json()["limits"] == {
        "rpm": 60, "rph": 1500, "rpd": 20000, "concurrent": 10}


# ----------------------------------------------------------------------------- idempotency

def test_idempotency_off_two_posts_two_jobs_two_charges(make_sandbox):
    sb = make_sandbox(flavor="live")
    api = Api(sb)
    h = {"Idempotency-Key": "same"}
    a = api.submit("veo3", {"prompt": "x"}, headers=h)
    b = api.submit("veo3", {"prompt": "x"}, headers=h)
    assert a.json()["jobId"] != b.json()["jobId"]
    assert "Idempotency-Key" not in a.headers and "Idempotency-Key" not in b.headers
    assert sb.state()["charged"] == 350


def test_idempotency_on_replays_even_at_the_concurrency_cap(make_sandbox):
    sb = make_sandbox(speed=1, plan="free", idempotency=True)
    api = Api(sb)
    h = {"Idempotency-Key": "one"}
    first = api.submit("veo3", {"prompt": "x"}, headers=h)
    api.submit("veo3", {"prompt": "y"})
    again = api.post("/models/veo3", {"prompt": "x"}, headers=h)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert api.post("/models/veo3", {"prompt": "z"}, headers={"Idempotency-Key": "two"}).status_code == 429


# ----------------------------------------------------------------------------- uploads

def png_bytes(width: int, height: int, padding: int = 0) -> bytes:
    """A real PNG (one grey row repeated), made with the stdlib."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw))
    if padding:
        body += chunk(b"tEXt", b"pad\x00" + b"x" * padding)
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def jpeg_bytes(width: int, height: int) -> bytes:
    """A minimal baseline JPEG header (SOI, APP0, SOF0, EOI): enough for a sniffer to read its size."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def upload(api: Api, data: bytes, name: str = "picture.png", declared: str = "image/png") -> requests.Response:
    return api.s.post(f"{api.sb.url}/upload", files={"file": (name, data, declared)}, timeout=30)


@pytest.fixture
def lapi(make_sandbox) -> Api:
    return Api(make_sandbox(flavor="live"))


@pytest.mark.parametrize("make,kind,ext", [(lambda: png_bytes(40, 20), "image/png", ".png"),
                                           (lambda: jpeg_bytes(640, 480), "image/jpeg", ".jpg")])
def test_upload_good_image_is_served_back_identical(lapi, make, kind, ext):
    data = make()
    r = upload(lapi, data, name="holiday photo.png", declared="application/octet-stream")
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"url", "filename", "size", "type", "key"}
    assert body["type"] == kind and body["size"] == len(data) and body["filename"] == "holiday_photo.png"
    assert body["url"].startswith(f"{lapi.sb.root}/media/") and body["url"].endswith(ext)
    assert body["key"].endswith(body["url"].rsplit("/", 1)[1])
    served = requests.get(body["url"], timeout=10)  # no key needed, like a CDN
    assert served.status_code == 200 and served.content == data and served.headers["Content-Type"] == kind
    part = requests.get(body["url"], headers={"Range": "bytes=0-7"}, timeout=10)
    assert part.status_code == 206 and part.content == data[:8]
    assert lapi.sb.state()["charged"] == 0  # free


def test_upload_webp_and_gif(lapi):
    pil = pytest.importorskip("PIL.Image")
    for fmt, kind in (("WEBP", "image/webp"), ("GIF", "image/gif")):
        buf = io.BytesIO()
        pil.new("RGB", (30, 60), "blue").save(buf, fmt)
        r = upload(lapi, buf.getvalue(), name="x.jpg", declared="image/jpeg")
        assert r.status_code == 201 and r.json()["type"] == kind, r.text
        assert requests.get(r.json()["url"], timeout=10).content == buf.getvalue()


@pytest.mark.parametrize("data", [b"this is not an image at all", b"GIF89", b"\x89PNG\r\n\x1a\n" + b"\x00" * 4,
                                  b"RIFF\x00\x00\x00\x00WAVEfmt ", b""])
def test_upload_sniffs_bytes_not_names(lapi, data):
    r = upload(lapi, data, name="photo.png", declared="image/png")
    assert r.status_code == 400
    assert r.json()["code"] == "INVALID_FILE_TYPE" and "JPEG, PNG, WebP and GIF" in r.json()["error"]


def test_upload_spec_flavor_has_the_endpoint_without_codes(api):
    assert upload(api, png_bytes(4, 4)).status_code == 201
    r = upload(api, b"nope")
    assert r.status_code == 400 and set(r.json()) == {"error"}


def test_upload_too_large(lapi):
    r = upload(lapi, png_bytes(2, 2, padding=21 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["code"] == "FILE_TOO_LARGE"
    assert lapi.sb.state()["charged"] == 0


def test_upload_of_exactly_20_mb_is_accepted(lapi):
    base = png_bytes(2, 2)
    data = png_bytes(2, 2, padding=20 * 1024 * 1024 - len(base) - 12 - 4)
    assert len(data) == 20 * 1024 * 1024
    assert upload(lapi, data).status_code == 201


def test_upload_far_too_large_body_is_refused_without_reading_it_into_memory(lapi):
    r = lapi.s.post(f"{lapi.sb.url}/upload", data=b"\x00" * (40 * 1024 * 1024),
                    headers={"Content-Type": "multipart/form-data; boundary=x"}, timeout=60)
    assert r.status_code == 413 and r.json()["code"] == "FILE_TOO_LARGE"


def test_upload_bad_requests(lapi):
    r = lapi.s.post(f"{lapi.sb.url}/upload", files={"image": ("a.png", png_bytes(2, 2))}, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "Missing required field: file (file)"
    r = lapi.post("/upload", {"file": "data"})
    assert r.status_code == 400 and r.json()["code"] == "INVALID_INPUT"
    assert lapi.get("/upload").status_code == 405
    assert requests.post(f"{lapi.sb.url}/upload", files={"file": ("a.png", png_bytes(2, 2))}, timeout=10).status_code == 401


def test_upload_rate_limited_in_its_own_category(make_sandbox):
    sb = make_sandbox(speed=6, flavor="live")  # 10 s windows
    api = Api(sb)
    for _ in range(20):
        assert upload(api, png_bytes(2, 2)).status_code == 201
    r = upload(api, png_bytes(2, 2))
    assert r.status_code == 429 and r.json()["limits"]["type"] == "upload"
    assert api.get("/organization").status_code == 200  # the status category is untouched
    assert api.get("/account/rate-limits").json()["usage"]["rpm"] == 0  # and the plan's windows


def test_uploaded_image_drives_kling(make_sandbox):
    sb = make_sandbox(speed=200)
    api = Api(sb)
    landscape = upload(api, png_bytes(64, 32)).json()["url"]
    square = upload(api, jpeg_bytes(300, 300)).json()["url"]
    ids = {}
    for name, url in (("landscape", landscape), ("square", square), ("foreign", KLING["image_url"])):
        r = api.submit("kling-motion-control", {"image_url": url, "video_url": KLING["video_url"]})
        assert r.status_code == 202, r.text
        ids[name] = r.json()["jobId"]
    outputs = {}
    for name, job_id in ids.items():
        view = api.wait(job_id)
        assert view["status"] == "completed"
        outputs[name] = view["output"]
    assert outputs["landscape"]["resolution"] == "640x360"  # the character image's orientation
    assert outputs["square"]["resolution"] == "480x480"
    assert outputs["foreign"]["resolution"] == "360x640"  # not ours: the default portrait


def test_veo3_takes_an_optional_uploaded_image(make_sandbox):
    sb = make_sandbox(speed=200, flavor="live")
    api = Api(sb)
    schema = next(m for m in api.get("/models").json()["data"] if m["slug"] == "veo3")["inputSchema"]
    assert schema["properties"]["image_url"]["format"] == "uri" and "image_url" not in schema["required"]
    url = upload(api, png_bytes(16, 9)).json()["url"]
    r = api.submit("veo3", {"prompt": "make it move", "image_url": url})
    assert r.status_code == 202 and r.json()["creditsCharged"] == 175
    assert api.wait(r.json()["jobId"])["status"] == "completed"
    bad = api.submit("veo3", {"prompt": "x", "image_url": "not a url"})
    assert bad.status_code == 400 and bad.json()["details"] == {"field": "image_url"}


def test_uploaded_image_renders_into_a_real_video(make_sandbox):
    pytest.importorskip("vydra_nb.sandbox.media")
    sb = make_sandbox(speed=400)
    api = Api(sb)
    url = upload(api, png_bytes(32, 64), name="hero.png").json()["url"]
    view = api.wait(api.submit("kling-motion-control", {"image_url": url, "video_url": KLING["video_url"]})
                    .json()["jobId"])
    r = requests.get(view["output"]["videoUrl"], timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"] == "video/mp4" and len(r.content) > 1000


# ----------------------------------------------------------------------------- live shapes

def test_jobs_listing_names_the_model_workflow_slug(make_sandbox):
    sb = make_sandbox(speed=100, flavor="live")
    api = Api(sb)
    submit_ids(api, "veo3", {"prompt": "x"}, 1)
    submit_ids(api, "elevenlabs-tts", {"text": "x"}, 1)
    for entry in api.get("/jobs").json()["data"]:
        assert entry["workflowSlug"] == entry["workflow"] in ("veo3", "elevenlabs-tts")
        assert isinstance(entry["statusMessage"], str) and entry["statusMessage"]


def test_slug_with_a_slash_live(make_sandbox):
    sb = make_sandbox(flavor="live")
    api = Api(sb)
    listed = {m["slug"]: m for m in api.get("/models").json()["data"]}
    assert "elevenlabs/tts" in listed and listed["elevenlabs/tts"]["provider"] == "elevenlabs"
    r = api.submit("elevenlabs/tts", {"text": "Hello there"})
    assert r.status_code == 200, r.text  # answered synchronously
    body = r.json()
    assert body["status"] == "completed" and body["creditsCharged"] == 5
    assert body["audioUrl"].startswith(f"{sb.root}/media/") and body["resultUrls"] == [body["audioUrl"]]
    view = api.job(body["jobId"])
    assert view["status"] == "completed" and view["workflow"] == "elevenlabs/tts"
    assert api.submit("elevenlabs/tts", {}).json()["error"] == "Missing required field: text (string)"
    assert api.get("/models/elevenlabs/tts").status_code == 405
    assert sb.state()["charged"] == 5


def test_slug_with_a_slash_is_live_only(api):
    assert "elevenlabs/tts" not in {m["slug"] for m in api.get("/models").json()["data"]}
    r = api.submit("elevenlabs/tts", {"text": "x"})
    assert r.status_code == 404 and r.json() == {"error": "Model not found"}


@pytest.mark.parametrize("flavor", ["spec", "live"])
def test_paths_under_models_that_name_nothing_are_404(make_sandbox, flavor):
    api = Api(make_sandbox(flavor=flavor))
    assert api.post("/models/a/b/c", {"prompt": "x"}).status_code == 404
    assert api.get("/models/a/b/c").status_code == 404
    assert api.post("/models/veo3/extra", {"prompt": "x"}).status_code == 404
    assert api.sb.state()["charged"] == 0


def test_control_route_for_an_unknown_job(sb):
    assert requests.get(f"{sb.root}/_sandbox/jobs/job_nope", timeout=5).status_code == 404
