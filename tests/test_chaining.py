"""Issue 16 as a notebook user meets it: files and jobs in cell flags, labelled grids, posters.

A real InteractiveShell with the extension loaded and its own sandbox (over real HTTP); every
refusal is one UsageError line and the sandbox's request counts prove nothing was sent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import vydra_nb
from vydra_nb.analysis.sweeps import Sweep
from vydra_nb.views.comparison import Entry, axes_from_entries, comparison_html, layout, prompt_labels

from .conftest import end_vydra_session

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture
def ip(tmp_path: Path) -> Iterator[InteractiveShell]:
    before = Path.cwd()
    os.chdir(tmp_path)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "vydra_nb")
    shell.run_line_magic("config", "VydraMagics.resume_on_load = False")
    shell.run_line_magic("config", "VydraMagics.confirm_above = 0")
    shell.run_line_magic("vydra", "sandbox --speed 100 --credits 20000")
    try:
        yield shell
    finally:
        end_vydra_session(shell)
        os.chdir(before)


def box(shell: InteractiveShell) -> Any:
    return shell.magics_manager.registry["VydraMagics"].session.sandbox


def requests_by(shell: InteractiveShell) -> dict[str, int]:
    return dict(box(shell).state().get("requests", {}))


def cell(shell: InteractiveShell, line: str, body: str = "") -> Any:
    return shell.run_cell_magic("vydra", line, body)


def still_png(path: Path) -> Path:
    PIL.new("RGB", (96, 54), (30, 90, 160)).save(path, format="PNG")
    return path


# -- local files in a cell ------------------------------------------------------------------------
def test_a_local_file_in_a_cell_is_uploaded_once(ip: InteractiveShell, tmp_path: Path) -> None:
    still_png(tmp_path / "still.png")
    first = cell(ip, "veo3 --image-url ./still.png -o clip", "The still comes alive")
    assert requests_by(ip).get("upload") == 1 and "/media/upload_" in first.params["image_url"]
    second = cell(ip, "veo3 --image-url ./still.png", "The still comes alive")  # the cell run again
    assert requests_by(ip).get("upload") == 1, "a second run must not upload again"
    assert second.params["image_url"] == first.params["image_url"]


@pytest.mark.parametrize(("make", "words"), [
    (lambda d: "missing.png", "no file 'missing.png'"),
    (lambda d: _huge(d), "25.0 MB; POST /upload takes images up to 20.0 MB"),
    (lambda d: _exe(d), "a Windows program, not a PNG, JPEG, WebP or GIF image"),
    (lambda d: _named_png(d), "whatever its name says"),
    (lambda d: "../outside.png", "'..'"),
])
def test_a_bad_file_is_one_line_and_sends_nothing(ip: InteractiveShell, tmp_path: Path, make: Any, words: str) -> None:
    value = make(tmp_path)
    cell(ip, "veo3 --dry-run", "warm the model list")  # so that what follows needs no request at all
    before = requests_by(ip)
    with pytest.raises(UsageError) as info:
        cell(ip, f"veo3 --image-url {value}", "x")
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert requests_by(ip) == before


def _huge(d: Path) -> str:
    with open(d / "huge.png", "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.truncate(25 * 1024 * 1024)
    return "huge.png"


def _exe(d: Path) -> str:
    (d / "tool.exe").write_bytes(b"MZ\x90\x00" + b"\x00" * 100)
    return "tool.exe"


def _named_png(d: Path) -> str:
    (d / "me.png").write_bytes(b"MZ\x90\x00" + b"\x00" * 100)
    return "me.png"


# -- jobs in a cell -------------------------------------------------------------------------------
def test_a_finished_job_in_a_flag_sends_its_url(ip: InteractiveShell) -> None:
    still = cell(ip, "nano-banana --wait -o still", "A red kite over the sea")
    assert still.status == "completed"
    clip = cell(ip, "veo3 --image-url {still} -o clip", "The kite glides")
    assert clip.params["image_url"] == still.media_url
    again = cell(ip, "veo3 --image-url $still", "The kite glides on")
    assert again.params["image_url"] == still.media_url
    ip.user_ns["stills"] = {"kite": still}
    third = cell(ip, "veo3 --image-url {stills[kite]}", "The kite dives")
    assert third.params["image_url"] == still.media_url
    with pytest.raises(UsageError, match=r"--image-url uses undefined variable\(s\): nope"):
        cell(ip, "veo3 --image-url {nope}", "x")


def test_an_unfinished_job_says_wait_and_wait_waits(ip: InteractiveShell) -> None:
    still = cell(ip, "nano-banana -o still", "A lantern on a jetty")
    before = requests_by(ip).get("generate", 0)
    with pytest.raises(UsageError, match=r"image_url: job .* is still (pending|running); wait for it first"):
        cell(ip, "veo3 --image-url {still}", "The lantern swings")
    assert requests_by(ip).get("generate", 0) == before
    clip = cell(ip, "veo3 --image-url {still} --wait", "The lantern swings")
    assert still.status == "completed" and clip.params["image_url"] == still.media_url and clip.status == "completed"


def test_the_dry_run_shows_resolved_values(ip: InteractiveShell, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    still = cell(ip, "nano-banana --wait -o still", "A harbour at dawn")
    capsys.readouterr()
    cell(ip, "veo3 --image-url {still} --dry-run", "Boats rock")
    out = capsys.readouterr().out
    assert f'"image_url": "{still.media_url}"' in out and "{still}" not in out
    still_png(tmp_path / "me.png")
    uploads = requests_by(ip).get("upload", 0)
    cell(ip, "veo3 --image-url me.png --dry-run", "Me, moving")
    out = capsys.readouterr().out
    assert '"image_url": "<upload of me.png (PNG 96x54,' in out and "Upload first (free, once): 'me.png'" in out
    assert requests_by(ip).get("upload", 0) == uploads  # a dry run uploads nothing
    cell(ip, "veo3 --image-url me.png", "Me, moving")
    capsys.readouterr()
    cell(ip, "veo3 --image-url me.png --dry-run", "Me, moving")
    out = capsys.readouterr().out
    assert "Uploaded before (the same content)" in out and "/media/upload_" in out


def test_a_list_of_jobs_sweeps_and_labels_them(ip: InteractiveShell) -> None:
    a = cell(ip, "nano-banana --wait", "A fox")
    b = cell(ip, "nano-banana --wait", "A hare")
    ip.user_ns["stills"] = [a, b]
    sweep = cell(ip, "veo3 --image-url {stills} --wait -o clips", "It runs")
    assert isinstance(sweep, Sweep) and [j.params["image_url"] for j in sweep.jobs] == [a.media_url, b.media_url]
    html = sweep._repr_html_()
    assert f">nano-banana {a.id}<" in html and f">nano-banana {b.id}<" in html  # columns named by the input jobs
    assert list(sweep.dataframe()["image_url"]) == [f"nano-banana {a.id}", f"nano-banana {b.id}"]


def test_a_composition_from_jobs(ip: InteractiveShell) -> None:
    clip = cell(ip, "veo3 --wait -o clip", "A lighthouse at dusk")
    voice = cell(ip, "elevenlabs-tts --wait -o voice", "The light comes on.")
    cut = ip.run_line_magic("vydra", "generate video-compose --video-urls {clip} --audio-url {voice} --wait")
    assert cut.params == {"video_urls": [clip.media_url], "audio_url": voice.media_url}
    assert cut.status == "completed"


# -- the labelled grid ----------------------------------------------------------------------------
GROK_LINE = "grok-imagine --each-line --aspect-ratio 16:9,9:16 -o grid"
GROK_BODY = "A lighthouse in a storm, oil painting\nA lighthouse at dawn, oil painting\nA lighthouse in fog, oil painting\n"


def _table_labels(html: str) -> tuple[list[str], list[str]]:
    cols = re.findall(r'<th scope="col" title="[^"]*">([^<]*)</th>', html)
    rows = re.findall(r'<th scope="row" title="[^"]*">([^<]*)</th>', html)
    return rows, cols


def test_three_prompts_by_two_ratios_make_a_labelled_grid_with_totals(ip: InteractiveShell) -> None:
    grid = cell(ip, GROK_LINE + " --wait", GROK_BODY)
    assert len(grid.jobs) == 6 and all(j.status == "completed" for j in grid.jobs)
    html = grid._repr_html_()
    rows, cols = _table_labels(html)
    assert cols == ["16:9", "9:16"]
    assert rows == ["A lighthouse in a storm, oil painting", "A lighthouse at dawn, oil painting",
                    "A lighthouse in fog, oil painting"]
    assert html.count("row total") == 1 and html.count("column total") == 1
    assert html.count(">16 credits<") == 3  # each row: two 8-credit images
    assert html.count(">24 credits<") == 2  # each column: three
    assert ">48 credits<" in html  # the whole grid
    assert html.count('<td class="vydra-cell vydra-status-completed">') == 6 and html.count("<img") == 6
    df = grid.dataframe()
    assert list(df.columns[:2]) == ["prompt", "aspect_ratio"] and len(df) == 6
    # nbconvert shows the same table from the saved output, with no kernel.
    nbformat = pytest.importorskip("nbformat")
    nbconvert = pytest.importorskip("nbconvert")
    nb = nbformat.v4.new_notebook()
    cell_ = nbformat.v4.new_code_cell("%%vydra " + GROK_LINE + " --wait\n" + GROK_BODY)
    cell_.outputs = [nbformat.v4.new_output("execute_result", data={"text/html": html, "text/plain": repr(grid)},
                                            execution_count=1)]
    nb.cells = [cell_]
    page, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    rows_c, cols_c = _table_labels(re.sub(r'<th (title="[^"]*") scope="(row|col)"', r'<th scope="\2" \1', page))
    assert cols_c == cols and rows_c == rows and ">48 credits<" in page


def test_the_grid_is_live_while_jobs_run(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    from ipywidgets import HTML, GridBox

    shown: list[Any] = []
    monkeypatch.setattr("vydra_nb.views.job_view.widgets_available", lambda: True)

    class Handle:
        def update(self, obj: Any, **kw: Any) -> None:
            shown.append(obj)

    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj) or Handle())
    grid = cell(ip, GROK_LINE, GROK_BODY)
    live = grid.widget
    boxes = [c for c in live.children if isinstance(c, GridBox)]
    assert len(boxes) == 1
    texts = [c.value for c in boxes[0].children if isinstance(c, HTML)]
    for label in ("16:9", "9:16", "A lighthouse in fog, oil painting", "row total", "column total"):
        assert any(label in t for t in texts), label
    assert any("~48 credits" in t for t in texts), "the estimate shows before anything is charged"
    grid.wait(60)
    assert vydra_nb.session.current().tracker.join_idle(30)
    final = shown[-1]
    assert isinstance(final, dict) and "text/html" in final and "row total" in final["text/html"]
    rows, cols = _table_labels(final["text/html"])
    assert cols == ["16:9", "9:16"] and len(rows) == 3


def test_more_than_two_varying_dimensions_are_grouped_and_labelled(ip: InteractiveShell) -> None:
    grid = cell(ip, "grok-imagine --each-line --aspect-ratio 16:9,9:16 --model text-to-image,text-to-video "
                    "--dry-run -o plan", "a comet\na meteor")
    assert grid is None  # a dry run shows the requests; the sweep form is below
    plan = vydra_nb.sweep("grok-imagine", ["a comet", "a meteor"], aspect_ratio=["16:9", "9:16"],
                          model=["text-to-image", "text-to-video"], duration=[6, 10], dry_run=True, show=False)
    html = plan._repr_html_()
    assert html.count('<div class="vydra-group">') == 4  # prompt x aspect groups...
    assert "prompt = a comet · aspect_ratio = 16:9" in html
    rows, cols = _table_labels(html)
    assert set(cols) == {"6", "10"} and set(rows) == {"text-to-image", "text-to-video"}
    assert "all groups:" in html and "~" in html
    assert set(plan.dataframe().columns) >= {"prompt", "aspect_ratio", "model", "duration"}


def test_prompt_labels_are_shortened_sensibly() -> None:
    labels = prompt_labels([
        "A cinematic aerial shot of a red fox running through fresh snow at golden hour, 35mm film",
        "A cinematic aerial shot of a grey wolf running through fresh snow at golden hour, 35mm film",
    ])
    assert labels == ["… red fox …", "… grey wolf …"]
    long = prompt_labels(["word " * 40])
    assert len(long[0]) <= 64 and long[0].endswith("…")


def test_studio_entries_are_labelled_by_what_differs() -> None:
    job = vydra_nb.Job(id="job_1", model="nano-banana", status="completed", credits_charged=8,
                       output={"imageUrl": "https://cdn.example/a.png"})
    entries = [Entry({"prompt": "a cat", "aspect_ratio": "1:1"}, job, 8),
               Entry({"prompt": "a cat", "aspect_ratio": "16:9"}, None, 8),
               Entry({"prompt": "a dog", "aspect_ratio": "1:1"}, None, 8)]
    axes = axes_from_entries(entries)
    groups = layout(entries, axes)
    assert len(groups) == 1 and groups[0].rows is not None and groups[0].rows.labels == ["a cat", "a dog"]
    assert groups[0].cols is not None and groups[0].cols.labels == ["1:1", "16:9"]
    html = comparison_html(entries, axes)
    assert "not submitted" in html and "~24 credits" in html
