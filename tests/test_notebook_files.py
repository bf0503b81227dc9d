"""Committed example notebooks stay small and carry no dead addresses alone.

A saved notebook outlives the sandbox that made it: a player whose only source is
``http://127.0.0.1:PORT/...`` shows nothing once that sandbox is gone. Every such player must
carry a poster image (embedded) to show instead. Executing a notebook must not make it balloon
(0.1's 02 grew from 147 KB to 318 KB).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CAPS = {"01_quickstart.ipynb": 150_000, "02_prompt_iteration.ipynb": 250_000,
        "03_pricing_analysis.ipynb": 250_000, "04_chaining.ipynb": 2_000_000}
PLAYER = re.compile(r"<(video|audio)\b[^>]*>", re.S)


def _outputs_html(path: Path) -> list[str]:
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    return [o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", [])
            if isinstance(o.get("data", {}).get("text/html", ""), str)]


@pytest.mark.parametrize("name", sorted(CAPS))
def test_committed_notebooks_are_small(name: str) -> None:
    assert (NOTEBOOKS / name).stat().st_size <= CAPS[name]


@pytest.mark.parametrize("name", sorted(CAPS))
def test_no_player_points_only_at_a_sandbox_that_is_gone(name: str) -> None:
    for html in _outputs_html(NOTEBOOKS / name):
        for tag in PLAYER.finditer(html):
            attrs = tag.group(0)
            if "http://127.0.0.1" in attrs and tag.group(1) == "video":
                assert 'poster="data:image/' in attrs, f"{name}: a video with only a sandbox address: {attrs[:200]}"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_prompt_iteration.ipynb"])
def test_executing_a_notebook_keeps_it_small(name: str, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    env_home = os.environ.get("VYDRA_NB_HOME")
    # Saved as JupyterLab saves by default: outputs, not the live widgets' state.
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = tmp_path / name
    nbformat.write(nb, str(out))
    committed = (NOTEBOOKS / name).stat().st_size
    executed = out.stat().st_size
    print(f"\n{name}: committed {committed:,} bytes, executed {executed:,} bytes")
    assert executed <= CAPS[name] and executed <= 1.3 * committed, (committed, executed)
    assert env_home == os.environ.get("VYDRA_NB_HOME")
