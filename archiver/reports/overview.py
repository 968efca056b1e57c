"""Audit queries shared by the CLI's status, reports and the demo. Read-only."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, desc, func, select

from archiver.archive import reasons
from archiver.archive.models import CLOSED, runs_table, sessions_table
from archiver.reports.stats import by_reason_name

s = sessions_table.c
r = runs_table.c


def last_runs(conn: Connection) -> list[dict[str, Any]]:
    """The latest ledger row of every account."""
    latest = select(r.account_id, func.max(r.id).label("id")).group_by(r.account_id).subquery()
    stmt = select(runs_table).join(latest, r.id == latest.c.id).order_by(r.account_id)
    return [dict(row) for row in conn.execute(stmt).mappings()]


def sessions_by_status(conn: Connection) -> list[tuple[str, str, int]]:
    """(account, status, count) for every account and status present."""
    stmt = (
        select(s.account_id, s.status, func.count())
        .group_by(s.account_id, s.status)
        .order_by(s.account_id, s.status)
    )
    return [(a, st, n) for a, st, n in conn.execute(stmt)]


def close_reasons(conn: Connection) -> list[tuple[str | None, str | None, int]]:
    """(documented reason name, a text for it, count) over closed sessions, most frequent first."""
    keys = (s.close_reason, s.close_reason_text)
    stmt = select(*keys, func.count()).where(s.status == CLOSED).group_by(*keys)
    named = by_reason_name((None, CLOSED, reason, text, n) for reason, text, n in conn.execute(stmt))
    return [(name, text, n) for _bucket, _status, name, text, n, _stored in named]


def recent_closed(conn: Connection, limit: int = 5) -> list[dict[str, Any]]:
    """The most recently ended sessions with their times and reasons (by documented name)."""
    stmt = (
        select(s.session_id, s.start_time, s.end_time, reasons.name_of(s.close_reason).label("close_reason"),
               s.close_reason_text)
        .where(s.status == CLOSED)
        .order_by(desc(s.end_time))
        .limit(limit)
    )
    return [dict(row) for row in conn.execute(stmt).mappings()]
