"""The exception family of vydra_nb.

Every error a user can cause or meet is a :class:`VydraError` carrying a one-line message that
says what to do. The magics turn these into short ``UsageError`` lines, so the message must stand
on its own. No message ever contains the API key: the client scrubs server text before it gets
here (see :func:`vydra_nb.config.redact`).
"""

from __future__ import annotations

from typing import Any


# -- messages: every one is a single line, and never echoes a wall of text ------------------------
def one_line(text: str, limit: int = 300) -> str:
    """Collapse line breaks and runs of spaces, and cap the length with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def shown(value: object, limit: int = 60) -> str:
    """``repr`` of what a user (or a server) gave, for a message: escaped, cut to ``limit`` chars."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 4] + "…" + r[-3:]


class VydraError(Exception):
    """Base class: a failure the user can understand and act on.

    ``status_code`` and ``code`` are the HTTP status and the server's error ``code`` (the live
    service sends one, the specification does not), ``body`` the parsed error body if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.body = body

    def __str__(self) -> str:
        return self.message


class ConfigurationError(VydraError):
    """The key, base URL or data folder is missing or unsafe; nothing was sent."""


class AuthenticationError(VydraError):
    """401 (bad or missing key) or 403 (key lacks a scope)."""


class ValidationError(VydraError):
    """400 from the server, or a local ``inputSchema`` check that stopped a request being sent.

    ``field`` names the offending parameter when one is known.
    """

    def __init__(self, message: str, *, field: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.field = field


class InsufficientCreditsError(VydraError):
    """402: the organization cannot pay for this generation."""

    def __init__(
        self,
        message: str,
        *,
        credits_required: int | None = None,
        credits_remaining: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.credits_required = credits_required
        self.credits_remaining = credits_remaining


class BudgetExceededError(VydraError):
    """A submission (or a whole sweep) would cross a budget; nothing was sent.

    ``scope`` says which budget ("session", "day", "tag NAME", "client"), ``limit`` its size,
    ``used`` what is spent or reserved against it, ``left`` what remains, and ``needed`` what the
    refused submission would have cost (all in credits).
    """

    def __init__(self, message: str, *, scope: str, limit: int, used: int, needed: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.scope = scope
        self.limit = limit
        self.used = used
        self.needed = needed

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)


class NotFoundError(VydraError):
    """404, or an unknown model slug (``suggestions`` holds the closest known slugs)."""

    def __init__(self, message: str, *, suggestions: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.suggestions = suggestions or []


class RateLimitError(VydraError):
    """429: no job was created; ``retry_after`` is how many seconds to wait."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(VydraError):
    """5xx from the server after the retries a read is allowed."""


class APIConnectionError(VydraError):
    """The server could not be reached, or the connection broke, or it timed out."""


class OutcomeUnknownError(APIConnectionError):
    """A generation request failed in a way that may or may not have created (and charged) a job.

    It is never retried blindly, since that could charge twice. ``idempotency_key`` is the key the
    request carried: submitting again with the same key is safe on servers that honour it.
    """

    def __init__(self, message: str, *, idempotency_key: str, model: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.idempotency_key = idempotency_key
        self.model = model


class ResponseError(VydraError):
    """The server answered with something that is not what the API documents (bad JSON, bad types)."""


class JobFailedError(VydraError):
    """Raised by ``Job.wait()`` for a job that ended ``failed``; ``code`` is the server's error code."""

    def __init__(self, message: str, *, job: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.job = job


class JobCancelledError(VydraError):
    """Raised by ``Job.wait()`` for a job that was cancelled before it finished."""

    def __init__(self, message: str, *, job: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.job = job


class JobTimeoutError(VydraError, TimeoutError):
    """``Job.wait(timeout=...)`` gave up; the job itself goes on."""


class DownloadError(VydraError):
    """A result could not be fetched or stored safely (bad URL, too large, write failed)."""


class CreditWarning(UserWarning):
    """Remaining credits fell below the warning threshold (500 by default)."""


class HistoryWarning(UserWarning):
    """A job could not be written to the history store; its id is in the message, to keep by hand."""


__all__ = [
    "APIConnectionError",
    "AuthenticationError",
    "BudgetExceededError",
    "ConfigurationError",
    "CreditWarning",
    "HistoryWarning",
    "DownloadError",
    "InsufficientCreditsError",
    "JobCancelledError",
    "JobFailedError",
    "JobTimeoutError",
    "NotFoundError",
    "OutcomeUnknownError",
    "RateLimitError",
    "ResponseError",
    "ServerError",
    "ValidationError",
    "VydraError",
]
