"""A small archive with known answers, written through the store: sessions crossing a window's
edges, ends known and unknown, a session without a start time, two accounts, and the ledger."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from archiver.archive import migrate, store
from archiver.archive.models import ACTIVE, CLOSED, GONE, VANISHED

A = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
B = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
WINDOW = (T0, T0 + timedelta(hours=1))
ODD_TEXT = '</script><script>alert("x")</script> & \u2028 <!--'


def m(minutes: float) -> datetime:
    """T0 plus some minutes."""
    return T0 + timedelta(minutes=minutes)


def sid(name: str) -> str:
    """A stable UUID-shaped id per name, readable in failures through SESSIONS' keys."""
    return f"00000000-0000-4000-8000-{abs(hash_name(name)):012d}"[:36]


def hash_name(name: str) -> int:
    value = 0
    for ch in name:
        value = (value * 131 + ord(ch)) % 10**12
    return value


def session(name: str, *, account: str = A, status: str = CLOSED, start: float | None, end: float | None,
            seen: tuple[float, float] | None = None, vanished: float | None = None, gone: float | None = None,
            reason: str | None = None, text: str | None = None, connected: tuple[float, float] | None = None,
            clock: Callable[[float], datetime] = m) -> dict[str, Any]:
    """A session row; times are ``clock`` units (minutes after T0 unless told) and last seen defaults
    to a quarter of a unit before the end."""
    first, last = seen if seen is not None else ((start if start is not None else 0) + 0.25, (end if end is not None else 0) - 0.25)
    return {
        "account_id": account, "session_id": sid(name), "status": status,
        "first_seen_at": clock(first), "last_seen_at": clock(last), "last_detail_at": clock(end) if end is not None else None,
        "vanished_at": None if vanished is None else clock(vanished), "gone_at": None if gone is None else clock(gone),
        "detail_due": None, "detail_attempts": 0, "last_run_id": 1,
        "start_time": None if start is None else clock(start), "end_time": None if end is None else clock(end),
        "connection_start_time": None if connected is None else clock(connected[0]),
        "connection_end_time": None if connected is None else clock(connected[1]),
        "last_updated": None, "connection_id": None, "close_reason": reason, "close_reason_text": text,
        "devtools_frontend_url": "https://example.invalid/devtools?token=REDACTED", "web_socket_debugger_url": None,
        "raw": {"sessionId": sid(name)},
    }


SESSIONS: dict[str, dict[str, Any]] = {
    s["session_id"]: s
    for s in [
        session("before", start=-120, end=-90, reason="NormalClosure", text="Normal closure"),
        session("crossing-start", start=-10, end=10, reason="1000", text="NormalClosure", connected=(-9, 9)),
        session("ended-at-since", start=-5, end=0, reason="1000", text="NormalClosure", connected=(-5, -1)),
        session("inside", start=5, end=25, reason="BrowserIdle", text="Browser idle", connected=(6, 20)),
        session("crossing-end", start=50, end=70, reason="1000", text="NormalClosure"),
        session("spanning", start=-60, end=120, reason="BrowserIdle", text="Browser idle"),
        session("active", status=ACTIVE, start=40, end=None, seen=(40.25, 120)),
        session("gone", status=GONE, start=10, end=None, seen=(10.25, 20), vanished=21, gone=22),
        session("vanished", status=VANISHED, start=-30, end=None, seen=(-29.75, 30), vanished=31),
        session("no-start", start=None, end=3, seen=(1, 2.5), reason="BrowserIdle", text="Browser idle"),
        session("at-until", start=60, end=65, reason="1000", text="NormalClosure"),
        session("other-account", account=B, start=5, end=6, reason="4000", text=ODD_TEXT),
    ]
}
NAMES = {s: n for n in ["before", "crossing-start", "ended-at-since", "inside", "crossing-end", "spanning", "active",
                        "gone", "vanished", "no-start", "at-until", "other-account"] for s in [sid(n)]}


def names(session_ids: list[str]) -> set[str]:
    return {NAMES[s] for s in session_ids}


def versions() -> list[dict[str, Any]]:
    """Two versions per session: first listed, then its last known state (or the vanish)."""
    rows = []
    for row in SESSIONS.values():
        base = {k: row[k] for k in ("account_id", "session_id", "start_time", "end_time", "connection_start_time",
                                    "connection_end_time", "last_updated", "connection_id", "close_reason",
                                    "close_reason_text", "devtools_frontend_url", "web_socket_debugger_url", "raw")}
        rows.append({**base, "run_id": 1, "observed_at": row["first_seen_at"], "source": "list", "status": ACTIVE,
                     "end_time": None, "close_reason": None, "close_reason_text": None})
        if row["status"] != ACTIVE:
            at = row["end_time"] or row["vanished_at"]
            rows.append({**base, "run_id": 2, "observed_at": at, "source": "detail", "status": row["status"]})
    return rows


def ledger_row(account: str, started: datetime, *, outcome: str = "ok", error: str | None = None,
               throttled: int = 0, **fields: Any) -> dict[str, Any]:
    """One cycle that took half a minute; its listing is complete when it went ok."""
    return {
        "account_id": account, "worker": "host:1", "started_at": started, "finished_at": started + timedelta(seconds=30),
        "outcome": outcome, "listing_complete": outcome == "ok", "pages": 1, "listed": 3, "new": 1, "changed": 0,
        "vanished": 0, "reappeared": 0, "details_fetched": 1, "details_gone": 0, "details_failed": 0,
        "details_carried": 0, "rejected": 0, "api_requests": 2 + throttled, "retries": throttled,
        "throttled": throttled, "waited_seconds": 1.5 * throttled, "throttled_seconds": 0.0, "error": error, **fields,
    }


def runs() -> list[dict[str, Any]]:
    """Cycles every 10 minutes from T0-2h to T0+2h for account A; one failed, one throttled."""
    rows = []
    for minute in range(-120, 121, 10):
        outcome, error, throttled = "ok", None, 0
        if minute == 20:
            outcome, error = "partial", "listing incomplete: page 2 failed"
        if minute == 30:
            outcome, error, throttled = "failed", "Cloudflare answered 429", 3
        rows.append(ledger_row(A, m(minute), outcome=outcome, error=error, throttled=throttled))
    rows.append({**rows[-1], "account_id": B, "started_at": m(5), "finished_at": m(5.5), "outcome": "ok",
                 "listing_complete": True, "api_requests": 2, "retries": 0, "throttled": 0, "waited_seconds": 0.0,
                 "error": None})
    return rows


def build(engine: Engine) -> None:
    """Write the sessions, their versions and the ledger through the store."""
    with engine.begin() as conn:
        store.upsert(conn, store.sessions_table, list(SESSIONS.values()), store.SESSION_KEY)
        store.insert_rows(conn, store.versions_table, versions())
        store.insert_rows(conn, store.runs_table, runs())


def sqlite_env(folder: Path, build_archive: Callable[[Engine], None] = build) -> tuple[dict[str, str], Path]:
    """A migrated SQLite archive in ``folder`` written by ``build_archive``: the environment that points
    the command at it, and the folder to run the command in."""
    url = f"sqlite:///{folder / 'archive.db'}"
    engine = store.make_engine(url)
    migrate.upgrade(engine)
    build_archive(engine)
    engine.dispose()
    return {"ARCHIVER_DATABASE_URL": url}, folder
