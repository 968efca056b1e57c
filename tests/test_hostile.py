"""The attack suite of issue 14, for its data, secret and small findings: a hostile upstream (the
emulator, tampered with on its way out, over a real loopback socket), hostile config files, an
archive its reader may not write, and upstream text meant for the terminal. Each test is named
after its finding; where the database matters it runs on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, column, select, table

from archiver.api import cloudflare
from archiver.api.cloudflare import RequestStats
from archiver.archive import migrate
from archiver.archive.models import rejects_table
from archiver.archive.records import parse_session, reject_body
from archiver.archive.redact import redact_text, redact_url
from archiver.archive.storable import DEPTH_MARKER, MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_TEXT_BYTES
from archiver.archive.store import make_engine
from archiver.config import load_settings
from archiver.emulator import Emulator
from archiver.emulator.server import Reply
from archiver.errors import ConfigError
from archiver.logs import SecretFilter
from archiver.render import table as text_table
from tests import archive_data
from tests.helpers import archived, client_for, cycle, versions_of
from tests.soak import text_of_every_column
from tests.test_cli import run

Item = dict[str, Any]


@pytest.fixture
def emulator() -> Emulator:
    # A frozen clock and six sessions, every one connected: each test moves time itself.
    emulator = Emulator(accounts=1, initial_sessions=6, seed=14, speed=0.0, spawn_per_minute=0.0, mean_lifetime_s=1e9)
    world = emulator.world(emulator.account_ids[0])
    for item in world.listing():
        world.connect(item["sessionId"])
    return emulator


@pytest.fixture
def server(emulator: Emulator) -> Iterator[Any]:
    with emulator.serve(port=0) as running:
        yield running


def sessions_of(emulator: Emulator) -> list[str]:
    return [item["sessionId"] for item in emulator.world(emulator.account_ids[0]).listing()]


def tamper(emulator: Emulator, change: Callable[[Item], Item], *, listed: bool = True, detailed: bool = True) -> None:
    """Make the emulator hostile: every session object it answers (in a listing, in a detail, or
    both) goes through ``change`` on its way out, and out as JSON with ``\\u`` escapes, as a hostile
    server sends a NUL or a lone surrogate (JSON decoders take both)."""
    original = emulator.handle

    def handle(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        reply = original(method, path, headers, body)
        if reply.status != 200 or not reply.body or path.startswith("/__emulator/"):
            return reply
        data = json.loads(reply.body)
        if isinstance(data, list) and listed:
            data = [change(item) for item in data]
        elif isinstance(data, dict) and detailed:
            data = change(data)
        reply.body = json.dumps(data).encode()
        return reply

    emulator.handle = handle  # type: ignore[method-assign]


def only(session_id: str, change: Callable[[Item], Item]) -> Callable[[Item], Item]:
    return lambda item: change(item) if item.get("sessionId") == session_id else item


def rejects(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(rejects_table).order_by(rejects_table.c.id)).mappings()]


def as_text(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


# -- F1: a NUL character anywhere ----------------------------------------------------------------------

NUL_POISONS: dict[str, Callable[[Item], Item]] = {
    "text-field": lambda o: {**o, "connectionId": "conn\x00ection"},
    "unknown-field": lambda o: {**o, "region": "WE\x00UR"},
    "json-key": lambda o: {**o, "bad\x00key": 1},
    "nested-field": lambda o: {**o, "targets": [{"title": "tab\x00", "type": "page"}]},
}


@pytest.mark.parametrize("poison", NUL_POISONS.values(), ids=NUL_POISONS)
def test_f1_a_nul_anywhere_in_a_listed_object_costs_that_value_not_the_page(
    any_engine: Engine, emulator: Emulator, server: Any, poison: Callable[[Item], Item]
) -> None:
    target = sessions_of(emulator)[2]
    tamper(emulator, only(target, poison))
    for _ in range(2):  # every cycle, not only the first
        result = cycle(server, emulator, any_engine)
        assert result.outcome == "ok", result.error
    rows = archived(any_engine)
    assert set(rows) == set(sessions_of(emulator))
    assert all(row["last_detail_at"] is not None for row in rows.values())  # the details were stored too
    raw = as_text(rows[target]["raw"])
    assert "\x00" not in raw and "\\u0000" not in raw and "\ufffd" in raw
    noted = rejects(any_engine)
    assert noted and {(r["session_id"], r["kept"]) for r in noted} == {(target, True)}
    assert all("\\u0000" in r["body"] and "U+FFFD" in r["reason"] for r in noted)  # the original, as it came


def test_f1_a_nul_in_a_text_field_is_replaced_in_its_column(any_engine: Engine, emulator: Emulator, server: Any) -> None:
    target = sessions_of(emulator)[0]
    tamper(emulator, only(target, NUL_POISONS["text-field"]))
    cycle(server, emulator, any_engine)
    assert archived(any_engine)[target]["connection_id"] == "conn\ufffdection"


def test_f1_a_nul_only_in_one_detail_loses_no_other_detail_of_its_batch(
    any_engine: Engine, emulator: Emulator, server: Any
) -> None:
    target = sessions_of(emulator)[3]
    tamper(emulator, only(target, lambda o: {**o, "closeReasonText": "boom\x00"}), listed=False)
    result = cycle(server, emulator, any_engine)
    assert result.outcome == "ok", result.error
    rows = archived(any_engine)
    assert result.counts["details_fetched"] == len(rows) == 6
    assert all(row["last_detail_at"] is not None for row in rows.values())
    assert rows[target]["close_reason_text"] == "boom\ufffd"
    assert [(r["source"], r["session_id"], r["kept"]) for r in rejects(any_engine)] == [("detail", target, True)]


# -- F2: lone surrogates -------------------------------------------------------------------------------


def test_f2_a_lone_surrogate_in_close_reason_text_is_no_traceback_of_archiver_sync(
    empty_database_url: str, emulator: Emulator, server: Any, tmp_path: Path
) -> None:
    target = sessions_of(emulator)[1]
    tamper(emulator, only(target, lambda o: {**o, "closeReasonText": "bad \ud800 text"}))
    env = {
        "CLOUDFLARE_API_TOKEN": emulator.token, "CLOUDFLARE_ACCOUNT_ID": emulator.account_ids[0],
        "CLOUDFLARE_BASE_URL": server.base_url, "ARCHIVER_DATABASE_URL": empty_database_url, "ARCHIVER_RATE_LIMIT": "100",
    }
    for command in (["sync", "--auto-migrate"], ["sync"]):
        done = run(command, env, tmp_path)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert ": ok (run" in done.stdout
    engine = make_engine(empty_database_url)
    try:
        rows = archived(engine)
        assert set(rows) == set(sessions_of(emulator))
        assert rows[target]["close_reason_text"] == "bad \ufffd text"
        assert rejects(engine)[0]["kept"]
    finally:
        engine.dispose()


def test_f2_a_lone_surrogate_in_an_unknown_field_or_key_is_replaced(any_engine: Engine, emulator: Emulator, server: Any) -> None:
    target = sessions_of(emulator)[4]
    tamper(emulator, only(target, lambda o: {**o, "region": "\udc00WEUR", "\ud800": ["x\udbff"]}))
    result = cycle(server, emulator, any_engine)
    assert result.outcome == "ok", result.error
    rows = archived(any_engine)
    assert len(rows) == 6
    assert rows[target]["raw"]["region"] == "\ufffdWEUR" and rows[target]["raw"]["\ufffd"] == ["x\ufffd"]
    assert all(r["kept"] and "\\ud800" in r["body"] for r in rejects(any_engine))


# -- F3: MariaDB's JSON depth and TEXT size ------------------------------------------------------------


def test_f3_an_unknown_field_nested_40_deep_is_cut_not_refused(any_engine: Engine, emulator: Emulator, server: Any) -> None:
    target = sessions_of(emulator)[0]
    nested: Any = {"leaf": True}
    for _ in range(40):
        nested = {"n": [nested]}
    tamper(emulator, only(target, lambda o: {**o, "deep": nested}))
    result = cycle(server, emulator, any_engine)
    assert result.outcome == "ok", result.error
    rows = archived(any_engine)
    assert len(rows) == 6
    raw = rows[target]["raw"]
    assert depth(raw) == MAX_DEPTH and DEPTH_MARKER in as_text(raw)
    assert all(r["kept"] and "nested deeper than" in r["reason"] for r in rejects(any_engine))
    assert all(v["raw"] == raw for v in versions_of(any_engine, target))


def test_f3_a_rejected_object_over_64_kib_is_cut_to_what_a_text_column_takes(
    any_engine: Engine, emulator: Emulator, server: Any
) -> None:
    kept, unkeyable = sessions_of(emulator)[:2]
    padding = "x" * 100_000
    tamper(emulator, only(kept, lambda o: {**o, "startTime": "soon", "padding": padding}))
    tamper(emulator, only(unkeyable, lambda o: {**o, "sessionId": "not-a-uuid", "padding": padding}))
    result = cycle(server, emulator, any_engine)
    assert result.error is not None and "without a usable sessionId" in result.error  # not a database error
    rows = archived(any_engine)
    assert set(rows) == set(sessions_of(emulator)) - {unkeyable}
    assert len(json.dumps(rows[kept]["raw"])) <= MAX_DOCUMENT_BYTES
    assert "padding" not in rows[kept]["raw"] and rows[kept]["raw"]["startTime"] == "soon"
    noted = rejects(any_engine)
    assert {(r["session_id"], r["kept"]) for r in noted} == {(kept, True), (None, False)}
    for reject in noted:
        assert len(reject["body"].encode()) <= MAX_TEXT_BYTES
        assert reject["body"].endswith(f"[cut to {MAX_TEXT_BYTES} bytes]")
    assert any("bytes of JSON kept: left out 1 field(s): 'padding'" in r["reason"] for r in noted)


# -- more values no database would take (found on the way) --------------------------------------------


def test_a_huge_integer_beside_a_nan_is_stored_as_json_every_database_reads(
    any_engine: Engine, emulator: Emulator, server: Any
) -> None:
    target = sessions_of(emulator)[5]
    # json.dumps writes both (NaN as NaN, which is not JSON); the archiver's client decodes both.
    tamper(emulator, only(target, lambda o: {**o, "lastUpdated": float("nan"), "build": 10**30}))
    result = cycle(server, emulator, any_engine)
    assert result.outcome == "ok", result.error
    raw = archived(any_engine)[target]["raw"]
    assert raw["lastUpdated"] is None and int(raw["build"]) == 10**30


# -- F7: a new connection ------------------------------------------------------------------------------


def new_connection(seconds_later: float) -> Callable[[Item], Item]:
    """The session as upstream shows it once a second connection has started: another id, a
    start after the first connection's end, and no end (the field is gone, not null)."""
    def change(item: Item) -> Item:
        changed = {k: v for k, v in item.items() if k != "connectionEndTime"}
        changed["connectionId"] = "second-connection"
        changed["connectionStartTime"] = item["connectionEndTime"] + seconds_later * 1000
        return changed

    return change


