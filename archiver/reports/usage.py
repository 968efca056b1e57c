"""Browser usage per UTC day or month and account, and the bill it would make under Cloudflare's pricing.

Per period and account:

- ``sessions``: the sessions open at some moment of the period (or started in it); a session
  crossing midnight counts on both days;
- ``browser_hours``: each session's time, clipped to the period;
- ``peak_concurrency``: the most sessions open at once (per month: the highest daily peak), and
  per month ``avg_daily_peak``, the average of each day's peak, which Cloudflare bills;
- ``platform_sessions`` and ``platform_hours``: those ended by Cloudflare's infrastructure
  (crashed, evicted), said not to be billed; the estimate leaves their hours out;
- ``idle_hours``: sessions closed as idle count their last keep-alive period as idle time;
- ``unknown_end_sessions``: the sessions whose end the archive does not know (still open,
  vanished, gone, or an end recorded before the start).

Each count, duration and peak comes twice (see :mod:`archiver.reports.spans`): the plain column
is what surely happened (a lower bound) and ``..._max`` what may have (an upper bound). The
window is cut at ``now``: no period reaches into the future.

The bill (per month): browser time is totalled and rounded to the nearest hour once a month,
less the included hours, at a price per hour; plus the average of daily peaks less the included
browsers, at a price per browser. A month the window covers in part is estimated for the days it covers.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, select

from archiver.errors import InputError
from archiver.reports.result import Result, result
from archiver.reports.spans import SessionSpan, by_account, concurrency, load_spans, overlap
from archiver.reports.window import Window
from archiver.store import runs_table

PERIODS = ("day", "month")
HOUR = 3600.0
FIGURES = (
    "sessions", "sessions_max", "browser_hours", "browser_hours_max", "peak_concurrency", "peak_concurrency_max",
    "unknown_end_sessions", "platform_sessions", "platform_hours", "idle_hours",
)
BILL = ("avg_daily_peak", "avg_daily_peak_max", "billed_hours", "billed_hours_max", "estimated_usd", "estimated_usd_max")
BRIEF = ("period", "account_id", "sessions", "browser_hours", "browser_hours_max", "peak_concurrency",
         "peak_concurrency_max", "platform_hours", "idle_hours")


@dataclass(frozen=True)
class Pricing:
    """Cloudflare's prices and inclusions (Workers Paid), and the keep-alive of an idle browser."""

    price_browser_hour: float = 0.09
    included_browser_hours: float = 10.0
    price_concurrent_browser: float = 2.0
    included_concurrent_browsers: float = 10.0
    idle_keepalive_seconds: float = 60.0

    def describe(self) -> str:
        return (f"The bill is estimated at ${self.price_browser_hour:g} per browser hour beyond {self.included_browser_hours:g} a "
                f"month and ${self.price_concurrent_browser:.2f} per browser beyond {self.included_concurrent_browsers:g} "
                "concurrent (the month's average of daily peaks); hours of sessions ended by the platform are left out")


@dataclass
class Tally:
    """One account's figures over one period; times in seconds."""

    sessions: int = 0
    sessions_max: int = 0
    seconds: float = 0.0
    seconds_max: float = 0.0
    unknown_end: int = 0
    platform_sessions: int = 0
    platform_seconds: float = 0.0
    idle_seconds: float = 0.0
    daily_peaks: list[int] = field(default_factory=list)
    daily_peaks_max: list[int] = field(default_factory=list)

    def add(self, span: SessionSpan, lo: float, hi: float, keepalive: float) -> None:
        """Count the part of a span that falls in [lo, hi); the caller knows it may."""
        surely = span.start >= lo or span.sure_end > lo
        sure = overlap(span.start, span.sure_end, lo, hi)
        self.sessions += surely
        self.sessions_max += 1
        self.seconds += sure
        self.seconds_max += overlap(span.start, span.max_end, lo, hi)
        self.unknown_end += not span.end_known
        if span.platform and surely:
            self.platform_sessions += 1
            self.platform_seconds += sure
        if span.idle:
            self.idle_seconds += overlap(max(span.start, span.sure_end - keepalive), span.sure_end, lo, hi)


def floor(when: datetime, by: str) -> datetime:
    """The start of the UTC day or month that holds ``when``."""
    day = when.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if by == "day" else day.replace(day=1)


def following(start: datetime, by: str) -> datetime:
    """The start of the next day or month."""
    return start + timedelta(days=1) if by == "day" else (start + timedelta(days=32)).replace(day=1)


def edges(window: Window, by: str) -> list[datetime]:
    """The window's start, every UTC midnight (or first of the month) inside it, and its end."""
    cuts = [window.since]
    cut = following(floor(window.since, by), by)
    while cut < window.until:
        cuts.append(cut)
        cut = following(cut, by)
    return [*cuts, window.until]


