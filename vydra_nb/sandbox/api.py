"""The ``/api/v1`` endpoints as plain functions of a request: no sockets here.

Keeping the API logic apart from the HTTP transport (``server.py``) means the order of checks,
which is part of the contract, reads top to bottom in one place:
auth (401) -> rate limits: the key's category window, then (generation) the plan's rpm / rph /
rpd windows of the organization (429) -> unknown model (404) -> inactive model (400) -> body is a
JSON object (400) -> schema validation (400) -> [idempotency replay / conflict (409), only with
``idempotency=True``] -> the plan's concurrency cap (429) -> credits (402) -> create and charge
the job (202).

Deterministic failures: a job whose parameters contain the marker ``[fail]`` in any string fails
part-way through with ``CONTENT_VIOLATION`` / "Content moderation failed" and is refunded;
``[fail:CODE]`` fails with that code instead (for example ``[fail:PROVIDER_ERROR]``).

Idempotency keys: nothing public documents them (vydra-notes.md), so by default the header is
ignored entirely: no echo, no replay, a repeated POST creates and charges a second job. With
``idempotency=True`` the sandbox echoes ``Idempotency-Key``, replays a repeated key
(``Idempotent-Replayed: true``) and answers 409 to a key reused with a different body.

Plan limits (vydra-notes.md), per organization (every key of the sandbox together): see
:data:`.ratelimit.PLANS`. A generation while the plan's ``concurrent`` jobs are pending or running
is refused with 429 (``limits.type == "concurrent"``, ``Retry-After``: until the earliest of them
ends) and creates nothing. ``GET /account/rate-limits`` reports limits and usage.

Both flavors also serve what the public docs add without changing the reference's shapes:
``POST /upload`` (multipart ``file``; PNG, JPEG, WebP or GIF by their bytes; 20 MB; free; its own
rate-limit category, 20 per minute) and ``GET /account/rate-limits``.

The ``live`` flavor adds what vydra-notes.md reports of the live service: ``code`` in error
bodies, ``X-RateLimit-*`` headers, synchronous 200 answers for image models (and
``elevenlabs/tts``, a slug with a slash), ``processing`` instead of ``running``, media URLs under
varying keys, a ``statusMessage`` in job views, and ``GET /jobs`` listing (entries also name the
model ``workflowSlug``).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any, Mapping

from .assets import MAX_UPLOAD_BYTES, OutputBuilder, image_size, live_output, sniff_image
from .catalog import Catalog, InputError, Model, job_duration, price, produces, validate_input
from .jobs import Failure, Job, JobStore
from .ledger import Ledger
from .ratelimit import RateLimiter, Verdict, plan_limits

API_PREFIX = "/api/v1"
FAIL_MARKER = re.compile(r"\[fail(?::([A-Za-z0-9_]+))?\]")
FAILURE_MESSAGES = {
    "CONTENT_VIOLATION": "Content moderation failed",
    "PROVIDER_ERROR": "Provider error: the upstream generation failed",
    "TIMEOUT": "Generation timed out",
}
FLAVORS = ("spec", "live")
ORG_ID = "org_sandbox"


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: Mapping[str, str]  # case-insensitive (http.client.HTTPMessage)
    body: bytes = b""
    #: the body was larger than the transport accepts; it was read and discarded
    oversized: bool = False


@dataclass
class Response:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)


def iso(ts: float | None) -> str | None:
    """ISO-8601 UTC with a ``Z``, to the second, like the reference's examples."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def failure_from_marker(params: dict[str, Any]) -> Failure | None:
    """The failure a ``[fail]`` / ``[fail:CODE]`` marker in any string parameter asks for."""
    for text in _strings(params):
        match = FAIL_MARKER.search(text)
        if match:
            code = (match.group(1) or "CONTENT_VIOLATION").upper()
            return Failure(code, FAILURE_MESSAGES.get(code, f"Generation failed ({code})"), 0.5)
    return None


