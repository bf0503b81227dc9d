"""Where the key, the base URL and the data folder come from, and the rules that keep the key safe.

Resolution order is always: explicit argument, then environment variable, then default. The key is
only ever sent over https, or over plain http to a loopback host (the local sandbox).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from vydra_nb.api.errors import ConfigurationError

VERSION = "0.2.0"

ENV_API_KEY = "VYDRA_API_KEY"
ENV_BASE_URL = "VYDRA_BASE_URL"
ENV_HOME = "VYDRA_NB_HOME"
ENV_DOWNLOADS = "VYDRA_NB_DOWNLOADS"

# The apex host answers with a redirect to www; following it drops the Authorization header and
# turns a POST into a GET (reference/vydra-notes.md), so the default is the www host.
DEFAULT_BASE_URL = "https://www.vydra.ai/api/v1"
_APEX_HOST = "vydra.ai"

# The Creator plan's rate (the reference's pricing table is exactly credits x $0.0029, rounded half
# up; see api/money.py). Kept for old imports: dollar figures come from ``APIClient.usd_rate()``,
# which knows the plan and the user's override, and are computed in Decimal.
USD_PER_CREDIT = 0.0029

MISSING_KEY_MESSAGE = (
    "No Vydra API key: pass Client(api_key=...), set the VYDRA_API_KEY environment variable, or run "
    "`%vydra login` in a notebook. The local sandbox needs no key: `%vydra sandbox` or "
    "`vydra-nb sandbox`."
)


def resolve_api_key(api_key: str | None = None) -> str | None:
    """The key from the argument, else ``VYDRA_API_KEY``; None when neither is set."""
    key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
    if key is None:
        return None
    key = key.strip()
    return key or None


def resolve_base_url(base_url: str | None = None) -> str:
    """The API root, normalised: no trailing slash, and the apex host rewritten to www.

    Raises ConfigurationError for anything that is not an absolute http(s) URL.
    """
    url = (base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"Base URL {url!r} is not an http(s) URL; use something like {DEFAULT_BASE_URL}."
        )
    netloc = parts.netloc
    if parts.hostname == _APEX_HOST:
        netloc = netloc.replace(_APEX_HOST, "www." + _APEX_HOST, 1)
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def is_loopback_host(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: the only hosts plain http may carry the key to.

    Not ``*.localhost``: RFC 6761 reserves it for loopback, but some resolvers pass it to DNS.
    """
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_key_transport(url: str) -> None:
    """Refuse to send a key anywhere but https or a loopback http server."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return
    raise ConfigurationError(
        f"Refusing to send the API key over plain http to {parts.hostname!r}: use an https URL "
        "(plain http is only allowed for a local sandbox on 127.0.0.1 or localhost)."
    )


def is_sandbox_url(url: str) -> bool:
    """A loopback base URL is a local sandbox: views label it so nobody mistakes it for the real thing."""
    return is_loopback_host(urlsplit(url).hostname)


def data_home() -> Path:
    """The data folder (history database, downloads): ``VYDRA_NB_HOME`` or the platform's user data dir."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_path

    return user_data_path("vydra-nb", appauthor=False)


def download_home() -> Path:
    """Where results are saved: ``VYDRA_NB_DOWNLOADS``, else ``downloads`` in the data folder."""
    env = os.environ.get(ENV_DOWNLOADS)
    return Path(env).expanduser() if env else data_home() / "downloads"


def redact(text: str, *secrets: str | None) -> str:
    """Replace every occurrence of each secret in ``text`` so server echoes cannot leak a key."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text


def mask_key(key: str | None) -> str:
    """A display form that says which kind of key is set without revealing any of it."""
    if not key:
        return "<none>"
    head, sep, _ = key.rpartition("_")
    return f"{head}{sep}***" if sep and len(head) < len(key) // 2 + 8 else "***"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_key(base_url: str) -> str | None:
    """Which server a job lives on: the history's ``host`` column and half of a job's identity.

    ``hostname`` for the usual port of the scheme, ``hostname:port`` otherwise. A loopback host
    always carries its port: every local sandbox is ``127.0.0.1``, and only the port tells one
    from the next, so jobs of a sandbox long gone are not taken for this one's.
    """
    try:
        parts = urlsplit(base_url)
        hostname, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not hostname:
        return None
    shown = f"[{hostname}]" if ":" in hostname else hostname
    if port is None and is_loopback_host(hostname):
        port = _DEFAULT_PORTS.get(parts.scheme)
    if port is not None and (port != _DEFAULT_PORTS.get(parts.scheme) or is_loopback_host(hostname)):
        return f"{shown}:{port}"
    return hostname


def host_matches(row_host: str | None, base_url: str) -> bool:
    """Whether a history row's job lives on the server at ``base_url`` (the one to resume it on).

    Rows written before ports were recorded hold a bare hostname: they still match a non-loopback
    server of that name, but never a loopback one, which could be any sandbox that ever ran.
    """
    if not row_host:
        return False
    current = host_key(base_url)
    if row_host == current:
        return True
    try:
        hostname = urlsplit(base_url).hostname
    except ValueError:
        return False
    bare = ":" not in row_host or (row_host.startswith("[") and row_host.endswith("]"))
    return bool(hostname) and bare and row_host.strip("[]") == hostname and not is_loopback_host(hostname)
