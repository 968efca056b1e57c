"""One session's whole story: its latest state, every version, and the poll cycles that saw it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, func, select

from archiver.archive.models import runs_table, sessions_table, versions_table
from archiver.archive.records import URL_FIELDS
from archiver.errors import InputError
from archiver.reports.result import Result, result

s = sessions_table.c
v = versions_table.c
r = runs_table.c
EVENT_COLUMNS = (
    "time", "event", "run_id", "run_outcome", "source", "status", "start_time", "end_time",
    "connection_start_time", "connection_end_time", "close_reason", "close_reason_text",
)
# Archiver facts worth a line of their own in the story, in the order they can happen.
MILESTONES = (("first_seen_at", "first listed"), ("last_seen_at", "last listed"), ("last_detail_at", "last detail"),
              ("vanished_at", "left a complete listing"), ("gone_at", "forgotten by Cloudflare (404)"))
SECRET_COLUMNS = frozenset(URL_FIELDS.values()) | {"raw"}


@dataclass
class Story:
    """Everything the archive knows about one session."""

    session: dict[str, Any]
    events: Result
    cycles: dict[str, Any] = field(default_factory=dict)


def session_story(conn: Connection, session_id: str, *, account: str | None = None) -> list[Story]:
    """The story of every archived session with this id (one per account holding it)."""
    stmt = select(sessions_table).where(s.session_id == session_id)
    if account is not None:
        stmt = stmt.where(s.account_id == account)
    sessions = [dict(row) for row in conn.execute(stmt.order_by(s.account_id)).mappings()]
    if not sessions:
        where = f" in account {account}" if account else ""
        raise InputError(f"no session {session_id!r}{where} in the archive")
    return [_story(conn, row) for row in sessions]


def _story(conn: Connection, session: dict[str, Any]) -> Story:
    versions = conn.execute(
        select(versions_table, r.outcome.label("run_outcome"))
        .outerjoin(runs_table, r.id == v.run_id)
        .where(v.account_id == session["account_id"], v.session_id == session["session_id"])
        .order_by(v.observed_at, v.id)
    ).mappings()
    events: list[tuple[Any, ...]] = [
        (row["observed_at"], f"version ({row['source']})", row["run_id"], row["run_outcome"], row["source"],
         *(row[c] for c in EVENT_COLUMNS[5:]))
        for row in versions
    ]
    for column, label in MILESTONES:
        if session[column] is not None:
            events.append((session[column], label, *([None] * (len(EVENT_COLUMNS) - 2))))
    events.sort(key=lambda e: (e[0], not e[1].startswith("version")))
    shown = {k: val for k, val in session.items() if k not in SECRET_COLUMNS}
    return Story(shown, result(EVENT_COLUMNS, events), _cycles(conn, session))


def _cycles(conn: Connection, session: dict[str, Any]) -> dict[str, Any]:
    """The account's poll cycles while the session was listed: each complete one contained it."""
    account = r.account_id == session["account_id"]
    # The cycle that first listed it is the last one to start before that listing.
    first_started: datetime | None = conn.scalar(
        select(r.started_at).where(account, r.started_at <= session["first_seen_at"])
        .order_by(r.started_at.desc()).limit(1)
    )
    complete = func.sum(case((r.listing_complete, 1), else_=0))
    stmt = select(func.count(), func.min(r.id), func.max(r.id), complete).where(
        account, r.started_at >= (first_started or session["first_seen_at"]), r.started_at <= session["last_seen_at"]
    )
    count, first_run, last_run, complete_count = conn.execute(stmt).one()
    return {
        "cycles_while_listed": count,
        "complete_listings": int(complete_count or 0),
        "first_run_id": first_run,
        "last_run_id": last_run,
        "last_changed_by_run_id": session["last_run_id"],
    }