def test_f7_a_new_connection_clears_the_end_of_the_previous_one(any_engine: Engine, emulator: Emulator, server: Any) -> None:
    world = emulator.world(emulator.account_ids[0])
    target = sessions_of(emulator)[0]
    world.disconnect(target)
    cycle(server, emulator, any_engine)
    first = archived(any_engine)[target]
    assert first["connection_end_time"] is not None
    emulator.clock.advance(120)
    tamper(emulator, only(target, new_connection(60)))
    result = cycle(server, emulator, any_engine)
    assert result.outcome == "ok", result.error
    row = archived(any_engine)[target]
    assert row["connection_id"] == "second-connection"
    assert row["connection_start_time"] == first["connection_end_time"] + timedelta(seconds=60)
    assert row["connection_end_time"] is None
    for version in versions_of(any_engine, target):
        start, end = version["connection_start_time"], version["connection_end_time"]
        assert start is None or end is None or end >= start, version
    durations = table("session_durations", column("session_id"), column("connection_seconds"))
    with any_engine.connect() as conn:
        seconds = conn.execute(select(durations.c.connection_seconds).where(durations.c.session_id == target)).scalar_one()
    assert seconds is None


# -- F8: an end before its start ----------------------------------------------------------------------


def test_f8_an_end_before_its_start_is_stored_as_observed_and_flagged(engine: Engine, emulator: Emulator, server: Any) -> None:
    closed, reconnected = sessions_of(emulator)[:2]
    tamper(emulator, only(closed, lambda o: {**o, "endTime": o["startTime"] - 5_000, "closeReason": "NormalClosure"}))
    tamper(emulator, only(reconnected, lambda o: {**o, "connectionEndTime": o["connectionStartTime"] - 1_000}))
    cycle(server, emulator, engine)
    rows = archived(engine)
    assert rows[closed]["end_time"] == rows[closed]["start_time"] - timedelta(seconds=5)  # as observed
    assert rows[closed]["status"] == "closed"
    assert rows[reconnected]["connection_end_time"] == rows[reconnected]["connection_start_time"] - timedelta(seconds=1)
    reasons = {(r["session_id"], r["reason"], r["kept"]) for r in rejects(engine)}
    assert (closed, "endTime: before startTime (stored as observed)", True) in reasons
    assert (reconnected, "connectionEndTime: before connectionStartTime (stored as observed)", True) in reasons


