"""The Emulator: worlds per account, credentials, faults, and the request logic of the fake API."""

from __future__ import annotations

import json
import random
import secrets
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from archiver.emulator.clock import Clock
from archiver.emulator.faults import WRONG_TYPES, FaultPlan, Faults
from archiver.emulator.server import (
    API_PREFIX,
    GET_PATH,
    LIST_PATH,
    UUID,
    EmulatorHTTPServer,
    RateWindow,
    Reply,
    error_reply,
    json_reply,
    parse_request,
)
from archiver.emulator.world import World


@dataclass(frozen=True)
class ServerInfo:
    port: int
    base_url: str


@dataclass(frozen=True)
class ServedPage:
    """One listing request as the emulator answered it: when (Unix time), for which account,
    at which offset, with which fault (None: a clean answer), and the valid ids it carried."""

    at: float
    account_id: str
    offset: int
    fault: int | str | None
    ids: tuple[str, ...]

    @property
    def delivered(self) -> bool:
        """Whether the client got the page's items (a spoiled id still delivers the others)."""
        return self.fault in (None, "bad_id")


@dataclass(frozen=True)
class ServedRequest:
    """One API request as the emulator answered it: when (simulated ms), which endpoint (list or
    get), and the status (0: the connection was dropped without an answer)."""

    at_ms: float
    endpoint: str
    status: int


