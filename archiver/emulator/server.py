"""The emulator's HTTP side: routing, auth, validation, faults, and the loopback server."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from archiver.emulator.app import Emulator

API_PREFIX = "/client/v4"
LIST_PATH = re.compile(rf"^{API_PREFIX}/accounts/([^/]+)/browser-rendering/devtools/session/?$")
GET_PATH = re.compile(rf"^{API_PREFIX}/accounts/([^/]+)/browser-rendering/devtools/session/([^/]+)$")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ERRORS = {
    400: (1001, "Invalid request"),
    401: (10000, "Authentication error"),
    403: (10000, "Authentication error"),
    404: (404, "Session not found"),
    429: (971, "Please wait and consider throttling your request speed"),
    500: (2000, "Internal server error"),
    503: (2001, "No browser available"),
}


@dataclass
class Reply:
    status: int
    body: bytes | None  # None: drop the connection without answering
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    served: list[str] | None = None  # the valid session ids of a listing page


def json_reply(status: int, data: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(data, separators=(",", ":")).encode(), headers or {})


def error_reply(status: int, message: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    code, default = ERRORS.get(status, (status, "Error"))
    envelope = {"success": False, "errors": [{"code": code, "message": message or default}], "messages": [], "result": None}
    return json_reply(status, envelope, headers)


class RateWindow:
    """Cloudflare's per-token limit: past N requests in a window, everything is 429 until it ends."""

    def __init__(self) -> None:
        self.hits: dict[str, deque[float]] = {}
        self.blocked_until: dict[str, float] = {}
        self.lock = threading.Lock()

    def check(self, credential: str, limit: int, window_s: float, now: float) -> float | None:
        """None if allowed, else the seconds until the block lifts. ``now`` is in seconds on the
        emulator's simulated clock, so that an accelerated world blocks for a simulated window."""
        with self.lock:
            until = self.blocked_until.get(credential, 0.0)
            if now < until:
                return until - now
            hits = self.hits.setdefault(credential, deque())
            while hits and hits[0] <= now - window_s:
                hits.popleft()
            if len(hits) >= limit:
                self.blocked_until[credential] = now + window_s
                return window_s
            hits.append(now)
            return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients reuse connections
    # Headers and body go out in separate writes: without this, Nagle holds the body back until
    # the client acknowledges the headers, tens of milliseconds per answer with delayed ACKs.
    disable_nagle_algorithm = True
    server: EmulatorHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Silence the per-request stderr line."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.emulator.handle(method, self.path, dict(self.headers.items()), body)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.body is None:
            self._drop()
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            # The client gave up first (a timeout, or a body past its size cap): as upstream.
            self._drop()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A client opening dozens of connections at once must not overflow the listen backlog (the
    # default is 5): a dropped SYN is retried only a second later.
    request_queue_size = 128

    def __init__(self, port: int, emulator: Emulator, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.emulator = emulator
        self.tls = tls
        self.connections = 0  # accepted: with TLS, each is a handshake

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        self.connections += 1
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)  # the handshake, here in the accepting thread
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-request (killed, timed out) is normal here; anything else is not."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def parse_request(path: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(path)
    return parts.path, parse_qs(parts.query, keep_blank_values=True)
