"""Shared fixtures: a real sandbox over real HTTP, and clients pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import vydra_nb
from vydra_nb import sandbox as sandbox_mod
from vydra_nb.session import current as current_session

SPEED = 100.0  # a 90 s Veo job takes about a second; rate windows shrink to 0.6 s


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets its own data folder and no ambient key or base URL."""
    monkeypatch.setenv("VYDRA_NB_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("VYDRA_API_KEY", raising=False)
    monkeypatch.delenv("VYDRA_BASE_URL", raising=False)
    yield
    # Jobs a test left running must not be polled, or recorded, into the next test's history.
    current_session().tracker.stop()


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[sandbox_mod.Sandbox]:
    """One sandbox for tests that do not care about the balance (plenty of credits)."""
    with sandbox_mod.start(credits=10_000_000, speed=SPEED, seed=7) as sb:
        yield sb


@pytest.fixture
def sb() -> Iterator[sandbox_mod.Sandbox]:
    """A fresh sandbox: its ledger starts at 10,000 credits."""
    with sandbox_mod.start(credits=10_000, speed=SPEED, seed=11) as box:
        yield box


def make_client(box: sandbox_mod.Sandbox, **kwargs: object) -> vydra_nb.Client:
    return vydra_nb.Client(api_key=box.api_key, base_url=box.url, time_scale=1 / box.speed, **kwargs)


@pytest.fixture
def client(sb: sandbox_mod.Sandbox) -> Iterator[vydra_nb.Client]:
    c = make_client(sb)
    yield c
    c.close()


@pytest.fixture
def shared_client(shared_sandbox: sandbox_mod.Sandbox) -> Iterator[vydra_nb.Client]:
    c = make_client(shared_sandbox)
    yield c
    c.close()


def end_vydra_session(shell: object = None) -> None:
    """Stop the session's sandbox, tracking, key and client, so the next test starts clean."""
    current_session().reset()


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    """A real IPython shell with the extension loaded and a fast sandbox as the session's backend
    (modules that need another shell define their own ``ip``)."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "vydra_nb")
    shell.run_line_magic("config", "VydraMagics.resume_on_load = False")
    shell.run_line_magic("vydra", "sandbox --speed 100 --credits 5000")
    yield shell
    end_vydra_session(shell)


def magics_of(shell: InteractiveShell) -> Any:
    return shell.magics_manager.registry["VydraMagics"]
