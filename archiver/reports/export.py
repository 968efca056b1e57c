"""Rows of the archive for a window, streamed from a server-side cursor in constant memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Select, Table, select

from archiver.archive.models import runs_table, sessions_table, versions_table
from archiver.errors import InputError
from archiver.reports.window import Window, effective_start, started_or_ended_in
from archiver.vocabulary import EXPORT_TABLES

# Rows fetched from the cursor at a time: large enough to amortise round trips, small enough
# that memory stays flat whatever the window holds.
FETCH_ROWS = 2000


def export_rows(
    conn: Connection, what: str, window: Window, *, account: str | None = None
) -> tuple[tuple[str, ...], Iterator[tuple[Any, ...]]]:
    """The column names, and an iterator over the rows, of one table's rows in the window."""
    table, stmt = _statement(what, window)
    if account is not None:
        stmt = stmt.where(table.c.account_id == account)
    columns = tuple(c.name for c in table.columns)
    streamed = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(stmt)
    return columns, (tuple(row) for row in streamed)


def _statement(what: str, window: Window) -> tuple[Table, Select[Any]]:
    if what == "sessions":
        c = sessions_table.c
        stmt = select(sessions_table).where(started_or_ended_in(window))
        return sessions_table, stmt.order_by(effective_start(), c.account_id, c.session_id)
    if what == "versions":
        c = versions_table.c
        return versions_table, select(versions_table).where(window.holds(c.observed_at)).order_by(c.observed_at, c.id)
    if what == "runs":
        c = runs_table.c
        return runs_table, select(runs_table).where(window.holds(c.started_at)).order_by(c.started_at, c.id)
    raise InputError(f"cannot export {what!r}: use one of {', '.join(EXPORT_TABLES)}")
