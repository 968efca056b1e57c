"""A synthetic archive of any size, bulk-loaded in seconds: sessions, their versions and the ledger.

Sessions arrive as a Poisson process with a daily rhythm; lifetimes are log-normal (median about a
minute, a long tail of hour-long sessions); 60% close normally, the rest idle out or fail; 3%
vanish and are forgotten before their end is fetched (``gone``), a few are still ``vanished``,
and those still running at the end are ``active``. Versions and ledger rows come in the
proportions a 30-second poll produces: a version when first listed, one when closed (or vanished,
and gone), and one ledger row per account per interval.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

ACCOUNTS = ("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210")
REASONS = (  # (reason, text, weight)
    ("NormalClosure", "Normal closure", 40),
    ("1000", "NormalClosure", 20),
    ("BrowserIdle", "Browser idle", 25),
    ("1001", "GoingAway", 6),
    ("ClientDisconnected", "Client disconnected", 5),
    ("1011", "InternalError", 4),
)
POLL_SECONDS = 30
SESSION_COLUMNS = (
    "account_id", "session_id", "status", "first_seen_at", "last_seen_at", "last_detail_at", "vanished_at", "gone_at",
    "detail_due", "detail_attempts", "last_run_id", "start_time", "end_time", "connection_start_time",
    "connection_end_time", "last_updated", "connection_id", "close_reason", "close_reason_text",
    "devtools_frontend_url", "web_socket_debugger_url", "raw",
)
VERSION_COLUMNS = (
    "account_id", "session_id", "run_id", "observed_at", "source", "status", "start_time", "end_time",
    "connection_start_time", "connection_end_time", "last_updated", "connection_id", "close_reason",
    "close_reason_text", "devtools_frontend_url", "web_socket_debugger_url", "raw",
)
RUN_COLUMNS = (
    "account_id", "worker", "started_at", "finished_at", "outcome", "listing_complete", "pages", "listed", "new",
    "changed", "vanished", "reappeared", "details_fetched", "details_gone", "details_failed", "details_carried",
    "rejected", "api_requests", "retries", "throttled", "waited_seconds", "error",
)


@dataclass(frozen=True)
class Shape:
    """How big an archive, over how long, ending when."""

    sessions: int
    end: datetime
    days: float
    median_lifetime_s: float = 60.0
    seed: int = 1

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)


@dataclass
class Archive:
    """Rows ready for bulk loading, times as aware datetimes (converted per database on load)."""

    sessions: list[tuple[Any, ...]]
    versions: list[tuple[Any, ...]]
    runs: list[tuple[Any, ...]]


def _arrivals(shape: Shape, rng: random.Random) -> Iterator[float]:
    """Seconds since shape.start of each session's start, with a daily rhythm (busier by day)."""
    span = shape.days * 86400
    for _ in range(shape.sessions):
        while True:  # thinning: accept a uniform time with the day curve's probability
            t = rng.random() * span
            hour = ((shape.start.timestamp() + t) / 3600) % 24
            if rng.random() < 0.55 + 0.45 * math.sin((hour - 8) / 24 * 2 * math.pi):
                yield t
                break