# -- F10: one redaction everywhere ---------------------------------------------------------------------


def test_f10_tokens_in_unknown_nested_and_rejected_fields_reach_no_column(
    any_engine: Engine, emulator: Emulator, server: Any
) -> None:
    token = secrets.token_urlsafe(16)
    planted = {
        "liveViewUrl": f"https://live.browser.run/view?jwt={token}A",
        "targets": [{"webSocketDebuggerUrl": f"wss://live.browser.run/devtools/page/1?jwt={token}B"}],
        "proxy": f"wss://user:{token}C@h.example/p",
        "inspector": f"https://h.example/ui#token={token}D",
        "session": f"wss://h.example/devtools/browser/x;jwt={token}E",
        "note": f"reconnect to live.browser.run/devtools/browser/x?jwt={token}F",
    }
    listed, rejected, unkeyable = sessions_of(emulator)[:3]
    tamper(emulator, only(listed, lambda o: {**o, **planted}))
    tamper(emulator, only(rejected, lambda o: {**o, **planted, "startTime": "soon"}))
    tamper(emulator, only(unkeyable, lambda o: {**o, **planted, "sessionId": None}))
    cycle(server, emulator, any_engine)
    cycle(server, emulator, any_engine)
    assert token not in text_of_every_column(any_engine)  # sessions, versions, rejects, the ledger
    assert {r["session_id"] for r in rejects(any_engine)} == {rejected, None}
    rows = archived(any_engine)
    assert rows[listed]["raw"]["targets"][0]["webSocketDebuggerUrl"] == "wss://live.browser.run/devtools/page/1?jwt=REDACTED"
    row = rows[rejected]["raw"]
    assert (row["proxy"], row["inspector"], row["session"]) == (
        "wss://REDACTED@h.example/p", "https://h.example/ui#REDACTED", "wss://h.example/devtools/browser/x;jwt=REDACTED"
    )


