"""A lean httpx transport for the archiver's short GETs: HTTP/1.1 keep-alive connections over
asyncio streams, parsed by h11 (the parser httpcore itself uses).

httpx's default transport (httpcore, on anyio) is general: HTTP/2, proxies, several async
backends, connection bookkeeping per request. The archiver needs none of that on its direct path
to the API, and on this path httpcore was about half of a request's CPU, the largest cost of a
steady poll cycle. Where a proxy is configured, the client keeps httpx's default transport.

Errors are httpx's own (ConnectError, ReadTimeout, RemoteProtocolError...), raised from their
cause, so callers cannot tell the transports apart.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx

READ_SIZE = 64 * 1024
Origin = tuple[str, str, int]


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
        origin = (request.url.scheme, request.url.host, request.url.port or (443 if request.url.scheme == "https" else 80))
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no connection available in time", request=request) from exc
        try:
            connection = self._reuse(origin) or await _Connection.open(origin, self._ssl_context, timeouts.get("connect"), request)
            try:
                await connection.send(request, timeouts.get("write"))
                status, headers, reason = await connection.receive_head(request, timeouts.get("read"))
            except BaseException:
                connection.close()
                raise
        except BaseException:
            self._slots.release()
            raise
        body = _Body(self, origin, connection, request, timeouts.get("read"))
        return httpx.Response(status, headers=headers, stream=body, extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason})

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for _, connection in connections:
                connection.close()
        self._idle.clear()

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
    async def open(cls, origin: Origin, ssl_context: ssl.SSLContext, timeout: float | None, request: httpx.Request) -> _Connection:
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

    async def send(self, request: httpx.Request, timeout: float | None) -> None:
        target = request.url.raw_path
        events: list[Any] = [h11.Request(method=request.method, target=target, headers=list(request.headers.raw))]
        async for chunk in request.stream:  # type: ignore[union-attr]
            events.append(h11.Data(data=chunk))
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

    async def receive_head(self, request: httpx.Request, timeout: float | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        while True:
            event = await self.next_event(request, timeout)
            if isinstance(event, h11.Response):
                return event.status_code, list(event.headers), event.reason
            # An informational (1xx) response precedes the real one.

    async def next_event(self, request: httpx.Request, timeout: float | None) -> Any:
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
            event = await self._connection.next_event(self._request, self._timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._transport._release(self._origin, self._connection)
