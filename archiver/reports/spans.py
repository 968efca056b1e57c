"""When each session held a browser, as far as the archive can bound it, and how many did at once.

A session runs from its start (its first listing where Cloudflare gave no start) to its end. Where
the end is unknown, the archive still bounds it: the session surely ran until ``last_seen_at`` (a
listing contained it) and at most until ``vanished_at`` (the first complete listing without it),
or ``gone_at``, or the detail that found it closed; a session still listed (``active``) ran at
least until it was last seen and may run until now. Every figure is therefore taken twice: from
the *sure* end (a lower bound) and from the *latest possible* end (an upper bound). Where the end
is known the two agree.

A session whose recorded end comes before its start is an impossible pair, kept in the archive as
observed: neither time is used, and it counts like a session whose start and end are unknown,
from its first listing to the bounds above. It is found, like every session, through the index on
end times, by the end it records: a window that begins after that recorded end leaves it out.

Times here are whole milliseconds since the Unix epoch. A month holds hundreds of thousands of
sessions: the database sends each account's, grouped by kind, as JSON arrays that are parsed in C,
and the figures come from sorted lists and prefix sums instead of a Python loop per session.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate, compress, count, pairwise, repeat
from operator import eq, sub
from typing import Any

import orjson
from sqlalchemy import Connection, Subquery, Text, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from archiver.archive import reasons
from archiver.archive.models import ACTIVE, sessions_table
from archiver.reports.sqltime import epoch_ms
from archiver.reports.window import Window, open_during

s = sessions_table.c
# Bits of a span's kind.
KNOWN_END, PLATFORM, IDLE = 1, 2, 4
# MariaDB caps an aggregated JSON document at group_concat_max_len (1 MiB by default) and cuts
# the rest off: there, rows come one by one.
PACKED_DIALECTS = ("sqlite", "postgresql")


def ms(when: datetime) -> int:
    """An aware datetime as whole milliseconds since the Unix epoch."""
    return round(when.timestamp() * 1000)


Group = tuple[list[int], list[int], list[int]]  # starts, sure ends, latest possible ends


@dataclass
class Spans:
    """One account's sessions, grouped by kind (its bits): the starts, sure ends and latest
    possible ends of each group, as parallel lists of ms."""

    groups: dict[int, Group] = field(default_factory=dict)

    def pairs(self, bits: int = 0, *, present: bool = True, latest: bool = False) -> tuple[list[int], list[int]]:
        """The starts and ends (sure, or latest possible) of the spans whose kind has all of ``bits``
        (with ``present=False``: none of them), in the same order."""
        starts: list[int] = []
        ends: list[int] = []
        for kind, (group_starts, sure_ends, max_ends) in sorted(self.groups.items()):
            if (kind & bits == bits) if present else not kind & bits:
                starts += group_starts
                ends += max_ends if latest else sure_ends
        return starts, ends

    def intervals(self, bits: int = 0, *, present: bool = True, latest: bool = False) -> Intervals:
        """Those spans as intervals."""
        return Intervals(*self.pairs(bits, present=present, latest=latest))

    def bounds(self) -> tuple[Intervals, Intervals]:
        """Every span to its sure end, and to its latest possible one (sorting the starts once)."""
        starts, sure_ends = self.pairs()
        surely = Intervals(starts, sure_ends)
        return surely, surely.ending(starts, self.pairs(latest=True)[1])


class Sorted:
    """Values in order, with their prefix sums."""

    def __init__(self, values: Sequence[int]) -> None:
        self.values = sorted(values)
        self.sums = [0, *accumulate(self.values)]

    def clamped_sum(self, lo: int, hi: int) -> int:
        """The sum of min(max(v - lo, 0), hi - lo) over the values."""
        first, last = bisect_right(self.values, lo), bisect_left(self.values, hi)
        inside = self.sums[last] - self.sums[first] - (last - first) * lo
        return inside + (len(self.values) - last) * (hi - lo)


class Intervals:
    """Half-open intervals [start, end) in ms, answering per period [lo, hi) in O(log n) each."""

    def __init__(self, starts: Sequence[int], ends: Sequence[int], *, sorted_starts: Sorted | None = None) -> None:
        self.starts = sorted_starts or Sorted(starts)
        self.ends = Sorted(ends)
        # A session with no time at all is open at no moment: it still counts where it started.
        self._instants = Counter(compress(starts, map(eq, starts, ends)))
        self._levels: list[int] | None = None

    def ending(self, starts: Sequence[int], ends: Sequence[int]) -> Intervals:
        """The same intervals (``starts`` in the order given here before) with other ends."""
        return Intervals(starts, ends, sorted_starts=self.starts)

    def count(self, lo: int, hi: int) -> int:
        """Intervals open at some moment of [lo, hi), or starting in it."""
        return bisect_left(self.starts.values, hi) - bisect_right(self.ends.values, lo) + self._instants[lo]

    def total_ms(self, lo: int, hi: int) -> int:
        """The length of every interval, clipped to [lo, hi), summed.

        An interval's clipped length is f(end) - f(start) with f(t) = min(max(t - lo, 0), hi - lo),
        so the sum splits into a sum over the sorted ends less one over the sorted starts.
        """
        return self.ends.clamped_sum(lo, hi) - self.starts.clamped_sum(lo, hi)

    def peaks(self, edges: Sequence[int]) -> list[int]:
        """The most intervals open at once in each period [edges[k], edges[k + 1]).

        The count rises only where an interval starts: the peak of a period is the count at its
        start, or the count just after one of the starts inside it.
        """
        starts, levels = self.starts.values, self._levels_after_starts()
        result = []
        for lo, hi in pairwise(edges):
            first, last = bisect_right(starts, lo), bisect_left(starts, hi)
            at_lo = self.level_at(lo)
            result.append(max(at_lo, max(levels[first:last], default=at_lo)))
        return result

    def level_at(self, when: int) -> int:
        """How many intervals are open at the moment ``when``."""
        return bisect_right(self.starts.values, when) - bisect_right(self.ends.values, when)

    def _levels_after_starts(self) -> list[int]:
        """For the k-th start (in order): how many intervals are open just after it, k + 1 less those
        that ended by then (an interval ending as another starts does not overlap it)."""
        if self._levels is None:
            ended = map(bisect_right, repeat(self.ends.values), self.starts.values)
            self._levels = list(map(sub, count(1), ended))
        return self._levels


class json_list(FunctionElement[str]):  # noqa: N801 - reads like the SQL aggregate it is
    """An aggregate: the group's values as one JSON array (text).

    Several in one SELECT list the rows of a group in the same order: every aggregate of a group
    steps through the same rows, one at a time.
    """

    type = Text()
    inherit_cache = True
    name = "json_list"


@compiles(json_list, "sqlite")
def _json_list_sqlite(element: json_list, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_group_array({compiler.process(element.clauses, **kw)})"


@compiles(json_list, "postgresql")
def _json_list_postgresql(element: json_list, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(json_agg({compiler.process(element.clauses, **kw)}) AS TEXT)"


def _span_query(window: Window, now: datetime, account: str | None) -> Subquery:
    impossible = s.end_time < s.start_time
    known_end = case((impossible, None), else_=s.end_time)
    start = case((impossible, s.first_seen_at), else_=func.coalesce(s.start_time, s.first_seen_at))
    latest = case((s.status == ACTIVE, None),
                  else_=func.coalesce(s.vanished_at, s.gone_at, s.last_detail_at, s.last_seen_at))
    kind = (case((known_end.is_(None), 0), else_=KNOWN_END)
            + case((s.close_reason.in_(reasons.PLATFORM_VALUES), PLATFORM), else_=0)
            + case((s.close_reason.in_(reasons.IDLE_VALUES), IDLE), else_=0))
    columns = (
        s.account_id, epoch_ms(start).label("start"), epoch_ms(func.coalesce(known_end, s.last_seen_at)).label("sure"),
        func.coalesce(epoch_ms(func.coalesce(known_end, latest)), ms(now)).label("latest"), kind.label("kind"),
    )
    return open_during(window, *columns, account=account).subquery("spans")


def load_spans(conn: Connection, window: Window, now: datetime, *, account: str | None = None) -> dict[str, Spans]:
    """Per account, the spans of every session open, or maybe open, at some moment of the window."""
    spans = _span_query(window, now, account)
    keys = (spans.c.account_id, spans.c.kind)
    values = (spans.c.start, spans.c.sure, spans.c.latest)
    grouped: dict[str, Spans] = {}
    if conn.dialect.name in PACKED_DIALECTS:
        stmt = select(*keys, *map(json_list, values)).group_by(*keys)
        for account_id, kind, *documents in conn.execute(stmt):
            grouped.setdefault(account_id, Spans()).groups[kind] = _clamped(*map(orjson.loads, documents))
        return grouped
    rows: dict[tuple[str, int], list[Sequence[int]]] = {}
    for account_id, kind, *row in conn.execute(select(*keys, *values)):
        rows.setdefault((account_id, kind), []).append(row)
    for (account_id, kind), group in rows.items():
        starts, sure, latest = (list(column) for column in zip(*group, strict=True))
        grouped.setdefault(account_id, Spans()).groups[kind] = _clamped(starts, sure, latest)
    return grouped


def _clamped(starts: list[int], sure: list[int], latest: list[int]) -> Group:
    # An end before the start (a session without a start time, first listed after its end) is no
    # time at all, and the latest possible end is never before the sure one.
    sure_ends = list(map(max, sure, starts))
    return starts, sure_ends, list(map(max, latest, sure_ends))