@pytest.mark.parametrize(
    "text",
    [
        "wss://user:{token}@h.example/p",
        "https://h.example/ui#token={token}",
        "wss://h.example/devtools/browser/x;jwt={token}",
        "https://h.example/ui?wss=live.browser.run/x;jwt={token}",
    ],
    ids=["userinfo", "fragment", "path-parameter", "nested-path-parameter"],
)
def test_f10_a_rejected_body_a_field_and_a_log_line_are_redacted_alike(text: str) -> None:
    token = secrets.token_urlsafe(16)
    url = text.format(token=token)
    assert token not in redact_url(url)
    body = reject_body({"sessionId": "bad", "webSocketDebuggerUrl": url, "extra": {"nested": [url]}})
    assert token not in body and body.count(redact_url(url)) == 2
    record = parse_session({"sessionId": "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e", "webSocketDebuggerUrl": url, "other": [url]})
    assert record.raw["other"] == [record.fields["web_socket_debugger_url"]] == [redact_url(url)]
    assert redact_text(f"connecting to {url} failed") == f"connecting to {redact_url(url)} failed"
    entry = logging.LogRecord("x", logging.INFO, __file__, 1, "lost %s", (url,), None)
    SecretFilter([]).filter(entry)
    assert entry.getMessage() == f"lost {redact_url(url)}"


