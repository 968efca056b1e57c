"""The client's HTTP (httpx's public API, one path for every request), against scripted servers on
real loopback sockets and the emulator over TLS."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trustme
from httpcore._async import http11
from pydantic import SecretStr

from archiver.api import cloudflare
from archiver.api.cloudflare import client_from_settings
from archiver.archive import migrate
from archiver.archive.store import make_engine
from archiver.archive.sync import CycleOptions, run_cycle
from archiver.config import Credentials, settings_from
from archiver.emulator import Emulator
from archiver.errors import FatalError, NoAnswer, RetriableError
from tests.helpers import archived

# What a scripted server does with one request on a connection: write its answer, or return
# False to close the connection without answering.
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]
STATS = cloudflare.RequestStats


def ok(body: bytes = b"[]", *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class Server:
    """Accepts connections and answers each request with ``answer``; counts connections."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(head)
                if not await self.answer(reader, writer, head):
                    return
                await writer.drain()
        finally:
            self.open_now -= 1
            writer.close()


@asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[tuple[Server, str]]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        listener.close()


def client_of(url: str, **options: Any) -> cloudflare.CloudflareClient:
    """The archiver's client against ``url`` (its API prefix /client/v4), failing fast."""
    settings: dict[str, Any] = {"max_retries": 0, "rate_limit": 1000.0}
    settings.update(options)
    return cloudflare.CloudflareClient(url + "/client/v4/", Credentials(token=SecretStr("secret-token")), **settings)


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
    writer.write(ok(b'{"path": "%s"}' % head.split(b" ")[1]))
    return True


def test_the_client_sends_a_complete_request_and_reuses_its_connection() -> None:
    async def go() -> None:
        async with serving(answer_ok) as (server, url), client_of(url) as client:
            for n in range(5):
                data = await client.get_json(f"/accounts/abc/x{n}", {"limit": 200, "offset": 10}, STATS())
                assert data == {"path": f"/client/v4/accounts/abc/x{n}?limit=200&offset=10"}
            assert server.connections == 1
        request_line, *header_lines = server.requests[0].decode().strip().split("\r\n")
        headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in header_lines)}
        assert request_line == "GET /client/v4/accounts/abc/x0?limit=200&offset=10 HTTP/1.1"
        assert headers["host"] == url.removeprefix("http://")
        assert headers["authorization"] == "Bearer secret-token"
        assert headers["accept"] == "application/json" and headers["accept-encoding"] == "gzip, deflate"
        assert headers["user-agent"] == "browser-session-archiver"

    asyncio.run(go())


def test_a_chunked_body_and_a_1xx_answer_are_read_whole() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b'{"a": ', b"[1, 2", b"]}"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    async def go() -> None:
        async with serving(chunked) as (server, url), client_of(url) as client:
            assert await client.get_json("/", None, STATS()) == {"a": [1, 2]}
            assert await client.get_json("/", None, STATS()) == {"a": [1, 2]}
            assert server.connections == 1

    asyncio.run(go())


def test_connections_the_server_closed_are_not_reused() -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        if b"/close-after" in head:
            writer.write(ok())
            await writer.drain()
            return False  # closes the connection after answering, without saying so
        writer.write(ok(extra=b"Connection: close\r\n" if b"/close" in head else b""))
        return b"/close" not in head

    async def go() -> None:
        async with serving(closing) as (server, url), client_of(url) as client:
            await client.get_json("/close", None, STATS())
            await client.get_json("/keep", None, STATS())
            await client.get_json("/keep", None, STATS())
            assert server.connections == 2
            await client.get_json("/close-after", None, STATS())
            await asyncio.sleep(0.05)  # the server's close reaches the client
            await client.get_json("/keep", None, STATS())
            assert server.connections == 3

    asyncio.run(go())


def test_a_body_cut_short_or_garbage_is_retriable_and_the_connection_dropped() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        if b"/cut" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1, 2")
            return False
        if b"/garbage" in head:
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            return True
        writer.write(ok())
        return True

    async def go() -> None:
        async with serving(cut) as (server, url), client_of(url) as client:
            for path in ("/cut", "/garbage"):
                with pytest.raises(RetriableError, match="cannot reach 127.0.0.1: the connection broke off"):
                    await client.get_json(path, None, STATS())
            assert await client.get_json("/fine", None, STATS()) == []
            assert server.connections == 3

    asyncio.run(go())


def test_a_silent_server_and_a_refused_connection_are_no_answer() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        await asyncio.sleep(5)
        return False

    async def go() -> None:
        async with serving(silent) as (_, url), client_of(url, timeout=0.2) as client:
            with pytest.raises(NoAnswer, match="within 0.2s"):
                await client.get_json("/", None, STATS())
        async with client_of(url, timeout=1.0) as client:
            with pytest.raises(NoAnswer, match="cannot reach 127.0.0.1: connection refused"):
                await client.get_json("/", None, STATS())  # the listener is closed now

    asyncio.run(go())


def test_a_name_that_does_not_resolve_is_named_with_the_reason() -> None:
    async def go() -> None:
        async with client_of("http://archiver-test.invalid", timeout=5.0) as client:
            with pytest.raises(NoAnswer, match="cannot reach archiver-test.invalid: name resolution failed"):
                await client.get_json("/", None, STATS())

    asyncio.run(go())