class MultipartError(ValueError):
    """A request body that is not the multipart/form-data its Content-Type says."""


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, str | None, bytes]]:
    """``{field name: (file name, declared type, bytes)}`` of a multipart/form-data body.

    Stdlib only: ``email`` reads the Content-Type's boundary and each part's headers; the body is
    split on the delimiters itself, so binary content is returned byte for byte.
    """
    outer = Message()
    outer["Content-Type"] = content_type
    if outer.get_content_type() != "multipart/form-data":
        raise MultipartError("Content-Type must be multipart/form-data")
    boundary = outer.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise MultipartError("multipart/form-data without a boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2:
        raise MultipartError("no multipart delimiter in the body")
    fields: dict[str, tuple[str | None, str | None, bytes]] = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        head_start = chunk.find(b"\r\n")
        if head_start < 0:
            raise MultipartError("malformed multipart part")
        head, sep, content = chunk[head_start + 2:].partition(b"\r\n\r\n")
        if not sep:
            raise MultipartError("malformed multipart part")
        headers = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        disposition = Message()
        disposition["Content-Disposition"] = headers.get("Content-Disposition", "")
        name = disposition.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        fields.setdefault(name, (disposition.get_filename(), headers.get("Content-Type"), content))
    else:
        raise MultipartError("multipart body without its closing delimiter")
    return fields


@dataclass
class _Replay:
    fingerprint: str
    response: Response


class Api:
    """The Vydra API over the sandbox's ledger, job store, rate limiter and media."""

    def __init__(self, *, catalog: Catalog, ledger: Ledger, jobs: JobStore, limiter: RateLimiter,
                 outputs: OutputBuilder, keys: set[str], flavor: str = "spec", plan: str = "creator",
                 idempotency: bool = False) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}")
        self.catalog, self.ledger, self.jobs = catalog, ledger, jobs
        self.limiter, self.outputs = limiter, outputs
        self.keys = keys
        self.flavor, self.plan = flavor, plan
        self.plan_limits = plan_limits(plan)
        self.idempotency = bool(idempotency)
        self.started = time.time()
        self._replays: dict[tuple[str, str], _Replay] = {}
        self._keys_lock = threading.Lock()
        #: authenticated requests answered, by handler ("upload", "generate", "get_job"...): what
        #: a test counts to prove that a client sent nothing (or uploaded once)
        self.handled: dict[str, int] = {}
        self._handled_lock = threading.Lock()

    @property
    def live(self) -> bool:
        return self.flavor == "live"

    def handled_counts(self) -> dict[str, int]:
        """Authenticated requests answered so far, by handler."""
        with self._handled_lock:
            return dict(self.handled)

    # -- responses -------------------------------------------------------------------------------
    def error(self, status: int, message: str, code: str, **extra: Any) -> Response:
        body: dict[str, Any] = {"error": message}
        if self.live:
            body["code"] = code
        body.update({k: v for k, v in extra.items() if v is not None and (self.live or k != "details")})
        return Response(status, body)

    def _with_limits(self, response: Response, verdict: Verdict | None) -> Response:
        """``X-RateLimit-*`` (live flavor), unless a more specific check already set them."""
        if verdict is not None and self.live and "X-RateLimit-Limit" not in response.headers:
            response.headers.update({
                "X-RateLimit-Limit": str(verdict.limit),
                "X-RateLimit-Remaining": str(verdict.remaining),
                "X-RateLimit-Reset": str(verdict.reset_at),
            })
        return response

    def _rate_limited(self, verdict: Verdict) -> Response:
        """The 429 for a refused verdict (a window or the concurrency cap)."""
        retry = verdict.retry_after
        response = self.error(
            429, f"Rate limit exceeded. Try again in {retry} seconds.", "RATE_LIMIT_EXCEEDED",
            retryAfter=retry if self.live else None,
            limits={"type": verdict.category, "limit": verdict.limit, "used": verdict.used} if self.live else None,
        )
        response.headers["Retry-After"] = str(retry)
        return self._with_limits(response, verdict)

    def _idempotency_key(self, req: Request) -> str | None:
        """The request's Idempotency-Key when this sandbox honours them (``idempotency=True``)."""
        if not self.idempotency:
            return None
        return (req.headers.get("Idempotency-Key") or "").strip() or None

    # -- dispatch --------------------------------------------------------------------------------
    def handle(self, req: Request, *, jobfail: bool = False) -> Response:
        path = req.path[len(API_PREFIX):].rstrip("/") or "/"
        if path == "/health":
            if req.method in ("GET", "HEAD"):
                return Response(200, {"status": "ok"})
            return self._method_not_allowed("GET")
        key, problem = self._authenticate(req)
        if key is None:
            return self.error(401, "Invalid API key", problem)
        route = self._route(req.method, path)
        if route is None:
            return self.error(404, "Not found", "NOT_FOUND")
        category, handler, args, allowed = route
        if handler is None:
            return self._method_not_allowed(allowed)
        with self._handled_lock:
            self.handled[handler] = self.handled.get(handler, 0) + 1
        verdict = self.limiter.hit(key, category, org=ORG_ID)
        idem_key = self._idempotency_key(req) if category == "generation" else None
        if not verdict.allowed:
            response = self._rate_limited(verdict)
        elif req.oversized and handler != "upload":
            response = self.error(413, "Request body too large", "PAYLOAD_TOO_LARGE")
        elif handler == "generate":
            response = self.generate(key, args[0], req, jobfail=jobfail)
        else:
            response = getattr(self, handler)(key, *args, req)
        if idem_key is not None:  # tells clients that this server honours the header
            response.headers.setdefault("Idempotency-Key", idem_key)
        return self._with_limits(response, verdict)

    def _method_not_allowed(self, allowed: str) -> Response:
        response = self.error(405, "Method not allowed", "METHOD_NOT_ALLOWED")
        response.headers["Allow"] = allowed
        return response

    def _authenticate(self, req: Request) -> tuple[str | None, str]:
        header = req.headers.get("Authorization")
        if not header:
            return None, "MISSING_AUTH"
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "INVALID_FORMAT"
        token = token.strip()
        with self._keys_lock:
            known = token in self.keys
        return (token, "") if known else (None, "KEY_NOT_FOUND")

    def _route(self, method: str, path: str):
        """(rate-limit category, handler name or None if the method is wrong, args, allowed methods)."""
        parts = path.strip("/").split("/")
        if parts == ["models"]:
            return "listing", "list_models" if method == "GET" else None, (), "GET"
        if len(parts) >= 2 and parts[0] == "models" and all(parts[1:]):
            slug = "/".join(parts[1:])  # slugs may hold a slash: /models/elevenlabs/tts
            if method == "POST":
                return "generation", "generate", (slug,), "POST"
            if len(parts) > 2 and self.catalog.get(slug) is None:
                return None  # /models/a/b/c names nothing
            return "generation", None, (slug,), "POST"
        if parts == ["upload"]:
            return "upload", "upload" if method == "POST" else None, (), "POST"
        if parts == ["account", "rate-limits"]:
            return "status", "rate_limits" if method == "GET" else None, (), "GET"
        if len(parts) == 2 and parts[0] == "jobs":
            name = {"GET": "get_job", "DELETE": "cancel_job"}.get(method)
            return "status", name, (parts[1],), "GET, DELETE"
        if parts == ["jobs"] and self.live:
            return "status", "list_jobs" if method == "GET" else None, (), "GET"
        if parts == ["organization"]:
            return "status", "organization" if method == "GET" else None, (), "GET"
        return None

    # -- GET /models -----------------------------------------------------------------------------
    def list_models(self, key: str, req: Request) -> Response:
        provider = req.query.get("provider") or None
        active: bool | None = None
        raw = req.query.get("isActive")
        if raw not in (None, ""):
            if raw.lower() not in ("true", "false"):
                return self.error(400, f"Invalid value for isActive: '{raw}' (allowed: true, false)",
                                  "INVALID_INPUT")
            active = raw.lower() == "true"
        models = self.catalog.filter(provider=provider, is_active=active)
        return Response(200, {"data": [m.to_json() for m in models], "count": len(models)})

    # -- POST /models/{slug} ---------------------------------------------------------------------
    def generate(self, key: str, slug: str, req: Request, *, jobfail: bool = False) -> Response:
        model = self.catalog.get(slug)
        if model is None:
            return self.error(404, "Model not found", "MODEL_NOT_FOUND")
        if not model.is_active:
            return self.error(400, f"Model {slug} is not active", "INVALID_INPUT")
        try:
            body = json.loads(req.body.decode("utf-8")) if req.body.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return self.error(400, "Invalid JSON in request body", "INVALID_INPUT")
        if not isinstance(body, dict):
            return self.error(400, "Request body must be a JSON object", "INVALID_INPUT")
        try:
            params = validate_input(model, body)
            credits = self._price_and_check(model, params)
        except InputError as exc:
            return self.error(400, str(exc), "INVALID_INPUT", details={"field": exc.field})

        idem_key = self._idempotency_key(req)
        fingerprint = hashlib.sha256(
            (slug + "\n" + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()
        ).hexdigest()
        with self.ledger.lock:
            if idem_key is not None:
                replay = self._replays.get((key, idem_key))
                if replay is not None:
                    if replay.fingerprint != fingerprint:
                        return self.error(409, "Idempotency-Key reused with a different request",
                                          "IDEMPOTENCY_KEY_REUSED")
                    headers = dict(replay.response.headers, **{"Idempotent-Replayed": "true"})
                    return Response(replay.response.status, json.loads(json.dumps(replay.response.body)), headers)
            busy = self._concurrency_verdict()
            if busy is not None:
                return self._rate_limited(busy)
            balance = self.ledger.balance
            if credits > balance:
                return self.error(402, "Insufficient credits", "INSUFFICIENT_CREDITS",
                                  creditsRequired=credits, creditsRemaining=balance)
            failure = failure_from_marker(params)
            if failure is None and jobfail:
                failure = Failure("PROVIDER_ERROR", FAILURE_MESSAGES["PROVIDER_ERROR"], 0.5)
            synchronous = self.live and failure is None and (
                model.synchronous or produces(model, params) == "image")
            job = self.jobs.create(key=key, model=model, params=params, credits=credits,
                                   base_duration=job_duration(model, params), failure=failure,
                                   synchronous=synchronous)
            if synchronous:
                output = self.outputs.build(job)
                job.output = live_output(model.slug, output)
                if "imageUrl" in output:
                    answer = {"imageUrl": output["imageUrl"], "resultUrls": [output["imageUrl"]]}
                else:
                    url = output.get("audioUrl") or output.get("videoUrl") or output.get("transcriptUrl")
                    answer = {"audioUrl": url, "resultUrls": [url]} if "audioUrl" in output else {"resultUrls": [url]}
                response = Response(200, {"status": "completed", "jobId": job.id, **answer,
                                          "creditsCharged": credits})
            else:
                response = Response(202, {
                    "jobId": job.id, "status": "pending",
                    "message": "Job created. Poll /jobs/{jobId} for status.",
                    "creditsCharged": credits, "externalJobId": job.external_id,
                })
            if idem_key is not None:
                response.headers["Idempotency-Key"] = idem_key
                self._replays[(key, idem_key)] = _Replay(fingerprint, Response(
                    response.status, json.loads(json.dumps(response.body)), dict(response.headers)))
            return response

    def _concurrency_verdict(self) -> Verdict | None:
        """A refusal if the organization already has its plan's number of jobs pending or running.

        ``Retry-After`` is the time until the earliest of them ends (completes or fails), rounded
        up, at least 1 second. The caller holds the ledger's lock, so the count cannot race a submit.
        """
        limit = self.plan_limits.concurrent
        now = self.jobs.clock()
        active = self.jobs.active(now)
        if len(active) < limit:
            return None
        wait = min(job.created_mono + job.end_s for job in active) - now
        return Verdict(False, "concurrent", limit, len(active), 0, max(wait, 0.0))

    def _price_and_check(self, model: Model, params: dict[str, Any]) -> int:
        """Cross-field checks the schema cannot say, and the price (which may need the input's length)."""
        minutes: float | None = None
        if model.kind == "trim":
            if params["end"] <= params["start"]:
                raise InputError(f"Invalid value for end: {params['end']} (must be greater than start)", "end")
            length = self.outputs.source_duration(params["video_url"])
            if length is not None and params["start"] >= length:
                raise InputError(f"Invalid value for start: {params['start']} "
                                 f"(the video is {round(length, 2)} seconds long)", "start")
        if model.pricing_unit == "minute":
            seconds = self.outputs.source_duration(params.get("audio_url"))
            minutes = seconds / 60 if seconds else None
        return self.catalog.charge(model.slug, price(model, params, audio_minutes=minutes))

    # -- jobs ------------------------------------------------------------------------------------
    def _job_not_found(self) -> Response:
        return self.error(404, "Job not found", "JOB_NOT_FOUND")

    def view(self, job: Job) -> dict[str, Any]:
        """The documented job view for the job's state right now (settling a due refund)."""
        status, progress = self.jobs.settle(job)
        if status == "completed" and job.output is None:
            output = self.outputs.build(job)
            with self.ledger.lock:
                if job.output is None:
                    job.output = live_output(job.model.slug, output) if self.live else output
        now = self.jobs.clock()
        shown = "processing" if (self.live and status == "running") else status
        view: dict[str, Any] = {"id": job.id, "status": shown}
        if progress is not None:  # a job of a state-only provider (or progress="none") has none
            view["progress"] = progress
        view.update({"workflow": job.model.slug, "creditsCharged": job.credits, "createdAt": iso(job.created)})
        if self.live:
            view["statusMessage"] = job.phase_message(status, now)
        started = job.started_at(now)
        if started is not None:
            view["startedAt"] = iso(started)
        if status == "completed":
            view["output"] = job.output
            view["completedAt"] = iso(job.finished_at(status))
        elif status == "failed":
            view["error"] = {"message": job.failure.message, "code": job.failure.code}
            view["creditsRefunded"] = job.refunded
            view["refundStatus"] = "refunded"
            view["failedAt"] = iso(job.finished_at(status))
        elif status == "cancelled":
            view["creditsRefunded"] = job.refunded
            view["refundStatus"] = "refunded"
            view["cancelledAt"] = iso(job.finished_at(status))
        return view

    def get_job(self, key: str, job_id: str, req: Request) -> Response:
        job = self.jobs.get(job_id, key)
        return self._job_not_found() if job is None else Response(200, self.view(job))

    def cancel_job(self, key: str, job_id: str, req: Request) -> Response:
        job = self.jobs.get(job_id, key)
        if job is None:
            return self._job_not_found()
        before, refunded, already = self.jobs.cancel(job)
        if before == "completed":
            return self.error(400, "Job already completed and cannot be cancelled", "INVALID_INPUT")
        message = "Job cancelled" if not already else f"Job already {before}"
        return Response(200, {"success": True, "message": message,
                              "refund": {"creditsRefunded": refunded, "alreadyRefunded": already}})

    def list_jobs(self, key: str, req: Request) -> Response:
        try:
            limit = int(req.query.get("limit", "20"))
            offset = int(req.query.get("offset", "0"))
        except ValueError:
            return self.error(400, "Invalid value for limit/offset: expected integers", "INVALID_INPUT")
        if not 1 <= limit <= 100 or offset < 0:
            return self.error(400, "Invalid value for limit/offset (limit 1-100, offset >= 0)", "INVALID_INPUT")
        wanted = req.query.get("status") or None
        views = []
        for job in reversed(list(self.jobs.all(key))):
            view = self.view(job)
            view["workflowSlug"] = job.model.slug  # the live list's name for the model
            views.append(view)
        if wanted is not None:
            aliases = {"running": "processing"}
            views = [v for v in views if v["status"] in (wanted, aliases.get(wanted, wanted))]
        page = views[offset:offset + limit]
        return Response(200, {"data": page, "count": len(page), "total": len(views)})

    # -- GET /organization -----------------------------------------------------------------------
    def organization(self, key: str, req: Request) -> Response:
        with self.ledger.lock:
            balance, updated = self.ledger.balance, self.ledger.updated_at
        return Response(200, {"id": "org_sandbox", "name": "Vydra Sandbox", "creditsRemaining": balance,
                              "plan": self.plan, "updatedAt": iso(updated)})

    # -- GET /account/rate-limits ----------------------------------------------------------------
    def rate_limits(self, key: str, req: Request) -> Response:
        """The plan's generation limits and what the organization uses of them right now."""
        usage = self.limiter.usage(ORG_ID)
        usage["concurrent"] = len(self.jobs.active())
        return Response(200, {"plan": self.plan, "limits": self.plan_limits.to_json(), "usage": usage})

    # -- POST /upload ----------------------------------------------------------------------------
    def upload(self, key: str, req: Request) -> Response:
        """Store an image (PNG, JPEG, WebP or GIF, by its bytes) of up to 20 MB; free.

        Answers 201 ``{url, filename, size, type, key}``; ``url`` is served at ``/media/`` and is
        accepted wherever a model takes an image URL.
        """
        too_large = f"File too large (maximum {MAX_UPLOAD_BYTES // (1024 * 1024)} MB)"
        if req.oversized:
            return self.error(413, too_large, "FILE_TOO_LARGE")
        try:
            fields = parse_multipart(req.headers.get("Content-Type") or "", req.body)
        except MultipartError as exc:
            return self.error(400, f"Invalid upload: {exc}", "INVALID_INPUT")
        if "file" not in fields:
            return self.error(400, "Missing required field: file (file)", "INVALID_INPUT", details={"field": "file"})
        filename, _declared, data = fields["file"]
        if len(data) > MAX_UPLOAD_BYTES:
            return self.error(413, too_large, "FILE_TOO_LARGE", details={"size": len(data), "limit": MAX_UPLOAD_BYTES})
        mime = sniff_image(data)
        size = image_size(data, mime) if mime is not None else None
        if mime is None or size is None:
            return self.error(400, "Invalid file type: only JPEG, PNG, WebP and GIF images are accepted",
                              "INVALID_FILE_TYPE", details={"field": "file"})
        asset = self.outputs.store.add_upload(data, mime, filename, size)
        return Response(201, {
            "url": self.outputs.store.url(asset.name), "filename": asset.filename, "size": len(data),
            "type": mime, "key": f"uploads/{ORG_ID}/{asset.name}",
        })
