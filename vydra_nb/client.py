"""``vydra_nb.Client``: every endpoint of the Vydra API as Python objects.

The client owns one ``Transport`` (the wire) and adds what the domain needs: the cached model
list, local validation of parameters before any credit is spent, jobs that know how to wait and
download, credit warnings, and listeners that let the history store record a charged job the
moment the server accepts it.
"""

from __future__ import annotations

import difflib
from datetime import datetime, timezone
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
import urllib3

from .config import download_home, is_sandbox_url, mask_key, resolve_api_key
from .errors import CreditWarning, DownloadError, NotFoundError, ResponseError, ValidationError, VydraError
from .jobs import Job, Media, atomic_write, ext_for_content_type, is_safe_url, safe_filename
from .models import CancelResult, Model, Organization, as_int, as_str
from .polling import PollPolicy
from .ratelimit import GENERATE, LIST, STATUS, Limit
from .transport import Transport, declared_length

log = logging.getLogger("vydra_nb")

DEFAULT_MAX_DOWNLOAD = 2 * 1024**3  # 2 GiB

# Listeners every new Client starts with. The history module adds its recorder here when it is
# imported (``import vydra_nb`` wires that lazily), so every job any client submits is recorded
# without the domain layer importing the layer above it.
GLOBAL_JOB_LISTENERS: list[Callable[[Job], None]] = []

_default_client: "Client | None" = None
_default_lock = threading.Lock()


def set_default_client(client: "Client | None") -> None:
    """Make ``client`` the one that ``studio()``, ``sweep()`` and the magics use by default."""
    global _default_client
    with _default_lock:
        _default_client = client


def default_client() -> "Client":
    """The session's client: the one set by ``%vydra sandbox``/``login``, else one from the environment."""
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = Client()
        return _default_client


DEFAULT_DOWNLOAD_TIMEOUT = 3600.0
"""Seconds one download may take in all, unless ``Client.download_timeout`` or the call says otherwise.
Generous (a 2 GiB video on a slow link), but finite: a host that drips bytes cannot hold a kernel's
tracker thread forever."""


