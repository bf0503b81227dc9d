"""Fixtures for the browser test: a throwaway JupyterLab server and a headless Chromium.

JupyterLab runs as its own process group on 127.0.0.1 (no token, a temporary root folder, a
temporary VYDRA_NB_HOME and no VYDRA_API_KEY, so a notebook can only reach the sandbox). Chromium is
Debian's (``/usr/bin/chromium``), launched by Playwright through its executable path because
Playwright's own browser download is not available here. Both are torn down even when a test
fails: the server gets SIGTERM (it shuts its kernels down), then whatever it started and is still
alive gets SIGKILL, by process id.

Screenshots and the server log go to ``test-artifacts/browser/`` under the repository root.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Measured to work here (shared/platform-notes.md).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
SERVER_START_TIMEOUT = 90.0


def _require_browser() -> None:
    """Skip (with the reason) when the browser stack is not installed, on a developer's machine.

    In CI (``CI=true``) a missing browser is a failure, not a skip: a suite that passes without its
    browser test proves nothing about what a user sees.
    """
    def missing(reason: str) -> None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the browser test cannot run in CI: {reason}")
        pytest.skip(reason)

    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        missing(f"playwright (Python) is not installed: {exc}")
    try:
        import jupyterlab  # noqa: F401
    except ImportError as exc:
        missing(f"jupyterlab is not installed: {exc}")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/browser/``, emptied of an earlier run's files (a stale FAILED-*.png misleads)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.time() - 5  # parallel workers start together; keep what they just wrote
    for old in ARTIFACTS.iterdir():
        try:
            if old.is_file() and old.stat().st_mtime < started:
                old.unlink()
        except OSError:
            pass
    return ARTIFACTS


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str  # http://127.0.0.1:PORT
    root: Path  # the server's root folder: notebooks written here are visible at /lab/tree/NAME
    home: Path  # VYDRA_NB_HOME of every kernel
    proc: subprocess.Popen[bytes]
    log: Path

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text("utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


def _descendants(pid: int) -> list[int]:
    """Every process started (directly or not) by ``pid``: kernels run in their own sessions."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    started = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server shuts down its kernels on SIGTERM
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    for pid in started:  # kernels that outlived the server (they have their own process group)
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[Lab]:
    """A JupyterLab server on a free loopback port, with a temporary root folder."""
    _require_browser()
    base = tmp_path_factory.mktemp("lab")
    root, home, jdir = base / "root", base / "vydra-home", base / "jupyter"
    for d in (root, home, jdir):
        d.mkdir()
    # Do not ask "Would you like to get notified about official Jupyter news?": its toast covers
    # the lower right corner of every screenshot.
    settings = jdir / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}), "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VYDRA_")}
    env.update(
        VYDRA_NB_HOME=str(home),
        # Keep the developer's own Jupyter config, settings, workspaces and kernels out of it; the
        # ipykernel of this interpreter is the native "python3" kernel.
        JUPYTER_CONFIG_DIR=str(jdir / "config"),
        JUPYTER_DATA_DIR=str(jdir / "data"),
        JUPYTER_RUNTIME_DIR=str(jdir / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(jdir / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(jdir / "lab-workspaces"),
        PYTHONUNBUFFERED="1",
    )
    port = _free_port()
    cmd = [
        sys.executable, "-m", "jupyterlab",
        f"--port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
        "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
        "--no-browser", "--ip=127.0.0.1", "--allow-root",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = artifacts / f"jupyterlab-{os.getpid()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    server = Lab(url=url, root=root, home=home, proc=proc, log=log)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as resp:
                    json.load(resp)
                break
            except (urllib.error.URLError, OSError, ValueError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {SERVER_START_TIMEOUT:.0f} s:\n{server.log_tail()}")
                time.sleep(0.3)
        yield server
    finally:
        _stop_server(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright's sync API."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


@pytest.fixture
def page(browser: object, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser context and page; on failure, a last screenshot is written."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100})  # type: ignore[attr-defined]
    context.set_default_timeout(30_000)
    pg = context.new_page()
    console: list[str] = []
    pg.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    pg.console_lines = console  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            try:
                pg.screenshot(path=str(artifacts / f"FAILED-{request.node.name}.png"), full_page=True)
            except Exception:
                pass
            (artifacts / f"FAILED-{request.node.name}-console.txt").write_text("\n".join(console), "utf-8")
        context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
