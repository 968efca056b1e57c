"""Close reasons counted, and how long sessions and their connections lasted, over a window.

Both look at sessions that *ended* in the window. Sessions whose end is unknown (vanished or gone
before their end was fetched) are counted under their status with no reason, at ``vanished_at``;
they have no duration, and neither has a session whose recorded end comes before its start.
Close reasons are counted under their documented name (:mod:`archiver.reasons`), with the values
as stored beside it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, func, or_, select

from archiver.archive import reasons
from archiver.archive.models import ACTIVE, sessions_table
from archiver.errors import InputError
from archiver.reports.result import Result, result
from archiver.reports.sqltime import duration_seconds, time_bucket
from archiver.reports.window import Window, account_filter, where_all

s = sessions_table.c
PERCENTILES = (50, 90, 99)
DURATION_COLUMNS = ("measure", "sessions", "p50_seconds", "p90_seconds", "p99_seconds", "max_seconds", "mean_seconds")


def ended_in(window: Window) -> ColumnElement[bool]:
    """Sessions that ended in the window, or whose unknown end lies at the latest there."""
    return or_(
        window.holds(s.end_time),
        and_(s.end_time.is_(None), s.status != ACTIVE, window.holds(s.vanished_at)),
    )


def close_reasons(conn: Connection, window: Window, *, by: str | None = None, account: str | None = None) -> Result:
    """(bucket,) status, reason, text, session count and the values as stored, most frequent first (per bucket)."""
    if by not in (None, "hour", "day"):
        raise InputError(f"cannot count by {by!r}: use hour or day")
    keys: list[ColumnElement[Any]] = [s.status, s.close_reason, s.close_reason_text]
    if by is not None:
        keys.insert(0, time_bucket(by, func.coalesce(s.end_time, s.vanished_at)).label(by))
    stmt = where_all(select(*keys, func.count()).where(ended_in(window)), account_filter(account)).group_by(*keys)
    rows = conn.execute(stmt).all()
    counted = [(row[0] if by else None, *row[-4:]) for row in rows]
    columns = [*([by] if by else []), "status", "close_reason", "close_reason_text", "sessions", "as_stored"]
    return result(columns, [row[1:] if by is None else row for row in by_reason_name(counted)])


def by_reason_name(
    counted: Iterable[tuple[datetime | None, str, str | None, str | None, int]],
) -> list[tuple[Any, ...]]:
    """Counts per (bucket, status, stored reason, text) gathered under each reason's documented name.

    Each row: bucket, status, name, the most frequent text, sessions, and the stored values with
    their counts ("1: 3, NormalClosure: 2"), most frequent first per bucket.
    """
    groups: dict[tuple[Any, ...], tuple[Counter[str | None], Counter[str | None]]] = {}
    for bucket, status, raw, text, count in counted:
        stored, texts = groups.setdefault((bucket, status, reasons.name(raw)), (Counter(), Counter()))
        stored[raw] += count
        texts[text] += count
    rows = []
    for (bucket, status, name), (stored, texts) in groups.items():
        text = min(texts, key=lambda t: (-texts[t], t or ""))
        as_stored = ", ".join(f"{raw}: {n}" for raw, n in sorted(stored.items(), key=lambda i: (-i[1], i[0] or ""))
                              if raw is not None)
        rows.append((bucket, status, name, text, sum(stored.values()), as_stored or None))
    rows.sort(key=lambda r: (r[0] or datetime.min, -r[4], r[1], r[2] or "", r[3] or ""))
    return rows


def durations(conn: Connection, window: Window, *, account: str | None = None) -> Result:
    """Count, p50, p90, p99, max and mean of session and connection durations, in seconds."""
    session_seconds = duration_seconds(s.start_time, s.end_time)
    connection_seconds = duration_seconds(s.connection_start_time, s.connection_end_time)
    stmt = where_all(
        select(session_seconds, connection_seconds).where(window.holds(s.end_time)), account_filter(account)
    )
    sessions: list[float] = []
    connections: list[float] = []
    for whole, connected in conn.execute(stmt):
        if whole is not None:
            sessions.append(float(whole))
        if connected is not None:
            connections.append(float(connected))
    unknown = conn.scalar(where_all(
        select(func.count()).where(s.end_time.is_(None), s.status != ACTIVE, window.holds(s.vanished_at)),
        account_filter(account),
    ))
    notes = [f"{unknown} session(s) ended in the window at an unknown moment (vanished or gone) and are left out"]
    impossible = conn.scalar(where_all(
        select(func.count()).where(window.holds(s.end_time), or_(
            s.end_time < s.start_time, s.connection_end_time < s.connection_start_time)),
        account_filter(account),
    ))
    if impossible:
        notes.append(f"{impossible} session(s) with an end recorded before its start (session or connection) "
                     "have no duration there")
    return result(DURATION_COLUMNS, [summarise("session", sessions), summarise("connection", connections)], notes)


def summarise(measure: str, values: list[float]) -> tuple[object, ...]:
    if not values:
        return (measure, 0, None, None, None, None, None)
    values.sort()
    return (measure, len(values), *(percentile(values, p) for p in PERCENTILES), values[-1], math.fsum(values) / len(values))


def percentile(ordered: Sequence[float], p: float) -> float:
    """The p-th percentile of sorted values, interpolating between the two nearest ranks.

    The same definition as PostgreSQL's ``percentile_cont`` and NumPy's default.
    """
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