def build(shape: Shape) -> Archive:
    """The rows of an archive of this shape, sessions in start order."""
    rng = random.Random(shape.seed)
    starts = sorted(_arrivals(shape, rng))
    sessions: list[tuple[Any, ...]] = []
    versions: list[tuple[Any, ...]] = []
    base = shape.start
    end_s = shape.days * 86400
    sigma = 1.1
    for n, offset in enumerate(starts):
        account = ACCOUNTS[0] if rng.random() < 0.8 else ACCOUNTS[1]
        session_id = f"{n:08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-8{rng.getrandbits(12):03x}-{rng.getrandbits(48):012x}"
        life = min(shape.median_lifetime_s * math.exp(rng.gauss(0, sigma)), 6 * 3600)
        start = base + timedelta(seconds=offset)
        first_seen = start + timedelta(seconds=rng.random() * POLL_SECONDS)
        ends_at = offset + life
        connected = rng.random() < 0.9
        reason, text, _ = rng.choices(REASONS, weights=[w for *_, w in REASONS])[0]
        row: dict[str, Any] = {
            "account_id": account, "session_id": session_id, "first_seen_at": first_seen,
            "detail_due": None, "detail_attempts": 0, "last_run_id": None, "start_time": start,
            "connection_id": f"c{n}" if connected else None, "devtools_frontend_url": None,
            "web_socket_debugger_url": None, "last_updated": None,
            "connection_start_time": start + timedelta(seconds=min(0.5, life / 10)) if connected else None,
        }
        if ends_at >= end_s:  # still running
            row.update(status="active", last_seen_at=base + timedelta(seconds=end_s), end_time=None,
                       close_reason=None, close_reason_text=None, vanished_at=None, gone_at=None,
                       last_detail_at=first_seen, connection_end_time=None)
        else:
            end = base + timedelta(seconds=ends_at)
            last_seen = max(first_seen, end - timedelta(seconds=rng.random() * POLL_SECONDS))
            vanished_at = last_seen + timedelta(seconds=POLL_SECONDS)
            fate = rng.random()
            if fate < 0.03:
                row.update(status="gone", end_time=None, close_reason=None, close_reason_text=None,
                           vanished_at=vanished_at, gone_at=vanished_at + timedelta(seconds=1), last_detail_at=None)
            elif fate < 0.035:
                row.update(status="vanished", end_time=None, close_reason=None, close_reason_text=None,
                           vanished_at=vanished_at, gone_at=None, last_detail_at=None)
            else:
                row.update(status="closed", end_time=end, close_reason=reason, close_reason_text=text,
                           vanished_at=vanished_at, gone_at=None, last_detail_at=vanished_at)
            row["last_seen_at"] = last_seen
            row["connection_end_time"] = end - timedelta(seconds=min(0.5, life / 10)) if connected and row["end_time"] else None
        row["raw"] = {"sessionId": session_id, "startTime": round(start.timestamp() * 1000), "closeReason": row["close_reason"]}
        sessions.append(tuple(row[c] for c in SESSION_COLUMNS))
        versions.extend(_versions(row))
    return Archive(sessions, versions, list(_runs(shape, rng)))


def _versions(row: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    first = {**row, "status": "active", "end_time": None, "close_reason": None, "close_reason_text": None,
             "connection_end_time": None, "observed_at": row["first_seen_at"], "source": "list", "run_id": None}
    yield tuple(first[c] for c in VERSION_COLUMNS)
    if row["status"] == "active":
        return
    vanished = {**first, "status": "vanished", "observed_at": row["vanished_at"], "source": "archiver"}
    yield tuple(vanished[c] for c in VERSION_COLUMNS)
    if row["status"] in ("closed", "gone"):
        final = {**row, "observed_at": row["gone_at"] or row["last_detail_at"], "source": "detail", "run_id": None}
        yield tuple(final[c] for c in VERSION_COLUMNS)


def _runs(shape: Shape, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    cycles = int(shape.days * 86400 / POLL_SECONDS)
    for account in ACCOUNTS:
        for k in range(cycles):
            started = shape.start + timedelta(seconds=k * POLL_SECONDS + rng.random())
            roll = rng.random()
            outcome, complete, throttled, error = "ok", True, 0, None
            if roll < 0.002:
                outcome, complete, error = "failed", False, "Cloudflare answered 503: No browser available"
            elif roll < 0.006:
                outcome, complete, throttled = "partial", False, 1
                error = "listing incomplete after 1 page(s): throttled (429)"
            yield (account, "bench:1", started, started + timedelta(seconds=0.2 + rng.random() * 0.3), outcome,
                   complete, 1, 15, 1, 1, 1, 0, 2, 0, 0, 0, 0, 3 + throttled, throttled, throttled,
                   1.5 * throttled, error)


def _text(value: Any, dialect: str) -> Any:
    if isinstance(value, datetime):
        text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return text + "+00" if dialect == "postgresql" else text
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return value


def load(engine: Engine, archive: Archive) -> None:
    """Bulk-load into a migrated, empty archive: COPY on PostgreSQL, executemany on SQLite."""
    dialect = engine.dialect.name
    tables = (("browser_sessions", SESSION_COLUMNS, archive.sessions),
              ("browser_session_versions", VERSION_COLUMNS, archive.versions),
              ("sync_runs", RUN_COLUMNS, archive.runs))
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for table, columns, rows in tables:
            if dialect == "postgresql":
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                    for row in rows:
                        copy.write_row([_text(v, dialect) for v in row])
            else:
                marks = ", ".join("?" for _ in columns)
                cursor.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                    ([_text(v, dialect) for v in row] for row in rows),
                )
        raw.commit()
        cursor.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
