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
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise

from sqlalchemy import Connection, select

from archiver.archive.models import runs_table
from archiver.errors import InputError
from archiver.reports.periods import edges, floor, until_now
from archiver.reports.result import Result, result
from archiver.reports.spans import IDLE, KNOWN_END, PLATFORM, Intervals, Spans, load_spans, ms
from archiver.reports.window import Window

PERIODS = ("day", "month")
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


@dataclass(frozen=True)
class Figures:
    """One account's spans, read as the intervals each figure totals (all in ms)."""

    surely: Intervals
    at_most: Intervals
    platform: Intervals
    idle: Intervals
    unknown_end: Intervals

    @classmethod
    def of(cls, spans: Spans, keepalive_ms: int) -> Figures:
        starts, ends = spans.pairs(IDLE | KNOWN_END)
        # The last keep-alive period before a session closed as idle (all of it, if shorter).
        idle_starts = [max(start, end - keepalive_ms) for start, end in zip(starts, ends, strict=True)]
        surely, at_most = spans.bounds()
        return cls(
            surely=surely, at_most=at_most, platform=spans.intervals(PLATFORM), idle=Intervals(idle_starts, ends),
            unknown_end=spans.intervals(KNOWN_END, present=False, latest=True),
        )

    def period(self, lo: int, hi: int, daily_peaks: list[tuple[int, int]]) -> dict[str, float]:
        """The FIGURES of [lo, hi), given the (sure, at most) peaks of its days."""
        return {
            "sessions": self.surely.count(lo, hi), "sessions_max": self.at_most.count(lo, hi),
            "browser_hours": _hours(self.surely.total_ms(lo, hi)), "browser_hours_max": _hours(self.at_most.total_ms(lo, hi)),
            "peak_concurrency": max((p for p, _ in daily_peaks), default=0),
            "peak_concurrency_max": max((p for _, p in daily_peaks), default=0),
            "unknown_end_sessions": self.unknown_end.count(lo, hi), "platform_sessions": self.platform.count(lo, hi),
            "platform_hours": _hours(self.platform.total_ms(lo, hi)), "idle_hours": _hours(self.idle.total_ms(lo, hi)),
        }


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
    window = until_now(window, now)
    spans = load_spans(conn, window, now, account=account)
    accounts = sorted(set(spans) | _polled(conn, window, account) | ({account} if account else set()))
    periods = edges(window, by)
    days = [ms(day) for day in edges(window, "day")]
    rows = []
    for account_id in accounts:
        figures = Figures.of(spans.get(account_id, Spans()), round(pricing.idle_keepalive_seconds * 1000))
        daily = list(zip(figures.surely.peaks(days), figures.at_most.peaks(days), strict=True))
        for start, end in pairwise(periods):
            lo, hi = ms(start), ms(end)
            peaks = [daily[k] for k, day in enumerate(days[:-1]) if lo <= day < hi]
            values = figures.period(lo, hi, peaks)
            if by == "month":
                values |= _bill(values, peaks, pricing)
            label = f"{start:%Y-%m-%d}" if by == "day" else f"{start:%Y-%m}"
            rows.append((label, account_id, *(values[name] for name in FIGURES + BILL if name in values), start, end))
    columns = ["period", "account_id", *FIGURES, *(BILL if by == "month" else ()), "period_start", "period_end"]
    brief = BRIEF + (("estimated_usd",) if by == "month" else ())
    return result(columns, rows, _notes(rows, columns, window, by, pricing), brief)


def _polled(conn: Connection, window: Window, account: str | None) -> set[str]:
    """Accounts the archive polled in the window: each gets its rows, with no sessions or with some."""
    r = runs_table.c
    stmt = select(r.account_id).where(window.holds(r.started_at)).distinct()
    if account is not None:
        stmt = stmt.where(r.account_id == account)
    return set(conn.scalars(stmt))


def _bill(values: dict[str, float], peaks: list[tuple[int, int]], pricing: Pricing) -> dict[str, float]:
    """The month's BILL columns: hours ended by the platform left out, concurrency averaged over its days."""
    days = max(len(peaks), 1)
    avg, avg_max = sum(p for p, _ in peaks) / days, sum(p for _, p in peaks) / days
    billed, usd = bill(values["browser_hours"] - values["platform_hours"], avg, pricing)
    billed_max, usd_max = bill(values["browser_hours_max"] - values["platform_hours"], avg_max, pricing)
    return {"avg_daily_peak": round(avg, 3), "avg_daily_peak_max": round(avg_max, 3), "billed_hours": billed,
            "billed_hours_max": billed_max, "estimated_usd": usd, "estimated_usd_max": usd_max}


def _hours(milliseconds: int) -> float:
    return round(milliseconds / 3_600_000, 6)


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
