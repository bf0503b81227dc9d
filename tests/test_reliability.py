"""Reliability under faults (issue 10): nothing lost, nothing charged twice.

One sandbox misbehaves on about a fifth of its API requests: 500/503 before processing, a 500 or
a dropped connection *after* the job was created and charged (``500after``, ``dropafter``: the
response is lost, the charge is not), connections dropped before processing, slow answers, and
jobs failing part-way with a refund. Through it we submit 200 jobs the ways a user does: the
``%%vydra`` cell magic (with and without ``--wait``) and ``%vydra generate`` in a real
``InteractiveShell``, and ``Client.generate``. Each way is taken both by a client with the default
retries and by one with none and a read timeout shorter than a slow answer, so that every kind of
fault also reaches the caller as an error to handle. Cancellations run through the same faults.
It runs against both sandbox flavors: ``spec`` (the documented API) and ``live`` (plus job
listing, synchronous image answers, ``processing``). Nothing of our stack is mocked: real HTTP,
the real tracker thread, the real SQLite history.

The promises checked, each against the sandbox's own ledger (``/_sandbox/state``):

* every job the sandbox charged is in the history exactly once, ends there in a terminal state
  that agrees with the ledger (refunded <=> failed/cancelled), with the amounts the ledger shows;
* ``balance == initial - charged + refunded``; one charge per job, at most one refund per job;
* every failed submission raised a typed ``VydraError`` with a one-line message; when a charge may
  have happened (``OutcomeUnknownError``) it says where to look and carries the request's
  ``Idempotency-Key``, and repeating the request with that key recovers exactly the charged job,
  never a second one; where the server lists jobs (``live``), the advice in the message itself,
  ``%vydra jobs --sync``, finds every charged job the history was missing;
* the tracker thread never died while jobs were live and recovered from every failed poll.

The figures (errors by type, charges, refunds, retries) go to ``test-artifacts/reliability.json``
and are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import vydra_nb
from vydra_nb.api.errors import OutcomeUnknownError, VydraError
from vydra_nb.api.jobs import TERMINAL, Job
from vydra_nb.session import current as current_session

from .conftest import end_vydra_session

N_JOBS = 200
SPEED = 500  # a 90 s Veo job takes ~0.2 s; rate windows are 0.12 s
# About 20 % of API requests fail: 7 % 500, 4 % 503, 4 % 500-after-charge, 2 % dropped before
# processing, 3 % dropped after the charge; plus 5 % slow answers and 5 % of jobs failing part-way.
# The seed can be changed to soak the promises under other sequences of faults.
SEED = int(os.environ.get("VYDRA_RELIABILITY_SEED", "10"))
FAULTS = f"500=0.07,503=0.04,500after=0.04,drop=0.02,dropafter=0.03,slow=0.05,slow_s=0.2,jobfail=0.05,seed={SEED}"
HURRIED_READ_TIMEOUT = 0.1  # below slow_s: a slow answer is a read timeout for the no-retry clients
ARTIFACT = Path(__file__).resolve().parent.parent / "test-artifacts" / "reliability.json"
RECOVERY_ATTEMPTS = 25
# How a request is made. "no-retry" clients have max_retries=0 and a read timeout shorter than a
# slow answer, so every fault, timeouts included, reaches the caller instead of being retried away.
PATHS = ("cell", "cell-wait", "generate-magic", "cell-no-retry", "generate-magic-no-retry",
         "client", "client-no-retry")
MAGIC_PATHS = {p for p in PATHS if not p.startswith("client")}


@dataclass
class Submission:
    """One job the test asked for, by whichever path, and what became of the request."""

    path: str  # see PATHS
    slug: str
    body: dict[str, Any]
    client: vydra_nb.Client
    job: Job | None = None
    error: BaseException | None = None  # what the caller saw (the UsageError for magics)
    cause: VydraError | None = None  # the typed error behind it
    recovered: bool = False
    recovery_attempts: int = 0


@dataclass
class Figures:
    """What happened, for the report."""

    errors: Counter = field(default_factory=Counter)
    cancel_errors: Counter = field(default_factory=Counter)
    retries: Counter = field(default_factory=Counter)
    poll_error_jobs: set[str] = field(default_factory=set)
    tracker_gaps: list[str] = field(default_factory=list)
    thread_crashes: list[str] = field(default_factory=list)


class _AttemptCounter(logging.Handler):
    """Counts retries from the transport's own debug line ``METHOD PATH (attempt N)``."""

    def __init__(self, figures: Figures) -> None:
        super().__init__(logging.DEBUG)
        self.figures = figures

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "%s %s (attempt %d)" and isinstance(record.args, tuple) and record.args[2] > 1:
            self.figures.retries[str(record.args[0])] += 1


