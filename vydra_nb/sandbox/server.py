"""The HTTP transport of the sandbox and the :class:`Sandbox` object that owns a running server.

Stdlib only: a ``ThreadingHTTPServer`` bound to 127.0.0.1, speaking HTTP/1.1 with keep-alive
(every response carries ``Content-Length``) so a ``requests.Session`` reuses its connection as it
would against the real service. This layer routes ``/api/v1`` to :mod:`.api`, applies injected
faults around it (never to ``/health``, ``/media`` or ``/_sandbox``), serves media with byte
ranges (browsers seek video), and exposes ``/_sandbox/state``, ``/_sandbox/faults`` and
``/_sandbox/jobs/{id}`` (a job's clock at one instant) and ``POST /_sandbox/price`` (a price change)
for tests that drive a sandbox running in another process.

Request bodies are read whole up to :data:`MAX_BODY` bytes (uploads are up to 20 MB); a larger
body is read and discarded, and the API answers 413.
"""
from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .api import API_PREFIX, Api, Request, Response
from .assets import MediaStore, MediaUnavailable, OutputBuilder
from .catalog import Catalog
from .faults import NO_FAULT, Decision, FaultInjector, FaultSpec
from .jobs import JobStore
from .ledger import Ledger
from .ratelimit import RateLimiter, plan_limits

HOST = "127.0.0.1"
#: Bodies up to this size are read into memory; larger ones are drained and refused with 413.
MAX_BODY = 32 * 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def new_api_key() -> str:
    return "vydra_sandbox_" + secrets.token_hex(16)


