"""Every ```python block of the README runs as written, in order, in a fresh kernel on the sandbox.

A README whose snippets fail when pasted is the first thing a new user meets; extracting and
running them here keeps them from drifting. Blocks run as the cells of one notebook, with no key
in the environment (the README's own first cell starts a sandbox).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list[str]:
    return [m.group(1) for m in BLOCK.finditer(README.read_text(encoding="utf-8"))]


def test_the_readme_has_python_blocks() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 4
    assert blocks[0].lstrip().startswith("%load_ext vydra_nb")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_readme_blocks_run_in_order_in_a_fresh_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("VYDRA_API_KEY", raising=False)
    monkeypatch.delenv("VYDRA_BASE_URL", raising=False)
    monkeypatch.setenv("VYDRA_NB_HOME", str(tmp_path / "home"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(block.rstrip("\n")) for block in readme_blocks()]
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"a README block failed when run as written:\n{str(exc)[-3000:]}")
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            assert "Traceback" not in text and "UsageError" not in text, (index, cell.source, text[:500])
            assert output.get("output_type") != "error", (index, cell.source, output)
    assert os.environ.get("VYDRA_API_KEY") is None
