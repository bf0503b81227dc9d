"""``APIClient``: every endpoint of the Vydra API as Python objects.

The client owns one ``Transport`` (the wire) and adds what the domain needs: the cached model
list, local validation of parameters before any credit is spent, one ``Job`` object per job
(through a ``JobRegistry``), downloads, credit warnings, and listeners that hear of every job the
moment the server accepts it.

This is the API layer: it records nothing by itself. ``vydra_nb.Client`` (``vydra_nb.session``)
is this class wired to the session's history, tracker and backend, and is what users construct.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vydra_nb.api.errors import (
    ConfigurationError,
    CreditWarning,
    InsufficientCreditsError,
    NotFoundError,
    ResponseError,
    ValidationError,
    VydraError,
)
from vydra_nb.api.inputs import (
    UPLOAD_MAX_AGE,
    LocalFile,
    Resolved,
    Upload,
    check_local_file,
    field_kind,
    file_from_bytes,
    job_input,
    media_input,
    resolve_inputs,
    stand_ins,
    upload_name,
)
from vydra_nb.api.jobs import Job, JobRegistry
from vydra_nb.api.media import DEFAULT_DOWNLOAD_TIMEOUT, DEFAULT_MAX_DOWNLOAD, Downloader, Media, is_safe_url
from vydra_nb.api.models import CancelResult, Model, Organization, as_int, as_str
from vydra_nb.api.money import Rate, as_rate, rate_for
from vydra_nb.api.plan import ConcurrencyGate, PlanLimits
from vydra_nb.api.polling import DurationPrior, PollPolicy
from vydra_nb.api.ratelimit import GENERATE, LIST, STATUS, UPLOAD, Limit, RateLimiter
from vydra_nb.api.settings import download_home, host_key, is_sandbox_url, resolve_api_key
from vydra_nb.api.transport import Transport

log = logging.getLogger("vydra_nb")

class APIClient:
    """A Vydra API client. Safe to share between threads.

    ``api_key`` and ``base_url`` default to ``VYDRA_API_KEY`` / ``VYDRA_BASE_URL``. ``time_scale``
    shrinks every wait and rate window (a sandbox at ``speed=100`` wants ``time_scale=0.01``).
    ``registry`` is where jobs are looked up, so that clients of one session share job objects.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float | tuple[float, float] = (5.0, 30.0),
        max_retries: int = 3,
        model_cache_ttl: float = 3600.0,
        rate_limits: Mapping[str, Limit] | None = None,
        credit_warning_threshold: int | None = 500,
        poll_policy: PollPolicy | None = None,
        time_scale: float = 1.0,
        download_dir: str | os.PathLike[str] | None = None,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD,
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
        registry: JobRegistry | None = None,
        usd_per_credit: Any = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        limits = {k: Limit(v.calls, v.period * time_scale) for k, v in _default_limits(rate_limits).items()}
        self._transport = Transport(
            resolve_api_key(api_key),
            base_url,
            timeout=timeout if isinstance(timeout, tuple) else (timeout, timeout),
            max_retries=max_retries,
            backoff_base=0.5 * time_scale,
            backoff_max=8.0 * time_scale,
            max_rate_wait=180.0 * max(time_scale, 0.05),
            rate_limits=limits,
        )
        status_limit = limits[STATUS]
        self.poll_policy = poll_policy or PollPolicy(budget_calls=status_limit.calls).scaled(time_scale)
        self.model_cache_ttl = model_cache_ttl
        self.credit_warning_threshold = credit_warning_threshold
        self.time_scale = time_scale
        self._download_dir = Path(download_dir) if download_dir else None
        self.downloads = Downloader(max_bytes=max_download_bytes, timeout=download_timeout)
        self._models: list[Model] | None = None
        self._models_at = 0.0
        self._models_lock = threading.Lock()
        self._job_listeners: list[Callable[[Job], None]] = []
        self.registry = registry if registry is not None else JobRegistry()
        self._submitted: weakref.WeakSet[Job] = weakref.WeakSet()
        self.gate = ConcurrencyGate(lambda: list(self._submitted))
        self._plan: PlanLimits | None = None
        self._plan_known = False
        self._plan_lock = threading.Lock()
        self.credits_remaining: int | None = None
        self.plan: str | None = None  # from the last GET /organization answer: it sets the dollar rate
        self.usd_per_credit = usd_per_credit
        if self.usd_per_credit is not None:
            try:
                as_rate(self.usd_per_credit)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        self._warned_low = False
        self._uploads: dict[str, tuple[Upload, float]] = {}
        self._uploads_lock = threading.Lock()
        self._upload_lock = threading.Lock()
        self.uploads_sent = 0  # POST /upload requests this client sent (cache hits send none)

    # -- identity ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self._transport.base_url

    @property
    def is_sandbox(self) -> bool:
        """True for a loopback server: every view says SANDBOX so nobody mistakes it for the real thing."""
        return is_sandbox_url(self.base_url)

    @property
    def has_key(self) -> bool:
        return self._transport.has_key

    @property
    def backend(self) -> str:
        return "sandbox" if self.is_sandbox else "vydra"

    @property
    def host(self) -> str | None:
        """The server's identity in the history and the job registry (host, with its port on loopback)."""
        return host_key(self.base_url)

    @property
    def download_dir(self) -> Path:
        """Where results are saved: the ``download_dir`` given, else ``_default_download_dir()``."""
        return self._download_dir if self._download_dir is not None else self._default_download_dir()

    def _default_download_dir(self) -> Path:
        return download_home()

    @property
    def max_download_bytes(self) -> int:
        return self.downloads.max_download_bytes

    @max_download_bytes.setter
    def max_download_bytes(self, value: int) -> None:
        self.downloads.max_download_bytes = value

    @property
    def download_timeout(self) -> float:
        return self.downloads.download_timeout

    @download_timeout.setter
    def download_timeout(self, value: float) -> None:
        self.downloads.download_timeout = value

    @property
    def requests_sent(self) -> int:
        return self._transport.requests_sent

    @property
    def rate_limited(self) -> int:
        """429s this client received: its limiters and the plan's concurrency cap keep this at 0."""
        return self._transport.rate_limited

    @property
    def limiter(self) -> RateLimiter:
        return self._transport.limiter

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, key={self._transport.key_hint})"

    def close(self) -> None:
        self._transport.close()
        self.downloads.close()

    def __enter__(self) -> "APIClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def add_job_listener(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback(job)`` on every job this client creates or sees change (the history store)."""
        if callback not in self._job_listeners:
            self._job_listeners.append(callback)

    def remove_job_listener(self, callback: Callable[[Job], None]) -> None:
        if callback in self._job_listeners:
            self._job_listeners.remove(callback)

    def job_changed(self, job: Job) -> None:
        """Tell this client's job listeners (the history store) about a new or changed job."""
        for callback in list(self._job_listeners):
            try:
                callback(job)
            except Exception:  # a broken listener must not break the submission or the tracker
                log.exception("a job listener failed")

    # -- the plan -------------------------------------------------------------------------------
    def plan_limits(self, *, refresh: bool = False) -> PlanLimits | None:
        """The plan's limits (``GET /account/rate-limits``), asked once per client; None where the
        server does not say. The concurrency cap and a tighter per-minute limit apply at once."""
        with self._plan_lock:
            if self._plan_known and not refresh:
                return self._plan
            try:
                resp = self._transport.send("GET", "/account/rate-limits", category=LIST)
                plan = PlanLimits.from_api(resp.data)
            except VydraError as exc:
                if getattr(exc, "status_code", None) is None:
                    raise  # the network, not the server's silence: ask again next time
                plan = None  # 404 and the like: this server does not say
            self._plan, self._plan_known = plan, True
        if plan is not None:
            self.gate.cap = plan.concurrent
            if plan.rpm:
                self.limiter[GENERATE].tighten(limit=plan.rpm, remaining=None, reset_in=None)
        return plan

    def _wait_for_a_slot(self, slug: str) -> None:
        """Before a generation: learn the plan once, then wait while this client's jobs fill its
        concurrency cap (a 429 avoided, never a second charge risked)."""
        if not self._plan_known:
            try:
                self.plan_limits()
            except VydraError:
                pass  # the submission itself will say what is wrong with the connection

        def waiting(running: int) -> None:
            log.info("%s waits for a slot: %d jobs running, the plan allows %s at once", slug, running, self.gate.cap)

        self.gate.acquire(waiting=waiting)

    def duration_prior(self, model: str | None) -> DurationPrior | None:
        """What is known of ``model``'s durations on this server before a job says anything: nothing,
        here; ``vydra_nb.Client`` learns it from the history. Used to aim polls (``PollPolicy``)."""
        return None

    # Typical durations by what a model makes, for a progress *estimate* in views when neither the
    # service nor the history says more. Never used to aim polls (a guess must not cost requests).
    _GUESS_BY_UNIT = {"video": 120.0, "image": 20.0, "minute": 60.0, "second": 60.0}

    def duration_guess(self, model: str | None) -> float | None:
        """Seconds a job of ``model`` typically takes: the history's median, else a guess from the
        model's pricing unit (from the cached model list only: this sends no request)."""
        prior = self.duration_prior(model)
        if prior is not None:
            return prior.median
        with self._models_lock:
            cached = list(self._models or [])
        unit = next((m.pricing_unit for m in cached if m.slug == model), None)
        return self._GUESS_BY_UNIT.get((unit or "").lower(), 30.0) * self.time_scale if model else None

    def _known(self, job_id: str) -> Job:
        """The process's one Job for ``job_id`` on this server, made (empty) when none is known yet."""
        return self.registry.adopt(Job(id=job_id, client=self, backend=self.backend, host=self.host))

    def adopt(self, job: Job) -> Job:
        """The process's one Job for ``job``'s id on this server: an already known object wins,
        else ``job`` is attached to this client and becomes the known one (the history's rows
        become jobs this way at resume)."""
        if job.client is None:
            job.client = self
        job.host = job.host or self.host
        job.backend = job.backend or self.backend
        return self.registry.adopt(job)

    # -- models -----------------------------------------------------------------------------
    def models(self, provider: str | None = None, active: bool | None = None, *, refresh: bool = False) -> list[Model]:
        """The model list, cached for ``model_cache_ttl`` seconds; filters apply to the cached list."""
        with self._models_lock:
            fresh = self._models is not None and time.monotonic() - self._models_at < self.model_cache_ttl
            if refresh or not fresh:
                resp = self._transport.send("GET", "/models", category=LIST)
                self._models = _parse_models(resp.data)
                self._models_at = time.monotonic()
            models = list(self._models or [])
        if provider is not None:
            models = [m for m in models if m.provider == provider]
        if active is not None:
            models = [m for m in models if m.is_active == active]
        return models

    def model(self, slug: str) -> Model:
        """One model by slug; an unknown slug raises NotFoundError naming the closest ones."""
        models = self.models()
        for m in models:
            if m.slug == slug:
                return m
        slugs = [m.slug for m in models if m.is_active]  # an inactive model would only be refused next
        close = difflib.get_close_matches(slug, slugs, n=3, cutoff=0.4)
        close += [s for s in slugs if slug and slug.lower() in s.lower() and s not in close][:3]
        hint = f" Did you mean {', '.join(close[:3])}?" if close else ""
        raise NotFoundError(
            f"Unknown model {slug!r}.{hint} See `%vydra models` for the list.", suggestions=close[:3]
        )

    # -- generation -------------------------------------------------------------------------
    def estimate(self, model: str | Model, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> int | None:
        """Credits a submission would cost, from the model list (no request for the job)."""
        m = model if isinstance(model, Model) else self.model(model)
        return m.price({**(params or {}), **kwargs})

    def prepare(
        self, model: str | Model, params: Mapping[str, Any], /, *, wait_inputs: bool | float = False
    ) -> tuple[Model, dict[str, Any]]:
        """Validate ``params`` locally against the model's ``inputSchema``: the request that would be sent.

        URL parameters may hold a finished ``Job`` or ``Media`` (its URL is used), or a local image
        file (checked now, uploaded at submission: the body holds a ``LocalFile`` until then); see
        ``resolve_inputs``. Nothing is sent, except that ``wait_inputs`` waits for unfinished jobs.
        """
        m = model if isinstance(model, Model) else self.model(model)
        resolved = self.resolve_inputs(m, params, wait_inputs=wait_inputs)
        m.validate(stand_ins(resolved.body))
        return m, resolved.body

    def resolve_inputs(
        self, model: str | Model, params: Mapping[str, Any], /, *, wait_inputs: bool | float = False
    ) -> Resolved:
        """``params`` with every input of a URL parameter resolved and checked, sending nothing.

        A finished Job or Media gives its media URL (an unfinished job is refused with a line that
        says to wait, or waited for with ``wait_inputs``: True, or a number of seconds); a local
        path (``str`` or ``Path``) must be an image POST /upload accepts (checked by its bytes,
        size, and as a regular file named without ``..``) and becomes a ``LocalFile``.
        """
        m = model if isinstance(model, Model) else self.model(model)
        body = {k: v for k, v in params.items() if v is not None}
        return resolve_inputs(m, body, wait=wait_inputs, remote=not self.is_sandbox)

    # -- uploads ----------------------------------------------------------------------------
    def known_upload(self, sha256: str) -> Upload | None:
        """What an earlier upload of this content to this server answered, if it is still fresh
        (``vydra_nb.Client`` also looks in the history, so a new kernel uploads nothing again)."""
        with self._uploads_lock:
            known = self._uploads.get(sha256)
        if known is None or time.monotonic() - known[1] > UPLOAD_MAX_AGE:
            return None
        return known[0]

    def remember_upload(self, upload: Upload) -> None:
        """Keep an upload's answer for ``known_upload`` (the history keeps it too, in ``Client``)."""
        with self._uploads_lock:
            self._uploads[upload.sha256] = (upload, time.monotonic())

    def upload(self, file: str | os.PathLike[str] | bytes | LocalFile, /, *, filename: str | None = None,
               field: str = "file") -> Upload:
        """Upload an image (``POST /upload``: PNG, JPEG, WebP or GIF, up to 20 MB, free) and return
        its hosted URL; the same content is uploaded once per server (cached by its SHA-256).

        Everything is checked before the request (see ``vydra_nb.api.inputs``): a bad file is a
        one-line ValidationError and sends nothing. The request goes to the API host only, through
        the rate limiter's ``upload`` window.
        """
        data: bytes | None = None
        if isinstance(file, (bytes, bytearray)):
            data = bytes(file)
            sha, mime, name = file_from_bytes(data, filename or "upload.png", field=field)
            local = None
        else:
            local = file if isinstance(file, LocalFile) else check_local_file(file, field=field, takes=field_kind(field))
            data, sha, mime = None, local.sha256, local.mime
            name = upload_name(filename or local.name, mime)
        with self._upload_lock:  # one upload of a content at a time: the second finds the first's answer
            known = self.known_upload(sha)
            if known is not None:
                return dataclasses.replace(known, cached=True)
            if data is None and local is not None:
                data = local.read(field)  # checked again; refused if it changed since
            assert data is not None
            resp = self._transport.send("POST", "/upload", category=UPLOAD, files={"file": (name, data, mime)})
            answer = resp.data if isinstance(resp.data, dict) else {}
            url = answer.get("url")
            if not is_safe_url(url):
                raise ResponseError("The server's /upload answer has no http(s) url; nothing can refer to the file.")
            up = Upload(url=str(url), sha256=sha, filename=as_str(answer.get("filename")) or name,
                        size=as_int(answer.get("size")) or len(data), type=as_str(answer.get("type")) or mime,
                        key=as_str(answer.get("key")))
            self.uploads_sent += 1
            self.remember_upload(up)
        log.info("uploaded %s (%d bytes) to %s", name, len(data), self.host)
        return up

    def _materialize(self, value: Any, field: str) -> Any:
        """A body value as it goes on the wire: local files uploaded (or found in the cache), a
        Job or Media given as its URL; lists item by item."""
        if isinstance(value, list):
            return [self._materialize(v, f"{field}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, LocalFile):
            return self.upload(value, field=field).url
        if isinstance(value, Job):
            return job_input(value, field=field, takes=field_kind(field), remote=not self.is_sandbox)
        if isinstance(value, Media):
            return media_input(value, field=field, takes=field_kind(field), remote=not self.is_sandbox)
        return value

    def generate(
        self,
        model: str | Model,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        validate: bool = True,
        wait_inputs: bool | float = False,
        tag: str | None = None,
        **kwargs: Any,
    ) -> Job:
        """Submit a generation (``POST /models/{slug}``) and return its ``Job`` at once.

        Parameters are validated locally first: a mistake costs no request and no credit. The
        request carries an ``Idempotency-Key`` and is never retried in a way that could charge twice.
        Job listeners (the history store) hear of the job before this returns. ``model`` and
        ``params`` are positional-only, so a schema parameter may itself be called ``model``
        (Grok Imagine's is); parameters can be keywords or a mapping.

        A URL parameter also takes a finished ``Job`` (its media URL), a ``Media``, or a local
        image file (``str`` or ``Path``): checked before anything is sent, then uploaded once
        (``upload``) and its hosted URL sent. An unfinished job is refused with a line that says
        to wait, unless ``wait_inputs`` (True, or seconds) waits for it.

        ``tag`` labels the job for grouping a project's spend (``spend_summary(by="tag")``, tag
        budgets); a schema parameter called ``tag`` goes in ``params``. The job also records the
        catalog's price and pricing unit at submission. Afterwards the client learns the balance
        (one ``GET /organization`` while the status window has room) and warns once when it
        crosses ``credit_warning_threshold``, here, in the caller's cell.
        """
        params = {**(params or {}), **kwargs}
        tag = check_tag(tag)
        if validate:
            m, body = self.prepare(model, params, wait_inputs=wait_inputs)
            slug = m.slug
        else:
            slug = model.slug if isinstance(model, Model) else str(model)
            body = {k: v for k, v in params.items() if v is not None}
            if isinstance(model, Model):
                body = self.resolve_inputs(model, body, wait_inputs=wait_inputs).body
        path = _model_path(slug)
        body = {k: self._materialize(v, k) for k, v in body.items()}  # uploads: after every check
        key = idempotency_key or f"vydra-nb-{uuid.uuid4().hex}"
        self._wait_for_a_slot(slug)
        try:
            resp = self._transport.send("POST", path, category=GENERATE, json=body, idempotency_key=key)
        except InsufficientCreditsError as exc:
            # The 402 says what is left: the balance is known without asking. The error itself
            # says it is too low, so no warning on top of it.
            self._note_balance(exc.credits_remaining, warn=False)
            raise
        data = resp.data if isinstance(resp.data, dict) else None
        if data is None:
            raise ResponseError(
                f"The server accepted the {slug} request but its answer has no job (HTTP {resp.status}); "
                "check `%vydra jobs --sync` before submitting again."
            )
        job_id = as_str(data.get("jobId")) or as_str(data.get("id"))
        if not job_id:
            if normalize_completed(data):
                job_id = f"sync_{key.removeprefix('vydra-nb-')}"
            else:
                raise ResponseError(
                    f"The server accepted the {slug} request but sent no job id; check `%vydra jobs --sync` "
                    "before submitting again."
                )
        listed = m if validate else (model if isinstance(model, Model) else self._cached_model(slug))
        job = self.adopt(Job(id=job_id[:200], model=slug, params=dict(body), idempotency_key=key))
        self._submitted.add(job)  # counted against the plan's concurrency cap until it ends
        # The catalog's price now, so that a later price change does not rewrite the past.
        job.tag = job.tag or tag
        if listed is not None and job.catalog_credits is None:
            job.catalog_credits, job.pricing_unit = listed.price(body), listed.pricing_unit
        if "status" not in data:
            data = {**data, "status": "pending"}
        if "createdAt" not in data:
            job.created_at = datetime.now(timezone.utc)
        if not job.apply(data):
            job.announce()  # listeners (the history store) hear of every accepted job
        balance = as_int(data.get("creditsRemaining"))
        self._check_catalog_price(job, body)
        self._check_balance(job, balance)
        return job

    def check_budget(self, credits: int | None, *, tag: str | None = None, what: str = "This") -> None:
        """Raise ``BudgetExceededError`` if ``credits`` more would cross a budget. This layer has
        none (it records nothing); ``vydra_nb.Client`` checks its session's budgets."""
        check_tag(tag)

    def _cached_model(self, slug: str) -> Model | None:
        """The model from the cached list, if any (never a request)."""
        with self._models_lock:
            return next((m for m in self._models or [] if m.slug == slug), None)

    def _has_room(self, category: str) -> bool:
        """Whether an optional request of ``category`` may go now: its window has more than a
        fifth free (the tracker keeps that share for polls aimed at a job's end), so an extra
        check never waits on the limiter nor takes a slot a poll needs."""
        window = self.limiter.windows.get(category)
        if window is None:
            return True
        return window.headroom() > max(1, int(window.limit.calls * 0.2))

    def _check_catalog_price(self, job: Job, body: Mapping[str, Any]) -> None:
        """A charge that differs from the cached catalog price may only mean the price changed
        since the list was fetched: read the list again (once, if the window has room) and, when
        it now says what was charged, record that as the job's catalog price. What still differs
        is a charge that differs from the catalog, which ``jobs_df()`` flags (``charged_vs_catalog``)."""
        charged, listed = job.credits_charged, job.catalog_credits
        if charged is None or listed is None or charged == listed or not self._has_room(LIST):
            return
        if job.pricing_unit in SCALING_UNITS and listed and charged % listed == 0:
            return  # per-minute pricing: the charge is a whole number of units
        try:
            fresh = next((m for m in self.models(refresh=True) if m.slug == job.model), None)
        except VydraError as exc:
            log.info("could not re-read the model list after %s's charge: %s", job.id, exc)
            return
        if fresh is None:
            return
        price = fresh.price(dict(body))
        if price is not None and price != listed:
            job.catalog_credits, job.pricing_unit = price, fresh.pricing_unit
            job.announce()

    def _check_balance(self, job: Job, balance: int | None) -> None:
        """Learn the balance after a submission and warn if it crossed the threshold.

        From the answer when it says (some servers do), else one ``GET /organization`` when the
        status window has room; else, when an earlier balance is known, that balance less this
        job's charge. Never more than one request, never one a poll needs, never an error: the
        job is accepted and recorded whatever happens here.
        """
        if self.credit_warning_threshold is None:
            return
        if balance is not None:
            self._note_balance(balance)
            return
        if self._has_room(STATUS):
            try:
                self.organization()
                return
            except VydraError as exc:
                log.info("could not read the balance after %s: %s", job.id, exc)
        if self.credits_remaining is not None and job.credits_charged is not None:
            self._note_balance(self.credits_remaining - job.net_credits, estimated=True)

    # -- jobs -------------------------------------------------------------------------------
    def job_status(self, job_id: str) -> dict[str, Any]:
        """The server's job view, as sent (``GET /jobs/{id}``): what ``Job.refresh`` applies."""
        resp = self._transport.send("GET", f"/jobs/{_quote_id(job_id)}", category=STATUS)
        if not isinstance(resp.data, dict):
            raise ResponseError(f"The server's answer for job {job_id} is not a job object.")
        return resp.data

    def job(self, job_id: str) -> Job:
        """A job by id, refreshed (``GET /jobs/{id}``): the process's one object for it, so
        ``client.job(id) is client.job(id)`` and it is the one the tracker updates."""
        data = self.job_status(job_id)
        job = self._known(job_id)
        job.apply(data)
        return job

    def cancel(self, job_id: str, *, job: Job | None = None) -> CancelResult:
        """``DELETE /jobs/{id}``: cancel and report the refund.

        The job's new state is then read back (one status check) so that its views and the
        history show it cancelled with its refund; ``job`` is the object to update, if any.
        """
        resp = self._transport.send("DELETE", f"/jobs/{_quote_id(job_id)}", category=STATUS)
        data = resp.data if isinstance(resp.data, dict) else {}
        raw_refund = data.get("refund")
        refund: dict[str, Any] = raw_refund if isinstance(raw_refund, dict) else {}
        result = CancelResult(
            job_id=job_id,
            success=data.get("success") is not False,
            message=as_str(data.get("message")),
            credits_refunded=as_int(refund.get("creditsRefunded")),
            already_refunded=refund.get("alreadyRefunded") is True,
        )
        target = job if job is not None else self._known(job_id)
        try:
            target.apply(self.job_status(job_id))
        except VydraError:
            if result.success and not target.done:
                target.apply({"status": "cancelled", "creditsRefunded": result.credits_refunded})
        return result

    def list_jobs(self, *, limit: int = 50, offset: int = 0, status: str | None = None) -> list[Job]:
        """``GET /jobs`` where the server offers it (the live service does; the specification does not).

        Raises NotFoundError when the server has no such endpoint.
        """
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        resp = self._transport.send("GET", "/jobs", category=STATUS, params=params)
        data = resp.data
        rows = data.get("data", data.get("jobs")) if isinstance(data, dict) else data
        jobs = []
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict) and (row.get("id") or row.get("jobId")):
                job = self._known(str(row.get("id") or row.get("jobId"))[:200])
                job.apply(row)
                jobs.append(job)
        return jobs

    # -- organization -----------------------------------------------------------------------
    def organization(self) -> Organization:
        """``GET /organization``: balance and plan; warns (CreditWarning) when the balance is low."""
        resp = self._transport.send("GET", "/organization", category=STATUS)
        if not isinstance(resp.data, dict):
            raise ResponseError("The server's /organization answer is not an object.")
        org = Organization.from_api(resp.data)
        if org.plan:
            self.plan = org.plan
        self._note_balance(org.credits_remaining)
        return org

    def usd_rate(self, *, fetch: bool = False) -> Rate:
        """The USD-per-credit rate for dollar figures, and where it comes from: ``usd_per_credit``
        if set, else the plan's rate (``vydra_nb.api.money``), the plan being the one the last
        ``GET /organization`` answer named. ``fetch`` asks for it (one request) when no answer
        has named it yet; otherwise the Creator rate is used and labelled as assumed."""
        if self.usd_per_credit is None and self.plan is None and fetch and self.has_key:
            try:
                self.organization()
            except VydraError:
                pass
        return rate_for(self.plan, self.usd_per_credit, override_source=self._override_source())

    def _override_source(self) -> str:
        return "set by usd_per_credit"

    # -- downloads --------------------------------------------------------------------------
    def download_media(
        self,
        media: Media,
        directory: Any,
        job_id: str,
        *,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Path:
        """Save one result file into ``directory`` (default ``download_dir``); see ``Downloader.fetch``."""
        folder = Path(directory) if directory is not None else self.download_dir
        return self.downloads.fetch(media, folder, job_id, max_bytes=max_bytes, timeout=timeout)

    def _note_balance(self, remaining: int | None, *, warn: bool = True, estimated: bool = False) -> None:
        """Remember the balance; warn once each time it falls below the threshold (it must rise
        to the threshold again before the next crossing warns)."""
        if remaining is None:
            return
        self.credits_remaining = remaining
        threshold = self.credit_warning_threshold
        if threshold is None:
            return
        if remaining < threshold and not self._warned_low:
            self._warned_low = True
            if warn:
                about = "About " if estimated else "Only "
                _warn_in_caller(
                    f"{about}{remaining} Vydra credits remain (below {threshold}); top up before long jobs.",
                    CreditWarning,
                )
        elif remaining >= threshold:
            self._warned_low = False

# Pricing units whose charge scales with the input's length: a charge that is a whole number of
# units is as listed.
SCALING_UNITS = frozenset({"minute", "second", "minutes", "seconds"})
TAG_CHARS = 100


def check_tag(tag: Any) -> str | None:
    """A tag as stored: stripped text of at most ``TAG_CHARS`` characters (None for none)."""
    if tag is None:
        return None
    if not isinstance(tag, str) or not tag.strip():
        raise ValidationError(f"A tag is a short name, like tag='lake-promo', not {tag!r}.", field="tag")
    if len(tag.strip()) > TAG_CHARS:
        raise ValidationError(f"A tag is at most {TAG_CHARS} characters long.", field="tag")
    return tag.strip()


def _warn_in_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first frame outside vydra_nb (the user's cell or
    script), with a registry of its own: Python's default filter shows a warning once per
    location and text, and a second crossing of the threshold must warn again."""
    import sys

    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("vydra_nb"):
        frame = frame.f_back
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__", "vydra_nb"), registry={})


def normalize_completed(data: Mapping[str, Any]) -> bool:
    return isinstance(data.get("status"), str) and data["status"].lower() in ("completed", "succeeded", "success")


def _default_limits(overrides: Mapping[str, Limit] | None) -> dict[str, Limit]:
    from vydra_nb.api.ratelimit import DEFAULT_LIMITS

    merged = dict(DEFAULT_LIMITS)
    merged.update(overrides or {})
    return merged


def _model_path(slug: str) -> str:
    """``/models/{slug}``, each segment quoted: live routes use slugs with a slash (``elevenlabs/tts``),
    but no segment may be empty, ``.`` or ``..`` (a path that would leave ``/models``)."""
    from urllib.parse import quote

    segments = slug.split("/") if isinstance(slug, str) else [""]
    if not slug or any(s in ("", ".", "..") or s != s.strip() for s in segments):
        raise ValidationError(f"{slug!r} is not a model slug.", field="model")
    return "/models/" + "/".join(quote(s, safe="") for s in segments)


def _quote_id(job_id: str) -> str:
    from urllib.parse import quote

    if not isinstance(job_id, str) or not job_id.strip():
        raise ValidationError("A job id is needed, like job_abc123.", field="job_id")
    return quote(job_id.strip(), safe="")


def _parse_models(data: Any) -> list[Model]:
    rows = data.get("data", data.get("models")) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ResponseError("The server's /models answer has no list of models.")
    models = []
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("slug"), str) and row["slug"]:
            models.append(Model.from_api(row))
    return models
