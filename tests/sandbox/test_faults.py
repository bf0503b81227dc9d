"""Fault injection: each kind with probability 1, the spec parser, scope, and seeded determinism."""
from __future__ import annotations

import time

import pytest
import requests

from vydra_nb.sandbox.faults import FaultInjector, FaultSpec

from .conftest import Api, assert_invariant

TTS = {"text": "hi"}


@pytest.mark.parametrize("spec,needle", [
    ("500", "kind=probability"),
    ("boom=0.5", "boom"),
    ("500=2", "[0, 1]"),
    ("500=x", "number"),
    ("seed=abc", "seed"),
    ("slow_s=-1", "slow_s"),
])
def test_bad_spec_raises_clear_value_error(spec, needle):
    with pytest.raises(ValueError, match=None) as info:
        FaultSpec.parse(spec)
    assert needle in str(info.value)


def test_bad_spec_rejected_by_start_and_set_faults(make_sandbox):
    with pytest.raises(ValueError):
        make_sandbox(faults="nope=1")
    sb = make_sandbox()
    with pytest.raises(ValueError):
        sb.set_faults("500=1.5")


def test_spec_parsing():
    spec = FaultSpec.parse(" 500=0.2, 503=0.1,slow=0.5,slow_s=2.5,jobfail=1,seed=9 ")
    assert spec.probabilities == {"500": 0.2, "503": 0.1, "slow": 0.5, "jobfail": 1.0}
    assert spec.slow_s == 2.5 and spec.seed == 9 and bool(spec)
    assert not FaultSpec.parse(None) and not FaultSpec.parse("")


def test_500_and_503_before_processing(make_sandbox):
    for kind in ("500", "503"):
        sb = make_sandbox(faults=f"{kind}=1")
        r = Api(sb).post("/models/elevenlabs-tts", TTS)
        assert r.status_code == int(kind) and "error" in r.json()
        assert sb.state()["charged"] == 0 and sb.state()["jobs"] == {}


def test_drop_before_processing(make_sandbox):
    sb = make_sandbox(faults="drop=1")
    with pytest.raises(requests.ConnectionError):
        Api(sb).post("/models/elevenlabs-tts", TTS)
    assert sb.state()["charged"] == 0


def test_500after_processes_then_loses_the_response(make_sandbox):
    sb = make_sandbox(faults="500after=1")
    r = Api(sb).post("/models/elevenlabs-tts", TTS)
    assert r.status_code == 500
    state = sb.state()
    assert state["charged"] == 5 and sum(state["jobs"].values()) == 1


def test_dropafter_processes_then_closes(make_sandbox):
    sb = make_sandbox(faults="dropafter=1")
    with pytest.raises(requests.ConnectionError):
        Api(sb).post("/models/elevenlabs-tts", TTS)
    assert sb.state()["charged"] == 5


def test_500after_with_idempotency_key_retry_is_safe(make_sandbox):
    sb = make_sandbox(faults="500after=1", idempotency=True)  # replay is an option, off by default
    api = Api(sb)
    h = {"Idempotency-Key": "retry-1"}
    assert api.post("/models/elevenlabs-tts", TTS, headers=h).status_code == 500
    sb.set_faults(None)
    r = api.post("/models/elevenlabs-tts", TTS, headers=h)
    assert r.status_code == 202 and r.headers["Idempotent-Replayed"] == "true"
    assert sb.state()["charged"] == 5


def test_500after_without_idempotency_a_retry_charges_again(make_sandbox):
    sb = make_sandbox(faults="500after=1")
    api = Api(sb)
    h = {"Idempotency-Key": "retry-1"}
    assert api.post("/models/elevenlabs-tts", TTS, headers=h).status_code == 500
    sb.set_faults(None)
    r = api.post("/models/elevenlabs-tts", TTS, headers=h)
    assert r.status_code == 202 and "Idempotent-Replayed" not in r.headers and "Idempotency-Key" not in r.headers
    assert sb.state()["charged"] == 10 and sum(sb.state()["jobs"].values()) == 2


def test_slow(make_sandbox):
    sb = make_sandbox(faults="slow=1,slow_s=0.3")
    api = Api(sb)
    t0 = time.monotonic()
    assert api.get("/organization").status_code == 200
    assert time.monotonic() - t0 >= 0.3


def test_jobfail(make_sandbox):
    sb = make_sandbox(faults="jobfail=1")
    api = Api(sb)
    r = api.post("/models/elevenlabs-tts", TTS)
    assert r.status_code == 202
    sb.set_faults(None)
    view = api.wait(r.json()["jobId"])
    assert view["status"] == "failed" and view["error"]["code"] == "PROVIDER_ERROR"
    assert view["creditsRefunded"] == 5 and view["refundStatus"] == "refunded"
    assert sb.state()["balance"] == 10_000
    assert_invariant(sb.state())


def test_faults_spare_health_media_and_control(make_sandbox):
    sb = make_sandbox(faults="500=1,drop=1")
    assert requests.get(f"{sb.url}/health", timeout=5).status_code == 200
    assert requests.get(f"{sb.root}/_sandbox/state", timeout=5).status_code == 200
    assert requests.get(f"{sb.root}/media/nothing.mp4", timeout=5).status_code == 404
    with pytest.raises(requests.ConnectionError):
        Api(sb).get("/models")


def _statuses(sb, n=30):
    api = Api(sb)
    out = []
    for _ in range(n):
        try:
            out.append(api.get("/organization").status_code)
        except requests.ConnectionError:
            out.append("drop")
            api = Api(sb)
    return out


def test_seeded_faults_are_deterministic(make_sandbox):
    spec = "500=0.3,503=0.2,drop=0.1,seed=42"
    a = _statuses(make_sandbox(faults=spec))
    b = _statuses(make_sandbox(faults=spec))
    assert a == b
    assert {200, 500, 503, "drop"} <= set(a)
    c = _statuses(make_sandbox(faults=spec.replace("42", "43")))
    assert c != a


def test_injector_draws_are_independent_of_spec_shape():
    one = FaultInjector("500=0.5,seed=1")
    two = FaultInjector("500=0.5,slow=0.0,jobfail=0,seed=1")
    assert [one.roll() for _ in range(50)] == [two.roll() for _ in range(50)]


def test_sandbox_seed_seeds_faults(make_sandbox):
    a = _statuses(make_sandbox(faults="500=0.5", seed=5))
    b = _statuses(make_sandbox(faults="500=0.5", seed=5))
    assert a == b


def test_ledger_invariant_under_faults(make_sandbox):
    sb = make_sandbox(faults="500=0.1,500after=0.2,dropafter=0.1,jobfail=0.3,seed=3", speed=200)
    api = Api(sb)
    ids = []
    for i in range(12):
        try:
            r = api.submit("elevenlabs-tts", {"text": f"n{i}"})
            if r.status_code == 202:
                ids.append(r.json()["jobId"])
        except requests.ConnectionError:
            api = Api(sb)
    sb.set_faults(None)
    time.sleep(0.2)
    state = sb.state()
    assert_invariant(state)
    assert state["refunded"] == 5 * state["jobs"].get("failed", 0)