class _Server(ThreadingHTTPServer):
    """Remembers open connections so ``stop()`` can close idle keep-alive sockets too."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # many clients connect at once; the default 5 drops SYNs (1 s stalls)

    def __init__(self, address, handler, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def handle_error(self, request, client_address):  # noqa: ANN001 - socketserver signature
        """A client that hangs up mid-request (a timeout, a test's dropped socket) is routine here."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)

    def process_request(self, request, client_address):  # noqa: ANN001 - socketserver signature
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):  # noqa: ANN001
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "VydraSandbox/1.0"
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.sandbox.verbose:
            sys.stderr.write("sandbox: %s - %s\n" % (self.address_string(), format % args))

    # Every method goes through one dispatcher.
    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self) -> tuple[bytes, bool]:
        """(body, oversized): a body over :data:`MAX_BODY` is read and discarded."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks, total, oversized = [], 0, False
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return (b"" if oversized else b"".join(chunks)), oversized
                data = self.rfile.read(size)
                total += len(data)
                if total > MAX_BODY:
                    oversized, chunks = True, []
                elif not oversized:
                    chunks.append(data)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            remaining = length
            while remaining > 0:
                got = self.rfile.read(min(1 << 20, remaining))
                if not got:
                    raise OSError("client closed the connection mid-body")
                remaining -= len(got)
            return b"", True
        return (self.rfile.read(length) if length > 0 else b""), False

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        try:
            body, oversized = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            if path.startswith("/media/"):
                self._media(path[len("/media/"):])
            elif path.startswith("/_sandbox/"):
                self._send(sandbox.control(self.command, path, body))
            elif path == API_PREFIX or path.startswith(API_PREFIX + "/"):
                self._api(Request(self.command, path, query, self.headers, body, oversized))
            else:
                self._send(Response(404, {"error": "Not found"}))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - a sandbox bug must still answer, and be visible
            traceback.print_exc(file=sys.stderr)
            self._send(Response(500, {"error": "Internal server error"}))

    def _api(self, req: Request) -> None:
        sandbox = self.server.sandbox
        is_health = req.path.rstrip("/") == API_PREFIX + "/health"
        decision: Decision = NO_FAULT if is_health else sandbox.faults.roll()
        if decision.before == "drop":
            self.close_connection = True
            return
        if decision.before in ("500", "503"):
            self._delay(decision)
            if decision.before == "503":
                self._send(Response(503, {"error": "Service temporarily unavailable"}, {"Retry-After": "1"}))
            else:
                self._send(Response(500, {"error": "Internal server error"}))
            return
        response = sandbox.api.handle(req, jobfail=decision.jobfail)
        self._delay(decision)
        if decision.after == "dropafter":
            self.close_connection = True
            return
        if decision.after == "500after":
            response = Response(500, {"error": "Internal server error"})
        self._send(response)

    @staticmethod
    def _delay(decision: Decision) -> None:
        if decision.delay > 0:
            time.sleep(decision.delay)

    def _send(self, response: Response) -> None:
        payload = b"" if response.body is None else json.dumps(response.body).encode("utf-8")
        self.send_response(response.status)
        if response.body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _media(self, name: str) -> None:
        """Serve a media file without auth, with ``Range`` support; render it on first request."""
        sandbox = self.server.sandbox
        if self.command not in ("GET", "HEAD"):
            self._send(Response(405, {"error": "Method not allowed"}, {"Allow": "GET, HEAD"}))
            return
        asset = sandbox.store.get(name)
        if asset is None:
            self._send(Response(404, {"error": "Not found"}))
            return
        try:
            path = sandbox.store.path(asset)
        except MediaUnavailable as exc:
            self._send(Response(503, {"error": str(exc)}))
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        header = self.headers.get("Range")
        if header:
            match = _RANGE.match(header.strip())
            if match and (match.group(1) or match.group(2)):
                first, last = match.groups()
                if first:
                    start, end = int(first), min(int(last), size - 1) if last else size - 1
                else:
                    start, end = max(0, size - int(last)), size - 1
                if start >= size or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", asset.content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "public, max-age=86400")
        self.send_header("Access-Control-Allow-Origin", "*")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as fh:
            fh.seek(start)
            remaining = length
            while remaining > 0:
                chunk = fh.read(min(65536, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


class Sandbox:
    """A running Vydra-compatible server on a free loopback port, in a daemon thread.

    Use :func:`vydra_nb.sandbox.start` rather than this constructor.
    """

    def __init__(self, *, credits: int = 10_000, speed: float = 1.0, faults: str | FaultSpec | None = None,
                 flavor: str = "spec", port: int = 0, api_key: str | None = None, seed: int | None = None,
                 plan: str = "creator", media_limit_mb: float = 512, verbose: bool = False,
                 progress: str = "provider", durations: str = "realistic", idempotency: bool = False) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = float(speed)
        self.flavor = flavor
        self.plan = plan
        self.seed = seed
        self.verbose = verbose
        self.progress, self.durations, self.idempotency = progress, durations, bool(idempotency)
        limits = plan_limits(plan)  # ValueError for an unknown plan, before anything is started
        self.api_key = api_key or new_api_key()
        self.faults = FaultInjector(faults, default_seed=seed)
        self.ledger = Ledger(credits)
        self.jobs = JobStore(self.ledger, speed=self.speed, seed=seed, progress=progress, durations=durations)
        self.store = MediaStore(media_limit_mb)
        try:
            self.api = Api(catalog=Catalog(live=flavor == "live"), ledger=self.ledger, jobs=self.jobs,
                           limiter=RateLimiter(self.speed, plan=limits), outputs=OutputBuilder(self.store),
                           keys={self.api_key}, flavor=flavor, plan=plan, idempotency=idempotency)
        except ValueError:
            self.store.close()
            raise
        try:
            self._server = _Server((HOST, port), _Handler, self)
        except OSError:
            self.store.close()
            raise
        self.port: int = self._server.server_address[1]
        self.root = f"http://{HOST}:{self.port}"
        self.url = f"{self.root}{API_PREFIX}"
        self.store.root = self.root
        self._stopped = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"vydra-sandbox-{self.port}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return (f"<vydra_nb.sandbox.Sandbox url={self.url!r} flavor={self.flavor!r} speed={self.speed} "
                f"plan={self.plan!r} progress={self.progress!r}>")

    # -- control ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A consistent snapshot: credits, ledger entries, job counts by status, and the
        authenticated requests answered so far by handler (``requests``: upload, generate...)."""
        with self.ledger.lock:
            counts = self.jobs.settle_all()
            snapshot = self.ledger.snapshot()
        snapshot["jobs"] = counts
        snapshot["requests"] = self.api.handled_counts()
        return snapshot

    def set_faults(self, spec: str | FaultSpec | None) -> None:
        """Replace the fault spec (None or "" clears it); ValueError on a bad spec."""
        self.faults.configure(spec)

    def add_key(self, key: str | None = None) -> str:
        """Accept one more API key for the same organization; its jobs are invisible to other keys."""
        key = key or new_api_key()
        with self.api._keys_lock:
            self.api.keys.add(key)
        return key

    def set_price(self, slug: str, credits: int, *, variant: str | None = None, charge: int | None = None) -> dict[str, Any]:
        """Change a model's price from now on, as the real service may at any time: ``GET /models``
        lists ``credits`` and new submissions are charged it (``variant``: one value of a priced
        parameter, e.g. ``"text-to-video"``). ``charge`` charges that instead of the listing (a job
        charged differently from the catalog). Returns the model's new listing; ValueError for an
        unknown model or variant."""
        return self.api.catalog.set_price(slug, credits, variant=variant, charge=charge).to_json()

    def job_timeline(self, job_id: str) -> dict[str, Any] | None:
        """A job's clock at one instant: status, progress, elapsed and total real seconds, the
        running fraction, its base duration and spread factor (None if there is no such job)."""
        job = self.jobs.get(job_id)
        return None if job is None else self.jobs.timeline(job)

    def control(self, method: str, path: str, body: bytes) -> Response:
        """``/_sandbox/*``: state, faults and job clocks for out-of-process tests (no auth, loopback only)."""
        if path == "/_sandbox/state" and method == "GET":
            return Response(200, self.state())
        if path.startswith("/_sandbox/jobs/") and method == "GET":
            timeline = self.job_timeline(path[len("/_sandbox/jobs/"):])
            return Response(404, {"error": "Job not found"}) if timeline is None else Response(200, timeline)
        if path == "/_sandbox/price" and method == "POST":
            try:
                data = json.loads(body or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("the body must be an object: {slug, credits, variant, charge}")
                listing = self.set_price(str(data.get("slug")), data.get("credits"), variant=data.get("variant"),
                                         charge=data.get("charge"))
            except ValueError as exc:
                return Response(400, {"error": str(exc)})
            return Response(200, listing)
        if path == "/_sandbox/faults" and method == "POST":
            try:
                data = json.loads(body or b"{}")
                self.set_faults(data.get("faults") if isinstance(data, dict) else None)
            except (ValueError, AttributeError) as exc:
                return Response(400, {"error": str(exc)})
            return Response(200, {"faults": data.get("faults")})
        return Response(404, {"error": "Not found"})

    def stop(self) -> None:
        """Stop serving, close connections, delete the media folder. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.store.close()

    @property
    def running(self) -> bool:
        return not self._stopped

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # best effort: never leave a temp folder behind
        try:
            if not self._stopped:
                shutil.rmtree(self.store.dir, ignore_errors=True)
        except Exception:  # noqa: BLE001
            pass
