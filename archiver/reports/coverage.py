"""How far the archive can be trusted for a window: what the poll cycles saw, per account and period.

- ``largest_gap_seconds`` (from ``gap_from`` to ``gap_until``): the longest stretch without a
  complete listing, counting from the period's start to the first complete listing and from the
  last one to the period's end (or now, if earlier). A session that started and ended inside such
  a stretch may be missing from the archive, and a session that ended in it is only known to have
  ended somewhere in it. A complete listing's time is the start of its cycle.
- ``incomplete_listings``: cycles whose listing failed part way (finished cycles only);
- ``throttled`` and ``throttled_seconds``: Cloudflare's 429s, and how long they held requests back;
- ``worst_backlog``: the most detail fetches still owed at the end of a cycle;
- ``unknown_end_sessions``: sessions whose end stayed unknown (vanished, or forgotten by
  Cloudflare first), counted where they left the listing, as the other reports count them.

Every account the ledger ever names gets its rows, so one the archiver stopped polling shows as
a period without any complete listing.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise

from sqlalchemy import Connection, Executable, select

from archiver.archive.models import ACTIVE, runs_table, sessions_table
from archiver.reports.periods import edges, until_now
from archiver.reports.result import Result, result
from archiver.reports.window import Window

r = runs_table.c
s = sessions_table.c
COLUMNS = (
    "period_start", "period_end", "account_id", "cycles", "complete_listings", "incomplete_listings",
    "largest_gap_seconds", "gap_from", "gap_until", "throttled", "throttled_seconds", "worst_backlog",
    "unknown_end_sessions",
)
BRIEF = ("period_start", "account_id", "cycles", "incomplete_listings", "largest_gap_seconds", "gap_from",
         "throttled_seconds", "worst_backlog", "unknown_end_sessions")
NOTE = ("largest_gap_seconds: the longest stretch without a complete listing (a session that lived only "
        "inside it may be missing); throttled_seconds: time Cloudflare's 429s held requests back.")


@dataclass
class Cycles:
    """What one account's cycles did in one period."""

    cycles: int = 0
    complete: list[datetime] = field(default_factory=list)
    incomplete: int = 0
    throttled: int = 0
    throttled_seconds: float = 0.0
    worst_backlog: int | None = None
    unknown_ends: int = 0


def largest_gap(start: datetime, end: datetime, complete: Sequence[datetime]) -> tuple[float, datetime, datetime]:
    """The longest stretch of [start, end] between the complete listings at ``complete`` (sorted)."""
    moments = [start, *complete, end]
    a, b = max(pairwise(moments), key=lambda pair: pair[1] - pair[0])
    return round((b - a).total_seconds(), 3), a, b


def coverage(conn: Connection, window: Window, now: datetime, *, by: str | None = None,
             account: str | None = None) -> Result:
    """Per account and period (the whole window, or each hour or day): the archive's own record of it."""
    window = until_now(window, now)
    cuts = edges(window, by)
    periods: dict[str, list[Cycles]] = {}

    def period(account_id: str, when: datetime) -> Cycles:
        if account_id not in periods:
            periods[account_id] = [Cycles() for _ in cuts[1:]]
        return periods[account_id][bisect_right(cuts, when) - 1]

    for account_id in _accounts(conn, account):
        period(account_id, window.since)
    stmt = select(r.account_id, r.started_at, r.listing_complete, r.outcome, r.throttled, r.throttled_seconds,
                  r.details_carried).where(window.holds(r.started_at))
    if account is not None:
        stmt = stmt.where(r.account_id == account)
    for account_id, started, complete, outcome, throttled, throttled_seconds, carried in conn.execute(stmt):
        cycles = period(account_id, started)
        cycles.cycles += 1
        if complete:
            cycles.complete.append(started)
        elif outcome != "running":
            cycles.incomplete += 1
        cycles.throttled += throttled
        cycles.throttled_seconds += throttled_seconds
        cycles.worst_backlog = max(cycles.worst_backlog or 0, carried)
    for account_id, vanished in conn.execute(_unknown_ends(window, account)):
        period(account_id, vanished).unknown_ends += 1
    rows = []
    for account_id in sorted(periods):
        for k, p in enumerate(periods[account_id]):
            gap, gap_from, gap_until = largest_gap(cuts[k], cuts[k + 1], sorted(p.complete))
            rows.append((cuts[k], cuts[k + 1], account_id, p.cycles, len(p.complete), p.incomplete, gap, gap_from,
                         gap_until, p.throttled, round(p.throttled_seconds, 3), p.worst_backlog, p.unknown_ends))
    return result(COLUMNS, rows, [NOTE], BRIEF)


def _accounts(conn: Connection, account: str | None) -> list[str]:
    if account is not None:
        return [account]
    return list(conn.scalars(select(r.account_id).distinct()))


def _unknown_ends(window: Window, account: str | None) -> Executable:
    stmt = select(s.account_id, s.vanished_at).where(s.end_time.is_(None), s.status != ACTIVE,
                                                       window.holds(s.vanished_at))
    return stmt if account is None else stmt.where(s.account_id == account)