# -- F11: configuration hygiene ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode", "refused"),
    [
        ('api_token = "t0k3n"\n', 0o600, None),
        ('api_token = "t0k3n"\n', 0o640, None),
        ('api_token = "t0k3n"\n', 0o644, "holds api_token and may be read by others (mode 0644)"),
        ('api_key = "k3y"\nemail = "a@b.c"\n', 0o604, "holds api_key and may be read by others"),
        ('database_url = "postgresql+psycopg://u:pw@h/db"\n', 0o644, "holds database_url and may be read by others"),
        ('database_url = "sqlite:///archive.db"\n', 0o644, None),
        ('api_token = "t0k3n"\n', 0o666, "may be changed by others (mode 0666)"),
        ('base_url = "http://127.0.0.1:9/client/v4"\n', 0o646, "may be changed by others"),
        ('base_url = "http://127.0.0.1:9/client/v4"\n', 0o620, "may be changed by others"),
    ],
    ids=["private", "group-readable", "world-readable-token", "world-readable-key", "world-readable-db-password",
         "world-readable-no-secret", "world-writable-token", "world-writable-base-url", "group-writable-base-url"],
)
def test_f11_a_config_file_others_may_change_or_read_its_secret_is_refused(
    tmp_path: Path, text: str, mode: int, refused: str | None
) -> None:
    path = tmp_path / "archiver.toml"
    path.write_text(text)
    path.chmod(mode)
    if refused is None:
        load_settings(path, {})
        return
    with pytest.raises(ConfigError, match=re.escape(refused)) as info:
        load_settings(path, {})
    assert str(path) in str(info.value) and "t0k3n" not in str(info.value) and "pw" not in str(info.value)


def test_f11_archiver_refuses_a_world_writable_config_file_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "archiver.toml"
    path.write_text('api_token = "t0k3n"\naccount_id = ["0123456789abcdef0123456789abcdef"]\nbase_url = "http://127.0.0.1:9/x"\n')
    path.chmod(0o666)
    done = run(["--config", str(path), "sync"], {}, tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: config file {path} may be changed by others (mode 0666): chmod go-w {path}"
    ]


@pytest.mark.parametrize(
    "url",
    ["sqlite:///file:{path}?uri=true", "sqlite:///file:{path}?mode=rwc&uri=true", "sqlite:///file://{path}?uri=true"],
    ids=["uri", "uri-mode-rwc", "uri-with-empty-authority"],
)
def test_f11_a_sqlite_archive_named_by_a_uri_is_private(tmp_path: Path, url: str) -> None:
    path = tmp_path / "uri archive.db"
    old_umask = os.umask(0o022)
    try:
        engine = make_engine(url.format(path=str(path).replace(" ", "%20")))
        migrate.upgrade(engine)
        with engine.connect():
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        engine.dispose()
    finally:
        os.umask(old_umask)
    assert path.name in modes and set(modes.values()) == {0o600}, modes


# -- F14: an archive its reader may not write ----------------------------------------------------------


def read_only_prefix(directory: Path) -> list[str]:
    """A command prefix under which ``directory`` may be read but not written: a read-only bind
    mount for root (whom file modes do not stop), file modes for everyone else."""
    if os.geteuid() != 0:
        for path in directory.iterdir():
            path.chmod(0o444)
        directory.chmod(0o555)
        return []
    if shutil.which("unshare") is None:
        pytest.skip("root without unshare: no way to make a directory read-only here")
    mount = f"mount --bind {directory} {directory} && mount -o remount,bind,ro {directory} && exec \"$@\""
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", mount, "sh", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot mount here (no CAP_SYS_ADMIN)")
    return ["unshare", "--mount", "sh", "-c", mount, "sh"]


