"""The Cloudflare API client: auth, paging, retries, rate limiting, error mapping. No SQL here."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import re
import socket
import ssl
import zlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import httpx

from archiver.api.scheduler import Deadline, Priority, RequestScheduler, shared_scheduler
from archiver.archive.records import UUID_PATTERN
from archiver.archive.redact import redact_text
from archiver.config import Credentials, Settings
from archiver.errors import AuthError, DoubtfulAnswer, FatalError, NoAnswer, ThrottledError, UpstreamError

log = logging.getLogger(__name__)

PAGE_SIZE = 200
# Consecutive pages overlap by this many items: if the list shifts left between two requests
# (sessions closing on earlier pages) by fewer items than that, the overlap still ties the pages
# together; if it shifted further, the listing is flagged incomplete rather than silently
# skipping sessions.
PAGE_OVERLAP = 10
MAX_BODY_BYTES = 16 * 1024 * 1024
# What the client decodes itself (one decoder, capped: a small body may unpack huge).
ACCEPT_ENCODING = "gzip, deflate"
# httpx's default keeps an idle connection 5 s: shorter than any poll interval, so every cycle
# would open (and, against Cloudflare, handshake) a new one. The client keeps them at least this
# long, and longer than its interval (see client_from_settings).
KEEPALIVE_SECONDS = 60.0
BACKOFF_BASE_SECONDS = 0.5
ACCOUNT_PATTERN = re.compile(r"^[0-9a-f]{32}$")
JSON_NAMES: dict[type, str] = {list: "array", dict: "object", str: "string", type(None): "null", bool: "boolean"}
Doubt = Callable[[Any], str | None]
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 520, 521, 522, 523, 524})


@dataclass
class RequestStats:
    """What one poll cycle cost in API terms; written to the ledger."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    waited_seconds: float = 0.0  # waiting for a turn in the request scheduler, and for backoffs
    throttled_seconds: float = 0.0  # the part of it that a 429's hold-off caused
    by_status: dict[int, int] = field(default_factory=dict)

    def count(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1


@dataclass
class Listing:
    """The pages of one account's session list. ``complete`` is set once every page succeeded."""

    client: CloudflareClient
    account_id: str
    stats: RequestStats
    page_size: int = PAGE_SIZE
    pages: int = 0
    # Sessions the pages brought so far, counted page to page (a set of every id would cost a huge
    # listing megabytes the cycle already spends on its own).
    brought: int = 0
    complete: bool = False
    problem: str | None = None
    _first: asyncio.Future[list[Any]] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Ask for the first page now, so that the caller can do other work while it comes."""
        if self._first is None:
            self._first = asyncio.ensure_future(self._page(0))

    async def drop(self) -> None:
        """Abandon a first page asked for with start() that the listing never came to."""
        first, self._first = self._first, None
        if first is not None:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)

    async def __aiter__(self) -> AsyncGenerator[list[Any], None]:
        # The next page is requested before this one is handed over, so that the server prepares
        # it (and the network carries it) while the caller stores this one.
        offset = 0
        previous_ids: set[Any] = set()
        fetch, self._first = self._first or asyncio.ensure_future(self._page(offset)), None
        try:
            while True:
                items = await fetch
                self.pages += 1
                # Only string ids tie pages together: an id may be any JSON value, even a list.
                ids = {i.get("sessionId") for i in items if isinstance(i, dict) and isinstance(i.get("sessionId"), str)}
                self.brought += len(ids - previous_ids)
                if offset and ids and ids == previous_ids:
                    # A server that ignores offset would otherwise be paged for ever.
                    self.problem = "the server answered the same page again (it ignores offset)"
                elif offset and not ids & previous_ids:
                    self.problem = f"the list shifted by more than {PAGE_OVERLAP} items between pages"
                elif self.pages > self.brought // (self.page_size - PAGE_OVERLAP) + 2:
                    # More pages than the sessions they brought can fill: the list keeps shifting
                    # back onto itself.
                    self.problem = f"{self.pages} pages for {self.brought} sessions: the list does not end"
                if len(items) > self.page_size:
                    # A server that ignores limit/offset would otherwise be paged forever.
                    self.problem = f"the server returned {len(items)} items for limit {self.page_size}"
                last = len(items) < self.page_size or self.problem is not None
                if not last:
                    previous_ids = ids
                    offset += len(items) - PAGE_OVERLAP
                    fetch = asyncio.ensure_future(self._page(offset))
                yield items
                if last:
                    break
        finally:
            if not fetch.done():
                fetch.cancel()
                await asyncio.gather(fetch, return_exceptions=True)
        self.complete = self.problem is None

    async def _page(self, offset: int) -> list[Any]:
        return await self.client.get_json(  # type: ignore[no-any-return]
            f"/accounts/{self.account_id}/browser-rendering/devtools/session",
            {"limit": self.page_size, "offset": offset},
            self.stats,
            expect=list,
            priority=Priority.LIST,
        )


class AccountAPI:
    """The two session endpoints of one account, with per-cycle request accounting."""

    def __init__(self, client: CloudflareClient, account_id: str, stats: RequestStats) -> None:
        if not ACCOUNT_PATTERN.fullmatch(account_id):
            raise FatalError(f"invalid account id {account_id!r}")
        self.client = client
        self.account_id = account_id
        self.stats = stats

    def listing(self) -> Listing:
        """A fresh pass over the account's active sessions."""
        return Listing(self.client, self.account_id, self.stats)

    async def get_session(
        self, session_id: str, *, priority: Priority = Priority.NEW, key: float = 0.0, deadline: Deadline | None = None,
        abort: Deadline | None = None,
    ) -> Any | None:
        """One session's details, or None if Cloudflare no longer knows it (404 or null).

        The request waits its turn in the token's scheduler by ``priority`` and ``key`` (see
        :class:`RequestScheduler`); one not sent before ``deadline``, or an attempt (a retry too)
        not sent before ``abort``, is given up (DeadlineReached).
        """
        if not UUID_PATTERN.fullmatch(session_id):
            raise FatalError(f"invalid session id {session_id!r}")
        path = f"/accounts/{self.account_id}/browser-rendering/devtools/session/{session_id}"
        return await self.client.get_json(
            path, None, self.stats, missing_ok=True, expect=dict, doubt=lambda data: _detail_doubt(data, session_id),
            priority=priority, key=key, deadline=deadline, abort=abort,
        )


class CloudflareClient:
    """An httpx client for one set of credentials, shared by every account they reach."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        rate_limit: float = 3.0,
        timeout: float = 10.0,
        max_retries: int = 4,
        max_retry_wait: float = 60.0,
        max_connections: int = 16,
        scheduler: RequestScheduler | None = None,
        keepalive_expiry: float = KEEPALIVE_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # Without a scheduler of the token's (shared, with the rate budget's window), the client
        # keeps only to the peak rate. Either way requests wait for their turn and for a
        # connection there, in priority order, rather than in the connection pool's queue (which
        # httpcore rescans on every request it hands out).
        self.scheduler = scheduler or RequestScheduler(peak_rate=rate_limit, max_in_flight=max_connections)
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.request_timeout = timeout
        self._random = random.Random()
        self._secrets = credentials.secrets()
        self.keepalive_expiry = keepalive_expiry
        # httpx's own transport (httpcore): proxies from the environment, TLS verified always.
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={
                **credentials.headers(), "Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING,
                "User-Agent": "browser-session-archiver",
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                                keepalive_expiry=keepalive_expiry),
            transport=transport,
            follow_redirects=False,
        )

    def account(self, account_id: str, stats: RequestStats) -> AccountAPI:
        """The API of one account, counting requests into ``stats``."""
        return AccountAPI(self, account_id, stats)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> CloudflareClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def get_json(
        self,
        path: str,
        params: dict[str, Any] | None,
        stats: RequestStats,
        *,
        missing_ok: bool = False,
        expect: type | None = None,
        doubt: Doubt | None = None,
        priority: Priority = Priority.LIST,
        key: float = 0.0,
        deadline: Deadline | None = None,
        abort: Deadline | None = None,
    ) -> Any:
        """GET a path and decode its JSON body, retrying what may pass; None for a 404 if allowed.

        Every attempt waits for its turn in the request scheduler (``priority``, ``key``: see
        :meth:`RequestScheduler.acquire`); a first attempt not granted before ``deadline``, or any
        attempt not granted before ``abort``, is not sent (DeadlineReached).

        ``expect`` is the JSON type a 200 must have (or null, if ``missing_ok``); anything else
        counts as a garbled answer, retried like truncated JSON. ``doubt`` names what is odd about
        a well-formed answer (None if nothing): such an answer is asked again like a failure, and
        returned as it is only if it is still the answer when the retries are spent.
        """
        attempt = 0
        first_deadline = deadline if abort is None else abort if deadline is None else Deadline(also=(deadline, abort))
        place = None
        while True:
            # The deadline holds for the first attempt only: a request that was sent is retried
            # however late, or a slow or flaky API would see every request given up half-way.
            # ``abort`` says the caller has stopped asking (Cloudflare gives no answer at all). A
            # retry keeps its place in the queue, so a failure is known before many more are sent.
            grant = await self.scheduler.acquire(priority, key, first_deadline if attempt == 0 else abort, place)
            place = grant.place
            stats.waited_seconds += grant.waited
            stats.throttled_seconds += grant.throttled
            try:
                try:
                    return await self._get_once(path, params, stats, missing_ok, expect, doubt)
                finally:
                    self.scheduler.release(priority)
            except UpstreamError as exc:
                if attempt >= self.max_retries:
                    if isinstance(exc, DoubtfulAnswer):
                        return exc.data
                    raise
                delay = self._retry_delay(attempt, exc)
                attempt += 1
                stats.retries += 1
                log.debug("retrying %s in %.2fs: %s", path, delay, exc)
                if isinstance(exc, ThrottledError):
                    # A 429 blocks the whole token: hold back every caller, not just this one.
                    self.scheduler.hold_off(delay)
                else:
                    await asyncio.sleep(delay)
                    stats.waited_seconds += delay

    async def _get_once(
        self, path: str, params: dict[str, Any] | None, stats: RequestStats, missing_ok: bool, expect: type | None,
        doubt: Doubt | None = None,
    ) -> Any:
        stats.requests += 1
        try:
            # The timeout bounds the whole request, not each read: a server that sends a byte a
            # second would otherwise hold it for ever.
            async with asyncio.timeout(self.request_timeout):
                answer = await self._fetch(path, params)
        except TimeoutError as exc:
            stats.count(0)
            raise NoAnswer(f"no whole answer from {self._http.base_url.host} within {self.request_timeout:g}s") from exc
        except httpx.TransportError as exc:
            stats.count(0)
            refused = _certificate_error(exc)
            if refused is not None:
                # Verification is always on; a certificate it refuses will not improve on retry.
                host = self._http.base_url.host
                raise FatalError(f"TLS certificate of {host} refused: {refused.verify_message}") from exc
            raise NoAnswer(f"cannot reach {self._http.base_url.host}: {_network_reason(exc)}") from exc
        stats.count(answer.status)
        if answer.status == 200:
            data = self._decode(answer.body)
            if expect is not None and not isinstance(data, expect) and not (data is None and missing_ok):
                raise UpstreamError(f"expected a JSON {JSON_NAMES[expect]} from Cloudflare, got {_json_name(data)}")
            reason = doubt(data) if doubt is not None else None
            if reason is not None:
                raise DoubtfulAnswer(reason, data)
            return data
        if answer.status == 404 and missing_ok:
            return None
        raise self._error_for(answer, stats)

    async def _fetch(self, path: str, params: dict[str, Any] | None) -> Answer:
        """The whole answer to a GET, its body as sent (capped) and then decoded (capped again)."""
        response = await self._http.send(self._http.build_request("GET", path, params=params), stream=True)
        try:
            body = await _read_capped(response)
        finally:
            await response.aclose()
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            body = _decompressed(body, encoding)
        return Answer(response.status_code, response.headers, body, response.reason_phrase)

    def _retry_delay(self, attempt: int, exc: UpstreamError) -> float:
        """Exponential backoff with jitter; a Retry-After is honoured but never below the backoff
        (a 0 would burn every retry at once) and never above max_retry_wait."""
        backoff = BACKOFF_BASE_SECONDS * (2.0**attempt) * (0.5 + self._random.random() / 2)
        retry_after = exc.retry_after if isinstance(exc, ThrottledError) else None
        delay = max(backoff, retry_after) if retry_after is not None else backoff
        return min(delay, self.max_retry_wait)

    def _decode(self, body: bytes) -> Any:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            snippet = self._clean(body[:120].decode("utf-8", "replace"))
            raise UpstreamError(f"malformed JSON from Cloudflare: {snippet!r}") from exc
        # The API answers bare bodies; tolerate the v4 envelope some proxies and versions add.
        if isinstance(data, dict) and "result" in data and "sessionId" not in data:
            if data.get("success") is False:
                raise UpstreamError(f"Cloudflare reported failure: {self._clean(_envelope_message(data))}")
            return data["result"]
        return data

    def _error_for(self, answer: Answer, stats: RequestStats) -> Exception:
        status, body = answer.status, answer.body
        try:
            message = _envelope_message(json.loads(body))
        except (ValueError, RecursionError):
            message = body[:120].decode("utf-8", "replace") or answer.reason
        message = self._clean(message)
        text = f"HTTP {status} from Cloudflare: {message}"
        if status == 429:
            stats.throttled += 1
            return ThrottledError(text, _retry_after(answer))
        if status in RETRY_STATUSES or status >= 500:
            return UpstreamError(text)
        if status in (401, 403):
            return AuthError(f"Cloudflare refused the credentials ({text})")
        return FatalError(text)

    def _clean(self, text: str) -> str:
        """Upstream text made safe for messages: a proxy may echo our own credentials back."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return redact_text(text)


class Answer(NamedTuple):
    """A whole response."""

    status: int
    headers: httpx.Headers
    body: bytes  # decoded
    reason: str


async def _read_capped(response: httpx.Response) -> bytes:
    """The body as sent (raw: the client decodes it itself), never past MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> UpstreamError:
    return UpstreamError(f"response body larger than {MAX_BODY_BYTES} bytes")


def _detail_doubt(data: dict[str, Any] | None, session_id: str) -> str | None:
    """What is odd about a session's detail: null, or a body about another (or no valid) id.

    Either may be a passing glitch upstream; a null that persists means Cloudflare has nothing,
    and a persistent wrong id is the poll cycle's to set aside.
    """
    if data is None:
        return "Cloudflare answered null for the session"
    answered = data.get("sessionId")
    if not isinstance(answered, str) or answered.lower() != session_id.lower():
        return "Cloudflare answered with another session id"
    return None


def _network_reason(exc: httpx.TransportError) -> str:
    """What went wrong on the way, in a few words: name resolution, a refused connection, a
    timeout, TLS, or the connection dropped; the system's own words where it gave some."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"name resolution failed ({cause.strerror or cause})"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason or cause})"
        cause = cause.__cause__ or cause.__context__
    kind = {
        httpx.ConnectTimeout: "connecting timed out", httpx.ReadTimeout: "no answer in time",
        httpx.WriteTimeout: "sending timed out", httpx.PoolTimeout: "no connection free in time",
        httpx.RemoteProtocolError: "the connection broke off or the answer was not HTTP",
    }.get(type(exc))
    detail = str(exc).splitlines()[0][:120] if str(exc) else ""
    described = kind or type(exc).__name__
    return f"{described} ({detail})" if detail and detail != described else described


def _certificate_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    while exc is not None and not isinstance(exc, ssl.SSLCertVerificationError):
        exc = exc.__cause__ or exc.__context__
    return exc


def _envelope_message(data: Any) -> str:
    errors = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors:
        parts = [
            f"code {e.get('code')}: {e.get('message')}" if isinstance(e, dict) else str(e) for e in errors[:3]
        ]
        return redact_text("; ".join(parts))
    return "no error details"


def _decompressed(body: bytes, encoding: str) -> bytes:
    """A gzip or deflate body decoded, never past MAX_BODY_BYTES (a small body may unpack huge)."""
    if not body:
        return body
    if encoding == "gzip":
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        # Servers send deflate with or without the zlib header; a leading 0x78 byte tells which.
        decoder = zlib.decompressobj(zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS)
    else:
        raise UpstreamError(f"response in an encoding that was not asked for: {encoding[:40]}")
    try:
        data = decoder.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error as exc:
        raise UpstreamError(f"{encoding} body that does not decode: {exc}") from exc
    if len(data) > MAX_BODY_BYTES:
        raise _too_large()
    if not decoder.eof:
        raise UpstreamError(f"{encoding} body cut short")
    return data


def _retry_after(answer: Answer) -> float | None:
    """Retry-After in seconds: a number of them, or an HTTP date (RFC 9110), which is as valid."""
    value = answer.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(seconds, 0.0) if not math.isnan(seconds) else None


def client_from_settings(settings: Settings, **overrides: Any) -> CloudflareClient:
    """A client configured from the archiver's settings, with its token's request scheduler."""
    options: dict[str, Any] = {
        "rate_limit": settings.rate_limit,
        "timeout": settings.http_timeout_seconds,
        "max_retries": settings.max_retries,
        "max_retry_wait": settings.max_retry_wait_seconds,
        "max_connections": connections_for(settings),
        "scheduler": scheduler_for(settings),
        # Longer than the interval, so that a steady service reuses its connection (and its TLS
        # session) from cycle to cycle.
        "keepalive_expiry": max(KEEPALIVE_SECONDS, 2 * settings.interval_seconds),
    }
    options.update(overrides)
    return CloudflareClient(settings.base_url, settings.credentials(), **options)


def scheduler_for(settings: Settings) -> RequestScheduler:
    """The request scheduler of the settings' token, shared by everything in this process that
    uses the token against the same API."""
    credentials = settings.credentials()
    fingerprint = hashlib.sha256(repr(sorted(credentials.headers().items())).encode()).hexdigest()
    return shared_scheduler(
        (settings.base_url, fingerprint),
        lambda: RequestScheduler(
            peak_rate=settings.rate_limit, limit=settings.budget_requests, window=settings.upstream_limit_window_seconds,
            max_in_flight=connections_for(settings), max_details_in_flight=settings.detail_concurrency,
        ),
    )


def connections_for(settings: Settings) -> int:
    """Requests in flight at once: the detail concurrency, and room for a listing beside it."""
    return settings.detail_concurrency + 1


def _json_name(value: Any) -> str:
    return JSON_NAMES.get(type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)
