"""`vydra-nb demo` end to end, as a new user runs it: a fresh folder, no key, the local sandbox."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("nbconvert")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.slow


def run_demo(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VYDRA_API_KEY", "VYDRA_BASE_URL", "VYDRA_NB_DOWNLOADS")}
    env["VYDRA_NB_HOME"] = str(cwd / "home")
    return subprocess.run([sys.executable, "-m", "vydra_nb.cli", "demo", *args], cwd=cwd, env=env,
                          check=False, capture_output=True, text=True, timeout=timeout)


def assert_quiet(proc: subprocess.CompletedProcess[str]) -> None:
    both = proc.stdout + proc.stderr
    assert "Kernel is running over TCP" not in both
    assert "[IPKernelApp]" not in both
    assert "Traceback" not in both


def test_unknown_notebook_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--notebook", "nope")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "nope" in lines[0] and "01_quickstart" in lines[0] and "03_pricing_analysis" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "demo-output").exists()
    # A path is not a notebook name: nothing outside the examples folder is run.
    assert run_demo(tmp_path, "--notebook", "../README.md").returncode == 2


def test_quickstart_writes_one_playable_video_and_clears_stale_media(tmp_path: Path) -> None:
    media = tmp_path / "demo-output" / "media"
    media.mkdir(parents=True)
    stale = [media / "job_0123abcd.mp4", media / "job_old_run.png", media / "sync_abc.wav"]
    for path in stale:
        path.write_bytes(b"old")
    # The previous run's manifest names its downloads whose ids do not start with job_.
    (media / ".vydra-nb-demo-media.json").write_text(json.dumps(["sync_abc.wav", "../escape.txt"]))
    (tmp_path / "demo-output" / "escape.txt").write_text("mine")
    keep = [media / "notes.txt", media / "job_notes.md"]
    for path in keep:
        path.write_text("the user's own file")

    proc = run_demo(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_quiet(proc)

    for path in stale:
        assert not path.exists(), path
    for path in keep + [tmp_path / "demo-output" / "escape.txt"]:
        assert path.exists(), path

    html = (tmp_path / "demo-output" / "01_quickstart.html").read_text(encoding="utf-8")
    videos = re.findall(r"<video\b[^>]*>", html)
    assert len(videos) == 1, videos
    src = re.search(r'\bsrc="([^"]*)"', videos[0]).group(1)
    assert src.startswith("media/") and "://" not in src, src
    assert (tmp_path / "demo-output" / src).is_file()

    executed = json.loads((tmp_path / "demo-output" / "01_quickstart.ipynb").read_text(encoding="utf-8"))
    assert "widgets" not in executed["metadata"]
    assert sorted(p.name for p in media.glob("*.mp4")) == [Path(src).name]


def test_other_notebook_by_name_without_extension(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--notebook", "03_pricing_analysis")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_quiet(proc)
    assert (tmp_path / "demo-output" / "03_pricing_analysis.html").is_file()
    assert (tmp_path / "demo-output" / "03_pricing_analysis.ipynb").is_file()
    assert "no <video> element" not in proc.stderr


def test_version_from_the_command_and_from_python_m(tmp_path: Path) -> None:
    import vydra_nb

    for command in ([sys.executable, "-m", "vydra_nb", "--version"], [sys.executable, "-m", "vydra_nb.cli", "--version"]):
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"vydra-nb {vydra_nb.__version__}"


def test_the_examples_are_package_data_not_a_checkout_path() -> None:
    """`vydra-nb demo` finds the notebooks through the package (``vydra_nb.examples``), so it works
    from a wheel; .ci/run installs the built wheel in a fresh venv and runs the demo from an empty folder."""
    code = ("from importlib import resources; from vydra_nb.cli import _available_notebooks; "
            "print(resources.files('vydra_nb.examples').joinpath('01_quickstart.ipynb').is_file(), "
            "*_available_notebooks())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path("/"), env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # from outside the checkout, as an installed package
    assert proc.returncode == 0, proc.stderr[-2000:]
    found, *names = proc.stdout.split()
    assert found == "True"
    assert {"01_quickstart", "02_prompt_iteration", "03_pricing_analysis"} <= set(names)


def test_demo_writes_into_out_dir(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--out", "elsewhere")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<video" in (tmp_path / "elsewhere" / "01_quickstart.html").read_text()