class TrackerWatch:
    """Samples, under the tracker's own lock, that a thread is alive whenever a job is live.

    The tracker's thread exits by design when no job is left, so "never died" means: at no moment
    is a job live while its thread is gone. Exceptions escaping any thread are caught too.
    """

    def __init__(self, figures: Figures) -> None:
        self.figures = figures
        self.tracker = current_session().tracker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracker-watch", daemon=True)
        self.samples = 0
        self.threads_seen: set[int] = set()
        self._old_hook = threading.excepthook

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        self.figures.thread_crashes.append(f"{getattr(args.thread, 'name', '?')}: {args.exc_type.__name__}: {args.exc_value}")
        self._old_hook(args)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            with self.tracker._cond:  # the same lock track()/untrack() and the thread's exit take
                live = len(self.tracker._jobs)
                thread = self.tracker._thread
                alive = thread is not None and thread.is_alive()
            self.samples += 1
            if thread is not None:
                self.threads_seen.add(id(thread))
            if live and not alive:
                self.figures.tracker_gaps.append(f"{live} live job(s) and no tracker thread")

    def __enter__(self) -> TrackerWatch:
        threading.excepthook = self._hook
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        threading.excepthook = self._old_hook


SUMMARY: dict[str, Any] = {}  # per flavor; written to ARTIFACT after each run


# (flavor, whether the sandbox honours Idempotency-Key). The reference documents no idempotency,
# so the default run is ``live`` without it: a lost answer is found again by `%vydra jobs --sync`.
# The replay path is exercised on ``spec``, on a sandbox that echoes the key, asked for by name.
SETUPS = {"live-no-idempotency": ("live", False), "spec-idempotent": ("spec", True)}


@pytest.fixture(params=list(SETUPS))
def shell(request: pytest.FixtureRequest) -> Iterator[InteractiveShell]:
    """A real IPython shell with the extension loaded and a fast sandbox as its backend.

    ``spec``: the API as documented. ``live``: what the live service is reported to do besides
    (``GET /jobs``, synchronous image answers, ``processing``). Made the session's backend the way
    ``%vydra sandbox`` does it, in a process of its own.
    """
    flavor, idempotent = SETUPS[request.param]
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "vydra_nb")
    ip.run_line_magic("config", "VydraMagics.resume_on_load = False")
    ip.run_line_magic("config", "VydraMagics.auto_download = False")  # media rendering is not under test
    current_session().start_sandbox(credits=1_000_000, speed=SPEED, flavor=flavor, idempotency=idempotent)
    ip.user_ns["_idempotent"] = idempotent
    yield ip
    end_vydra_session(ip)
    ip.run_line_magic("config", "VydraMagics.auto_download = True")


def _plan() -> list[tuple[str, str, dict[str, Any]]]:
    """200 (path, model, body) triples, interleaved so every path meets every fault."""
    from vydra_nb.sandbox.catalog import ASMR_THEMES

    plan = []
    for i in range(N_JOBS):
        k = i % 10
        fail = " [fail]" if i % 23 == 5 else ""  # a few deterministic content failures (refunded)
        if k in (0, 3, 6):
            slug, body = ("elevenlabs-tts", {"text": f"Line {i}{fail}"}) if i % 2 else ("nano-banana", {"prompt": f"A lemon no. {i}{fail}"})
            plan.append(("cell-no-retry" if k == 6 else "cell", slug, body))
        elif k == 1:
            plan.append(("cell-wait" if i % 20 == 1 else "cell", "grok-imagine", {"model": "text-to-image", "prompt": f"Comet {i}{fail}"}))
        elif k == 8:
            path = "generate-magic-no-retry" if i % 20 == 18 else "generate-magic"
            plan.append((path, "asmr-generator", {"theme": ASMR_THEMES[i % len(ASMR_THEMES)]}))
        elif k in (2, 5, 9):
            plan.append(("client", "veo3" if k == 2 else "elevenlabs-tts",
                         {"prompt": f"A lake {i}{fail}"} if k == 2 else {"text": f"Client line {i}{fail}"}))
        else:  # 4, 7
            plan.append(("client-no-retry", "nano-banana" if k == 4 else "elevenlabs-tts",
                         {"prompt": f"A pear {i}{fail}"} if k == 4 else {"text": f"Hurried line {i}{fail}"}))
    return plan


