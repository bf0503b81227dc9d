"""Sweeps: priced and validated before anything is sent, paced without a single 429."""

from __future__ import annotations

from typing import Any

import pytest

from vydra_nb import ValidationError, VydraError
from vydra_nb.analysis.sweeps import combinations, sweep
from vydra_nb.tracking.tracker import Tracker
from vydra_nb.views.job_view import JobView


def _posts(sb: Any) -> int:
    return sum(sb.state()["jobs"].values())


def test_dry_run_prices_every_combination(client: Any, sb: Any, capsys: pytest.CaptureFixture[str]) -> None:
    s = sweep("veo3", ["a", "b", "c"], client=client, aspect_ratio=["16:9", "9:16"], dry_run=True, show=False)
    assert len(s.combinations) == 6 and s.total_credits == 6 * 175
    assert {"prompt": "b", "aspect_ratio": "9:16"} in s.combinations
    assert "6 veo3 jobs: 1,050 credits (about $3.05" in capsys.readouterr().out
    assert s.jobs == [] and _posts(sb) == 0
    df = s.dataframe()
    assert list(df["status"]) == ["not submitted"] * 6 and df["estimated_credits"].sum() == 1050


def test_priced_per_value(client: Any) -> None:
    s = sweep("grok-imagine", "x", client=client, model=["text-to-image", "text-to-video"], dry_run=True, show=False)
    assert s.costs == [8, 150] and s.total_credits == 158


def test_max_credits_refuses_and_sends_nothing(client: Any, sb: Any) -> None:
    with pytest.raises(VydraError, match="max_credits=500; nothing was sent"):
        sweep("veo3", ["a", "b", "c"], client=client, max_credits=500, show=False)
    assert _posts(sb) == 0


def test_one_invalid_combination_stops_all(client: Any, sb: Any) -> None:
    with pytest.raises(ValidationError, match="Combination 2 .*5:4.*Nothing was sent") as info:
        sweep("veo3", ["a", "b"], client=client, aspect_ratio=["16:9", "5:4"], show=False)
    assert info.value.field == "aspect_ratio" and _posts(sb) == 0


def test_confirmation_declined(client: Any, sb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr("builtins.input", lambda q: asked.append(q) or "n")
    s = sweep("veo3", ["a", "b"], client=client, confirm_above=200, show=False)
    assert s.declined and s.jobs == [] and _posts(sb) == 0 and "350 credits" in asked[0]


def test_submits_all_paced_without_429(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("builtins.input", lambda q: "y")
    tracker = Tracker()
    prompts = [f"cat {i}" for i in range(6)]
    s = sweep("nano-banana", prompts, client=client, aspect_ratio=["1:1", "16:9"], confirm_above=10,
              background=True, tracker=tracker)
    s.wait_submitted(30)
    assert s.submit_error is None and len(s.jobs) == 12  # above the 10/window generate limit
    assert client._transport.rate_limited == 0
    assert [j.params for j in s.jobs] == s.combinations
    assert all(isinstance(v, JobView) for v in s.views) and len(s.views) == 12
    s.wait(30)
    assert tracker.join_idle(10)
    df = s.dataframe()
    assert set(df["status"]) == {"completed"} and df["credits_charged"].sum() == 96
    assert df["url"].str.startswith("http://127.0.0.1").all()
    assert str(df["credits_charged"].dtype) == str(df["credits_refunded"].dtype) == "Int64"
    assert repr(s).endswith("12/12 submitted: 12 completed>")
    html = s._repr_html_()  # what a saved notebook shows: every result, as plain HTML
    assert html.count("<img") == 12 and "12 completed" in html


def test_submission_error_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import make_client
    from vydra_nb import sandbox

    with sandbox.start(credits=20, speed=100) as box:
        c = make_client(box, credit_warning_threshold=None)
        s = sweep("nano-banana", ["a", "b", "c"], client=c, background=True, tracker=Tracker())
        s.wait_submitted(20)
        assert len(s.jobs) == 2 and s.submit_error is not None
        assert "Submission stopped after 2 jobs" in s.error_note.value
        with pytest.raises(VydraError):
            sweep("nano-banana", ["a", "b", "c"], client=c, show=False, tracker=Tracker())
        c.close()


def test_combinations_without_prompts(client: Any) -> None:
    m = client.model("video-extract")
    combos = combinations(m, None, {"video_url": "https://x.example/v.mp4", "what": ["audio", "frame"]})
    assert combos == [{"video_url": "https://x.example/v.mp4", "what": "audio"},
                      {"video_url": "https://x.example/v.mp4", "what": "frame"}]