class Emulator:
    """A Cloudflare-compatible fake of the DevTools session endpoints, with its ground truth."""

    def __init__(
        self,
        accounts: int | list[str] = 1,
        initial_sessions: int = 20,
        seed: int = 1,
        speed: float = 1.0,
        spawn_per_minute: float = 30.0,
        mean_lifetime_s: float = 60.0,
        retention_s: float = 300.0,
        close_reason_style: str = "mixed",
        token: str | None = None,
        email: str | None = None,
        api_key: str | None = None,
        faults: Faults | None = None,
        start_ms: float | None = None,
        keep_served_pages: bool = False,
        keep_request_log: bool = False,
        median_lifetime_s: float | None = None,
        lifetime_sigma: float = 1.0,
    ) -> None:
        rng = random.Random(seed)
        if isinstance(accounts, int):
            accounts = [f"{rng.getrandbits(128):032x}" for _ in range(accounts)]
        self.account_ids: list[str] = list(accounts)
        self.token = token or secrets.token_urlsafe(24)
        self.email = email or "operator@example.com"
        self.api_key = api_key or secrets.token_hex(20)
        self.clock = Clock(speed, start_ms)
        self._worlds = {
            account: World(
                account,
                self.clock,
                random.Random(rng.getrandbits(64)),
                initial_sessions=initial_sessions,
                spawn_per_minute=spawn_per_minute,
                mean_lifetime_s=mean_lifetime_s,
                retention_s=retention_s,
                close_reason_style=close_reason_style,
                median_lifetime_s=median_lifetime_s,
                lifetime_sigma=lifetime_sigma,
            )
            for account in self.account_ids
        }
        self._plan = FaultPlan(faults, seed + 1)
        self._rate = RateWindow()
        self._counters: Counter[str] = Counter()
        self._counter_lock = threading.Lock()
        # Every listing page served, for tests that check what a client was shown (off by
        # default: a long-running emulator would grow it without end).
        self.served_pages: list[ServedPage] | None = [] if keep_served_pages else None
        # Every API request, on the simulated clock (off by default, for the same reason).
        self.request_log: list[ServedRequest] | None = [] if keep_request_log else None
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- Python API ---------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._plan.faults

    def set_faults(self, **values: Any) -> Faults:
        """Change some fault settings (the rest stay as they are)."""
        self._plan.faults = self._plan.faults.updated(values)
        return self._plan.faults

    def inject(self, kind: int | str, times: int = 1, endpoint: str = "any", retry_after: float | None = None,
               after: int = 0) -> None:
        """Answer the next ``times`` matching requests (after letting ``after`` through) with a
        status or a fault kind."""
        self._plan.inject(kind, times, endpoint, retry_after, after)

    def clear_injections(self) -> None:
        """Drop the scripted faults not yet used."""
        self._plan.clear()

    def world(self, account_id: str) -> World:
        return self._worlds[account_id]

    def truth(self, account_id: str | None = None) -> list[dict[str, Any]]:
        """Every session ever had (of one account, or all), with final state."""
        accounts = [account_id] if account_id else self.account_ids
        return [{**item, "accountId": a} for a in accounts for item in self._worlds[a].truth()]

    def stats(self) -> dict[str, int]:
        with self._counter_lock:
            return dict(self._counters)

    def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> ServerInfo:
        """Serve on 127.0.0.1 in a background thread; HTTPS with the ``tls`` server context."""
        self._server = EmulatorHTTPServer(port, self, tls)
        self._thread = threading.Thread(target=self._server.serve_forever, name="emulator", daemon=True)
        self._thread.start()
        return self.info

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def info(self) -> ServerInfo:
        assert self._server is not None, "the emulator is not serving"
        port = self._server.server_address[1]
        scheme = "https" if self._server.tls is not None else "http"
        return ServerInfo(port, f"{scheme}://127.0.0.1:{port}{API_PREFIX}")

    @property
    def connections(self) -> int:
        """The connections accepted since the server started (TLS handshakes, over HTTPS)."""
        assert self._server is not None, "the emulator is not serving"
        return self._server.connections

    @contextmanager
    def serve(self, port: int = 0, tls: ssl.SSLContext | None = None) -> Iterator[ServerInfo]:
        info = self.start(port, tls)
        try:
            yield info
        finally:
            self.stop()

    # -- request handling ---------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Reply:
        path, query = parse_request(raw_path)
        if path.startswith("/__emulator/"):
            return self._control(method, path, body)
        list_match, get_match = LIST_PATH.match(path), GET_PATH.match(path)
        if method != "GET" or not (list_match or get_match):
            self._count("route:unknown")
            return error_reply(404, "No route for that URI")
        endpoint = "list" if list_match else "get"
        self._count("requests", f"endpoint:{endpoint}")
        reply = self._api(endpoint, list_match or get_match, query, headers)
        if self.faults.latency_ms:
            reply.delay_s += self.faults.latency_ms / 1000
        status = reply.status if reply.body is not None else 0
        self._count(f"status:{status or 'reset'}")
        if self.request_log is not None:
            with self._counter_lock:
                self.request_log.append(ServedRequest(self.clock.now_ms(), endpoint, status))
        return reply

    def _api(self, endpoint: str, match: Any, query: dict[str, list[str]], headers: dict[str, str]) -> Reply:
        credential = self._credential(headers)
        if credential is None:
            return error_reply(401)
        faults = self.faults
        if faults.enforce_rate_limit:
            now_s = self.clock.now_ms() / 1000
            wait = self._rate.check(credential, faults.rate_limit_requests, faults.rate_limit_window_s, now_s)
            if wait is not None:
                return self._served(endpoint, match, query, 429, error_reply(429, headers={"Retry-After": str(max(1, round(wait)))}))
        injection = self._plan.next_injection(endpoint)
        kind = injection.kind if injection is not None else self._plan.kind_for(endpoint)
        if isinstance(kind, int):
            retry = injection.retry_after if injection is not None and injection.retry_after is not None else faults.retry_after_s
            reply = error_reply(kind, headers={"Retry-After": f"{retry:g}"} if kind == 429 else None)
            return self._served(endpoint, match, query, kind, reply)
        if kind == "empty" and endpoint == "list":
            return self._served(endpoint, match, query, kind, self._ok([]))
        if kind in ("reset", "malformed", "null", "wrong_type"):
            return self._served(endpoint, match, query, kind, self._fault_reply(kind, endpoint))
        account_id = match.group(1)
        if account_id not in self._worlds:
            return error_reply(403)
        world = self._worlds[account_id]
        if endpoint == "list":
            reply = self._list(world, query, spoil_id=kind == "bad_id")
        else:
            reply = self._get(world, match.group(2), spoil_id=kind == "bad_id")
        if kind == "timeout":
            reply.delay_s += faults.timeout_s  # the real answer, too late for the client
        elif kind == "oversized" and reply.status == 200:
            reply.body = _padded(reply.body or b"", faults.oversized_bytes)
        return self._served(endpoint, match, query, kind, reply)

    def _list(self, world: World, query: dict[str, list[str]], spoil_id: bool = False) -> Reply:
        limit = _int_param(query, "limit", 200)
        offset = _int_param(query, "offset", 0)
        if limit is None or not 1 <= limit <= 200:
            return error_reply(400, "limit must be an integer between 1 and 200")
        if offset is None or offset < 0:
            return error_reply(400, "offset must be a non-negative integer")
        faults = self.faults
        if faults.drift and offset > 0:
            for _ in range(faults.drift_closes):
                world.close_one_before(offset)  # a session on an earlier page ends between two requests
            offset = max(0, offset - faults.drift_repeats)
        if not (faults.odd_fields_rate or faults.envelope or spoil_id or faults.listing_omits or self.served_pages is not None):
            return Reply(200, world.page_json(offset, limit))  # the common case: pre-encoded pages
        items = world.listing()[offset : offset + limit]
        if faults.listing_omits:
            # A listing that carries less than the details do: what the auto detail policy learns.
            items = [{k: v for k, v in i.items() if k not in faults.listing_omits} for i in items]
        if faults.odd_fields_rate:
            items = [self._plan.odd_item(i) if self._plan.draw(faults.odd_fields_rate) else i for i in items]
        if spoil_id and items:
            index = int(self._plan.choice(range(len(items))))
            items = [*items[:index], self._plan.bad_id(items[index]), *items[index + 1 :]]
        reply = self._ok(items)
        reply.served = [i["sessionId"] for i in items if isinstance(i.get("sessionId"), str) and UUID.fullmatch(i["sessionId"])]
        return reply

    def _get(self, world: World, session_id: str, spoil_id: bool = False) -> Reply:
        if not UUID.fullmatch(session_id):
            return error_reply(400, "Invalid session id")
        item = world.get(session_id)
        if item is None:
            return error_reply(404)
        if self._plan.draw(self.faults.odd_fields_rate):
            item = self._plan.odd_item(item)
        if spoil_id:
            item = self._plan.bad_id(item)
        return self._ok(item)

    def _ok(self, data: Any) -> Reply:
        if self.faults.envelope:
            data = {"success": True, "errors": [], "messages": [], "result": data}
        return json_reply(200, data)

    def _served(self, endpoint: str, match: Any, query: dict[str, list[str]], fault: int | str | None, reply: Reply) -> Reply:
        """Count the fault, note a listing page in the served-pages log (when kept), pass the reply on."""
        if fault is not None:
            self._count(f"fault:{fault}")
        if self.served_pages is not None and endpoint == "list":
            outcome = fault if fault is not None or reply.status == 200 else reply.status
            page = ServedPage(time.time(), match.group(1), _int_param(query, "offset", 0) or 0, outcome, tuple(reply.served or ()))
            with self._counter_lock:
                self.served_pages.append(page)
        return reply

    def _fault_reply(self, kind: str, endpoint: str) -> Reply:
        if kind == "reset":
            return Reply(0, None)
        if kind == "null":
            return Reply(200, b"null")
        if kind == "wrong_type":
            wrong = [w for w in WRONG_TYPES if not isinstance(w, list if endpoint == "list" else dict)]
            return json_reply(200, self._plan.choice(wrong))
        return Reply(200, b'[{"sessionId": "0f0e', {})  # malformed: truncated mid-body

    def _credential(self, headers: dict[str, str]) -> str | None:
        lowered = {k.lower(): v for k, v in headers.items()}
        if lowered.get("authorization") == f"Bearer {self.token}":
            return "token"
        if lowered.get("x-auth-email") == self.email and lowered.get("x-auth-key") == self.api_key:
            return "key"
        return None

    # -- control endpoints --------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return error_reply(400, "body must be JSON")
        if method == "GET" and path == "/__emulator/truth":
            return json_reply(200, self.truth())
        if method == "GET" and path.startswith("/__emulator/truth/"):
            account = path.rsplit("/", 1)[1]
            return json_reply(200, self.truth(account)) if account in self._worlds else error_reply(404, "unknown account")
        if method == "GET" and path == "/__emulator/stats":
            return json_reply(200, self.stats())
        if path == "/__emulator/faults":
            if method == "POST":
                try:
                    self.set_faults(**payload)
                except (TypeError, ValueError) as exc:
                    return error_reply(400, str(exc))
            return json_reply(200, self.faults.to_json())
        if method == "POST" and path == "/__emulator/advance":
            self.clock.advance(float(payload.get("seconds", 0)))
            return json_reply(200, {"nowMs": self.clock.now_ms()})
        if method == "POST" and path == "/__emulator/inject":
            self.inject(payload["kind"], int(payload.get("times", 1)), payload.get("endpoint", "any"),
                        payload.get("retry_after"), int(payload.get("after", 0)))
            return json_reply(200, {"queued": True})
        return error_reply(404, "No route for that URI")

    def _count(self, *names: str) -> None:
        with self._counter_lock:
            self._counters.update(names)


def serve_forever(emulator: Emulator, port: int, on_ready: Callable[[str], None] = lambda _url: None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""
    import signal

    stop = threading.Event()
    # Handled explicitly rather than through KeyboardInterrupt: a process started in the
    # background of a script inherits SIGINT ignored, and Ctrl-C must still stop it.
    stopping = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in stopping}
    info = emulator.start(port)
    on_ready(info.base_url)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        emulator.stop()


def _int_param(query: dict[str, list[str]], name: str, default: int) -> int | None:
    values = query.get(name)
    if not values:
        return default
    try:
        number = float(values[0])
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _padded(body: bytes, size: int) -> bytes:
    """The body with trailing whitespace up to ``size`` bytes: still the same JSON if read whole."""
    return body + b" " * max(0, size - len(body))
