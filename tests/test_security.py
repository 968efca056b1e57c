"""Security guarantees, each shown: TLS verification that no setting turns off, secrets in no log
line and no database column after runs with faults, a private SQLite file, ids that never leave
their URL path segment, and SQL built only with bound parameters."""

from __future__ import annotations

import ast
import asyncio
import os
import secrets
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from archiver.api.cloudflare import RequestStats, client_from_settings
from archiver.archive import migrate
from archiver.archive.models import runs_table
from archiver.archive.store import make_engine
from archiver.archive.sync import utcnow
from archiver.config import Settings, settings_from
from archiver.emulator import Emulator, Faults
from archiver.errors import FatalError
from tests.helpers import cycle
from tests.soak import devtools_url_tokens, text_of_every_column

ACCOUNT = "0123456789abcdef0123456789abcdef"
ARCHIVER_SOURCES = sorted((Path(__file__).parent.parent / "archiver").rglob("*.py"))


# -- TLS ---------------------------------------------------------------------------------------------------


class _Listing(BaseHTTPRequestHandler):
    requests = 0

    def do_GET(self) -> None:
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def tls_server() -> Iterator[str]:
    """An HTTPS server on loopback whose certificate no public CA signed."""
    certificate = trustme.CA().issue_cert("127.0.0.1", "localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certificate.configure_cert(context)
    server = HTTPServer(("127.0.0.1", 0), _Listing)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Listing.requests = 0
    yield f"https://127.0.0.1:{server.server_address[1]}/client/v4"
    server.shutdown()
    server.server_close()


def permissive_settings(base_url: str) -> Settings:
    """Every setting that sounds like it might loosen security, loosened."""
    return settings_from({"base_url": base_url, "api_token": "t", "account_ids": [ACCOUNT],
                          "allow_insecure_http": True, "keep_url_tokens": True, "max_retries": 3})


def test_an_unverifiable_certificate_is_refused_at_once_whatever_the_settings(tls_server: str) -> None:
    async def probe() -> None:
        async with client_from_settings(permissive_settings(tls_server)) as client:
            async for _page in client.account(ACCOUNT, RequestStats()).listing():
                pass

    with pytest.raises(FatalError, match="TLS certificate of 127.0.0.1 refused: .*certificate") as info:
        asyncio.run(probe())
    assert not isinstance(info.value, ssl.SSLError)
    assert _Listing.requests == 0  # no request went over the unverified connection, nor a retry


def test_the_client_requires_verified_certificates_and_hostnames() -> None:
    client = client_from_settings(permissive_settings("https://api.cloudflare.com/client/v4"))
    context = client._http._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    asyncio.run(client.aclose())


def test_no_setting_can_turn_tls_verification_off() -> None:
    loosening = [n for n in Settings.model_fields if any(w in n for w in ("verify", "ssl", "tls", "cert", "insecure"))]
    assert loosening == ["allow_insecure_http"]  # plain http to loopback only, or by explicit choice


# -- secrets -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("log_format", "backend"), [("text", "sqlite"), ("json", "postgresql")])
def test_no_secret_reaches_logs_or_the_database_after_runs_with_faults(
    tmp_path: Path, request: pytest.FixtureRequest, log_format: str, backend: str
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    if backend == "sqlite":
        database_url = f"sqlite:///{tmp_path / 'archive.db'}"
        service_url = database_url
    else:
        # The test server trusts loopback connections and ignores the password.
        database_url = request.getfixturevalue("postgres_url")
        service_url = make_url(database_url).set(password=password).render_as_string(hide_password=False)
    emulator = Emulator(accounts=2, initial_sessions=12, seed=41, speed=20.0, spawn_per_minute=60, mean_lifetime_s=20)
    emulator.set_faults(**Faults.chaos(0.3, timeout_s=1.0, retry_after_s=0.1).to_json())
    output = ""
    with emulator.serve(port=0) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "ARCHIVER_"))}
        env.update({
            "CLOUDFLARE_EMAIL": emulator.email, "CLOUDFLARE_API_KEY": emulator.api_key,
            "CLOUDFLARE_ACCOUNT_ID": ",".join(emulator.account_ids), "CLOUDFLARE_BASE_URL": server.base_url,
            "ARCHIVER_DATABASE_URL": service_url, "ARCHIVER_LOG_FORMAT": log_format, "ARCHIVER_LOG_LEVEL": "DEBUG",
            "ARCHIVER_RATE_LIMIT": "100", "ARCHIVER_HTTP_TIMEOUT_SECONDS": "0.5", "ARCHIVER_MAX_RETRY_WAIT_SECONDS": "0.1",
            # a roomy budget: with a third of the answers faulty, retries would spend the default
            # 300 requests in 5 minutes within these syncs, and the next would wait for it
            "ARCHIVER_UPSTREAM_LIMIT_REQUESTS": "100000",
        })
        for command in (["sync", "--auto-migrate"], ["sync"], ["sync"], ["status"]):
            done = subprocess.run([sys.executable, "-m", "archiver", *command], env=env, capture_output=True, text=True, timeout=120)
            output += done.stdout + done.stderr
        # and once with Cloudflare refusing the credentials
        env["CLOUDFLARE_API_KEY"] = f"wrong-{secrets.token_hex(8)}"
        refused = subprocess.run([sys.executable, "-m", "archiver", "sync"], env=env, capture_output=True, text=True, timeout=120)
        output += refused.stdout + refused.stderr
    assert "refused the credentials" in output and "DEBUG" in output.upper()
    engine = make_engine(database_url)
    database = text_of_every_column(engine)
    engine.dispose()
    assert "REDACTED" in database  # DevTools URLs were archived, and the scan sees them
    for secret in [emulator.api_key, env["CLOUDFLARE_API_KEY"], password, *devtools_url_tokens(emulator)]:
        assert secret not in output
        assert secret not in database