def _magic_source(path: str, slug: str, body: dict[str, Any]) -> str:
    """The cell a user would type for this request."""
    if path.startswith("generate-magic"):
        return f"%vydra generate {slug} --theme {body['theme']}"
    prompt = body.get("prompt", body.get("text"))
    flags = " --model text-to-image" if slug == "grok-imagine" else ""
    wait = " --wait" if path == "cell-wait" else ""
    return f"%%vydra {slug}{flags}{wait}\n{prompt}"


def _typed_cause(exc: BaseException) -> VydraError | None:
    """The VydraError behind an error: itself, or what the magics turned into a UsageError."""
    if isinstance(exc, VydraError):
        return exc
    if isinstance(exc, UsageError) and isinstance(exc.__context__, VydraError):
        return exc.__context__
    return None


def _submit(sub: Submission, ip: InteractiveShell) -> None:
    if sub.path in ("client", "client-no-retry"):
        try:
            sub.job = sub.client.generate(sub.slug, sub.body)
        except Exception as exc:  # noqa: BLE001 - the point is to see what was raised
            sub.error, sub.cause = exc, _typed_cause(exc)
        return
    session = current_session()
    session_client = session.existing_client
    session.use_client(sub.client)  # what `%vydra sandbox` does: the session's client for this cell
    try:
        result = ip.run_cell(_magic_source(sub.path, sub.slug, sub.body), store_history=False)
    finally:
        session.use_client(session_client)
    if result.error_in_exec is not None:
        sub.error, sub.cause = result.error_in_exec, _typed_cause(result.error_in_exec)
    elif result.error_before_exec is not None:
        sub.error = result.error_before_exec
    else:
        sub.job = result.result


def _recover(sub: Submission) -> None:
    """What OutcomeUnknownError tells the caller: repeat the request with the same key.

    The sandbox honours ``Idempotency-Key``: a request it already charged is answered with the
    same job (no second charge); one it never processed creates the job now, once.
    """
    assert isinstance(sub.cause, OutcomeUnknownError)
    key = sub.cause.idempotency_key
    for _ in range(RECOVERY_ATTEMPTS):
        sub.recovery_attempts += 1
        try:
            sub.job = sub.client.generate(sub.slug, sub.body, idempotency_key=key)
        except OutcomeUnknownError as exc:
            assert exc.idempotency_key == key
            continue
        sub.recovered = True
        sub.job.extra["recovered"] = True
        return
    raise AssertionError(f"could not recover {sub.slug} request {key} in {RECOVERY_ATTEMPTS} attempts")


def _check_message(exc: BaseException, cause: VydraError) -> None:
    """One clear line; when a charge may have happened, where to look and the key to repeat with."""
    text = str(exc)
    assert text and "\n" not in text and len(text) <= 400, text
    assert str(cause) == text, (exc, cause)  # the magics show the library's message unchanged
    assert "Traceback" not in text and "requests." not in text and "urllib3" not in text, text
    if isinstance(cause, OutcomeUnknownError):
        assert "may or may not have been accepted" in text and "%vydra jobs --sync" in text, text
        assert "before submitting again" in text.lower() and "%vydra credits" in text, text
        assert cause.idempotency_key.startswith("vydra-nb-") and cause.model


def _sync_as(ip: InteractiveShell, client: vydra_nb.Client) -> None:
    """``%vydra jobs --sync`` with ``client`` as the session's client (retried through faults)."""
    session = current_session()
    session_client = session.existing_client
    session.use_client(client)
    try:
        for _ in range(RECOVERY_ATTEMPTS):
            try:
                ip.run_line_magic("vydra", "jobs --sync --limit 1")
                return
            except UsageError as exc:  # a listing request lost to a fault: say so, try again
                assert isinstance(exc.__context__, VydraError) and "\n" not in str(exc)
        raise AssertionError("`%vydra jobs --sync` never got through")
    finally:
        session.use_client(session_client)


