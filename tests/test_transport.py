"""The lean HTTP/1.1 transport, against scripted servers on real loopback sockets."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trustme
from pydantic import SecretStr

from archiver import cloudflare, migrate
from archiver.cloudflare import client_from_settings
from archiver.config import Credentials, settings_from
from archiver.errors import RetriableError
from archiver.emulator import Emulator
from archiver.store import make_engine
from archiver.transport import StreamTransport
from tests.helpers import archived, client_for, cycle

# What a scripted server does with one request on a connection: write its answer, or return
# False to close the connection without answering.
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


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
async def serving(answer: Answer, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[Server, str]]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        listener.close()


def transport(max_connections: int = 4, keepalive_expiry: float = 5.0, context: ssl.SSLContext | None = None) -> StreamTransport:
    return StreamTransport(ssl_context=context or ssl.create_default_context(), max_connections=max_connections,
                           keepalive_expiry=keepalive_expiry)


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
    writer.write(ok(b'{"path": "%s"}' % head.split(b" ")[1]))
    return True


def test_requests_share_one_keep_alive_connection() -> None:
    async def go() -> None:
        async with serving(answer_ok) as (server, url), httpx.AsyncClient(transport=transport(), base_url=url) as client:
            for n in range(5):
                response = await client.get(f"/item/{n}", params={"q": "a b"})
                assert response.status_code == 200 and response.json() == {"path": f"/item/{n}?q=a+b"}
            assert server.connections == 1

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
        async with serving(chunked) as (server, url), httpx.AsyncClient(transport=transport(), base_url=url) as client:
            assert (await client.get("/")).json() == {"a": [1, 2]}
            assert (await client.get("/")).json() == {"a": [1, 2]}
            assert server.connections == 1

    asyncio.run(go())


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        writer.write(ok())
        await writer.drain()
        return False  # closes the connection after answering

    async def go() -> None:
        async with serving(once) as (server, url), httpx.AsyncClient(transport=transport(), base_url=url) as client:
            for _ in range(3):
                assert (await client.get("/")).status_code == 200
                await asyncio.sleep(0.05)  # the server's close reaches the client
            assert server.connections == 3

    asyncio.run(go())


def test_connection_close_and_expired_connections_are_not_reused() -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        writer.write(ok(extra=b"Connection: close\r\n" if b"/close" in head else b""))
        return b"/close" not in head

    async def go() -> None:
        async with serving(closing) as (server, url), httpx.AsyncClient(transport=transport(keepalive_expiry=0.2), base_url=url) as client:
            await client.get("/close")
            await client.get("/keep")
            assert server.connections == 2
            await client.get("/keep")
            assert server.connections == 2
            await asyncio.sleep(0.3)  # longer than the keep-alive expiry
            await client.get("/keep")
            assert server.connections == 3

    asyncio.run(go())


def test_a_body_cut_short_is_an_error_and_its_connection_is_dropped() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        if b"/cut" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1, 2")
            return False
        writer.write(ok())
        return True

    async def go() -> None:
        async with serving(cut) as (server, url), httpx.AsyncClient(transport=transport(), base_url=url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/cut")
            assert (await client.get("/fine")).json() == []
            assert server.connections == 2

    asyncio.run(go())


def test_garbage_instead_of_http_is_a_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        return True

    async def go() -> None:
        async with serving(garbage) as (_, url), httpx.AsyncClient(transport=transport(), base_url=url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/")

    asyncio.run(go())


def test_a_body_left_unread_closes_its_connection() -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        writer.write(ok(b"x" * 500_000))
        return True

    async def go() -> None:
        async with serving(big) as (server, url), httpx.AsyncClient(transport=transport(), base_url=url) as client:
            async with client.stream("GET", "/") as response:
                async for _ in response.aiter_raw():
                    break  # stop after the first chunk, as the body cap does
            assert len((await client.get("/")).content) == 500_000
            assert server.connections == 2

    asyncio.run(go())


def test_timeouts_and_refused_connections_are_httpx_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        await asyncio.sleep(5)
        return False

    async def go() -> None:
        async with serving(silent) as (_, url):
            async with httpx.AsyncClient(transport=transport(), base_url=url, timeout=0.2) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.get("/")
        async with httpx.AsyncClient(transport=transport(), base_url=url, timeout=1) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("/")  # the listener is closed now

    asyncio.run(go())


def test_no_more_connections_than_allowed_are_open_at_once() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        await asyncio.sleep(0.05)
        writer.write(ok())
        return True

    async def go() -> None:
        async with serving(slow) as (server, url), httpx.AsyncClient(transport=transport(max_connections=2), base_url=url) as client:
            answers = await asyncio.gather(*(client.get(f"/{n}") for n in range(8)))
            assert [a.status_code for a in answers] == [200] * 8
            assert server.most_open == 2 and server.connections == 2

    asyncio.run(go())


def test_a_cancelled_request_frees_its_slot() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        await asyncio.sleep(0.3 if b"/slow" in head else 0)
        writer.write(ok())
        return True

    async def go() -> None:
        async with serving(slow) as (_, url), httpx.AsyncClient(transport=transport(max_connections=1), base_url=url) as client:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await client.get("/slow")
            async with asyncio.timeout(2):
                assert (await client.get("/fast")).status_code == 200

    asyncio.run(go())


def test_https_with_a_verified_certificate() -> None:
    authority = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def go() -> None:
        async with serving(answer_ok, tls=server_context) as (server, url):
            async with httpx.AsyncClient(transport=transport(context=client_context), base_url=url) as client:
                assert (await client.get("/a")).json() == {"path": "/a"}
                assert (await client.get("/b")).json() == {"path": "/b"}
            assert server.connections == 1
            async with httpx.AsyncClient(transport=transport(), base_url=url) as client:
                with pytest.raises(httpx.ConnectError) as refused:
                    await client.get("/a")  # the system's CAs do not know this one
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)

    asyncio.run(go())


def test_the_client_leaves_proxied_traffic_to_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from({"api_token": "t", "account_ids": ["0" * 32]})
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "example.com")
    direct = client_from_settings(settings)
    assert isinstance(direct._http._transport, StreamTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    proxied = client_from_settings(settings)
    assert not isinstance(proxied._http._transport, StreamTransport)
    assert proxied._http._mounts  # httpx routes https through the proxy

    async def close() -> None:
        await direct.aclose()
        await proxied.aclose()

    asyncio.run(close())


def test_through_httpx_own_transport_a_cycle_archives_the_same(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The path proxied traffic takes (the client's own send, httpcore), against the emulator."""
    monkeypatch.setattr(cloudflare, "_proxy_configured", lambda: True)
    emulator = Emulator(accounts=1, initial_sessions=12, seed=4, speed=0.0, spawn_per_minute=0.0)
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    migrate.upgrade(engine)
    with emulator.serve(port=0) as server:
        probe = client_for(server, emulator)
        assert not isinstance(probe._http._transport, StreamTransport)
        asyncio.run(probe.aclose())
        result = cycle(server, emulator, engine)
    assert result.outcome == "ok", result.error
    assert result.counts["details_fetched"] == 12
    assert set(archived(engine)) == {t["sessionId"] for t in emulator.truth()}
    engine.dispose()


