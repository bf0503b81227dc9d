"""Fixtures for the sandbox tests: sandboxes on free ports and authenticated ``requests`` sessions.

Only plain ``requests`` is used here, never the client side of vydra_nb: these tests check the
sandbox against the reference, not against our own reading of it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from vydra_nb import sandbox


class Api:
    """A tiny authenticated helper around one sandbox."""

    def __init__(self, sb: sandbox.Sandbox, key: str | None = None) -> None:
        self.sb = sb
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {key or sb.api_key}"

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.s.get(self.sb.url + path, timeout=10, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.s.post(self.sb.url + path, json=body, timeout=10, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.s.delete(self.sb.url + path, timeout=10, **kw)

    def submit(self, slug: str, body: dict[str, Any], **kw: Any) -> requests.Response:
        """POST, waiting out short rate-limit windows (fast sandboxes have sub-second windows)."""
        for _ in range(100):
            r = self.post(f"/models/{slug}", body, **kw)
            if r.status_code != 429:
                return r
            time.sleep(0.05)
        raise AssertionError("still rate limited")

    def job(self, job_id: str) -> dict[str, Any]:
        for _ in range(100):
            r = self.get(f"/jobs/{job_id}")
            if r.status_code != 429:
                assert r.status_code == 200, r.text
                return r.json()
            time.sleep(0.05)
        raise AssertionError("still rate limited")

    def wait(self, job_id: str, statuses: tuple[str, ...] = ("completed", "failed", "cancelled"),
             timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self.job(job_id)
            if view["status"] in statuses:
                return view
            time.sleep(0.03)
        raise AssertionError(f"job {job_id} never reached {statuses}: {view}")


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., sandbox.Sandbox]]:
    started: list[sandbox.Sandbox] = []

    def make(**kw: Any) -> sandbox.Sandbox:
        kw.setdefault("speed", 100)
        kw.setdefault("seed", 1)
        sb = sandbox.start(**kw)
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


@pytest.fixture
def sb(make_sandbox) -> sandbox.Sandbox:
    return make_sandbox()


@pytest.fixture
def api(sb) -> Api:
    return Api(sb)


def assert_invariant(state: dict[str, Any]) -> None:
    """balance == initial - charged + refunded; one charge and at most one refund per job."""
    assert state["balance"] == state["initialCredits"] - state["charged"] + state["refunded"]
    charges = [e for e in state["ledger"] if e["kind"] == "charge"]
    refunds = [e for e in state["ledger"] if e["kind"] == "refund"]
    assert len({e["job_id"] for e in charges}) == len(charges), "a job was charged twice"
    assert len({e["job_id"] for e in refunds}) == len(refunds), "a job was refunded twice"
    assert sum(e["amount"] for e in charges) == state["charged"]
    assert sum(e["amount"] for e in refunds) == state["refunded"]
    assert {e["job_id"] for e in refunds} <= {e["job_id"] for e in charges}
    assert state["balance"] >= 0