def _wait_until_idle(box: Any, timeout: float = 60.0) -> None:
    """Until the sandbox has no pending or running job (its own clock decides), polling its state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = _state(box)["jobs"]
        if not jobs.get("pending") and not jobs.get("running"):
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"sandbox jobs still active: {_state(box)['jobs']}")


def _state(box: Any) -> dict[str, Any]:
    """The sandbox's ledger over HTTP, as an out-of-process test would read it."""
    r = requests.get(f"{box.root}/_sandbox/state", timeout=10)
    r.raise_for_status()
    return r.json()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_hundred_jobs_through_faults_lose_nothing_and_charge_once(shell: InteractiveShell) -> None:
    t0 = time.monotonic()
    magics = shell.magics_manager.registry["VydraMagics"]
    box = magics.session.sandbox
    replayable = bool(shell.user_ns["_idempotent"])
    cell_client: vydra_nb.Client = magics.client
    # More clients on the same organization, each with its own key (own rate windows).
    direct = vydra_nb.Client(api_key=box.add_key(), base_url=box.url, time_scale=1 / box.speed)

    def hurried_client() -> vydra_nb.Client:
        return vydra_nb.Client(api_key=box.add_key(), base_url=box.url, time_scale=1 / box.speed,
                               max_retries=0, timeout=(2.0, HURRIED_READ_TIMEOUT))

    hurried, hurried_cell = hurried_client(), hurried_client()
    all_clients = (cell_client, direct, hurried, hurried_cell)
    clients = {"cell": cell_client, "cell-wait": cell_client, "generate-magic": cell_client,
               "cell-no-retry": hurried_cell, "generate-magic-no-retry": hurried_cell,
               "client": direct, "client-no-retry": hurried}
    for c in all_clients:
        c.models()  # the model list is cached for an hour: fetched once before the weather turns

    figures = Figures()
    tracker = current_session().tracker
    polls0, failures0 = tracker.polls, tracker.poll_failures

    def note_poll_errors(job: Job) -> None:
        if job.poll_error:
            figures.poll_error_jobs.add(job.id)

    for c in all_clients:
        c.add_job_listener(note_poll_errors)

    counter = _AttemptCounter(figures)
    logger = logging.getLogger("vydra_nb")
    old_level = logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    initial = _state(box)["balance"]
    subs = [Submission(path, slug, body, clients[path]) for path, slug, body in _plan()]
    box.set_faults(FAULTS)
    try:
        with TrackerWatch(figures) as watch:
            for n, sub in enumerate(subs):
                _submit(sub, shell)
                if sub.job is not None:
                    tracker.track(sub.job)  # magics already did; Client.generate leaves it to the caller
                    if sub.path == "client" and sub.slug == "veo3" and n % 20 == 2:
                        try:  # cancel a few under the same faults: refunds, never twice
                            sub.client.cancel(sub.job.id, job=sub.job)
                        except VydraError as exc:
                            figures.cancel_errors[type(exc).__name__] += 1
                            _check_message(exc, exc)
            # Before recovery: which charged jobs does nobody know about yet?
            pre_charged = {e["job_id"] for e in _state(box)["ledger"] if e["kind"] == "charge"}
            known_before = {r["id"] for r in current_session().history().rows()}
            if box.flavor == "live":
                # Where the server lists jobs, the message's own advice finds every lost job:
                # `%vydra jobs --sync`, run by whoever holds each key, faults still on.
                for c in all_clients:
                    _sync_as(shell, c)
                synced = {r["id"] for r in current_session().history().rows()}
                assert pre_charged <= synced, f"`%vydra jobs --sync` missed {sorted(pre_charged - synced)[:5]}"
            if replayable:
                # The caller's side of the bargain: repeat every request whose outcome is unknown
                # with its key; the server answers a charged one with the same job.
                for sub in subs:
                    if isinstance(sub.cause, OutcomeUnknownError):
                        _recover(sub)
                        tracker.track(sub.job)
            assert tracker.join_idle(timeout=60), f"jobs still live: {[j.id for j in tracker.live]}"
            if not replayable:
                # The jobs only the listing knows of end on the server; one more sync records how.
                _wait_until_idle(box)
                for c in all_clients:
                    _sync_as(shell, c)
    finally:
        logger.removeHandler(counter)
        logger.setLevel(old_level)
        box.set_faults(None)
    elapsed = time.monotonic() - t0

    state = _state(box)
    history = current_session().history()
    rows = {r["id"]: r for r in history.rows()}
    charges = [e for e in state["ledger"] if e["kind"] == "charge"]
    refunds = [e for e in state["ledger"] if e["kind"] == "refund"]
    charged_ids = {e["job_id"] for e in charges}
    refund_of = {e["job_id"]: e for e in refunds}

    # -- every failed submission raised a typed VydraError with a one-line message ----------------
    for sub in subs:
        if sub.error is None:
            assert isinstance(sub.job, Job), sub
            continue
        figures.errors[f"{sub.path}: {type(sub.cause or sub.error).__name__}"] += 1
        assert sub.cause is not None, f"{sub.path} {sub.slug} raised an untyped {sub.error!r}"
        _check_message(sub.error, sub.cause)
        if sub.path in ("client", "cell", "cell-wait", "generate-magic"):
            # With retries, every fault is retried away except where a retry could charge twice
            # (the server has not yet shown it honours Idempotency-Key): only that may surface.
            assert isinstance(sub.cause, OutcomeUnknownError), sub.cause
    assert sum(figures.errors.values()) > 0, "the faults never reached a caller: the test tests nothing"
    assert any(isinstance(s.cause, OutcomeUnknownError) for s in subs)

    # -- the ledger: one charge per job, at most one refund, balance adds up -----------------------
    assert state["balance"] == initial - state["charged"] + state["refunded"]
    assert state["initialCredits"] == initial
    assert len(charges) == len(charged_ids), "a job was charged twice"
    assert len(refunds) == len(refund_of), "a job was refunded twice"
    assert refund_of.keys() <= charged_ids
    assert sum(e["amount"] for e in charges) == state["charged"]
    assert sum(e["amount"] for e in refunds) == state["refunded"]
    assert sum(state["jobs"].values()) == len(charged_ids)

    # -- one job per request: no request became two jobs, none was lost ------------------------
    job_ids = [s.job.id for s in subs if s.job is not None]
    unknown = [s for s in subs if isinstance(s.cause, OutcomeUnknownError) and s.job is None]
    assert len(job_ids) == len(set(job_ids)), "two requests share a job"
    assert len(job_ids) + len(unknown) == N_JOBS, "every request ends as one job or one OutcomeUnknownError"
    assert set(job_ids) <= charged_ids, f"held but never charged: {sorted(set(job_ids) - charged_ids)[:5]}"
    # Charged with nobody holding the job: only ever an ambiguous submission, at most one job each.
    orphans = charged_ids - set(job_ids)
    assert len(orphans) <= len(unknown), f"charged but held by nobody (a second charge?): {sorted(orphans)[:5]}"
    if replayable:
        assert not unknown and not orphans

    # -- a charged job missing from the history was always one an OutcomeUnknownError reported ---
    lost_before = pre_charged - known_before
    recovered_ids = {s.job.id for s in subs if s.recovered} | orphans
    assert lost_before <= recovered_ids, f"charged, unrecorded and never reported: {sorted(lost_before - recovered_ids)}"
    assert known_before <= pre_charged

    # -- the history: every charged job exactly once, terminal, agreeing with the ledger ------------
    assert history.count() == len(rows) == len(charged_ids)
    assert set(rows) == charged_ids, (
        f"charged, not in history: {sorted(charged_ids - set(rows))[:5]}; "
        f"in history, never charged: {sorted(set(rows) - charged_ids)[:5]}"
    )
    conn = history.connection_for_read()
    try:
        dupes = conn.execute("SELECT id, COUNT(*) FROM jobs GROUP BY id HAVING COUNT(*) > 1").fetchall()
    finally:
        conn.close()
    assert dupes == []
    amount_of = {e["job_id"]: e["amount"] for e in charges}
    statuses = Counter()
    for job_id, row in rows.items():
        statuses[row["status"]] += 1
        assert row["status"] in TERMINAL, row
        assert row["credits_charged"] == amount_of[job_id], row
        refund = refund_of.get(job_id)
        if refund is None:
            assert row["status"] == "completed", row
            assert not row["credits_refunded"], row
        else:
            expected = "cancelled" if refund["reason"] == "cancelled" else "failed"
            assert row["status"] == expected, (row, refund)
            assert row["credits_refunded"] == refund["amount"], (row, refund)
    for sub in subs:  # the Job objects in the user's hands agree with the history too
        if sub.job is not None:
            assert sub.job.done and sub.job.status == rows[sub.job.id]["status"]

    # -- the tracker: never died, and recovered from every failed poll -------------------------
    polls, poll_failures = tracker.polls - polls0, tracker.poll_failures - failures0
    assert figures.thread_crashes == []
    assert figures.tracker_gaps == [], figures.tracker_gaps[:3]
    assert watch.samples > 50
    assert poll_failures > 0, "no poll ever failed: the faults missed the tracker"
    assert figures.poll_error_jobs, "no job ever showed a failed poll"
    assert figures.poll_error_jobs <= set(rows)  # each such job still reached a terminal state above
    assert not tracker.live

    summary = {
        "flavor": box.flavor,
        "idempotency": replayable,
        "charged_found_only_by_sync": len(orphans),
        "jobs_requested": N_JOBS,
        "by_path": dict(Counter(s.path for s in subs)),
        "faults": FAULTS,
        "speed": SPEED,
        "submission_errors": dict(sorted(figures.errors.items())),
        "submission_errors_total": sum(figures.errors.values()),
        "outcome_unknown_recovered": sum(s.recovered for s in subs),
        "recovery_requests": sum(s.recovery_attempts for s in subs),
        "charged_but_unknown_before_recovery": len(lost_before),
        "cancel_errors": dict(figures.cancel_errors),
        "charged_jobs": len(charged_ids),
        "credits_charged": state["charged"],
        "refunded_jobs": len(refund_of),
        "credits_refunded": state["refunded"],
        "refund_reasons": dict(Counter(e["reason"] for e in refunds)),
        "double_charges": len(charges) - len(charged_ids),
        "balance": {"initial": initial, "final": state["balance"]},
        "final_statuses": dict(statuses),
        "http_retries_by_method": dict(figures.retries),
        "rate_limited_429": sum(c._transport.rate_limited for c in all_clients),
        "requests_sent": sum(c.requests_sent for c in all_clients),
        "tracker": {"polls": polls, "poll_failures": poll_failures,
                    "jobs_with_failed_polls": len(figures.poll_error_jobs),
                    "threads_started": len(watch.threads_seen), "watch_samples": watch.samples},
        "seconds": round(elapsed, 2),
    }
    SUMMARY[f"{box.flavor}{'-idempotent' if replayable else ''}"] = summary
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(SUMMARY, indent=2) + "\n")
    print(f"\nreliability ({box.flavor}):", json.dumps(summary, indent=2))
    for c in (direct, hurried, hurried_cell):
        c.close()