def test_no_more_connections_than_allowed_are_open_at_once() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        await asyncio.sleep(0.05)
        writer.write(ok())
        return True

    async def go() -> None:
        async with serving(slow) as (server, url), client_of(url, max_connections=2) as client:
            answers = await asyncio.gather(*(client.get_json(f"/{n}", None, STATS()) for n in range(8)))
            assert answers == [[]] * 8
            assert server.most_open == 2 and server.connections == 2

    asyncio.run(go())


def test_a_cancelled_request_frees_its_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        await asyncio.sleep(0.3 if b"/slow" in head else 0)
        writer.write(ok())
        return True

    async def go() -> None:
        async with serving(slow) as (_, url), client_of(url, max_connections=1) as client:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await client.get_json("/slow", None, STATS())
            async with asyncio.timeout(2):
                assert await client.get_json("/fast", None, STATS()) == []

    asyncio.run(go())


def test_proxies_named_by_the_environment_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from({"api_token": "t", "account_ids": ["0" * 32]})
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    proxied = client_from_settings(settings)
    assert proxied._http._mounts  # httpx routes https through the proxy
    asyncio.run(proxied.aclose())


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def tls_emulator(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    return context


def test_a_steady_service_keeps_its_tls_connection_from_cycle_to_cycle(
    authority: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cycles at the service's interval go over one TLS connection: one handshake, not one per cycle.

    The idle time between two cycles passes on httpcore's clock (which expires idle connections)
    rather than in real time."""
    idle = 0.0
    real_monotonic = time.monotonic
    monkeypatch.setattr(http11, "time", SimpleNamespace(monotonic=lambda: real_monotonic() + idle))
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # as an operator with a private CA would
    emulator = Emulator(accounts=1, initial_sessions=30, seed=5, speed=0.0, spawn_per_minute=0.0)
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    migrate.upgrade(engine)
    cycles = 6
    with emulator.serve(port=0, tls=tls_emulator(authority)) as server:
        settings = settings_from({"api_token": emulator.token, "account_ids": emulator.account_ids,
                                  "base_url": server.base_url, "rate_limit": 1000.0, "detail_concurrency": 1})
        assert server.base_url.startswith("https://")

        async def service() -> list[str]:
            outcomes = []
            async with client_from_settings(settings) as client:
                # The pool keeps an idle connection longer than the interval between two cycles.
                assert client.keepalive_expiry >= 2 * settings.interval_seconds
                for _ in range(cycles):
                    account = client.account(emulator.account_ids[0], STATS())
                    result = await run_cycle(account, engine, CycleOptions(detail_policy="changed"))
                    outcomes.append(result.outcome)
                    nonlocal idle
                    idle += settings.interval_seconds  # until the next cycle
            return outcomes

        assert asyncio.run(service()) == ["ok"] * cycles
        handshakes = emulator.connections
    assert handshakes == 1, f"{handshakes} TLS handshakes for {cycles} cycles"
    assert len(archived(engine)) == 30
    engine.dispose()


def test_a_certificate_no_trusted_authority_signed_is_refused(authority: trustme.CA) -> None:
    emulator = Emulator(accounts=1, initial_sessions=1, seed=5, speed=0.0)
    with emulator.serve(port=0, tls=tls_emulator(authority)) as server:
        async def probe() -> None:
            async with client_of(server.base_url.removesuffix("/client/v4")) as client:
                await client.get_json("/accounts/x", None, STATS())

        with pytest.raises(FatalError, match="TLS certificate of 127.0.0.1 refused"):
            asyncio.run(probe())


def encoded(encoding: str, body: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":  # with the zlib header
        return zlib.compress(body)
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # raw deflate, as some servers send it
    return compressor.compress(body) + compressor.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_compressed_bodies_are_decoded(encoding: str) -> None:
    document = json.dumps([{"sessionId": str(n), "padding": "x" * 50} for n in range(500)]).encode()

    async def compressed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        name = encoding.removeprefix("raw-").encode()
        writer.write(ok(encoded(encoding, document), extra=b"Content-Encoding: %s\r\n" % name))
        return True

    async def go() -> None:
        async with serving(compressed) as (_, url), client_of(url) as client:
            assert await client.get_json("/x", None, cloudflare.RequestStats()) == json.loads(document)

    asyncio.run(go())


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (ok(gzip.compress(b"[" + b" " * 4096 + b"]"), extra=b"Content-Encoding: gzip\r\n"), "larger than 1024 bytes"),
        (ok(b"x" * 2048), "larger than 1024 bytes"),
        (ok(b"not gzip", extra=b"Content-Encoding: gzip\r\n"), "gzip body that does not decode"),
        (ok(gzip.compress(b"[1, 2, 3]")[:-8], extra=b"Content-Encoding: gzip\r\n"), "gzip body cut short"),
        (ok(b"[]", extra=b"Content-Encoding: br\r\n"), "encoding that was not asked for: br"),
    ],
    ids=["unpacks-past-the-cap", "past-the-cap", "corrupt-gzip", "truncated-gzip", "unasked-encoding"],
)
def test_bodies_the_client_cannot_take_are_refused(monkeypatch: pytest.MonkeyPatch, answer: bytes, message: str) -> None:
    monkeypatch.setattr(cloudflare, "MAX_BODY_BYTES", 1024)

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        writer.write(answer)
        return True

    async def go() -> None:
        async with serving(scripted) as (_, url), client_of(url, max_retries=0) as client:
            with pytest.raises(RetriableError, match=message):
                await client.get_json("/x", None, cloudflare.RequestStats())

    asyncio.run(go())
