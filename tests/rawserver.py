"""A tiny scripted HTTP server for the few client tests the sandbox cannot express.

Used for servers that misbehave in ways a faithful sandbox never would (no idempotency support,
redirects to another host, hostile bodies). Every request is recorded so a test can count them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    drop: bool = False


@dataclass
class RawServer:
    url: str
    seen: list[Seen]

    def count(self, method: str) -> int:
        return sum(1 for s in self.seen if s.method == method)


@contextmanager
def raw_server(script: Callable[[Seen], Reply]) -> Iterator[RawServer]:
    seen: list[Seen] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Seen(self.command, self.path, dict(self.headers.items()), body)
            seen.append(req)
            reply = script(req)
            if reply.drop:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", reply.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _handle

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            """A client that hangs up early (tests do, on purpose) is not worth a printed traceback."""

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RawServer(f"http://127.0.0.1:{server.server_address[1]}/api/v1", seen)
    finally:
        server.shutdown()
        server.server_close()
