"""The ledger of poll cycles: what each cycle did, or a summary per account."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, case, func, select

from archiver.archive.models import runs_table
from archiver.reports.result import Result, result

r = runs_table.c
RUN_COLUMNS = (
    "id", "account_id", "worker", "started_at", "finished_at", "outcome", "listing_complete", "pages", "listed",
    "new", "changed", "vanished", "details_fetched", "details_gone", "details_failed", "api_requests", "retries",
    "throttled", "waited_seconds", "error",
)
SUMMARY_COLUMNS = (
    "account_id", "cycles", "ok", "partial", "failed", "aborted", "running", "incomplete_listings", "api_requests",
    "retries", "throttled", "waited_seconds", "with_errors", "first_started", "last_started", "last_error",
)


def _in_range(since: datetime, until: datetime | None, account: str | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [r.started_at >= since]
    if until is not None:
        conditions.append(r.started_at < until)
    if account is not None:
        conditions.append(r.account_id == account)
    return conditions


def runs(conn: Connection, since: datetime, *, until: datetime | None = None, account: str | None = None) -> Result:
    """Every cycle that started in the range, oldest first."""
    stmt = select(*(r[c] for c in RUN_COLUMNS)).where(*_in_range(since, until, account)).order_by(r.started_at, r.id)
    return result(RUN_COLUMNS, conn.execute(stmt).all())


def _count(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.sum(case((condition, 1), else_=0))


def runs_summary(
    conn: Connection, since: datetime, *, until: datetime | None = None, account: str | None = None
) -> Result:
    """Per account: cycles by outcome, incomplete listings, API requests, retries, 429s and errors."""
    where = _in_range(since, until, account)
    stmt = (
        select(
            r.account_id, func.count(),
            *(_count(r.outcome == outcome) for outcome in ("ok", "partial", "failed", "aborted", "running")),
            _count(r.listing_complete.is_(False)), func.sum(r.api_requests), func.sum(r.retries),
            func.sum(r.throttled), func.sum(r.waited_seconds), _count(r.error.is_not(None)),
            func.min(r.started_at), func.max(r.started_at),
        )
        .where(*where)
        .group_by(r.account_id)
        .order_by(r.account_id)
    )
    rows = []
    for row in conn.execute(stmt):
        last_error = conn.scalar(
            select(r.error).where(*where, r.account_id == row[0], r.error.is_not(None))
            .order_by(r.started_at.desc(), r.id.desc()).limit(1)
        )
        numbers = [int(n or 0) for n in row[1:11]]
        rows.append((row[0], *numbers, round(float(row[11] or 0), 3), int(row[12] or 0), row[13], row[14], last_error))
    return result(SUMMARY_COLUMNS, rows)