def test_a_secret_inside_an_error_text_is_not_stored(engine: Any) -> None:
    # The ledger's error column takes messages from upstream and drivers: the masking happens
    # before it is written, so a planted secret stays out (here: a DevTools URL in an error).
    emulator = Emulator(accounts=1, initial_sessions=3, seed=43, speed=0.0, spawn_per_minute=0)
    token = secrets.token_urlsafe(16)
    with emulator.serve(port=0) as server:
        emulator.inject(400, endpoint="list")
        original = emulator.handle

        def echoing(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
            reply = original(method, path, headers, body)
            if reply.status == 400:
                reply.body = reply.body.replace(b"Invalid request", f"bad wss://h/x?jwt={token}".encode())  # type: ignore[union-attr]
            return reply

        emulator.handle = echoing  # type: ignore[method-assign]
        result = cycle(server, emulator, engine)
    assert result.outcome == "failed" and "jwt=REDACTED" in (result.error or "")
    assert token not in text_of_every_column(engine)


# -- the SQLite file ---------------------------------------------------------------------------------------


def test_the_sqlite_archive_and_its_journal_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "archive.db"
    old_umask = os.umask(0o022)
    try:
        engine = make_engine(f"sqlite:///{path}")
        migrate.upgrade(engine)
        with engine.begin() as conn:  # while a connection is open, the -wal and -shm files exist
            conn.execute(insert(runs_table).values(account_id=ACCOUNT, worker="w", started_at=utcnow(), outcome="ok"))
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        engine.dispose()
    finally:
        os.umask(old_umask)
    assert modes == {p.name: 0o600 for p in files}


# -- ids in URL paths --------------------------------------------------------------------------------------


def test_invalid_ids_in_listings_and_details_never_reach_a_url(engine: Any) -> None:
    emulator = Emulator(accounts=1, initial_sessions=20, seed=44, speed=0.0, spawn_per_minute=0)
    with emulator.serve(port=0) as server:
        emulator.inject("bad_id", times=50, endpoint="list")
        emulator.inject("bad_id", times=50, endpoint="get")
        for _ in range(3):
            result = cycle(server, emulator, engine)
            assert not result.listing_complete and result.counts["rejected"] > 0
    stats = emulator.stats()
    assert stats.get("route:unknown", 0) == 0 and stats.get("status:400", 0) == 0
    assert stats["endpoint:get"] > 0  # details were asked for: of valid ids only


# -- SQL ---------------------------------------------------------------------------------------------------

SQL_CALLS = {"text", "execute", "exec_driver_sql", "executescript", "executemany"}


@pytest.mark.parametrize("source", ARCHIVER_SOURCES, ids=lambda p: str(p.relative_to(p.parent.parent)))
def test_sql_is_built_only_from_constants_and_bound_parameters(source: Path) -> None:
    """No statement text is ever assembled from values: SQLAlchemy expressions bind them. (The
    migrations may use DDL text, for views; they live outside the package.)"""
    tree = ast.parse(source.read_text(), filename=str(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "sqlalchemy":
            assert "text" not in {alias.name for alias in node.names}, f"{source}: imports sqlalchemy.text"
        if isinstance(node, ast.Call) and node.args:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0]
            if name in SQL_CALLS and isinstance(first, (ast.JoinedStr, ast.BinOp)) or (
                name in SQL_CALLS and isinstance(first, ast.Call) and getattr(first.func, "attr", "") == "format"
            ):
                pytest.fail(f"{source}:{node.lineno}: SQL built from a formatted string")