class Client:
    """A Vydra API client. Safe to share between threads.

    ``api_key`` and ``base_url`` default to ``VYDRA_API_KEY`` / ``VYDRA_BASE_URL``. ``time_scale``
    shrinks every wait and rate window (a sandbox at ``speed=100`` wants ``time_scale=0.01``).
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
        download_dir: str | Path | None = None,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD,
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
        record_history: bool = True,
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
        self.max_download_bytes = max_download_bytes
        self.download_timeout = download_timeout
        self._models: list[Model] | None = None
        self._models_at = 0.0
        self._models_lock = threading.Lock()
        self._job_listeners: list[Callable[[Job], None]] = list(GLOBAL_JOB_LISTENERS) if record_history else []
        self._media_session = requests.Session()  # carries no key, ever
        self._media_session.trust_env = False
        self.credits_remaining: int | None = None
        self._warned_low = False

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
    def download_dir(self) -> Path:
        return self._download_dir or download_home()

    @property
    def requests_sent(self) -> int:
        return self._transport.requests_sent

    @property
    def limiter(self) -> Any:
        return self._transport.limiter

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r}, key={mask_key(self._transport._key.reveal())})"

    def close(self) -> None:
        self._transport.close()
        self._media_session.close()

    def __enter__(self) -> "Client":
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

    def prepare(self, model: str | Model, params: Mapping[str, Any], /) -> tuple[Model, dict[str, Any]]:
        """Validate ``params`` locally against the model's ``inputSchema``: the request that would be sent."""
        m = model if isinstance(model, Model) else self.model(model)
        body = {k: v for k, v in params.items() if v is not None}
        m.validate(body)
        return m, body

    def generate(
        self,
        model: str | Model,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        validate: bool = True,
        **kwargs: Any,
    ) -> Job:
        """Submit a generation (``POST /models/{slug}``) and return its ``Job`` at once.

        Parameters are validated locally first: a mistake costs no request and no credit. The
        request carries an ``Idempotency-Key`` and is never retried in a way that could charge twice.
        Job listeners (the history store) hear of the job before this returns. ``model`` and
        ``params`` are positional-only, so a schema parameter may itself be called ``model``
        (Grok Imagine's is); parameters can be keywords or a mapping.
        """
        params = {**(params or {}), **kwargs}
        if validate:
            m, body = self.prepare(model, params)
            slug = m.slug
        else:
            slug = model.slug if isinstance(model, Model) else str(model)
            body = {k: v for k, v in params.items() if v is not None}
        if not slug or "/" in slug or slug.startswith("."):
            raise ValidationError(f"{slug!r} is not a model slug.", field="model")
        key = idempotency_key or f"vydra-nb-{uuid.uuid4().hex}"
        resp = self._transport.send("POST", f"/models/{slug}", category=GENERATE, json=body, idempotency_key=key)
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
        job = Job(id=job_id[:200], model=slug, params=dict(body), _client=self)
        job.extra["idempotency_key"] = key
        job.extra["backend"] = self.backend
        if "status" not in data:
            data = {**data, "status": "pending"}
        if "createdAt" not in data:
            job.created_at = datetime.now(timezone.utc)
        if not job.apply(data):
            job._notify()  # listeners (the history store) hear of every accepted job
        return job

    # -- jobs -------------------------------------------------------------------------------
    def _job_view(self, job_id: str) -> dict[str, Any]:
        resp = self._transport.send("GET", f"/jobs/{_quote_id(job_id)}", category=STATUS)
        if not isinstance(resp.data, dict):
            raise ResponseError(f"The server's answer for job {job_id} is not a job object.")
        return resp.data

    def job(self, job_id: str) -> Job:
        """An existing job by id (``GET /jobs/{id}``)."""
        job = Job(id=job_id, _client=self)
        job.extra["backend"] = self.backend
        job.apply(self._job_view(job_id))
        return job

    def cancel(self, job_id: str, *, job: Job | None = None) -> CancelResult:
        """``DELETE /jobs/{id}``: cancel and report the refund.

        The job's new state is then read back (one status check) so that its views and the
        history show it cancelled with its refund; ``job`` is the object to update, if any.
        """
        resp = self._transport.send("DELETE", f"/jobs/{_quote_id(job_id)}", category=STATUS)
        data = resp.data if isinstance(resp.data, dict) else {}
        refund = data.get("refund") if isinstance(data.get("refund"), dict) else {}
        result = CancelResult(
            job_id=job_id,
            success=data.get("success") is not False,
            message=as_str(data.get("message")),
            credits_refunded=as_int(refund.get("creditsRefunded")),
            already_refunded=refund.get("alreadyRefunded") is True,
        )
        target = job if job is not None else Job(id=job_id, _client=self)
        target.extra.setdefault("backend", self.backend)
        try:
            target.apply(self._job_view(job_id))
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
                job = Job(id=str(row.get("id") or row.get("jobId")), _client=self)
                job.extra["backend"] = self.backend
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
        self._note_balance(org.credits_remaining)
        return org

    def _note_balance(self, remaining: int | None) -> None:
        if remaining is None:
            return
        self.credits_remaining = remaining
        threshold = self.credit_warning_threshold
        if threshold is None:
            return
        if remaining < threshold and not self._warned_low:
            self._warned_low = True
            warnings.warn(
                f"Only {remaining} Vydra credits remain (below {threshold}); top up before long jobs.",
                CreditWarning,
                stacklevel=3,
            )
        elif remaining >= threshold:
            self._warned_low = False

    # -- downloads --------------------------------------------------------------------------
    def _download(
        self,
        media: Media,
        directory: Any,
        job_id: str,
        *,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Path:
        """Stream ``media`` into ``directory`` under a name made from ``job_id`` only.

        Two limits bound what a media host can make us do: ``max_bytes`` (decoded bytes, so a
        compression bomb counts at its real size) and ``timeout``, the whole download's deadline in
        seconds. The requests read timeout alone does not end a download whose server sends a byte
        every few seconds, so the deadline is checked between reads; a read itself waits at most
        the read timeout (30 s, or the whole deadline when that is shorter), so a stalled host is
        noticed too. Every failure is a DownloadError and leaves no file behind.
        """
        if not is_safe_url(media.url):
            raise DownloadError(f"Job {job_id}'s result URL is not an http(s) URL; refusing to fetch it.")
        cap = self.max_download_bytes if max_bytes is None else max_bytes
        limit = float(timeout if timeout is not None else self.download_timeout)
        if not limit > 0:
            raise ValueError("the download timeout must be a positive number of seconds")
        deadline = time.monotonic() + limit
        folder = Path(directory) if directory is not None else self.download_dir
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with self._media_session.get(
                media.url, stream=True, timeout=(min(5.0, limit), min(30.0, limit))
            ) as resp:
                if resp.status_code >= 400:
                    raise DownloadError(
                        f"Could not download job {job_id}'s result (HTTP {resp.status_code}); provider URLs "
                        "expire after about a day."
                    )
                declared = declared_length(resp.headers.get("Content-Length"))
                if declared is not None and declared > cap:
                    raise DownloadError(
                        f"Job {job_id}'s result is {declared:,} bytes, above the {cap:,}-byte cap; not saved."
                    )
                ext = ext_for_content_type(resp.headers.get("Content-Type")) or media.extension
                target = folder / safe_filename(job_id, ext)
                atomic_write(target, _body_chunks(resp, deadline, limit, job_id), max_bytes=cap)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # OSError covers socket errors raised from raw reads; a failed write of the file is an
            # OSError too and equally means "not saved" (atomic_write removed its temp file).
            raise DownloadError(f"Could not download job {job_id}'s result ({type(exc).__name__}); try again.") from None
        return target


_CHUNK = 256 * 1024


def _body_chunks(resp: requests.Response, deadline: float, limit: float, job_id: str) -> Iterator[bytes]:
    """Yield the decoded body as it arrives, raising DownloadError once ``deadline`` passes.

    ``read1`` returns whatever has arrived (up to a chunk) instead of waiting to fill a whole
    chunk, which ``iter_content`` does and which would let a byte-a-second drip block inside one
    read for days without ever tripping the read timeout.
    """
    read1 = getattr(resp.raw, "read1", None)
    source = resp.iter_content(chunk_size=8192) if read1 is None else None  # urllib3 < 2 has no read1

    def reader() -> bytes:
        if source is not None:
            return next(source, b"")
        return read1(_CHUNK, decode_content=True)

    while True:
        if time.monotonic() > deadline:
            raise DownloadError(
                f"Downloading job {job_id}'s result took longer than {limit:g} s; stopped and not saved. "
                "Pass a larger timeout to download() if the file is expected to be slow."
            )
        chunk = reader()
        if not chunk:
            return
        yield chunk


def normalize_completed(data: Mapping[str, Any]) -> bool:
    return isinstance(data.get("status"), str) and data["status"].lower() in ("completed", "succeeded", "success")


def _default_limits(overrides: Mapping[str, Limit] | None) -> dict[str, Limit]:
    from .ratelimit import DEFAULT_LIMITS

    merged = dict(DEFAULT_LIMITS)
    merged.update(overrides or {})
    return merged


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
