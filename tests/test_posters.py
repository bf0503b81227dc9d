"""Posters keep a saved notebook's videos visible: notebook 04 executed, its sandbox gone, nbconvert.

The claim of issue 16: saved outputs of a twelve-video sweep stay under 2 MB, and after the sandbox
that made them is gone, the executed notebook converted with nbconvert still shows an image for
every video (small JPEG posters we embed as ``data:`` URIs ourselves).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "04_chaining.ipynb"
VIDEO = re.compile(r"<video\b[^>]*>.*?</video>", re.S)


def _videos(html: str) -> list[str]:
    return VIDEO.findall(html)


def _check_posters(html: str, at_least: int) -> None:
    videos = _videos(html)
    assert len(videos) >= at_least, len(videos)
    for video in videos:
        assert re.search(r'poster="data:image/jpeg;base64,[A-Za-z0-9+/=]{200,}"', video), video[:300]
        fallback = re.search(r'<img\b[^>]*class="vydra-poster"[^>]*>', video)  # nbconvert reorders attributes
        assert fallback and 'src="data:image/jpeg;base64,' in fallback.group(0), video[:300]


def test_the_committed_notebook_has_a_poster_for_every_video_and_stays_small() -> None:
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert NOTEBOOK.stat().st_size < 2 * 1024 * 1024
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for c in code for o in c["outputs"])
    _check_posters(html, at_least=14)  # the clip, the cut and the twelve takes
    grid = next(c for c in code if "--each-line" in "".join(c["source"]))
    grid_html = "".join("".join(o.get("data", {}).get("text/html", "")) for o in grid["outputs"])
    assert len(_videos(grid_html)) == 12 and "row total" in grid_html and "column total" in grid_html
    assert len(json.dumps(grid["outputs"])) < 2 * 1024 * 1024
    assert "widgets" not in nb.get("metadata", {}), "no stale widget state in a committed notebook"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_after_the_sandbox_is_gone_nbconvert_shows_an_image_for_every_video(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nbconvert = pytest.importorskip("nbconvert")
    import requests

    monkeypatch.setenv("VYDRA_NB_HOME", str(tmp_path / "home"))
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    nb = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    for cell in nb.cells:
        cell.outputs = [] if cell.cell_type == "code" else getattr(cell, "outputs", None) or []
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # the kernel, and its sandbox, end here
    saved = tmp_path / "executed.ipynb"
    nbformat.write(nb, saved)
    grid = next(c for c in nb.cells if c.cell_type == "code" and "--each-line" in c.source)
    assert len(json.dumps(grid.outputs)) < 2 * 1024 * 1024 and saved.stat().st_size < 2 * 1024 * 1024
    sandbox_url = re.search(r"http://127\.0\.0\.1:\d+", json.dumps(nb.cells[1].outputs))
    assert sandbox_url is not None
    with pytest.raises(requests.ConnectionError):
        requests.get(sandbox_url.group(0) + "/api/v1/health", timeout=3)
    html, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    _check_posters(html, at_least=14)  # every video still has an image, though its URL is dead
