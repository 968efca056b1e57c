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
from its first listing to the bounds above.

Times here are seconds since the Unix epoch (floats): the database converts them, so that a
month of sessions is read without building a datetime per value.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, case, func

from archiver import reasons
from archiver.models import ACTIVE
from archiver.reports.sqltime import epoch_seconds
from archiver.reports.window import Window, open_during
from archiver.store import sessions_table

s = sessions_table.c


@dataclass(frozen=True, slots=True)
class SessionSpan:
    """One session's browser time, in epoch seconds: surely from ``start`` to ``sure_end``, at most to ``max_end``."""

    account: str
    start: float
    sure_end: float
    max_end: float
    end_known: bool
    platform: bool  # ended by Cloudflare's infrastructure (crashed, evicted)
    idle: bool  # closed as idle: its last keep-alive period was idle time


def _span_columns() -> list[ColumnElement[object]]:
    impossible = s.end_time < s.start_time
    known_end = case((impossible, None), else_=s.end_time)
    start = case((impossible, s.first_seen_at), else_=func.coalesce(s.start_time, s.first_seen_at))
    # An active session's latest possible end is "now", which the caller knows: NULL here.
    latest = case((s.status == ACTIVE, None),
                  else_=func.coalesce(s.vanished_at, s.gone_at, s.last_detail_at, s.last_seen_at))
    return [
        s.account_id,
        epoch_seconds(start),
        epoch_seconds(func.coalesce(known_end, s.last_seen_at)),
        epoch_seconds(func.coalesce(known_end, latest)),
        case((known_end.is_(None), 0), else_=1),
        s.close_reason,
    ]


def load_spans(conn: Connection, window: Window, now: datetime, *, account: str | None = None) -> list[SessionSpan]:
    """The spans of every session open, or maybe open, at some moment of the window."""
    rows = conn.execute(open_during(window, *_span_columns(), account=account))
    now_s = now.timestamp()
    spans = []
    for account_id, start, sure_end, max_end, known, reason in rows:
        start = float(start)
        # An end before the start (a session without a start time, first listed after its end)
        # is no time at all.
        sure = max(float(sure_end), start)
        latest = max(now_s if max_end is None else float(max_end), sure)
        spans.append(SessionSpan(account_id, start, sure, latest, bool(known), reasons.is_platform(reason),
                                 reasons.is_idle(reason)))
    return spans


def by_account(spans: Iterable[SessionSpan]) -> dict[str, list[SessionSpan]]:
    grouped: dict[str, list[SessionSpan]] = defaultdict(list)
    for span in spans:
        grouped[span.account].append(span)
    return grouped


def overlap(start: float, end: float, lo: float, hi: float) -> float:
    """Seconds of [start, end) inside [lo, hi)."""
    return max(0.0, min(end, hi) - max(start, lo))


def peaks(starts: Sequence[float], ends: Sequence[float], edges: Sequence[float]) -> list[int]:
    """The most intervals open at once in each period [edges[k], edges[k + 1]).

    ``starts`` and ``ends`` are the sorted starts and ends of half-open intervals [start, end):
    one that ends as another starts does not overlap it, so at equal times ends come first.
    """
    result = []
    i = j = level = 0
    inf = float("inf")
    for lo, hi in zip(edges, edges[1:]):
        # The level at lo: everything that started, less everything that ended, by then.
        i2, j2 = bisect_right(starts, lo, i), bisect_right(ends, lo, j)
        level += (i2 - i) - (j2 - j)
        i, j = i2, j2
        peak = level
        while True:
            next_start = starts[i] if i < len(starts) else inf
            next_end = ends[j] if j < len(ends) else inf
            if next_end <= next_start:
                if next_end >= hi:
                    break
                level -= 1
                j += 1
            else:
                if next_start >= hi:
                    break
                level += 1
                i += 1
                peak = max(peak, level)
        result.append(peak)
    return result


def concurrency(spans: Sequence[SessionSpan], edges: Sequence[float]) -> tuple[list[int], list[int]]:
    """Per period: the most sessions surely open at once, and the most that may have been."""
    starts = sorted(span.start for span in spans)
    return (peaks(starts, sorted(span.sure_end for span in spans), edges),
            peaks(starts, sorted(span.max_end for span in spans), edges))
