"""The house rules, checked by the README's test command: layers, lint and types.

Each runs the tool the way a developer would from the checkout and fails with the tool's own
report, so a broken layer or an unused import is caught on every run, not in review.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    """The tool installed beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: install the test extras (pip install -e '.[test]').")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_import_layers() -> None:
    """import-linter: each layer imports only the layers below it; the sandbox imports nothing of ours."""
    done = _run(_tool("lint-imports"), "--no-cache")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "broken" not in done.stdout.lower().replace("0 broken", "")


def test_ruff() -> None:
    done = _run(_tool("ruff"), "check", "vydra_nb", "tests", "benchmarks")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_mypy() -> None:
    done = _run(_tool("mypy"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
