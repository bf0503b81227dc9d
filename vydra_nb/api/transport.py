"""The wire: one ``requests.Session`` with auth, timeouts, retries, rate limits and typed errors.

The retry rules are the heart of money safety, so they live here, in one place:

* Reads (GET, and DELETE, which the server makes idempotent with ``alreadyRefunded``) are retried
  with exponential backoff and full jitter on connection errors, timeouts and 5xx.
* A generation (POST) is retried only when the server certainly created no job: the connection
  was refused or never opened, or it answered 429. Any ambiguous failure (timeout after sending,
  a dropped connection, a 5xx) raises ``OutcomeUnknownError`` rather than risk a second charge,
  unless the server has shown it honours ``Idempotency-Key`` (it echoes the header back), in which
  case repeating the same request with the same key is safe and is what we do.
* Redirects are never followed on API calls: a redirect to another host would drop the key and a
  301/302 would turn a POST into a GET.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from vydra_nb.api.errors import (
    APIConnectionError,
    AuthenticationError,
    ConfigurationError,
    InsufficientCreditsError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitError,
    ResponseError,
    ServerError,
    ValidationError,
    VydraError,
    one_line,
)
from vydra_nb.api.models import as_int
from vydra_nb.api.ratelimit import UPLOAD, Limit, RateLimiter
from vydra_nb.api.settings import MISSING_KEY_MESSAGE, VERSION, check_key_transport, mask_key, redact, resolve_base_url

log = logging.getLogger("vydra_nb")

USER_AGENT = f"vydra-nb/{VERSION} (+python-requests)"
_TRY_AGAIN = re.compile(r"try again in\s+(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)


class Secret:
    """Holds the key so that no repr, str, f-string or traceback locals display can show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def reveal(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret(None)"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # never pickled along with an object that holds it
        raise TypeError("the API key cannot be pickled")


# An API answer is a few kilobytes; a model list with thousands of models a few megabytes. Past this,
# a server is broken or hostile, and reading on would only fill the kernel's memory.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024

# Failures of the connection, while sending or while reading the answer (a body cut short raises
# ChunkedEncodingError, which is not a ConnectionError): in either case what the server did is unknown.
_BROKEN_TRANSFER = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class _BearerAuth(requests.auth.AuthBase):
    """Adds ``Authorization`` while requests prepares the request, so no frame of ours holds the key
    or the header in a local variable (traceback-locals displays print those)."""

    def __init__(self, secret: Secret) -> None:
        self._secret = secret

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = "Bearer " + (self._secret.reveal() or "")
        return request

    def __repr__(self) -> str:
        return "_BearerAuth('***')"


@dataclass(frozen=True)
class Response:
    """A parsed API answer: status, JSON body, headers."""

    status: int
    data: Any
    headers: Mapping[str, str]


class Transport:
    """Sends API requests. Thread-safe: the tracker polls while the user submits."""

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None,
        *,
        timeout: tuple[float, float] = (5.0, 30.0),
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_rate_wait: float = 180.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        rate_limits: Mapping[str, Limit] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self._key = Secret(api_key)
        self._auth = _BearerAuth(self._key)
        if api_key:
            check_key_transport(self.base_url)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_rate_wait = max_rate_wait
        self.max_response_bytes = max_response_bytes
        self.limiter = RateLimiter(rate_limits)
        self._sleep = sleep
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        # Environment proxies and .netrc must not get a say in where the key goes.
        self.session.trust_env = False
        self._lock = threading.Lock()
        self.honours_idempotency = False
        self.requests_sent = 0
        self.rate_limited = 0  # 429s received: the client-side limiter should keep this at zero

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r}, key={mask_key(self._key.reveal())})"

    @property
    def key_hint(self) -> str:
        """Which kind of key is set, revealing none of it (for reprs)."""
        return mask_key(self._key.reveal())

    @property
    def has_key(self) -> bool:
        return bool(self._key)

    def scrub(self, text: str) -> str:
        return redact(text, self._key.reveal())

    def close(self) -> None:
        self.session.close()

    # -- sending ----------------------------------------------------------------------------
    def send(
        self,
        method: str,
        path: str,
        *,
        category: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        idempotency_key: str | None = None,
    ) -> Response:
        """Send one API call with the retry rules above and return its parsed answer.

        ``files`` sends a multipart body (``POST /upload``: ``{"file": (name, bytes, type)}``).
        An upload is free and creates nothing that costs, so it is retried like a read.
        """
        if not self._key:
            raise ConfigurationError(MISSING_KEY_MESSAGE)
        url = self.base_url + path
        check_key_transport(url)
        generation = method.upper() == "POST" and category != UPLOAD
        headers = {"Accept": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        attempt = 0
        rate_waited = 0.0
        rate_hits = 0
        while True:
            window = self.limiter[category]
            stamp = window.acquire()
            try:
                with self._lock:
                    self.requests_sent += 1
                log.debug("%s %s (attempt %d)", method, path, attempt + 1)
                resp = self.session.request(
                    method, url, headers=headers, params=params, json=json, files=files, auth=self._auth,
                    timeout=self.timeout, allow_redirects=False, stream=True,
                )
                too_large = not _read_body(resp, self.max_response_bytes)
            except _BROKEN_TRANSFER as exc:
                window.settle(stamp)
                never_sent = _never_sent(exc)
                retryable = not generation or never_sent or self._may_replay(idempotency_key)
                if retryable and attempt < self.max_retries:
                    attempt += 1
                    self._sleep(self._backoff(attempt))
                    continue
                if generation and not never_sent:
                    raise self._outcome_unknown(path, idempotency_key, f"the connection failed ({_short(exc)})") from None
                raise APIConnectionError(
                    f"Could not reach the Vydra API at {self.base_url} ({_short(exc)}). "
                    "Check the network or VYDRA_BASE_URL and try again."
                ) from None

            window.settle(stamp)
            if too_large:
                why = f"its answer was larger than {self.max_response_bytes:,} bytes"
                if generation and resp.status_code < 300:
                    raise self._outcome_unknown(path, idempotency_key, why)
                raise ResponseError(f"The server at {self.base_url} sent an answer we refused to read: {why}.")
            self._observe_rate_headers(category, resp.headers)
            if generation and idempotency_key and resp.headers.get("Idempotency-Key") == idempotency_key:
                self.honours_idempotency = True
            status = resp.status_code
            if 300 <= status < 400:
                where = resp.headers.get("Location", "another URL")
                raise ConfigurationError(
                    f"The API answered with a redirect to {self.scrub(where)}; it was not followed, "
                    "since that would drop the key or turn a POST into a GET. Set VYDRA_BASE_URL to "
                    "the final API URL (the default is https://www.vydra.ai/api/v1)."
                )
            if status == 429:
                with self._lock:
                    self.rate_limited += 1
                err = self._error(resp)
                assert isinstance(err, RateLimitError)
                rate_hits += 1
                wait = err.retry_after if err.retry_after is not None else self._backoff(rate_hits)
                wait = min(max(wait, 0.05), self.max_rate_wait)
                self.limiter[category].block_for(wait)
                if rate_waited + wait <= self.max_rate_wait and rate_hits <= 20:
                    rate_waited += wait
                    log.info("429 on %s: waiting %.1f s (no job was created)", path, wait)
                    continue  # the limiter sleeps until the block ends
                raise err
            if status >= 500:
                if (not generation or self._may_replay(idempotency_key)) and attempt < self.max_retries:
                    attempt += 1
                    self._sleep(self._backoff(attempt))
                    continue
                if generation:
                    raise self._outcome_unknown(path, idempotency_key, f"the server answered HTTP {status}")
                raise self._error(resp)
            if status >= 400:
                raise self._error(resp)
            return Response(status, self._json(resp), resp.headers)

    def _may_replay(self, idempotency_key: str | None) -> bool:
        return bool(idempotency_key) and self.honours_idempotency

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter (AWS architecture blog's recipe)."""
        cap = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return random.uniform(cap / 2, cap)

    def _outcome_unknown(self, path: str, idempotency_key: str | None, why: str) -> OutcomeUnknownError:
        slug = path.rsplit("/", 1)[-1]
        return OutcomeUnknownError(
            f"The generation request for {slug} may or may not have been accepted: {why}. Not retried, "
            "to avoid paying twice: check `%vydra credits` and `%vydra jobs --sync` (or the Vydra "
            "dashboard) before submitting again.",
            idempotency_key=idempotency_key or "",
            model=slug,
        )

    def _observe_rate_headers(self, category: str, headers: Mapping[str, str]) -> None:
        limit = _header_int(headers, "X-RateLimit-Limit")
        remaining = _header_int(headers, "X-RateLimit-Remaining")
        reset = _header_float(headers, "X-RateLimit-Reset")
        if limit is None and remaining is None:
            return
        reset_in = None
        if reset is not None:
            # A unix time, or (some servers) seconds from now.
            reset_in = reset - time.time() if reset > 1e9 else reset
        self.limiter[category].tighten(limit=limit, remaining=remaining, reset_in=reset_in)

    # -- parsing ----------------------------------------------------------------------------
    def _json(self, resp: requests.Response) -> Any:
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            kind = resp.headers.get("Content-Type", "unknown type")
            raise ResponseError(
                f"The server sent a response that is not JSON (HTTP {resp.status_code}, {kind}); "
                f"check that {self.base_url} is the Vydra API."
            ) from None

    def _error(self, resp: requests.Response) -> VydraError:
        status = resp.status_code
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        raw = body.get("error")
        if isinstance(raw, dict):  # some APIs nest {"error": {"message", "code"}}
            body = {**body, **raw}
            raw = raw.get("message")
        message = one_line(self.scrub(str(raw))) if raw else (resp.reason or f"HTTP {status}")
        code = self.scrub(body["code"]) if isinstance(body.get("code"), str) else None
        common = {"status_code": status, "code": code, "body": _scrub_body(body, self.scrub)}
        if status == 401:
            return AuthenticationError(
                f"Authentication failed ({message}). Check VYDRA_API_KEY or run `%vydra login`.", **common
            )
        if status == 403:
            return AuthenticationError(f"Access denied ({message}): the key lacks a needed scope.", **common)
        if status == 402:
            required = as_int(body.get("creditsRequired"))
            remaining = as_int(body.get("creditsRemaining"))
            need = f"this needs {required} credits and {remaining} remain" if required is not None else message
            return InsufficientCreditsError(
                f"Insufficient credits: {need}. Top up your plan or choose a cheaper model.",
                credits_required=required, credits_remaining=remaining, **common,
            )
        if status == 404:
            return NotFoundError(f"{message}.".replace("..", "."), **common)
        if status == 429:
            retry_after = _retry_after(resp.headers, body, message)
            wait = f"try again in {retry_after:g} s" if retry_after is not None else "try again shortly"
            return RateLimitError(f"Rate limit exceeded; {wait}.", retry_after=retry_after, **common)
        if status in (400, 422):
            return ValidationError(f"The server rejected the request: {message}", **common)
        if status >= 500:
            return ServerError(f"Vydra server error (HTTP {status}): {message}. Try again later.", **common)
        return VydraError(f"HTTP {status}: {message}", **common)


def _never_sent(exc: BaseException) -> bool:
    """True when the request certainly never reached the server (refused, DNS, connect timeout)."""
    import urllib3.exceptions as u3

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    never = (u3.NewConnectionError, u3.ConnectTimeoutError, u3.NameResolutionError, ConnectionRefusedError)
    return any(isinstance(cur, never) for cur in _causes(exc))


def _short(exc: BaseException) -> str:
    """The real cause of a network failure, in a few words: a DNS failure is not a refusal."""
    import ssl

    import urllib3.exceptions as u3

    chain = _causes(exc)
    if any(isinstance(c, (u3.NameResolutionError, socket.gaierror)) for c in chain):
        return "the host name could not be resolved (check the URL and your network)"
    if any(isinstance(c, (requests.exceptions.SSLError, ssl.SSLError, u3.SSLError)) for c in chain):
        return "the TLS handshake failed (certificate or proxy problem)"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connecting timed out"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if any(isinstance(c, ConnectionRefusedError) for c in chain):
        return "connection refused"
    if _never_sent(exc):
        return "could not connect"
    return {"ConnectionError": "connection dropped"}.get(type(exc).__name__, type(exc).__name__)


def _causes(exc: BaseException) -> list[Any]:
    """``exc`` and everything it wraps (causes, contexts, urllib3 reasons, arguments)."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    found: list[Any] = []
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        found.append(cur)
        if isinstance(cur, BaseException):
            stack.extend([cur.__cause__, cur.__context__, getattr(cur, "reason", None), *cur.args])
    return found



def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    return as_int(headers.get(name))


def _header_float(headers: Mapping[str, str], name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, TypeError, ValueError):
        return None


def _retry_after(headers: Mapping[str, str], body: Mapping[str, Any], message: str) -> float | None:
    """Seconds to wait, from ``Retry-After`` (seconds or HTTP date), ``retryAfter`` or the message."""
    raw = headers.get("Retry-After")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError, OverflowError):
                pass
    value = body.get("retryAfter")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(0.0, float(value))
    match = _TRY_AGAIN.search(message)
    return float(match.group(1)) if match else None


def _scrub_body(body: Any, scrub: Callable[[str], str]) -> Any:
    """The error body with the key redacted from every string in it, keys and nested values included:
    a server may echo what it received anywhere (``details.received``, ``code``)."""
    if isinstance(body, str):
        return scrub(body)
    if isinstance(body, dict):
        return {scrub(str(k)): _scrub_body(v, scrub) for k, v in body.items()}
    if isinstance(body, (list, tuple)):
        return [_scrub_body(v, scrub) for v in body]
    return body


def declared_length(raw: Any) -> int | None:
    """A ``Content-Length`` as a number, however large (50 digits is "too large", not unknown, and
    never the ValueError Python raises past 4,300 digits); None when absent or not a number."""
    if isinstance(raw, str) and raw.strip().isdigit() and len(raw.strip()) <= 100:
        return int(raw.strip())
    if isinstance(raw, str) and raw.strip().isdigit():
        return 10**100  # more digits than any real size: certainly over any cap
    return None


def _read_body(resp: requests.Response, cap: int) -> bool:
    """Read a streamed answer into ``resp`` (so ``.content``/``.json()`` work); False if over ``cap``.

    A body over the cap is not read further and its connection is closed.
    """
    declared = declared_length(resp.headers.get("Content-Length"))
    if declared is not None and declared > cap:
        resp.close()
        return False
    chunks: list[bytes] = []
    total = 0
    for chunk in resp.iter_content(chunk_size=64 * 1024):
        total += len(chunk)
        if total > cap:
            resp.close()
            return False
        chunks.append(chunk)
    resp._content = b"".join(chunks)  # what requests itself does when it reads a body
    return True
