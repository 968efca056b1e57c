"""A reporting window, and which sessions started or ended in it.

A session whose end is unknown (it vanished, or Cloudflare forgot it) ended somewhere between its
``last_seen_at`` and its ``vanished_at``: for windows it counts as ending at ``vanished_at``, the
latest moment it can have ended. A session without a start time counts from when it was first listed.

Close reasons are shown under their documented name (``close_reason``), with the value as stored
beside it (``close_reason_raw``); see :mod:`archiver.reasons`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, CompoundSelect, Connection, Select, and_, func, or_, select, union_all

from archiver.archive import reasons
from archiver.archive.models import ACTIVE, sessions_table
from archiver.errors import InputError
from archiver.reports.result import Result, result
from archiver.reports.sqltime import duration_seconds
from archiver.vocabulary import STATUSES

s = sessions_table.c

SESSION_COLUMNS = (
    "account_id", "session_id", "status", "start_time", "end_time", "duration_seconds",
    "close_reason", "close_reason_text", "close_reason_raw", "first_seen_at", "last_seen_at", "vanished_at", "gone_at",
)
BRIEF_COLUMNS = ("session_id", "status", "start_time", "end_time", "duration_seconds", "close_reason", "close_reason_text")


@dataclass(frozen=True)
class Window:
    """The half-open interval [since, until) of aware UTC instants."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if self.until <= self.since:
            raise InputError(f"the window is empty: --until ({self.until:%Y-%m-%d %H:%M:%S}) must be after "
                             f"--since ({self.since:%Y-%m-%d %H:%M:%S})")

    def holds(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        return and_(column >= self.since, column < self.until)


def effective_start() -> ColumnElement[Any]:
    """The start time, or the first listing where Cloudflare gave none."""
    return func.coalesce(s.start_time, s.first_seen_at)


def started_or_ended_in(window: Window) -> ColumnElement[bool]:
    """Sessions whose start or end falls in the window; each branch can use an index on its own."""
    return or_(
        window.holds(s.start_time),
        and_(s.start_time.is_(None), window.holds(s.first_seen_at)),
        window.holds(s.end_time),
        and_(s.end_time.is_(None), s.status != ACTIVE, window.holds(s.vanished_at)),
    )


def still_open_after(when: datetime) -> list[tuple[ColumnElement[bool], ...]]:
    """Conditions, one set per branch of a UNION, for sessions that may have been open after ``when``.

    Each branch is a narrow range of the (end_time, vanished_at, start_time) index: ended after it;
    end unknown but vanished after it; end unknown and never vanished (the active sessions, and
    the rare ones closed without an end or a vanish).
    """
    return [
        (s.end_time > when,),
        (s.end_time.is_(None), s.vanished_at > when),
        (s.end_time.is_(None), s.vanished_at.is_(None), or_(s.status == ACTIVE, s.gone_at.is_(None), s.gone_at > when)),
    ]


def open_during(window: Window, *columns: ColumnElement[Any], account: str | None = None) -> CompoundSelect[Any]:
    """``columns`` of the sessions that were open, or maybe open, at some moment of the window."""
    started = or_(s.start_time < window.until, and_(s.start_time.is_(None), s.first_seen_at < window.until))
    branches = [select(*columns).where(started, *conditions) for conditions in still_open_after(window.since)]
    return union_all(*(where_all(branch, account_filter(account)) for branch in branches))


def account_filter(account: str | None) -> ColumnElement[bool] | None:
    return None if account is None else s.account_id == account


S = TypeVar("S", bound=Select)  # type: ignore[type-arg]


def where_all(stmt: S, *conditions: ColumnElement[bool] | None) -> S:
    """Add every condition that is not None."""
    for condition in conditions:
        if condition is not None:
            stmt = stmt.where(condition)
    return stmt


def check_status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise InputError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    return status


def session_select() -> Select[Any]:
    """The columns of SESSION_COLUMNS, durations and reason names computed in the database."""
    return select(
        s.account_id, s.session_id, s.status, s.start_time, s.end_time,
        duration_seconds(s.start_time, s.end_time).label("duration_seconds"),
        reasons.name_of(s.close_reason).label("close_reason"), s.close_reason_text,
        s.close_reason.label("close_reason_raw"), s.first_seen_at, s.last_seen_at, s.vanished_at, s.gone_at,
    )


def sessions_in(
    conn: Connection, window: Window, *, account: str | None = None, reason: str | None = None,
    status: str | None = None,
) -> Result:
    """Sessions that started or ended in the window, oldest start first.

    ``reason`` matches every stored value of the same documented reason (``1`` and ``NormalClosure``).
    """
    stmt = where_all(
        session_select().where(started_or_ended_in(window)),
        account_filter(account),
        None if reason is None else s.close_reason.in_(reasons.stored_values(reason)),
        None if check_status(status) is None else s.status == status,
    ).order_by(effective_start(), s.account_id, s.session_id)
    return result(SESSION_COLUMNS, conn.execute(stmt).all(), brief=BRIEF_COLUMNS)
