"""A lean httpx transport for the archiver's short GETs: HTTP/1.1 keep-alive connections over
asyncio streams, parsed by h11 (the parser httpcore itself uses).

httpx's default transport (httpcore, on anyio) is general: HTTP/2, proxies, several async
backends, connection bookkeeping per request. The archiver needs none of that on its direct path
to the API, and on this path httpcore was about half of a request's CPU, the largest cost of a
steady poll cycle. Where a proxy is configured, the client keeps httpx's default transport.

Besides the httpx interface, ``fetch`` reads a response whole without building httpx's request
and response objects: the archiver's client takes that path, where those objects (URL parsing,
header normalisation, the layered body streams) were a quarter of a request's CPU.

Errors are httpx's own (ConnectError, ReadTimeout, RemoteProtocolError...), raised from their
cause, so callers cannot tell the transports apart.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple

import h11
import httpx

READ_SIZE = 64 * 1024
Origin = tuple[str, str, int]
Headers = list[tuple[bytes, bytes]]
Timeouts = Mapping[str, float | None]


def origin_of(url: httpx.URL) -> Origin:
    """The (scheme, host, port) a URL's connections go to, the default port filled in."""
    return (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))


class Answer(NamedTuple):
    """A whole response, as ``StreamTransport.fetch`` reads it."""

    status: int
    headers: Headers  # names lower-cased
    body: bytes  # as sent: any Content-Encoding is the caller's to undo
    reason: str


class BodyTooLarge(Exception):
    """A body outgrew what the caller reads at most (its connection is dropped)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body larger than {limit} bytes")


class StreamTransport(httpx.AsyncBaseTransport):
    """At most ``max_connections`` connections in use at once; idle ones are reused for up to
    ``keepalive_expiry`` seconds (httpx's default), since a server may drop them any time after."""

    def __init__(self, *, ssl_context: ssl.SSLContext, max_connections: int, keepalive_expiry: float = 5.0) -> None:
        self._ssl_context = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[Origin, list[tuple[float, _Connection]]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        origin = origin_of(url)
        content = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        connection = await self._checkout(origin, timeouts, request)
        try:
            await connection.send(request.method.encode(), url.raw_path, list(request.headers.raw), content, timeouts.get("write"), request)
            status, headers, reason = await connection.receive_head(timeouts.get("read"), request)
        except BaseException:
            self._drop(connection)
            raise
        body = _Body(self, origin, connection, request, timeouts.get("read"))
        return httpx.Response(status, headers=headers, stream=body, extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason})

    async def fetch(self, origin: Origin, target: bytes, headers: Headers, timeouts: Timeouts, max_bytes: int) -> Answer:
        """GET ``target`` (path and query) from ``origin`` with exactly ``headers`` (Host included),
        and read the answer whole; BodyTooLarge past ``max_bytes``."""
        connection = await self._checkout(origin, timeouts)
        try:
            await connection.send(b"GET", target, headers, b"", timeouts.get("write"))
            status, response_headers, reason = await connection.receive_head(timeouts.get("read"))
            body = await connection.receive_body(timeouts.get("read"), max_bytes)
        except BaseException:
            self._drop(connection)
            raise
        self._release(origin, connection)
        return Answer(status, response_headers, body, reason.decode("latin-1"))

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for _, connection in connections:
                connection.close()
        self._idle.clear()

    async def _checkout(self, origin: Origin, timeouts: Timeouts, request: httpx.Request | None = None) -> _Connection:
        """A connection to ``origin`` (an idle one if any), holding one of the slots."""
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no connection available in time", request=request) from exc
        try:
            return self._reuse(origin) or await _Connection.open(origin, self._ssl_context, timeouts.get("connect"), request)
        except BaseException:
            self._slots.release()
            raise

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self._slots.release()

    def _reuse(self, origin: Origin) -> _Connection | None:
        connections = self._idle.get(origin)
        now = time.monotonic()
        while connections:
            idle_since, connection = connections.pop()
            if now - idle_since < self._keepalive_expiry and connection.reusable():
                return connection
            connection.close()
        return None

    def _release(self, origin: Origin, connection: _Connection) -> None:
        self._slots.release()
        if connection.start_next():
            self._idle.setdefault(origin, []).append((time.monotonic(), connection))
        else:
            connection.close()


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, origin: Origin, ssl_context: ssl.SSLContext, timeout: float | None,
                   request: httpx.Request | None) -> _Connection:
        scheme, host, port = origin
        tls = ssl_context if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out", request=request) from exc
        except OSError as exc:  # ssl.SSLError included: a refused certificate stays the cause
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}", request=request) from exc
        return cls(reader, writer)

    def reusable(self) -> bool:
        return self.h11.our_state is h11.IDLE and not self.reader.at_eof() and not self.writer.is_closing()

    def start_next(self) -> bool:
        """Ready the connection for another request if the whole response was read and neither
        side asked to close; False if it must close."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    async def send(self, method: bytes, target: bytes, headers: Headers, content: bytes, timeout: float | None,
                   request: httpx.Request | None = None) -> None:
        events: list[Any] = [h11.Request(method=method, target=target, headers=headers)]
        if content:
            events.append(h11.Data(data=content))
        events.append(h11.EndOfMessage())
        data = b"".join(self.h11.send(event) or b"" for event in events)
        try:
            async with asyncio.timeout(timeout):
                self.writer.write(data)
                await self.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("sending the request timed out", request=request) from exc
        except OSError as exc:
            raise httpx.WriteError(f"sending the request failed: {exc}", request=request) from exc

    async def receive_head(self, timeout: float | None, request: httpx.Request | None = None) -> tuple[int, Headers, bytes]:
        while True:
            event = await self.next_event(timeout, request)
            if isinstance(event, h11.Response):
                return event.status_code, list(event.headers), event.reason
            # An informational (1xx) response precedes the real one.

    async def receive_body(self, timeout: float | None, max_bytes: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self.next_event(timeout)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_bytes:
                    raise BodyTooLarge(max_bytes)
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)

    async def next_event(self, timeout: float | None, request: httpx.Request | None = None) -> Any:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(f"malformed HTTP response: {exc}", request=request) from exc
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.ConnectionClosed):
                    raise httpx.RemoteProtocolError("the server closed the connection before the response ended", request=request)
                return event
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError as exc:
                raise httpx.ReadTimeout("reading the response timed out", request=request) from exc
            except OSError as exc:
                raise httpx.ReadError(f"reading the response failed: {exc}", request=request) from exc
            self.h11.receive_data(data)  # b"" tells h11 the server closed the connection

    def close(self) -> None:
        self.writer.close()


class _Body(httpx.AsyncByteStream):
    """A response body read from its connection; the connection goes back to the pool once the
    whole body has been read, and is closed if the reader stops early."""

    def __init__(self, transport: StreamTransport, origin: Origin, connection: _Connection, request: httpx.Request,
                 timeout: float | None) -> None:
        self._transport = transport
        self._origin = origin
        self._connection = connection
        self._request = request
        self._timeout = timeout
        self._complete = False
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self._complete:
            event = await self._connection.next_event(self._timeout, self._request)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._origin, self._connection)