def direct_client(url: str, **options: object) -> cloudflare.CloudflareClient:
    """The archiver's client on its direct path (its own stream transport), against ``url``."""
    client = cloudflare.CloudflareClient(url + "/client/v4/", Credentials(token=SecretStr("secret-token")), **options)  # type: ignore[arg-type]
    assert client._stream is not None
    return client


def test_the_direct_path_sends_a_complete_request() -> None:
    async def go() -> None:
        async with serving(answer_ok) as (server, url), direct_client(url) as client:
            stats = cloudflare.RequestStats()
            data = await client.get_json("/accounts/abc/x", {"limit": 200, "offset": 10}, stats)
        assert data == {"path": "/client/v4/accounts/abc/x?limit=200&offset=10"}
        request_line, *header_lines = server.requests[0].decode().strip().split("\r\n")
        headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in header_lines)}
        assert request_line == "GET /client/v4/accounts/abc/x?limit=200&offset=10 HTTP/1.1"
        assert headers["host"] == url.removeprefix("http://")
        assert headers["authorization"] == "Bearer secret-token"
        assert headers["accept"] == "application/json" and headers["accept-encoding"] == "gzip, deflate"
        assert headers["user-agent"] == "browser-session-archiver"

    asyncio.run(go())


def encoded(encoding: str, body: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":  # with the zlib header
        return zlib.compress(body)
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # raw deflate, as some servers send it
    return compressor.compress(body) + compressor.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_the_direct_path_decodes_compressed_bodies(encoding: str) -> None:
    document = json.dumps([{"sessionId": str(n), "padding": "x" * 50} for n in range(500)]).encode()

    async def compressed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        name = encoding.removeprefix("raw-").encode()
        writer.write(ok(encoded(encoding, document), extra=b"Content-Encoding: %s\r\n" % name))
        return True

    async def go() -> None:
        async with serving(compressed) as (_, url), direct_client(url) as client:
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
def test_the_direct_path_refuses_bodies_it_cannot_take(monkeypatch: pytest.MonkeyPatch, answer: bytes, message: str) -> None:
    monkeypatch.setattr(cloudflare, "MAX_BODY_BYTES", 1024)

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        writer.write(answer)
        return True

    async def go() -> None:
        async with serving(scripted) as (_, url), direct_client(url, max_retries=0) as client:
            with pytest.raises(RetriableError, match=message):
                await client.get_json("/x", None, cloudflare.RequestStats())

    asyncio.run(go())
