"""The smoke path in Jupyter Notebook 7 as well as JupyterLab: run all, see progress, see the player.

Notebook 7 is the ``notebook`` package: the same server and the same ipywidgets 8 manager as
JupyterLab 4, its own page at ``/notebooks/NAME.ipynb``. The server of ``test_jupyterlab.py``
serves it too. Run all from the menu, as a person would; the job's bar must move while it runs
(an estimate, labelled so, where the service reports no percentage: veo3 on the default sandbox),
and the finished job must become a ``<video>`` that Chromium decodes.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .test_jupyterlab import JOB_CELL, SETUP, _bar_percent, _shot, _wait_decoded, _write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FREE_CELL = 'print("the kernel is free")'


def _wait_for_idle_kernel(url: str, name: str, timeout: float = 60.0) -> None:
    """Until the server reports this notebook's kernel idle (``/api/sessions``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/sessions", timeout=5) as resp:
                sessions = json.load(resp)
        except (OSError, ValueError):
            sessions = []
        for s in sessions:
            if s.get("path", "").endswith(name) and (s.get("kernel") or {}).get("execution_state") == "idle":
                return
        time.sleep(0.3)
    raise AssertionError(f"the kernel of {name} never became idle")


def test_notebook7_run_all_shows_progress_and_plays(lab: Any, page: Any, artifacts: Path) -> None:
    pytest.importorskip("notebook", reason="Jupyter Notebook 7 (the 'notebook' package) is not installed")
    name = "vydra-notebook7.ipynb"
    _write_notebook(lab.root / name, [SETUP, JOB_CELL, FREE_CELL])
    page.goto(f"{lab.url}/notebooks/{name}", wait_until="domcontentloaded")
    cells = page.locator(".jp-Notebook .jp-Cell")
    cells.first.wait_for(state="visible", timeout=60_000)
    # The kernel must be ready before running (a run sent earlier is lost): ask the server.
    _wait_for_idle_kernel(lab.url, name)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

    job_cell = cells.nth(1)
    bar = job_cell.locator(".widget-hprogress .progress-bar").first
    bar.wait_for(state="attached", timeout=60_000)
    seen: list[float] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        value = _bar_percent(bar)
        if value is None:
            break  # the view gave way to the final output
        seen.append(value)
        if len(set(seen)) >= 3:
            break
        page.wait_for_timeout(200)
    _shot(page, artifacts, "nb7-01-progress")
    assert len(set(seen)) >= 2, f"the bar never moved in Notebook 7: {seen}"
    assert "the kernel is free" in cells.nth(2).inner_text(timeout=30_000)

    video = job_cell.locator("video.vydra-video").first
    video.wait_for(state="attached", timeout=90_000)
    state = _wait_decoded(page, video)
    _shot(page, artifacts, "nb7-02-player")
    assert state["readyState"] >= 2 and state["duration"] > 0, state
