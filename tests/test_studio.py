"""The studio: forms from inputSchema, price, validity, submit, gallery, "use these settings"."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import pytest

from vydra_nb.notebook.studio import Studio, studio
from vydra_nb.tracking.tracker import Tracker
from vydra_nb.views.job_view import JobView


@pytest.fixture
def st(client: Any) -> Studio:
    return Studio(client, tracker=Tracker())


def test_picker_lists_active_models_by_provider(st: Studio) -> None:
    slugs = [v for _, v in st.model_picker.options]
    assert "veo3" in slugs and "veo2" not in slugs  # veo2 is inactive
    labels = [label for label, _ in st.model_picker.options]
    assert labels == sorted(labels, key=lambda s: s.split(" · ")[0].lower())
    assert any(label.startswith("kie-ai · Google Veo 3") for label in labels)
    assert "SANDBOX" in st.children[0].value


def test_form_widgets_follow_the_schema(st: Studio) -> None:
    st.model_picker.value = "veo3"
    assert list(st.fields) == ["prompt", "aspect_ratio", "image_url"]  # veo3 animates a still: an optional image_url
    assert isinstance(st.fields["prompt"], W.Textarea)
    assert isinstance(st.fields["aspect_ratio"], W.Dropdown) and st.fields["aspect_ratio"].value == "16:9"
    st.model_picker.value = "grok-imagine"
    assert isinstance(st.fields["duration"], W.Dropdown) and st.fields["duration"].options[0][1] == 6
    assert st.fields["aspect_ratio"].options[0] == ("—", None)  # optional, no default: may be left empty
    assert isinstance(st.fields["image_url"], W.Text)
    st.model_picker.value = "video-trim"
    start = st.fields["start"]
    assert isinstance(start, W.BoundedFloatText) and start.min == 0
    st.model_picker.value = "kling-motion-control"
    assert isinstance(st.fields["keep_original_sound"], W.Checkbox)


def test_submit_disabled_with_reason_until_valid_and_price_follows(st: Studio) -> None:
    st.model_picker.value = "grok-imagine"
    assert st.submit.disabled and "prompt" in st.reason.value
    st.fields["prompt"].value = "a <b>cat</b>"
    assert not st.submit.disabled and st.reason.value == ""
    assert st.params() == {"prompt": "a <b>cat</b>"}  # untouched defaults are not sent
    assert "8 credits" in st.price.value
    st.fields["model"].value = "text-to-video"
    assert "150 credits" in st.price.value and "$0.44" in st.price.value
    st.fields["model"].value = "image-to-video"
    assert st.submit.disabled and "image_url" in st.reason.value
    st.fields["image_url"].value = "https://example.com/a.png"
    assert not st.submit.disabled


def test_submit_fills_gallery_and_reload_settings(st: Studio, client: Any) -> None:
    assert "10000 credits left" in st.credits.value
    st.model_picker.value = "nano-banana"
    st.fields["prompt"].value = "<script>alert(1)</script> first"
    st.fields["aspect_ratio"].value = "9:16"
    job = st.submit_form()
    assert job is not None and job.params == {"prompt": "<script>alert(1)</script> first", "aspect_ratio": "9:16"}
    assert "9992 credits left" in st.credits.value  # refreshed after submit
    card = st.gallery.children[0]
    assert isinstance(card.children[0], JobView) and card.children[0].job is job
    assert "&lt;script&gt;" in card.children[1].value and "aspect_ratio=9:16" in card.children[1].value
    assert "8 credits" in card.children[1].value
    st.model_picker.value = "veo3"
    st.fields["prompt"].value = "other"
    card.reuse_button.click()
    assert st.model_picker.value == "nano-banana"
    assert st.fields["prompt"].value == "<script>alert(1)</script> first" and st.fields["aspect_ratio"].value == "9:16"
    assert st.tracker.join_idle(30)
    assert job.status == "completed" and "<img" in card.view.result.value


def test_server_refusal_is_shown_not_raised() -> None:
    from tests.conftest import make_client
    from vydra_nb import sandbox

    with sandbox.start(credits=100, speed=100) as box:  # veo3 costs 175: the server answers 402
        client = make_client(box, credit_warning_threshold=None)
        st = studio(client)
        st.tracker = Tracker()
        st.model_picker.value = "veo3"
        st.fields["prompt"].value = "x"
        assert not st.submit.disabled
        job = st.submit_form()
        assert job is None and "Not submitted" in st.reason.value and st.gallery.children == ()
        assert st.submit.description == "Submit" and not st.submit.disabled
        client.close()


def test_optional_fields_left_alone_are_not_sent(st: Studio) -> None:
    st.model_picker.value = "video-extract"
    st.fields["video_url"].value = "https://example.com/v.mp4"
    assert st.params() == {"video_url": "https://example.com/v.mp4"}
    st.fields["what"].value = "frame"
    st.fields["at"].value = 2.5
    assert st.params() == {"video_url": "https://example.com/v.mp4", "what": "frame", "at": 2.5}
    assert not st.submit.disabled


def test_opens_on_a_model_that_takes_a_prompt_or_the_one_asked_for(client: Any) -> None:
    first = Studio(client, tracker=Tracker())
    assert first.model is not None and first.model.prompt_field  # not a form that needs a file URL first
    assert first.model_picker.value == first.model.slug
    chosen = studio(client, model="veo3")
    assert chosen.model is not None and chosen.model.slug == "veo3" and chosen.model_picker.value == "veo3"


def test_each_field_names_its_model_in_the_page(st: Studio) -> None:
    """The browser test waits for veo3's own prompt field: a form still drawn for the previous model
    must not be typed into (the race seen once under load in 0.1)."""
    st.model_picker.value = "veo3"
    assert "vydra-field-veo3-prompt" in st.fields["prompt"]._dom_classes
    st.model_picker.value = "elevenlabs-tts"
    assert "vydra-field-elevenlabs-tts-text" in st.fields["text"]._dom_classes