@pytest.mark.timeout(60)
def test_sync_finds_a_lost_charged_job_behind_a_hundred_newer_ones() -> None:
    """The OutcomeUnknownError message's advice must work for a busy account too."""
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "vydra_nb")
    ip.run_line_magic("config", "VydraMagics.resume_on_load = False")
    session = current_session()
    session_client = session.existing_client
    with vydra_nb.sandbox.start(credits=100_000, speed=SPEED, flavor="live") as box:
        client = vydra_nb.Client(api_key=box.api_key, base_url=box.url, time_scale=1 / SPEED)
        client.models()  # cached before every request starts failing
        box.set_faults("500after=1")
        with pytest.raises(OutcomeUnknownError):
            client.generate("elevenlabs-tts", text="the response to this one is lost")
        box.set_faults(None)
        lost = next(e["job_id"] for e in box.state()["ledger"] if e["kind"] == "charge")
        assert current_session().history().get(lost) is None
        for i in range(100):  # a busy afternoon since
            client.generate("elevenlabs-tts", text=f"later {i}")
        session.use_client(client)
        try:
            ip.run_line_magic("vydra", "jobs --sync")
        finally:
            session.use_client(session_client)
            client.close()
        assert current_session().history().get(lost) is not None, "`%vydra jobs --sync` did not find the lost charged job"
