"""A synthetic archive of any size, generated in one streaming pass and bulk-loaded in seconds.

Sessions arrive as a Poisson process with a daily rhythm; lifetimes are log-normal (median about a
minute, a tail of hour-long sessions); most close normally, the rest idle out or fail; 3% vanish and
are forgotten before their end is fetched (``gone``), a few stay ``vanished``, and those still
running at the end are ``active``. Versions and ledger rows come in the proportions a 30-second
poll produces: a version when first listed, one when vanished and one when closed or gone, and one
ledger row per account per interval.

Rows are written to tab-separated files in PostgreSQL's COPY text format (``\\N`` for NULL), so
memory stays flat however large the archive; PostgreSQL loads them with COPY, SQLite with
``executemany`` in one transaction.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine

ACCOUNTS = ("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210")
# As stored: the documented codes and names of the same reasons, undocumented codes, and the
# reasons of sessions Cloudflare's infrastructure ended.
REASONS = (("NormalClosure", "Normal closure"), ("1", "Normal closure"), ("1000", "NormalClosure"),
           ("BrowserIdle", "Browser idle"), ("2", "Browser idle"), ("1001", "GoingAway"),
           ("ConnectionError", "Connection error"), ("ChromiumCrashed", "Chromium crashed"),
           ("SessionEvicted", "Session evicted"))
REASON_WEIGHTS = (25, 15, 20, 15, 10, 6, 5, 3, 1)
POLL_SECONDS = 30
NULL = "\\N"
SESSION_COLUMNS = (
    "account_id", "session_id", "status", "first_seen_at", "last_seen_at", "last_detail_at", "vanished_at", "gone_at",
    "detail_attempts", "start_time", "end_time", "connection_start_time", "connection_end_time", "connection_id",
    "close_reason", "close_reason_text", "raw",
)
VERSION_COLUMNS = (
    "account_id", "session_id", "observed_at", "source", "status", "start_time", "end_time", "connection_start_time",
    "connection_end_time", "connection_id", "close_reason", "close_reason_text", "raw",
)
RUN_COLUMNS = (
    "account_id", "worker", "started_at", "finished_at", "outcome", "listing_complete", "pages", "listed", "new",
    "changed", "vanished", "reappeared", "details_fetched", "details_gone", "details_failed", "details_carried",
    "rejected", "api_requests", "retries", "throttled", "waited_seconds", "throttled_seconds", "error",
)
TABLES = {"browser_sessions": SESSION_COLUMNS, "browser_session_versions": VERSION_COLUMNS, "sync_runs": RUN_COLUMNS}


@dataclass(frozen=True)
class Shape:
    """How big an archive, over how many days, ending when."""

    sessions: int
    end: datetime
    days: float
    median_lifetime_s: float = 60.0
    seed: int = 1

    @property
    def start_s(self) -> float:
        return self.end.timestamp() - self.days * 86400


def stamp(epoch: float) -> str:
    """Epoch seconds as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC), the text both databases accept."""
    whole = math.floor(epoch)
    micros = round((epoch - whole) * 1_000_000)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    return f"{datetime.fromtimestamp(whole, UTC):%Y-%m-%d %H:%M:%S}.{micros:06d}"


def _arrivals(shape: Shape, rng: random.Random) -> list[float]:
    """Start times (epoch seconds), busier by day than by night, sorted."""
    span = shape.days * 86400
    starts: list[float] = []
    while len(starts) < shape.sessions:
        t = shape.start_s + rng.random() * span
        if rng.random() < 0.55 + 0.45 * math.sin(((t / 3600) % 24 - 8) / 24 * 2 * math.pi):
            starts.append(t)
    starts.sort()
    return starts


def generate(shape: Shape, folder: Path) -> dict[str, int]:
    """Write one TSV file per table into ``folder``; return the row counts."""
    rng = random.Random(shape.seed)
    counts = {table: 0 for table in TABLES}
    files = {table: (folder / f"{table}.tsv").open("w", newline="") for table in TABLES}
    line = lambda fields: "\t".join(fields) + "\n"  # noqa: E731 - no field holds a tab, newline or backslash
    try:
        for n, start in enumerate(_arrivals(shape, rng)):
            session, versions = _session(n, start, shape, rng)
            files["browser_sessions"].write(line(session))
            files["browser_session_versions"].writelines(line(v) for v in versions)
            counts["browser_sessions"] += 1
            counts["browser_session_versions"] += len(versions)
        for run in _runs(shape, rng):
            files["sync_runs"].write(line(run))
            counts["sync_runs"] += 1
    finally:
        for f in files.values():
            f.close()
    return counts


def _session(n: int, start: float, shape: Shape, rng: random.Random) -> tuple[list[str], list[list[str]]]:
    account = ACCOUNTS[0] if rng.random() < 0.8 else ACCOUNTS[1]
    session_id = f"{n:08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-8{rng.getrandbits(12):03x}-{rng.getrandbits(48):012x}"
    life = min(shape.median_lifetime_s * math.exp(rng.gauss(0, 1.1)), 6 * 3600)
    first_seen = start + rng.random() * POLL_SECONDS
    connected = rng.random() < 0.9
    margin = min(0.5, life / 10)
    end_of_archive = shape.end.timestamp()
    end: float | None = start + life
    assert end is not None
    status = "closed"
    vanished: float | None = end + rng.random() * POLL_SECONDS
    gone: float | None = None
    detail: float | None = None
    last_seen = max(first_seen, end - rng.random() * POLL_SECONDS)
    reason: str | None
    text: str | None
    reason, text = rng.choices(REASONS, weights=REASON_WEIGHTS)[0]
    if end >= end_of_archive:
        status, end, vanished, last_seen, reason, text = "active", None, None, end_of_archive, None, None
    else:
        fate = rng.random()
        if fate < 0.035:
            status, reason, text = ("gone" if fate < 0.03 else "vanished"), None, None
            gone = vanished + 1 if status == "gone" and vanished is not None else None
            end = None
        else:
            detail = vanished
    value = lambda t: NULL if t is None else stamp(t)  # noqa: E731
    raw = json.dumps({"sessionId": session_id, "startTime": round(start * 1000), "closeReason": reason}, separators=(",", ":"))
    fields = [account, session_id, status, stamp(first_seen), stamp(last_seen), value(detail), value(vanished),
              value(gone), "0", stamp(start), value(end), value(start + margin if connected else None),
              value(end - margin if connected and end is not None else None), f"c{n}" if connected else NULL,
              reason or NULL, text or NULL, raw]
    shared = [account, session_id]
    lifecycle = [stamp(start), NULL, value(start + margin if connected else None), NULL, f"c{n}" if connected else NULL,
                 NULL, NULL, raw]
    versions = [[*shared, stamp(first_seen), "list", "active", *lifecycle]]
    if vanished is not None:
        versions.append([*shared, stamp(vanished), "archiver", "vanished", *lifecycle])
    if status in ("closed", "gone"):
        final = [*shared, value(gone or detail), "detail", status, stamp(start), value(end), *fields[11:14],
                 reason or NULL, text or NULL, raw]
        versions.append(final)
    return fields, versions


def _runs(shape: Shape, rng: random.Random) -> Iterator[list[str]]:
    cycles = int(shape.days * 86400 / POLL_SECONDS)
    for account in ACCOUNTS:
        for k in range(cycles):
            started = shape.start_s + k * POLL_SECONDS + rng.random()
            roll = rng.random()
            outcome, complete, throttled, error = "ok", "t", 0, NULL
            if roll < 0.002:
                outcome, complete, error = "failed", "f", "Cloudflare answered 503: No browser available"
            elif roll < 0.006:
                outcome, complete, throttled = "partial", "f", 1
                error = "listing incomplete after 1 page(s): throttled (429)"
            carried = str(3 * throttled)  # a throttled cycle leaves details owed
            yield [account, "bench:1", stamp(started), stamp(started + 0.2 + rng.random() * 0.3), outcome, complete,
                   "1", "15", "1", "1", "1", "0", "2", "0", "0", carried, "0", str(3 + throttled), str(throttled),
                   str(throttled), str(1.5 * throttled), str(1.5 * throttled), error]


def load(engine: Engine, folder: Path) -> float:
    """Bulk-load the TSV files into a migrated, empty archive; return the seconds it took."""
    started = time.perf_counter()
    dialect = engine.dialect.name
    raw = engine.raw_connection()
    try:
        cursor: Any = raw.cursor()
        for table, columns in TABLES.items():
            path = folder / f"{table}.tsv"
            if dialect == "postgresql":
                _copy_postgres(cursor, table, columns, path)
            else:
                _insert_sqlite(cursor, table, columns, path)
        raw.commit()
        cursor.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started


def _copy_postgres(cursor: Any, table: str, columns: tuple[str, ...], path: Path) -> None:
    # Times are UTC; say so, whatever the server's TimeZone.
    cursor.execute("SET TIME ZONE 'UTC'")
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy, path.open("rb") as source:
        while block := source.read(1 << 20):
            copy.write(block)


def _insert_sqlite(cursor: Any, table: str, columns: tuple[str, ...], path: Path) -> None:
    booleans = {i for i, c in enumerate(columns) if c == "listing_complete"}
    marks = ", ".join("?" for _ in columns)

    def rows(source: TextIO) -> Iterator[list[Any]]:
        for line in source:
            values: list[Any] = [None if v == NULL else v for v in line.rstrip("\n").split("\t")]
            for i in booleans:
                values[i] = 1 if values[i] == "t" else 0
            yield values

    with path.open(newline="") as source:
        cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows(source))
