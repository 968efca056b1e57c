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
sessions: the database sends each account's as one JSON document, parsed in C, and the figures
come from sorted lists and prefix sums instead of a Python loop per session.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate, compress, count, repeat
from operator import add, and_, eq, mul, not_, sub
from typing import Any

import orjson
from sqlalchemy import Connection, Subquery, Text, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from archiver import reasons
from archiver.models import ACTIVE
from archiver.reports.sqltime import epoch_ms
from archiver.reports.window import Window, open_during
from archiver.store import sessions_table

s = sessions_table.c
# Bits of a span's kind.
KNOWN_END, PLATFORM, IDLE = 1, 2, 4
# MariaDB caps an aggregated JSON document at group_concat_max_len (1 MiB by default) and cuts
# the rest off: there, rows come one by one.
PACKED_DIALECTS = ("sqlite", "postgresql")


def ms(when: datetime) -> int:
    """An aware datetime as whole milliseconds since the Unix epoch."""
    return round(when.timestamp() * 1000)


@dataclass
class Spans:
    """One account's sessions as parallel lists: start, sure end, latest possible end (ms), kind bits."""

    starts: list[int] = field(default_factory=list)
    sure_ends: list[int] = field(default_factory=list)
    max_ends: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)

    def intervals(self, bits: int = 0, *, present: bool = True, latest: bool = False) -> Intervals:
        """The spans whose kind has all of ``bits`` (with ``present=False``: none of them), each to its
        sure end or, with ``latest``, its latest possible one."""
        return Intervals(*self.pairs(bits, present=present, latest=latest))

    def pairs(self, bits: int = 0, *, present: bool = True, latest: bool = False) -> tuple[list[int], list[int]]:
        """The starts and ends of those spans, in the same order."""
        ends = self.max_ends if latest else self.sure_ends
        if not bits:
            return self.starts, ends

        def mask() -> Iterator[bool]:
            common = map(and_, self.kinds, repeat(bits))
            return map(eq, common, repeat(bits)) if present else map(not_, common)

        return list(compress(self.starts, mask())), list(compress(ends, mask()))


class Intervals:
    """Half-open intervals [start, end) in ms, answering per period [lo, hi) in O(log n) each."""

    def __init__(self, starts: Sequence[int], ends: Sequence[int]) -> None:
        self.starts = sorted(starts)
        self.ends = sorted(ends)
        self._start_sums = [0, *accumulate(self.starts)]
        self._end_sums = [0, *accumulate(self.ends)]
        # A session with no time at all is open at no moment: it still counts where it started.
        self._instants = Counter(compress(starts, map(eq, starts, ends)))
        self._levels: tuple[list[int], list[int]] | None = None

    def count(self, lo: int, hi: int) -> int:
        """Intervals open at some moment of [lo, hi), or starting in it."""
        return bisect_left(self.starts, hi) - bisect_right(self.ends, lo) + self._instants[lo]

    def total_ms(self, lo: int, hi: int) -> int:
        """The length of every interval, clipped to [lo, hi), summed.

        An interval's clipped length is f(end) - f(start) with f(t) = min(max(t - lo, 0), hi - lo),
        so the sum splits into a sum over the sorted ends less one over the sorted starts.
        """
        return self._clamped_sum(self.ends, self._end_sums, lo, hi) - self._clamped_sum(self.starts, self._start_sums, lo, hi)

    @staticmethod
    def _clamped_sum(values: list[int], sums: list[int], lo: int, hi: int) -> int:
        first, last = bisect_right(values, lo), bisect_left(values, hi)
        inside = sums[last] - sums[first] - (last - first) * lo
        return inside + (len(values) - last) * (hi - lo)

    def peaks(self, edges: Sequence[int]) -> list[int]:
        """The most intervals open at once in each period [edges[k], edges[k + 1])."""
        keys, levels = self._sweep()
        result = []
        for lo, hi in zip(edges, edges[1:]):
            # Events are keyed 2t for an end and 2t + 1 for a start: at equal times ends come
            # first, so an interval ending as another starts does not overlap it.
            first = bisect_right(keys, 2 * lo + 1)
            last = bisect_left(keys, 2 * hi, first)
            at_lo = levels[first - 1] if first else 0
            result.append(max(at_lo, max(levels[first:last], default=at_lo)))
        return result

    def level_at(self, when: int) -> int:
        """How many intervals are open at the moment ``when``."""
        return bisect_right(self.starts, when) - bisect_right(self.ends, when)

    def _sweep(self) -> tuple[list[int], list[int]]:
        """Every start and end as a key (sorted), and how many intervals are open after each."""
        if self._levels is None:
            # Two sorted runs: the sort merges them in one pass.
            keys = sorted([*map(add, map(mul, self.starts, repeat(2)), repeat(1)), *map(mul, self.ends, repeat(2))])
            # After k + 1 events of which n started something, 2n - (k + 1) are open.
            started = accumulate(map(and_, keys, repeat(1)))
            self._levels = (keys, list(map(sub, map(mul, started, repeat(2)), count(1))))
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
    values = (spans.c.start, spans.c.sure, spans.c.latest, spans.c.kind)
    if conn.dialect.name in PACKED_DIALECTS:
        stmt = select(spans.c.account_id, *map(json_list, values)).group_by(spans.c.account_id)
        columns = {row[0]: [orjson.loads(document) for document in row[1:]] for row in conn.execute(stmt)}
    else:
        grouped: dict[str, list[Sequence[int]]] = {}
        for account_id, *row in conn.execute(select(spans.c.account_id, *values)):
            grouped.setdefault(account_id, []).append(row)
        columns = {account_id: [list(column) for column in zip(*rows, strict=True)] for account_id, rows in grouped.items()}
    return {account_id: _clamped(*lists) for account_id, lists in columns.items()}


def _clamped(starts: list[int], sure: list[int], latest: list[int], kinds: list[int]) -> Spans:
    # An end before the start (a session without a start time, first listed after its end) is no
    # time at all, and the latest possible end is never before the sure one.
    sure_ends = list(map(max, sure, starts))
    return Spans(starts, sure_ends, list(map(max, latest, sure_ends)), kinds)
