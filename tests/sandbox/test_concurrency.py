"""Many clients at once: the ledger invariant holds and no job is charged or refunded twice."""
from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from .conftest import Api, assert_invariant

MODELS = [
    ("elevenlabs-tts", {"text": "hello"}, 5),
    ("veo3", {"prompt": "a lake"}, 175),
    ("kling-motion-control", {"image_url": "https://e.com/a.png", "video_url": "https://e.com/b.mp4"}, 350),
    ("grok-imagine", {"prompt": "x", "model": "text-to-video"}, 150),
    ("nano-banana", {"prompt": "boom [fail]"}, 8),
]


def test_many_clients_submitting_and_cancelling(make_sandbox):
    sb = make_sandbox(credits=20_000, speed=150, seed=11)
    keys = [sb.api_key] + [sb.add_key() for _ in range(3)]
    stop_checking = threading.Event()
    snapshots: list[dict] = []

    def checker() -> None:  # reads state while everybody writes
        while not stop_checking.is_set():
            snapshots.append(sb.state())
            stop_checking.wait(0.01)

    def client(n: int) -> Counter:
        rng = random.Random(n)
        api = Api(sb, keys[n % len(keys)])
        seen: Counter = Counter()
        mine: list[str] = []
        for i in range(12):
            slug, body, _ = MODELS[rng.randrange(len(MODELS))]
            headers = {"Idempotency-Key": f"c{n}-{i // 2}"} if rng.random() < 0.3 else {}
            if headers:  # a repeated key always comes with the same request
                slug, body = "elevenlabs-tts", {"text": f"{n}-{i // 2}"}
            r = api.post(f"/models/{slug}", body, headers=headers)
            seen[r.status_code] += 1
            if r.status_code == 202:
                mine.append(r.json()["jobId"])
            if mine and rng.random() < 0.5:
                c = api.delete(f"/jobs/{rng.choice(mine)}")
                seen[f"cancel-{c.status_code}"] += 1
            if mine and rng.random() < 0.5:
                seen[f"get-{api.get(f'/jobs/{rng.choice(mine)}').status_code}"] += 1
        return seen

    watcher = threading.Thread(target=checker)
    watcher.start()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(client, range(32)))
    stop_checking.set()
    watcher.join()

    total = sum(results, Counter())
    assert total[202] > 20, total
    assert total["cancel-200"] > 0
    for snap in snapshots:
        assert_invariant(snap)
    state = sb.state()
    assert_invariant(state)
    # every job in the ledger is charged exactly once and refunded iff failed or cancelled
    charges = Counter(e["job_id"] for e in state["ledger"] if e["kind"] == "charge")
    refunds = Counter(e["job_id"] for e in state["ledger"] if e["kind"] == "refund")
    assert set(charges.values()) == {1} and set(refunds.values()) <= {1}
    assert sum(state["jobs"].values()) == len(charges)
    assert len(refunds) == state["jobs"].get("failed", 0) + state["jobs"].get("cancelled", 0)
    assert requests.get(f"{sb.url}/health", timeout=5).ok


def test_concurrent_cancels_refund_once(make_sandbox):
    sb = make_sandbox(speed=1)
    api = Api(sb)
    job_id = api.post("/models/kling-motion-control",
                      {"image_url": "https://e.com/a.png", "video_url": "https://e.com/b.mp4"}).json()["jobId"]
    barrier = threading.Barrier(12)

    def cancel(_: int) -> dict:
        session = Api(sb)
        barrier.wait()
        return session.delete(f"/jobs/{job_id}").json()

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(cancel, range(12)))
    fresh = [a for a in answers if a["refund"]["alreadyRefunded"] is False]
    assert len(fresh) == 1 and fresh[0]["refund"]["creditsRefunded"] == 350
    state = sb.state()
    assert state["refunded"] == 350 and state["balance"] == 10_000
    assert_invariant(state)


def test_concurrent_idempotent_submissions_charge_once(make_sandbox):
    sb = make_sandbox(speed=1, idempotency=True)
    barrier = threading.Barrier(8)

    def submit(n: int) -> dict:
        api = Api(sb, sb.api_key)
        barrier.wait()
        return api.post("/models/veo3", {"prompt": "same"}, headers={"Idempotency-Key": "one"}).json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(submit, range(8)))
    assert len({a["jobId"] for a in answers}) == 1
    assert sb.state()["charged"] == 175


def test_concurrent_submissions_never_overdraw(make_sandbox):
    sb = make_sandbox(credits=1000, speed=1)
    keys = [sb.api_key] + [sb.add_key() for _ in range(3)]
    barrier = threading.Barrier(20)

    def submit(n: int) -> int:
        api = Api(sb, keys[n % 4])
        barrier.wait()
        return api.post("/models/veo3", {"prompt": f"p{n}"}).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = Counter(pool.map(submit, range(20)))
    assert codes[202] == 5 and codes[402] == 15  # 5 * 175 = 875 <= 1000 < 6 * 175
    state = sb.state()
    assert state["balance"] == 125
    assert_invariant(state)
