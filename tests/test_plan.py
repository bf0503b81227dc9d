"""The plan's limits from ``GET /account/rate-limits``: a concurrency cap kept on our side."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import vydra_nb
from vydra_nb import sandbox as sandbox_mod
from vydra_nb.analysis.sweeps import sweep
from vydra_nb.api.plan import PlanLimits
from vydra_nb.tracking.tracker import Tracker

from .conftest import make_client


@pytest.fixture
def free_plan() -> Iterator[sandbox_mod.Sandbox]:
    """The free plan: 10 generations a minute, 100 an hour, 2 jobs at once."""
    with sandbox_mod.start(credits=100_000, speed=100, plan="free", seed=3) as box:
        yield box


def test_plan_limits_are_read_once(free_plan: sandbox_mod.Sandbox) -> None:
    client = make_client(free_plan)
    before = client.requests_sent
    plan = client.plan_limits()
    assert plan == PlanLimits(rpm=10, rph=100, rpd=500, concurrent=2, plan="free")
    assert client.plan_limits() is plan and client.requests_sent == before + 1
    assert client.gate.cap == 2


def test_a_server_that_does_not_say_means_no_cap() -> None:
    from .rawserver import Reply, raw_server

    with raw_server(lambda req: Reply(404, {"error": "Not found"})) as server:
        client = vydra_nb.Client(api_key="k_test", base_url=server.url, history=False)
        assert client.plan_limits() is None and client.gate.cap is None


def test_plan_limits_parse_tolerantly() -> None:
    assert PlanLimits.from_api({"limits": {"rpm": "30", "concurrent": 5}}) == PlanLimits(rpm=30, concurrent=5)
    assert PlanLimits.from_api({"rpm": 60, "rph": 1500, "rpd": 20000, "concurrent": 10, "plan": "creator"}).concurrent == 10
    assert PlanLimits.from_api({"limits": {"rpm": -1, "concurrent": "x"}}) is None
    assert PlanLimits.from_api(["not", "an", "object"]) is None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_sweep_of_30_on_two_slots_never_runs_three_and_gets_no_429(free_plan: sandbox_mod.Sandbox) -> None:
    client = make_client(free_plan)
    tracker = Tracker()
    most = 0
    stop = threading.Event()

    def watch() -> None:  # what the server itself counts as running, sampled all along
        nonlocal most
        while not stop.is_set():
            jobs = free_plan.state()["jobs"]
            most = max(most, jobs.get("pending", 0) + jobs.get("running", 0))
            stop.wait(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        result = sweep("elevenlabs-tts", [f"line {i}" for i in range(30)], client=client, show=False,
                       background=False, tracker=tracker)
        result.wait(120)
    finally:
        stop.set()
        watcher.join(5)
        tracker.stop()
    assert len(result.jobs) == 30 and all(j.done for j in result.jobs)
    assert client.rate_limited == 0
    assert most <= 2, most
    assert client.gate.waits >= 1  # it did have to queue
    print(f"\n30 jobs on 2 slots: {time.monotonic() - started:.1f} s, most running at once {most}")


def test_slugs_with_a_slash_work_end_to_end(tmp_path: object) -> None:
    """The live service routes some models under a slash (``/models/elevenlabs/tts``)."""
    from vydra_nb.session import current as current_session

    with sandbox_mod.start(speed=100, flavor="live") as box:
        client = make_client(box)
        assert "elevenlabs/tts" in {m.slug for m in client.models()}
        job = client.generate("elevenlabs/tts", text="a slash in the slug")
        assert job.model == "elevenlabs/tts" and job.wait(30).status == "completed"
        assert current_session().history().get(job.id)["model"] == "elevenlabs/tts"
        for bad in ("../organization", "a//b", "x/.", " veo3"):
            with pytest.raises(vydra_nb.ValidationError):
                client.generate(bad, {"text": "x"}, validate=False)
