"""Issue 17: what a usable result costs. Verdicts and keep rates, tags, budgets, low-credit warnings
where money moves, price history, and dollars by plan. Everything over real HTTP against the sandbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import vydra_nb
from vydra_nb import sandbox as sandbox_mod
from vydra_nb.analysis import frames
from vydra_nb.api.money import PLAN_USD_PER_CREDIT, Rate, rate_for, to_usd
from vydra_nb.session import current as current_session

from .conftest import end_vydra_session, make_client


@pytest.fixture(autouse=True)
def _fresh_session() -> Iterator[None]:
    """Budgets count this process's spend per session: start each test with a session of its own."""
    current_session().reset()
    yield
    current_session().reset()
    current_session().settings.usd_per_credit = None


def _jobs_on(box: Any) -> int:
    """Jobs the sandbox created (every accepted POST /models/...)."""
    return sum(box.state()["jobs"].values())


def _until(predicate: Any, timeout: float = 30.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout * 50)):
        if predicate():
            return True
        done.wait(0.02)
    return bool(predicate())


# -- 1. verdicts and keep rates --------------------------------------------------------------------
def test_keep_rate_and_cost_per_kept_result_survive_a_restart(sb: Any) -> None:
    """6 jobs, 2 kept, 3 rejected: keep rate 0.4 (2 of 5 judged) and 875 / 2 credits per kept one."""
    client = make_client(sb)
    current_session().use_client(client)
    jobs = [client.generate("veo3", prompt=f"a heron, take {i}", tag="heron") for i in range(6)]
    for job in jobs:
        job.wait(timeout=60)
    assert jobs[0].keep() is jobs[0] and jobs[1].keep().verdict == "kept"
    for job in jobs[2:5]:
        job.reject()
    jobs[0].note("the light is right")
    jobs[1].reject()
    jobs[1].keep()  # a change of mind counts once, as the last verdict

    summary = vydra_nb.spend_summary(by="model")
    veo = summary.loc["veo3"]
    assert (veo["jobs"], veo["kept"], veo["rejected"]) == (6, 2, 3)
    assert veo["keep_rate"] == pytest.approx(0.4)
    # The judged jobs' net credits per kept result: 5 x 175 / 2 (the unjudged one counts on neither side).
    assert veo["credits_per_kept"] == pytest.approx(437.5) and veo["usd_per_kept"] == 1.27  # 1.26875, half up
    assert summary.attrs["usd_rate"] == "USD at $0.0029 per credit (creator plan)"
    by_tag = vydra_nb.spend_summary(by="tag")
    assert by_tag.loc["heron", "keep_rate"] == pytest.approx(0.4)
    by_prompt = vydra_nb.spend_summary(by="prompt")
    assert by_prompt.loc["a heron, take 0", "kept"] == 1 and len(by_prompt) == 6
    assert vydra_nb.spend_summary(by="verdict")["jobs"].to_dict() == {"kept": 2, "rejected": 3}  # any column

    df = vydra_nb.jobs_df()
    by_id = df.set_index("id")
    assert by_id.loc[jobs[0].id, "verdict"] == "kept" and by_id.loc[jobs[0].id, "note"] == "the light is right"
    assert pd.isna(by_id.loc[jobs[5].id, "verdict"]) and set(df["tag"]) == {"heron"}
    assert len(vydra_nb.jobs_df(verdict="rejected")) == 3 and len(vydra_nb.jobs_df(tag="heron")) == 6

    # A fresh process (a restarted kernel) reads the same verdicts from the history.
    script = textwrap.dedent(f"""
        import json, vydra_nb
        s = vydra_nb.spend_summary(by="model", backend=None)
        j = vydra_nb.jobs_df(backend=None).set_index("id")
        print(json.dumps({{"keep_rate": s.loc["veo3", "keep_rate"], "per_kept": s.loc["veo3", "credits_per_kept"],
                           "note": j.loc["{jobs[0].id}", "note"], "verdict": j.loc["{jobs[1].id}", "verdict"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ}, check=True)
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh == {"keep_rate": 0.4, "per_kept": 437.5, "note": "the light is right", "verdict": "kept"}


def test_only_a_completed_result_can_be_judged(sb: Any) -> None:
    client = make_client(sb)
    bad = client.generate("veo3", prompt="a lake [fail]")
    running = client.generate("kling-motion-control", image_url="https://e.com/a.png", video_url="https://e.com/b.mp4")
    with pytest.raises(vydra_nb.VydraError, match=r"is (pending|running); only a completed result can be kept .*job.wait"):
        running.keep()
    bad.wait(timeout=60, raise_on_failure=False)
    with pytest.raises(vydra_nb.VydraError, match="is failed; only a completed result can be rejected"):
        bad.reject()
    bad.note("moderation: avoid the word lake")  # a note is fine on any job
    assert client.history is None and current_session().history().get(bad.id)["note"] == "moderation: avoid the word lake"
    with pytest.raises(vydra_nb.VydraError, match="A note is text"):
        bad.note(42)  # type: ignore[arg-type]
    running.wait(60)


def test_plan_costs_what_if_at_the_keep_rate(sb: Any) -> None:
    client = make_client(sb)
    current_session().use_client(client)
    jobs = [client.generate("nano-banana", prompt=f"an apple {i}") for i in range(5)]
    for job in jobs:
        job.wait(timeout=60)
    jobs[0].keep()
    jobs[1].keep()
    for job in jobs[2:]:
        job.reject()
    plan = vydra_nb.plan_costs({"nano-banana": 100}, client=client, keep_rate="history", balance=10_000)
    line = plan.iloc[0]
    # 100 usable images at a keep rate of 2 in 5 need 250 submissions of 8 credits.
    assert (line["count"], line["keep_rate"], line["submissions"], line["credits"]) == (100, 0.4, 250, 2000)
    assert line["usd"] == 5.8 and plan.iloc[-1]["submissions"] == 250
    given = vydra_nb.plan_costs({"veo3": 10, "nano-banana": 10}, client=client, keep_rate={"veo3": 0.5, "nano-banana": 1},
                                balance=10_000)
    assert given["submissions"].tolist() == [20, 10, 30] and given["credits"].tolist() == [3500, 80, 3580]
    plain = vydra_nb.plan_costs({"veo3": 3}, client=client, balance=10_000)
    assert plain["submissions"].tolist() == [3, 3] and plain["keep_rate"].isna().all()
    with pytest.raises(ValueError, match="No kept or rejected veo3 results"):
        vydra_nb.plan_costs({"veo3": 1}, client=client, keep_rate="history", balance=0)
    with pytest.raises(ValueError, match="above 0 and at most 1"):
        vydra_nb.plan_costs({"veo3": 1}, client=client, keep_rate=1.5, balance=0)


# -- 2. budgets ------------------------------------------------------------------------------------
@pytest.fixture
def slow_ip() -> Iterator[InteractiveShell]:
    """A notebook on a sandbox slow enough to cancel a veo3 job while it runs (about 18 s)."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "vydra_nb")
    shell.run_line_magic("config", "VydraMagics.resume_on_load = False")
    shell.run_line_magic("vydra", "sandbox --speed 5 --credits 5000")
    yield shell
    shell.run_line_magic("config", "VydraMagics.low_credit_threshold = 500")
    shell.run_line_magic("config", "VydraMagics.usd_per_credit = None")
    end_vydra_session(shell)


def test_budget_400_refuses_the_third_veo3_before_any_request_and_a_cancel_gives_it_back(
        slow_ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip = slow_ip
    magics = ip.magics_manager.registry["VydraMagics"]
    box = magics.session.sandbox
    ip.run_line_magic("vydra", "budget 400")
    assert "session budget" in capsys.readouterr().out
    first = ip.run_cell_magic("vydra", "veo3", "a heron lifts off")
    second = ip.run_cell_magic("vydra", "veo3", "a heron lands")
    client = magics.client
    sent, created = client.requests_sent, _jobs_on(box)
    with pytest.raises(UsageError) as refused:
        ip.run_cell_magic("vydra", "veo3", "a heron fishes")
    message = str(refused.value)
    assert "\n" not in message and "needs 175 credits" in message and "50 of 400 left" in message
    assert "nothing was sent" in message and "%vydra budget" in message
    assert client.requests_sent == sent and _jobs_on(box) == created == 2  # 0 requests sent
    ip.run_line_magic("vydra", "budget")
    shown = capsys.readouterr().out
    assert "400 sandbox credits: 350 used, 50 left ($0.15)" in shown

    ip.run_line_magic("vydra", f"cancel {second.id}")
    assert "175 credits refunded" in capsys.readouterr().out
    assert second.status == "cancelled" and not first.done  # the refund is seen: 175 back in the budget
    third = ip.run_cell_magic("vydra", "veo3", "a heron fishes")
    assert third.credits_charged == 175 and _jobs_on(box) == 3
    ip.run_line_magic("vydra", "budget")
    assert "350 used, 50 left" in capsys.readouterr().out
    # The dry run of a fourth says what the real run would meet.
    ip.run_cell_magic("vydra", "veo3 --dry-run", "one more heron")
    assert "Warning: the real run would be refused: This veo3 job needs 175 credits and the session budget has 50" \
        in capsys.readouterr().out
    ip.run_line_magic("vydra", "budget --clear")
    assert "Removed the session budget" in capsys.readouterr().out
    for job in (first, third):
        job.cancel()


def test_client_budget_sweeps_and_tags(sb: Any) -> None:
    client = make_client(sb, budget=500)
    assert [b.scope for b in current_session().budgets.budgets] == ["session"]
    first = client.generate("veo3", prompt="one")
    # A sweep that would cross the budget is refused whole: its total is checked before any request.
    sent, created = client.requests_sent, _jobs_on(sb)
    with pytest.raises(vydra_nb.BudgetExceededError) as refused:
        vydra_nb.sweep("veo3", ["a", "b"], client=client, show=False)
    assert refused.value.needed == 350 and refused.value.left == 325 and refused.value.scope == "session"
    assert "This sweep of 2 veo3 jobs needs 350 credits" in str(refused.value)
    assert client.requests_sent == sent and _jobs_on(sb) == created
    # A tag budget caps the jobs with that tag only.
    current_session().budgets.set(100, per="tag:promo")
    promo = client.generate("nano-banana", prompt="promo 1", tag="promo")
    assert promo.tag == "promo" and current_session().history().get(promo.id)["tag"] == "promo"
    with pytest.raises(vydra_nb.BudgetExceededError, match="tag promo budget has 92 of 100 left"):
        client.generate("veo3", prompt="promo video", tag="promo")
    s = vydra_nb.sweep("nano-banana", ["x", "y"], client=client, show=False, tag="promo")
    s.wait(60)
    assert {j.tag for j in s.jobs} == {"promo"}
    statuses = {st.budget.scope: (st.used, st.left) for st in current_session().budgets.status("sandbox")}
    assert statuses == {"session": (175 + 8 * 3, 500 - 175 - 24), "tag promo": (24, 76)}
    # A failed job gives its credits back as soon as its refund is seen.
    failing = client.generate("veo3", prompt="[fail] nope")
    failing.wait(60, raise_on_failure=False)
    assert failing.status == "failed" and failing.credits_refunded == 175
    assert current_session().budgets.used(current_session().budgets.budgets[0], "sandbox") == 175 + 24
    with pytest.raises(vydra_nb.ConfigurationError, match="per session, day or tag"):
        make_client(sb, budget=100, budget_per="week")
    first.wait(60)


def test_a_day_budget_counts_other_kernels_spend_from_the_history(sb: Any) -> None:
    """A restarted kernel (another process) spent 175 today: a day budget of 400 leaves 225."""
    script = textwrap.dedent(f"""
        import vydra_nb
        c = vydra_nb.Client(api_key={sb.api_key!r}, base_url={sb.url!r}, time_scale={1 / sb.speed})
        c.generate("veo3", prompt="yesterday's kernel, today")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env={**os.environ})
    client = make_client(sb, budget=400, budget_per="day")
    budgets = current_session().budgets
    assert budgets.status("sandbox")[0].used == 175
    client.generate("veo3", prompt="fits: 350 of 400")
    with pytest.raises(vydra_nb.BudgetExceededError, match="day budget has 50 of 400 left"):
        client.generate("veo3", prompt="does not fit", aspect_ratio="9:16")
    assert budgets.status("vydra")[0].used == 0  # fake credits never use up a real budget
    assert budgets.used(budgets.budgets[0], "sandbox", now=__import__("time").time() + 2 * 86400) == 0  # a new day


def test_the_studio_refuses_a_click_over_the_budget_before_sending(sb: Any) -> None:
    from vydra_nb.notebook.studio import Studio

    client = make_client(sb, budget=100, credit_warning_threshold=None)
    st_ = Studio(client, model="veo3")
    st_.fields["prompt"].value = "a lake"
    sent = client.requests_sent
    assert st_.submit_form() is None
    assert "budget has 100 of 100 left" in st_.reason.value and client.requests_sent == sent + 1  # the balance shown
    assert _jobs_on(sb) == 0


def test_budget_command_mistakes_are_one_line(slow_ip: InteractiveShell) -> None:
    ip = slow_ip
    for line, expected in [
        ("budget 100 --per week", "must be session, day or tag NAME"),
        ("budget 100 --per tag", "needs the tag's name"),
        ("budget -5", "needs a whole number"),
        ("budget lots", "needs a whole number"),
        ("budget 100 --clear", "either a budget or --clear"),
    ]:
        with pytest.raises(UsageError, match=expected):
            ip.run_line_magic("vydra", line)
    ip.run_line_magic("vydra", "budget 300 --per tag lake-promo")
    ip.run_line_magic("vydra", "budget 900 --per day")
    assert {b.scope: b.limit for b in current_session().budgets.budgets} == {"tag lake-promo": 300, "day": 900}
    ip.run_line_magic("vydra", "budget --clear --per tag lake-promo")
    assert [b.scope for b in current_session().budgets.budgets] == ["day"]
    with pytest.raises(UsageError, match="--tag needs a short name"):
        ip.run_cell_magic("vydra", "veo3 --tag ''", "x")
    job = ip.run_cell_magic("vydra", "nano-banana --tag lake-promo", "a tagged apple")
    assert job.tag == "lake-promo"


# -- 3. warnings where money moves ------------------------------------------------------------------
def test_the_submission_that_crosses_the_threshold_warns_once() -> None:
    with sandbox_mod.start(credits=600, speed=100) as box:
        client = make_client(box, credit_warning_threshold=500)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client.generate("nano-banana", prompt="8 credits: 592 left")  # the model list is read first
            sent = client.requests_sent
            client.generate("nano-banana", prompt="8 credits: 584 left")
            assert client.requests_sent == sent + 2  # the POST, and one GET /organization
            client.generate("veo3", prompt="175 credits: 409 left, crossing")
            client.generate("veo3", prompt="175 credits: 234 left, still below")
        crossing = [w for w in caught if issubclass(w.category, vydra_nb.CreditWarning)]
        assert [str(w.message) for w in crossing] == [
            "Only 409 Vydra credits remain (below 500); top up before long jobs."]
        assert crossing[0].filename == __file__  # in the caller's code: the cell that crossed it
        assert client.credits_remaining == 234 and client.plan == "creator"
        # A 402 says the balance: no request is made to learn it.
        box.set_price("veo3", 1000)
        client.models(refresh=True)
        sent = client.requests_sent
        with pytest.raises(vydra_nb.InsufficientCreditsError):
            client.generate("veo3", prompt="too dear")
        assert client.requests_sent == sent + 1 and client.credits_remaining == 234


def test_no_balance_request_when_the_status_window_is_nearly_full(sb: Any) -> None:
    # Real-time windows (a minute), so that the window filled here stays full during the submission.
    client = vydra_nb.Client(api_key=sb.api_key, base_url=sb.url, credit_warning_threshold=9_900)
    client.generate("nano-banana", prompt="warm up: the model list, 9,992 left")
    window = client.limiter.windows["status"]
    while window.headroom() > 15:  # fill the window but the share kept for polls
        window.acquire()
    sent = client.requests_sent
    with pytest.warns(vydra_nb.CreditWarning, match="About 9817 Vydra credits remain"):
        client.generate("veo3", prompt="estimated from the known balance")
    assert client.requests_sent == sent + 1  # the POST only


def test_a_cell_that_crosses_the_threshold_warns_in_that_cell(slow_ip: InteractiveShell) -> None:
    ip = slow_ip
    ip.run_line_magic("config", "VydraMagics.low_credit_threshold = 4900")
    with pytest.warns(vydra_nb.CreditWarning, match="4825 Vydra credits remain"):
        ip.run_cell_magic("vydra", "veo3", "crosses")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ip.run_cell_magic("vydra", "nano-banana", "already below: no second warning")


# -- 4. price history ------------------------------------------------------------------------------
def test_a_price_change_between_two_jobs_is_history_not_a_discrepancy(sb: Any) -> None:
    client = make_client(sb)
    current_session().use_client(client)
    before = client.generate("veo3", prompt="at the old price")
    listing = sb.set_price("veo3", 200)
    assert listing["creditsPerUnit"] == 200
    after = client.generate("veo3", prompt="at the new price")  # the client's model list still says 175
    assert (before.credits_charged, after.credits_charged) == (175, 200)
    assert (before.catalog_credits, after.catalog_credits) == (175, 200) and after.pricing_unit == "video"
    history = vydra_nb.price_history_df()
    assert history[["model", "credits", "previous_credits", "change", "jobs"]].astype(object).where(
        history[["model", "credits", "previous_credits", "change", "jobs"]].notna(), None).values.tolist() == [
        ["veo3", 175, None, None, 1], ["veo3", 200, 175, 25, 1]]
    assert (history["first_seen"] <= history["last_seen"]).all() and str(history["first_seen"].dt.tz) == "UTC"
    df = vydra_nb.jobs_df()
    assert df["charged_vs_catalog"].tolist() == [0, 0]  # nothing flagged
    # A job charged differently from what the catalog lists is flagged.
    sb.set_price("veo3", 200, charge=230)
    odd = client.generate("veo3", prompt="charged 230, listed 200")
    flagged = vydra_nb.jobs_df().set_index("id")["charged_vs_catalog"]
    assert flagged[odd.id] == 30 and flagged[after.id] == 0
    assert len(vydra_nb.price_history_df()) == 2  # the catalog did not change again
    # Priced variants are prices of their own, not a change.
    client.generate("grok-imagine", prompt="image", model="text-to-image")
    client.generate("grok-imagine", prompt="video", model="text-to-video")
    grok = vydra_nb.price_history_df(model="grok-imagine")
    assert grok[["variant", "credits"]].values.tolist() == [["model=text-to-image", 8], ["model=text-to-video", 150]]
    assert grok["change"].isna().all()


def test_set_price_on_a_sandbox_in_its_own_process() -> None:
    from vydra_nb.sandbox.process import spawn

    with spawn(credits=1000, speed=100) as box:
        client = vydra_nb.Client(api_key=box.api_key, base_url=box.url, time_scale=0.01, history=False)
        assert client.model("veo3").credits_per_unit == 175
        assert box.set_price("veo3", 150)["creditsPerUnit"] == 150
        assert box.set_price("grok-imagine", 120, variant="text-to-video")["inputSchema"]["properties"]["model"][
            "x-vydra-credits"]["text-to-video"] == 120
        assert client.generate("veo3", prompt="cheaper now").credits_charged == 150
        with pytest.raises(ValueError, match="no model 'veo9'"):
            box.set_price("veo9", 1)
        with pytest.raises(ValueError, match="whole number"):
            box.set_price("veo3", -1)


# -- 5. dollars ------------------------------------------------------------------------------------
def test_dollars_follow_the_plan_and_the_setting_and_round_half_up() -> None:
    # The example: at $0.003, 175 credits is $0.525 -> $0.53 and 525 is $1.575 -> $1.58
    # (a float made the second $1.57).
    rate = Rate(Decimal("0.003"), "test")
    assert (rate.format(175), rate.format(525)) == ("$0.53", "$1.58")
    assert rate_for("creator").format(175) == "$0.51" and rate_for("pro").source == "pro plan, estimated"
    assert "assumed" in rate_for(None).source and "not in the rate table" in rate_for("team").source
    with sandbox_mod.start(credits=10_000, speed=100, plan="pro") as box:
        client = make_client(box)
        current_session().use_client(client)
        models = vydra_nb.models_df()  # asks for the plan once, with the list
        assert models.attrs["usd_rate"] == "USD at $0.0025 per credit (pro plan, estimated)"
        assert models.set_index("slug").loc["veo3", "usd_per_unit"] == 0.44  # 0.4375, half up
        client.generate("veo3", prompt="a lake")
        spend = vydra_nb.spend_summary()
        assert spend.loc["veo3", "usd"] == 0.44 and "pro plan, estimated" in frames.styled(spend).to_html()
        # %config VydraMagics.usd_per_credit (the session's setting) wins over the plan...
        current_session().settings.usd_per_credit = 0.003
        assert vydra_nb.jobs_df()["usd"].tolist() == [0.53]
        assert vydra_nb.jobs_df().attrs["usd_rate"] == "USD at $0.003 per credit (set by VydraMagics.usd_per_credit)"
        # ...and a client's own setting, or the argument, win over that.
        own = make_client(box, usd_per_credit="0.004")
        assert own.usd_rate().format(525) == "$2.10" and "Client(usd_per_credit" in own.usd_rate().source
        assert vydra_nb.spend_summary(usd_per_credit=0.01).loc["veo3", "usd"] == 1.75
        with pytest.raises(vydra_nb.ConfigurationError, match="usd_per_credit must be a finite number"):
            make_client(box, usd_per_credit=-1)


def test_the_dollar_setting_reaches_the_magics(slow_ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip = slow_ip
    ip.run_line_magic("config", "VydraMagics.usd_per_credit = 0.003")
    ip.run_cell_magic("vydra", "veo3 --dry-run", "a lake")
    assert "Cost: 175 credits ($0.53) per video" in capsys.readouterr().out
    ip.run_line_magic("config", "VydraMagics.usd_per_credit = None")
    ip.run_cell_magic("vydra", "veo3 --dry-run", "a lake")
    assert "Cost: 175 credits ($0.51) per video" in capsys.readouterr().out


@settings(max_examples=300, deadline=None)
@given(credits=st.lists(st.integers(min_value=-10**9, max_value=10**9), max_size=20),
       rate=st.sampled_from([*PLAN_USD_PER_CREDIT.values(), Decimal("0.003"), Decimal("0.00123457"), Decimal("0.5")]))
def test_table_dollars_are_decimal_half_up(credits: list[int], rate: Decimal) -> None:
    """The vectorised conversion of every table agrees with Decimal, half up, cent by cent."""
    series = pd.Series(credits + [None], dtype="Int64")
    got = frames._usd(series, Rate(rate, "test")).tolist()
    want = [float((Decimal(c) * rate).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)) for c in credits]
    assert got[:-1] == want and pd.isna(got[-1])
    assert all(float(to_usd(c, rate)) == w for c, w in zip(credits, want, strict=True))


# -- 6. Keep / Reject buttons ----------------------------------------------------------------------
def test_keep_and_reject_buttons(sb: Any) -> None:
    from vydra_nb.views.verdicts import VerdictButtons, VerdictPanel

    client = make_client(sb)
    job = client.generate("nano-banana", prompt="a pear")
    buttons = VerdictButtons(job)
    assert buttons.layout.display == "none" and buttons.value is None  # nothing to judge yet
    job.wait(60)
    assert _until(lambda: buttons.layout.display is None)
    buttons.value = "kept"  # what a click does
    assert job.verdict == "kept" and current_session().history().get(job.id)["verdict"] == "kept"
    job.reject()  # from Python: the buttons follow
    assert buttons.value == "rejected"
    from vydra_nb.views.display import job_html, job_text

    assert "vydra-verdict-rejected" in job_html(job) and "verdict: rejected" in job_text(job)
    buttons.close()
    assert buttons.comm is None

    panel = VerdictPanel()
    good = client.generate("nano-banana", prompt="a plum")
    bad = client.generate("nano-banana", prompt="[fail] a plum")
    panel.add(good)
    panel.add(bad, label="the failing one")
    for j in (good, bad):
        j.wait(60, raise_on_failure=False)
    assert _until(lambda: len(panel.children) == 1)  # a failed job has nothing to judge: its row goes
    assert panel.rows[bad].comm is None and panel.children[0] is panel.rows[good]
    panel.rows[good].value = "kept"
    assert good.verdict == "kept"
    panel.close()
