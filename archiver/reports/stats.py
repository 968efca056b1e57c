"""Close reasons counted, and how long sessions and their connections lasted, over a window.

Both look at sessions that *ended* in the window. Sessions whose end is unknown (vanished or gone
before their end was fetched) are counted under their status with no reason, at ``vanished_at``;
they have no duration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import ColumnElement, Connection, and_, func, or_, select

from archiver.errors import InputError
from archiver.models import ACTIVE
from archiver.reports.result import Result, result
from archiver.reports.sqltime import seconds_between, time_bucket
from archiver.reports.window import Window, account_filter, where_all
from archiver.store import sessions_table

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
    """(bucket,) status, reason, text and session count, most frequent first (per bucket)."""
    if by not in (None, "hour", "day"):
        raise InputError(f"cannot count by {by!r}: use hour or day")
    count = func.count().label("sessions")
    keys: list[ColumnElement[object]] = [s.status, s.close_reason, s.close_reason_text]
    if by is not None:
        keys.insert(0, time_bucket(by, func.coalesce(s.end_time, s.vanished_at)).label(by))
    stmt = where_all(select(*keys, count).where(ended_in(window)), account_filter(account))
    stmt = stmt.group_by(*keys)
    order = [count.desc(), s.status, s.close_reason, s.close_reason_text]
    stmt = stmt.order_by(*([keys[0]] if by else []), *order)
    columns = [*( [by] if by else []), "status", "close_reason", "close_reason_text", "sessions"]
    return result(columns, conn.execute(stmt).all())


def durations(conn: Connection, window: Window, *, account: str | None = None) -> Result:
    """Count, p50, p90, p99, max and mean of session and connection durations, in seconds."""
    session_seconds = seconds_between(s.start_time, s.end_time)
    connection_seconds = seconds_between(s.connection_start_time, s.connection_end_time)
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
