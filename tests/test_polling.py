"""The polling policy on its own: pure functions of time, so checked exactly, without a server."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vydra_nb.api.polling import PollPolicy, estimate_remaining

P = PollPolicy()


def test_without_an_estimate_it_backs_off_geometrically_to_the_cap() -> None:
    delays, prev = [], None
    for _ in range(12):
        prev = P.next_delay(previous_delay=prev, remaining=None)
        delays.append(prev)
    assert delays[0] == P.min_delay
    assert all(b >= a for a, b in zip(delays, delays[1:]))
    assert delays[-1] == P.max_delay


def test_routine_polls_share_the_status_budget_between_live_jobs() -> None:
    # 100 live jobs may not poll more than 80 % of 100 per minute between them.
    delay = P.next_delay(previous_delay=None, remaining=None, live_jobs=100)
    assert 100 * 60 / delay <= 0.8 * 100 + 1e-9


def test_the_poll_aimed_at_the_end_is_not_held_back_by_the_budget() -> None:
    # With 20 live jobs a routine poll waits 15 s; the job ends in 2 s: poll right after it.
    assert P.next_delay(previous_delay=10.0, remaining=2.0, live_jobs=20) == pytest.approx(2.0 + P.eta_margin)


def test_far_from_the_end_it_polls_about_halfway_and_no_more_often_than_routine() -> None:
    assert P.next_delay(previous_delay=4.0, remaining=40.0) == pytest.approx(20.0)
    assert P.next_delay(previous_delay=4.0, remaining=400.0) == P.eta_max_delay  # capped
    # Halfway would be 4 s, but 20 live jobs space routine polls 15 s apart.
    assert P.next_delay(previous_delay=4.0, remaining=8.0 + 8.0, live_jobs=20) == pytest.approx(15.0)


def test_an_overdue_job_is_polled_soon_then_less_often_the_later_it_is() -> None:
    assert P.next_delay(previous_delay=5.0, remaining=-0.5) == P.overdue_delay
    assert P.next_delay(previous_delay=5.0, remaining=-10.0) == pytest.approx(5.0)
    # Never more often than the budget's routine spacing once it is far overdue.
    assert P.next_delay(previous_delay=5.0, remaining=-100.0, live_jobs=1) == pytest.approx(7.5)


def test_estimate_remaining() -> None:
    assert estimate_remaining(None, (1.0, 10.0), 1.0) is None
    assert estimate_remaining((1.0, 10.0), (1.0, 10.0), 1.0) is None  # one observation: no rate
    assert estimate_remaining((0.0, 10.0), (5.0, 10.0), 5.0) is None  # no progress: no rate
    assert estimate_remaining((0.0, 10.0), (5.0, 100.0), 5.0) == 0.0
    # 1 %/s, last seen at 50 % (really 50-51 %), read 2 s later: 100 - 50.5 - 2.
    assert estimate_remaining((0.0, 10.0), (40.0, 50.0), 42.0) == pytest.approx(47.5)


def test_scaled_scales_every_duration() -> None:
    fast = P.scaled(0.1)
    assert fast.min_delay == pytest.approx(0.1) and fast.max_delay == pytest.approx(2.0)
    assert fast.eta_max_delay == pytest.approx(3.0) and fast.budget_interval(1) == pytest.approx(P.budget_interval(1) / 10)
    assert fast.next_delay(previous_delay=None, remaining=None) == pytest.approx(0.1)


def simulate(duration: float, pending: float, policy: PollPolicy = P) -> tuple[int, float]:
    """Follow one job whose server floors progress, as Job.wait does; (polls, delay after its end)."""
    t, prev, polls = 0.0, None, 0
    first = last = None
    while True:
        delay = policy.next_delay(previous_delay=prev, remaining=None if first is None else
                                  estimate_remaining(first, last, t), live_jobs=1)
        t += delay
        prev = delay
        polls += 1
        if t >= duration:
            return polls, t - duration
        progress = 0 if t < pending else math.floor((t - pending) / (duration - pending) * 100)
        if progress > 0:
            first = first or (t, float(progress))
            last = (t, float(progress))


@settings(max_examples=200, deadline=None)
@given(duration=st.floats(min_value=30.0, max_value=180.0), pending_share=st.floats(min_value=0.0, max_value=0.2))
def test_a_steady_job_is_seen_within_about_a_second_for_fewer_requests_than_polling_every_10_s(
    duration: float, pending_share: float
) -> None:
    polls, late = simulate(duration, duration * pending_share)
    assert late <= 1.5, (polls, late)
    baseline_polls = math.ceil(duration / 10.0)  # polling every 10 s
    assert polls <= baseline_polls + 4, (polls, baseline_polls)


def test_routine_polls_step_aside_when_the_status_window_is_nearly_used_up() -> None:
    """The tracker keeps the last 20 % of the status window for polls aimed at a job's end."""
    from vydra_nb import Client
    from vydra_nb.api.jobs import Job
    from vydra_nb.tracking.tracker import Tracker
    from vydra_nb.api.ratelimit import STATUS, Limit

    client = Client(api_key="k", base_url="http://127.0.0.1:9/api/v1", rate_limits={STATUS: Limit(10, 60.0)})
    window = client.limiter[STATUS]
    job = Job(id="job_p", model="veo3", status="running", client=client)
    assert window.headroom() == 10 and Tracker._routine_step(job) == 0.0
    for _ in range(7):
        window.acquire()
    assert window.headroom() == 3 and Tracker._routine_step(job) == 0.0  # 3 > the 2 kept back
    window.acquire()
    assert window.headroom() == 2 and Tracker._routine_step(job) == pytest.approx(6.0)
    window.block_for(5.0)  # a 429's Retry-After: nothing may go
    assert window.headroom() == 0
    client.close()
