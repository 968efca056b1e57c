"""Retention: delete history older than a cutoff, in batches, each batch in its own transaction.

What goes: versions (by ``observed_at``), ledger rows (by ``started_at``; never a cycle still
``running``) and rejected records (by ``rejected_at``). The latest state of every session stays,
unless sessions are included: then sessions that *ended* before the cutoff go too, with their
versions. An active session is never deleted, and neither is one whose end is not surely before
the cutoff (an unknown end counts as ``vanished_at``, the latest it can have been).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, delete, func, or_, select

from archiver.archive.models import ACTIVE, rejects_table, runs_table, sessions_table, versions_table
from archiver.errors import InputError
from archiver.progress import Progress
from archiver.vocabulary import PRUNE_BATCH

log = logging.getLogger(__name__)
s = sessions_table.c


@dataclass(frozen=True)
class Target:
    """One kind of row that retention deletes: its table, its name in reports, what makes it old."""

    name: str
    table: Table
    old: Callable[[datetime], ColumnElement[bool]]
    key: tuple[str, ...]


def _ended_before(cutoff: datetime) -> ColumnElement[bool]:
    return and_(
        s.status != ACTIVE,
        or_(s.end_time < cutoff, and_(s.end_time.is_(None), s.vanished_at < cutoff)),
    )


HISTORY = (
    Target("versions", versions_table, lambda cutoff: versions_table.c.observed_at < cutoff, ("id",)),
    Target("runs", runs_table,
           lambda cutoff: and_(runs_table.c.started_at < cutoff, runs_table.c.outcome != "running"), ("id",)),
    Target("rejected", rejects_table, lambda cutoff: rejects_table.c.rejected_at < cutoff, ("id",)),
)
SESSIONS = Target("sessions", sessions_table, _ended_before, ("account_id", "session_id"))


def prune(
    engine: Engine, cutoff: datetime, *, include_sessions: bool = False, batch_size: int = PRUNE_BATCH,
    dry_run: bool = False, progress: Progress | None = None,
) -> dict[str, int]:
    """Delete (or with ``dry_run`` count) what is older than ``cutoff``; return counts by kind.
    ``progress`` is shown the rows deleted so far as the batches go."""
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}")
    targets = [*HISTORY, SESSIONS] if include_sessions else list(HISTORY)
    counts: dict[str, int] = {}
    try:
        for target in targets:
            if dry_run:
                with engine.connect() as conn:
                    counts[target.name] = _count(conn, target, cutoff)
            else:
                counts[target.name] = _delete_in_batches(engine, target, cutoff, batch_size, progress, sum(counts.values()))
    finally:
        if progress is not None:
            progress.finish()
    return counts


def _count(conn: Connection, target: Target, cutoff: datetime) -> int:
    return int(conn.scalar(select(func.count()).select_from(target.table).where(target.old(cutoff))) or 0)


def _delete_in_batches(engine: Engine, target: Target, cutoff: datetime, batch_size: int, progress: Progress | None,
                       earlier: int) -> int:
    """Delete the target's old rows batch by batch; ``earlier``: rows other targets lost before."""
    deleted = 0
    while True:
        with engine.begin() as conn:
            n = _delete_batch(conn, target, cutoff, batch_size)
        deleted += n
        if n:
            log.debug("pruned %d %s (%d so far)", n, target.name, deleted)
            if progress is not None:
                progress.show(f"pruning {target.name}: {deleted:,} deleted ({earlier + deleted:,} rows in all)",
                              {"rows": target.name, "deleted": deleted, "deleted_in_all": earlier + deleted})
        if n < batch_size:
            return deleted


def _delete_batch(conn: Connection, target: Target, cutoff: datetime, batch_size: int) -> int:
    # Keys first, then delete by key: MariaDB cannot DELETE with a LIMITed subquery, and a
    # bounded batch keeps every transaction (and its locks) short.
    key_columns = [target.table.c[name] for name in target.key]
    keys = list(conn.execute(select(*key_columns).where(target.old(cutoff)).limit(batch_size)).all())
    if not keys:
        return 0
    if target is SESSIONS:
        _delete_sessions(conn, keys)
    else:
        conn.execute(delete(target.table).where(key_columns[0].in_([k[0] for k in keys])))
    return len(keys)


def _delete_sessions(conn: Connection, keys: list[Any]) -> None:  # rows of (account_id, session_id)
    """Sessions and every version of them, one account at a time (so each delete uses its index)."""
    by_account: dict[str, list[str]] = {}
    for account_id, session_id in keys:
        by_account.setdefault(account_id, []).append(session_id)
    v = versions_table.c
    for account_id, session_ids in by_account.items():
        conn.execute(delete(versions_table).where(v.account_id == account_id, v.session_id.in_(session_ids)))
        conn.execute(delete(sessions_table).where(s.account_id == account_id, s.session_id.in_(session_ids)))
