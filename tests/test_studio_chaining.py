"""The studio's chaining powers over real HTTP: a file picker for URL fields, "use as input", the grid."""

from __future__ import annotations

import html
import io
import time
from typing import Any

import ipywidgets as W
import pytest

from vydra_nb.notebook.studio import Studio
from vydra_nb.tracking.tracker import Tracker

PIL = pytest.importorskip("PIL.Image")


def _png() -> bytes:
    out = io.BytesIO()
    PIL.new("RGB", (40, 30), (10, 200, 90)).save(out, format="PNG")
    return out.getvalue()


def _uploads(sb: Any) -> int:
    return int(sb.state().get("requests", {}).get("upload", 0))


def _until(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def st(client: Any) -> Studio:
    return Studio(client, tracker=Tracker(), model="veo3")


def test_url_fields_have_a_file_picker_that_uploads_once(st: Studio, sb: Any) -> None:
    assert set(st.pickers) == {"image_url"} and isinstance(st.pickers["image_url"], W.FileUpload)
    assert "image/png" in st.pickers["image_url"].accept
    data = _png()
    url = st.upload_file("image_url", data, "me.png")
    assert url is not None and st.fields["image_url"].value == url and _uploads(sb) == 1
    assert "image_url ← me.png" in st.note.value
    assert st.upload_file("image_url", data, "again.png") == url and _uploads(sb) == 1
    assert "no request" in st.note.value
    # The picker's own event (what a click on the button ends with) takes the same path, in a thread.
    st.fields["image_url"].value = ""
    st._on_pick("image_url", ({"name": "me.png", "type": "image/png", "size": len(data), "content": memoryview(data)},))
    assert _until(lambda: st.fields["image_url"].value == url)
    st.fields["prompt"].value = "The meadow, moving"
    assert not st.submit.disabled and _uploads(sb) == 1


def test_a_bad_file_in_the_picker_is_one_line_and_sends_nothing(st: Studio, sb: Any) -> None:
    assert st.upload_file("image_url", b"MZ\x90\x00" + b"\x00" * 64, "photo.png") is None
    assert "Not uploaded: image_url: 'photo.png' is a Windows program" in html.unescape(st.note.value)
    assert st.upload_file("image_url", b"\x89PNG\r\n\x1a\n" + b"\x00" * (21 * 1024 * 1024), "big.png") is None
    assert "POST /upload takes images up to 20.0 MB" in st.note.value
    assert _uploads(sb) == 0 and st.fields["image_url"].value == ""


def test_a_typed_local_path_is_checked_like_an_upload(st: Studio, tmp_path: Any) -> None:
    st.fields["prompt"].value = "x"
    st.fields["image_url"].value = str(tmp_path / "missing.png")
    assert st.submit.disabled and "no file" in st.reason.value
    (tmp_path / "still.png").write_bytes(_png())
    st.fields["image_url"].value = str(tmp_path / "still.png")
    assert not st.submit.disabled


def test_use_as_input_starts_the_next_step_and_the_grid_labels_results(st: Studio, sb: Any) -> None:
    st.model_picker.value = "nano-banana"
    st.fields["prompt"].value = "A kite over a beach"
    still = st.submit_form()
    assert still is not None
    card = st.cards[0][0]
    assert card.chain_button.disabled  # nothing to use until it has finished
    still.wait(30)
    assert _until(lambda: not card.chain_button.disabled)
    card.chain_button.click()
    # The next step from a still: veo3 (an image is all it takes), with the still's URL filled in.
    assert st.model is not None and st.model.slug == "veo3"
    assert st.fields["image_url"].value == still.media_url
    assert "image_url ← nano-banana" in st.note.value
    st.fields["prompt"].value = "The kite dives"
    clip = st.submit_form()
    assert clip is not None and clip.params["image_url"] == still.media_url
    clip.wait(60)
    assert st.use_as_input(clip) in ("video_url", "video_urls")
    assert st.model is not None and st.model.slug.startswith("video-")
    # The grid view: rows by prompt, the model as a column since two were used.
    st.layout_picker.value = "grid"
    assert st.results.children == (st.comparison,)
    html = st.comparison.value
    assert "A kite over a beach" in html and "The kite dives" in html and "row total" in html
    assert ">nano-banana<" in html and ">veo3<" in html
    st.layout_picker.value = "gallery"
    assert st.results.children == (st.gallery,)


def test_use_as_input_refuses_an_unfinished_job(st: Studio) -> None:
    st.fields["prompt"].value = "A long take"
    job = st.submit_form()
    assert job is not None and not job.done
    assert st.use_as_input(job) is None and "no finished result" in st.reason.value