def tally(spans: Sequence[SessionSpan], cuts: Sequence[float], keepalive: float) -> list[Tally]:
    """Each period's figures [cuts[k], cuts[k + 1]) over one account's spans."""
    tallies = [Tally() for _ in cuts[1:]]
    last = len(tallies)
    for span in spans:
        k = max(bisect_right(cuts, span.start) - 1, 0)
        while k < last and (cuts[k] < span.max_end or cuts[k] <= span.start < cuts[k + 1]):
            tallies[k].add(span, cuts[k], cuts[k + 1], keepalive)
            k += 1
    return tallies


def nearest_hour(hours: float) -> int:
    """Rounded half up, as a bill is (Python's round() would round 2.5 to 2)."""
    return math.floor(hours + 0.5)


def bill(hours: float, avg_peak: float, pricing: Pricing) -> tuple[int, float]:
    """The month's billed browser hours, and the estimated charge in USD."""
    billed = nearest_hour(hours)
    charge = (max(0.0, billed - pricing.included_browser_hours) * pricing.price_browser_hour
              + max(0.0, avg_peak - pricing.included_concurrent_browsers) * pricing.price_concurrent_browser)
    return billed, round(charge, 2)


def usage(conn: Connection, window: Window, now: datetime, *, by: str = "day", account: str | None = None,
          pricing: Pricing = Pricing()) -> Result:
    """Sessions, browser hours, peak concurrency, platform and idle time per period and account,
    with the estimated bill per month; lower and upper bounds where ends are unknown."""
    if by not in PERIODS:
        raise InputError(f"cannot total by {by!r}: use day or month")
    if window.since >= now:
        raise InputError("the window begins after now: there is no usage to report yet")
    window = Window(window.since, min(window.until, now))
    spans = by_account(load_spans(conn, window, now, account=account))
    accounts = sorted(set(spans) | _polled(conn, window, account) | ({account} if account else set()))
    periods = edges(window, by)
    days = edges(window, "day")
    rows = []
    for account_id in accounts:
        own = spans.get(account_id, [])
        tallies = tally(own, [p.timestamp() for p in periods], pricing.idle_keepalive_seconds)
        sure_peaks, max_peaks = concurrency(own, [d.timestamp() for d in days])
        for k, t in enumerate(tallies):
            in_period = [i for i, d in enumerate(days[:-1]) if periods[k] <= d < periods[k + 1]]
            t.daily_peaks = [sure_peaks[i] for i in in_period]
            t.daily_peaks_max = [max_peaks[i] for i in in_period]
            rows.append(_row(account_id, periods[k], periods[k + 1], t, by, pricing))
    columns = ["period", "account_id", *FIGURES, *(BILL if by == "month" else ()), "period_start", "period_end"]
    return result(columns, rows, _notes(rows, columns, window, by, pricing), BRIEF + (("estimated_usd",) if by == "month" else ()))


def _polled(conn: Connection, window: Window, account: str | None) -> set[str]:
    """Accounts the archive polled in the window: each gets its rows, with no sessions or with some."""
    r = runs_table.c
    stmt = select(r.account_id).where(window.holds(r.started_at)).distinct()
    if account is not None:
        stmt = stmt.where(r.account_id == account)
    return set(conn.scalars(stmt))


def _row(account_id: str, start: datetime, end: datetime, t: Tally, by: str, pricing: Pricing) -> tuple[object, ...]:
    label = f"{start:%Y-%m-%d}" if by == "day" else f"{start:%Y-%m}"
    figures: list[object] = [
        t.sessions, t.sessions_max, _hours(t.seconds), _hours(t.seconds_max),
        max(t.daily_peaks, default=0), max(t.daily_peaks_max, default=0), t.unknown_end, t.platform_sessions,
        _hours(t.platform_seconds), _hours(t.idle_seconds),
    ]
    if by == "month":
        days = max(len(t.daily_peaks), 1)
        avg, avg_max = sum(t.daily_peaks) / days, sum(t.daily_peaks_max) / days
        billed, usd = bill((t.seconds - t.platform_seconds) / HOUR, avg, pricing)
        billed_max, usd_max = bill((t.seconds_max - t.platform_seconds) / HOUR, avg_max, pricing)
        figures += [round(avg, 3), round(avg_max, 3), billed, billed_max, usd, usd_max]
    return (label, account_id, *figures, start, end)


def _hours(seconds: float) -> float:
    return round(seconds / HOUR, 6)


def _notes(rows: list[tuple[object, ...]], columns: list[str], window: Window, by: str, pricing: Pricing) -> list[str]:
    unknown = columns.index("unknown_end_sessions")
    notes = []
    if any(row[unknown] for row in rows):
        notes.append("Sessions whose end is unknown count until last seen in the plain columns and until they "
                     "vanished (or now, if still open) in the _max ones: the truth lies between.")
    if by == "month":
        notes.append(pricing.describe() + ".")
    else:
        notes.append("The bill is estimated per month: --by month.")
    if floor(window.since, by) != window.since or floor(window.until, by) != window.until:
        notes.append(f"Periods are cut to the window, {window.since:%Y-%m-%d %H:%M:%S} to {window.until:%Y-%m-%d %H:%M:%S} UTC.")
    return notes