@pytest.mark.parametrize("writer_open", [False, True], ids=["closed-archive", "archive-open-for-writing"])
def test_f14_status_and_reports_read_an_archive_they_may_not_write(tmp_path: Path, writer_open: bool) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    engine = make_engine(f"sqlite:///{folder / 'archive.db'}")
    migrate.upgrade(engine)
    archive_data.build(engine)
    writer = engine.connect() if writer_open else None  # keeps the write-ahead log and its index
    if writer is not None:
        writer.exec_driver_sql("SELECT 1")
    else:
        engine.dispose()
    files = sorted(p.name for p in folder.iterdir())
    prefix = read_only_prefix(folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "ARCHIVER_"))}
    env["ARCHIVER_DATABASE_URL"] = f"sqlite:///{folder / 'archive.db'}"
    commands = {
        "status": (["status"], f"{archive_data.A}  closed    "),
        "runs": (["report", "runs", "--since", "2026-11-01"], archive_data.B),
        "sessions": (["report", "sessions", "--since", "2026-11-20"], archive_data.sid("active")),
        "current": (["db", "current"], f"current: {migrate.head_revision()}"),
        "usage": (["report", "usage", "--since", "2026-11-01", "--until", "2026-11-30"], "browser_hours"),
        "coverage": (["report", "coverage", "--since", "2026-11-01", "--until", "2026-11-30"], "incomplete_listings"),
    }
    try:
        for name, (command, expected) in commands.items():
            done = subprocess.run([*prefix, sys.executable, "-m", "archiver", *command], env=env, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=60)
            assert (done.returncode, done.stderr) == (0, ""), name
            assert expected in done.stdout, name
        assert sorted(p.name for p in folder.iterdir()) == files  # nothing created, nothing removed
    finally:
        if writer is not None:
            writer.close()
            engine.dispose()
        folder.chmod(0o755)


@pytest.mark.parametrize(
    "command",
    [["status"], ["report", "runs", "--since", "1d"], ["db", "current"], ["export", "--since", "1d"], ["report", "usage", "--since", "1d"],
     ["report", "coverage", "--since", "1d"], ["report", "incident", "--at", "1h", "-o", "review.md"]],
    ids=" ".join,
)
def test_f14_a_read_only_command_on_a_mistyped_sqlite_path_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "archvie.db"
    done = run(command, {"ARCHIVER_DATABASE_URL": f"sqlite:///{missing}"}, tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: there is no SQLite archive at {missing}: check ARCHIVER_DATABASE_URL, or create one with `archiver db upgrade`"
    ]
    assert list(tmp_path.iterdir()) == []


# -- F15: the small ones -------------------------------------------------------------------------------


def test_f15_control_characters_from_upstream_are_escaped_in_report_tables(
    tmp_path: Path, emulator: Emulator, server: Any
) -> None:
    target = sessions_of(emulator)[0]
    hostile = "\x1b[2J\x1b]0;pwned\x07\u202eevil\nline\x9b31m"
    tamper(emulator, only(target, lambda o: {**o, "endTime": o["startTime"] + 1000, "closeReason": "x\x1b[5m",
                                             "closeReasonText": hostile}))
    database = f"sqlite:///{tmp_path / 'a.db'}"
    engine = make_engine(database)
    migrate.upgrade(engine)
    cycle(server, emulator, engine)
    engine.dispose()
    env = {"ARCHIVER_DATABASE_URL": database}
    since = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%MZ")
    for command in (["report", "session", target], ["report", "sessions", "--since", since], ["report", "reasons", "--since", since]):
        done = run(command, env, tmp_path)
        assert done.returncode == 0, done.stderr
        assert not any(ch in done.stdout for ch in "\x1b\x07\x9b\u202e"), command
        assert "\\x1b[" in done.stdout, command
        lines = done.stdout.splitlines()
        assert not any(line.startswith("line") for line in lines)  # the newline did not break the table


