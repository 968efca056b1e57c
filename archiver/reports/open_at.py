"""Which sessions were open at a moment, and which only maybe.

A session is open at T if it started at or before T and ended after T. Where the end is unknown:

- an ``active`` session is still listed, so it is open;
- otherwise it was surely open until ``last_seen_at`` (a listing contained it), and ended between
  then and ``vanished_at`` (the first complete listing without it): within that gap it was *maybe*
  open, and after ``vanished_at`` it was not. With no ``vanished_at`` (nor ``gone_at``) the end is
  only known to be after ``last_seen_at``.

A session without a start time counts from ``first_seen_at``, the first listing that contained it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, or_, union_all

from archiver.archive.models import ACTIVE, sessions_table
from archiver.render import cell
from archiver.reports.result import Result, result
from archiver.reports.window import SESSION_COLUMNS, account_filter, session_select, still_open_after, where_all

s = sessions_table.c
OPEN = "yes"
MAYBE = "maybe"
COLUMNS = ("open", "note", *SESSION_COLUMNS)
BRIEF = ("open", "session_id", "status", "start_time", "end_time", "close_reason", "note")


def open_at(conn: Connection, at: datetime, *, account: str | None = None) -> Result:
    """Sessions open at ``at``: ``open`` is "yes" or "maybe", with a note saying why not sure."""
    started = or_(s.start_time <= at, and_(s.start_time.is_(None), s.first_seen_at <= at))
    branches = [session_select().where(started, *conditions) for conditions in still_open_after(at)]
    stmt = union_all(*(where_all(branch, account_filter(account)) for branch in branches))
    rows = [r._mapping for r in conn.execute(stmt)]
    rows.sort(key=lambda r: (r["start_time"] or r["first_seen_at"], r["account_id"], r["session_id"]))
    answered = [(*classify(r, at), *(r[c] for c in SESSION_COLUMNS)) for r in rows]
    maybe = sum(1 for row in answered if row[0] == MAYBE)
    notes = [f"{len(answered) - maybe} open, {maybe} maybe open (end unknown) at {cell(at)} UTC"]
    return result(COLUMNS, answered, notes, BRIEF)


def classify(row: Any, at: datetime) -> tuple[str, str]:
    """("yes" or "maybe", a note) for a session the query found open at ``at``."""
    start_note = "" if row["start_time"] is not None else f"start unknown, first listed {cell(row['first_seen_at'])}"
    if row["end_time"] is not None or row["status"] == ACTIVE or at <= row["last_seen_at"]:
        return OPEN, start_note
    upper = row["vanished_at"] or row["gone_at"]
    if upper is None:
        note = f"end unknown, after {cell(row['last_seen_at'])}"
    else:
        note = f"ended between {cell(row['last_seen_at'])} and {cell(upper)}"
    return MAYBE, "; ".join(n for n in (note, start_note) if n)