def test_f15_a_table_cell_escapes_what_the_terminal_would_act_on() -> None:
    text = text_table(["reason"], [["a\x1b[31mb\tc\u202ed\ud800"]])
    assert text.splitlines()[-1] == "a\\x1b[31mb\\tc\\u202ed\\ud800"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ARCHIVER_DATABASE_URL": "postgresql+psycopg://u:pw@h:abc/db"}, "error: ARCHIVER_DATABASE_URL is not a valid SQLAlchemy URL"),
        ({"ARCHIVER_DATABASE_URL": "postgresql+psycopg://u:pw@[::1/db"}, "error: ARCHIVER_DATABASE_URL is not a valid SQLAlchemy URL"),
        ({"ARCHIVER_DATABASE_URL": "mysql+pymysql://u:pw@h:99999/db"}, "error: ARCHIVER_DATABASE_URL: port 99999 is not between"),
        ({"CLOUDFLARE_BASE_URL": "http://127.0.0.1:abc/client/v4"},
         "error: CLOUDFLARE_BASE_URL: 'http://127.0.0.1:abc/client/v4' is not a valid URL"),
        ({"CLOUDFLARE_BASE_URL": "http://127.0.0.1:99999/client/v4"}, "error: CLOUDFLARE_BASE_URL: "),
        ({"CLOUDFLARE_BASE_URL": "https://api.cloudflare.com:0/client/v4"}, "error: CLOUDFLARE_BASE_URL: "),
    ],
    ids=["database-port-not-a-number", "database-host-unclosed-bracket", "database-port-out-of-range",
         "base-url-port-not-a-number", "base-url-port-out-of-range", "base-url-port-zero"],
)
def test_f15_a_bad_url_is_one_line_not_a_traceback(tmp_path: Path, env: dict[str, str], message: str) -> None:
    base = {"CLOUDFLARE_API_TOKEN": "t0k3n", "CLOUDFLARE_ACCOUNT_ID": "0123456789abcdef0123456789abcdef",
            "ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    done = run(["sync", "--auto-migrate"], {**base, **env}, tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert "u:pw@" not in done.stderr


def test_f15_a_retry_after_given_as_an_http_date_is_honoured(
    emulator: Emulator, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cloudflare, "BACKOFF_BASE_SECONDS", 0.001)  # only the Retry-After can make the wait long
    original = emulator.handle

    def http_date_retry_after(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        reply = original(method, path, headers, body)
        if reply.status == 429:
            reply.headers["Retry-After"] = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
        return reply

    emulator.handle = http_date_retry_after  # type: ignore[method-assign]
    emulator.inject(429, endpoint="list")

    async def list_once() -> tuple[float, RequestStats]:
        stats = RequestStats()
        async with client_for(server, emulator, max_retry_wait=1.5) as client:  # the date's 30 s, capped
            started = time.monotonic()
            async for _ in client.account(emulator.account_ids[0], stats).listing():
                pass
            return time.monotonic() - started, stats

    elapsed, stats = asyncio.run(list_once())
    assert stats.throttled == 1 and stats.requests == 2
    assert 1.4 <= elapsed < 5


def test_an_upstream_error_text_with_a_nul_and_a_lone_surrogate_still_closes_the_ledger_row(
    empty_database_url: str, emulator: Emulator, server: Any, tmp_path: Path
) -> None:
    original = emulator.handle

    def spoiled_error(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        reply = original(method, path, headers, body)
        if reply.status == 400:
            reply.body = json.dumps({"success": False, "errors": [{"code": 1, "message": "bad\x00 \ud800 \x1b[2J"}]}).encode()
        return reply

    emulator.handle = spoiled_error  # type: ignore[method-assign]
    emulator.inject(400, endpoint="list")
    env = {
        "CLOUDFLARE_API_TOKEN": emulator.token, "CLOUDFLARE_ACCOUNT_ID": emulator.account_ids[0],
        "CLOUDFLARE_BASE_URL": server.base_url, "ARCHIVER_DATABASE_URL": empty_database_url,
    }
    done = run(["sync", "--auto-migrate"], env, tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "bad\\x00 \\ud800 \\x1b[2J" in done.stdout  # escaped for the terminal
    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            outcome, error = conn.execute(select(table("sync_runs", column("outcome"), column("error")))).one()
    finally:
        engine.dispose()
    assert outcome == "failed" and "bad\ufffd \ufffd \x1b[2J" in error
