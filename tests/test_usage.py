"""The usage report against tests/usage_data.py, figures worked out by hand, on every backend.

Hours are after D0 = 2026-10-31 00:00 UTC; "now" is 2026-11-02 00:00 (48 h). Each session's span
(start -> surely until -> at most until), in hours:

    long -12 -> 60            old-code -1 -> 0.5 ("1000")   normal-code 10 -> 11 ("1")
    normal-name 10.5 -> 10.75 idle-code 12 -> 12.5 ("2")   idle-short 12.25 -> 12 h 15 m 30 s (BrowserIdle)
    evicted 22 -> 24.5        month-end 23 -> 25            vanished 23.5 -> 23 h 50 m -> 24 h 20 m
    crashed 26 -> 27          gone 29 -> 30 -> 30.5         impossible 32 -> 32.5 -> 32 h 40 m (end
    no-start 33 -> 33.25      active 34 -> 35 -> now          recorded before start: first listing on)
    prev-normal -48.3 -> -47.8 (Oct 28 23:42 to Oct 29 00:12)  prev-crash -24.1 -> -23.9 (Oct 29 23:54 to Oct 30 00:06)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from archiver.errors import InputError
from archiver.reports import stats
from archiver.reports.periods import edges
from archiver.reports.spans import Intervals
from archiver.reports.usage import Pricing, bill, nearest_hour, usage
from archiver.reports.window import Window, sessions_in
from tests.usage_data import D0, NAMES, NOW, C, D, h

TWO_DAYS = Window(D0, D0 + timedelta(days=2))
FIGURES = ("sessions", "sessions_max", "browser_hours", "browser_hours_max", "peak_concurrency",
           "peak_concurrency_max", "unknown_end_sessions", "platform_sessions", "platform_hours", "idle_hours")
ZERO_DAY = (0, 0, 0.0, 0.0, 0, 0, 0, 0, 0.0, 0.0)


def figures(row: dict[str, object], names: tuple[str, ...] = FIGURES) -> tuple[object, ...]:
    return tuple(pytest.approx(row[n], abs=1e-6) if isinstance(row[n], float) else row[n] for n in names)


def test_usage_by_day(usage_archive: Engine) -> None:
    with usage_archive.connect() as conn:
        answer = usage(conn, TWO_DAYS, NOW)
    rows = {(r["account_id"], r["period"]): r for r in answer.dicts()}
    assert list(rows) == [(C, "2026-10-31"), (C, "2026-11-01"), (D, "2026-10-31"), (D, "2026-11-01")]
    # Oct 31. Sessions: long, old-code, normal-code, normal-name, idle-code, idle-short, evicted,
    # month-end, vanished. Hours: 24 + 0.5 + 1 + 0.25 + 0.5 + 30 s + 2 + 1 + 20 min (30 min at most).
    # Peak 4 from 23:30 to 23:50 (long, evicted, month-end, vanished). Evicted: 2 h of it today.
    # Idle: 60 s of idle-code, all 30 s of idle-short.
    assert figures(rows[(C, "2026-10-31")]) == (
        9, 9, 24 + 0.5 + 1 + 0.25 + 0.5 + 30 / 3600 + 2 + 1 + 20 / 60, 24 + 0.5 + 1 + 0.25 + 0.5 + 30 / 3600 + 2 + 1 + 0.5,
        4, 4, 1, 1, 2.0, 90 / 3600)
    # Nov 1. Surely: long 24, month-end 1, evicted 0.5, crashed 1, gone 1, impossible 0.5, no-start
    # 0.25, active 1; at most also vanished 20 min, gone 0.5 more, impossible 10 min more, active
    # until now (14 h). Peak 3 at midnight (long, month-end, evicted), 4 with vanished.
    assert figures(rows[(C, "2026-11-01")]) == (
        8, 9, 29.25, 29.25 + 1 / 3 + 0.5 + 1 / 6 + 13, 3, 4, 4, 2, 1.5, 0.0)
    assert figures(rows[(D, "2026-10-31")]) == figures(rows[(D, "2026-11-01")]) == ZERO_DAY
    assert rows[(C, "2026-11-01")]["period_start"] == h(24) and rows[(C, "2026-11-01")]["period_end"] == h(48)
    assert "avg_daily_peak" not in answer.columns and "estimated_usd" not in answer.columns
    assert answer.notes[-1] == "The bill is estimated per month: --by month."


def test_usage_by_month_with_the_bill(usage_archive: Engine) -> None:
    # From October 1 to December 1, cut at now (November 2).
    window = Window(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    with usage_archive.connect() as conn:
        default = {(r["account_id"], r["period"]): r for r in usage(conn, window, NOW, by="month").dicts()}
        strict = Pricing(price_browser_hour=0.1, included_browser_hours=40, price_concurrent_browser=2.5,
                         included_concurrent_browsers=2)
        custom = {(r["account_id"], r["period"]): r for r in usage(conn, window, NOW, by="month", pricing=strict).dicts()}
    bill_columns = ("peak_concurrency", "peak_concurrency_max", "avg_daily_peak", "avg_daily_peak_max",
                    "billed_hours", "billed_hours_max", "estimated_usd", "estimated_usd_max")
    # October: long 36 h (from Oct 30 12:00), old-code 1.5, prev-crash 0.2, prev-normal 0.5, and
    # Oct 31's others 4.7583 (+ vanished 20 min, 30 at most). Platform: prev-crash 0.2 + evicted 2.
    october = default[(C, "2026-10")]
    assert figures(october) == (11, 11, 43.291667, 43.458333, 4, 4, 1, 2, 2.2, 0.025)
    # Daily peaks: Oct 28: 1, Oct 29: 1, Oct 30: 2 (long and old-code), Oct 31: 4; averaged over 31 days.
    # Billed: 43.29 - 2.2 = 41.09 -> 41 h (41.26 -> 41 at most); (41 - 10) * $0.09.
    assert figures(october, bill_columns) == (4, 4, 0.258, 0.258, 41, 41, 2.79, 2.79)
    # November: only November 1 is in the window. 29.25 - 1.5 = 27.75 -> 28 h; 43.25 - 1.5 -> 42 h.
    november = default[(C, "2026-11")]
    assert figures(november, bill_columns) == (3, 4, 3.0, 4.0, 28, 42, 1.62, 2.88)
    # Stricter pricing: (41 - 40) * 0.1 = 0.1; concurrency 0.258 < 2. November: 0 for hours at
    # least, (42 - 40) * 0.1 = 0.2 at most; (3 - 2) * 2.5 and (4 - 2) * 2.5 for concurrency.
    assert (custom[(C, "2026-10")]["estimated_usd"], custom[(C, "2026-10")]["estimated_usd_max"]) == (0.1, 0.1)
    assert (custom[(C, "2026-11")]["estimated_usd"], custom[(C, "2026-11")]["estimated_usd_max"]) == (2.5, 5.2)
    assert figures(default[(D, "2026-10")], bill_columns) == (0, 0, 0.0, 0.0, 0, 0, 0.0, 0.0)
    assert default[(C, "2026-10")]["period_start"] == datetime(2026, 10, 1, tzinfo=UTC)
    assert default[(C, "2026-11")]["period_end"] == NOW


def test_usage_cut_at_now_counts_open_sessions_until_then(usage_archive: Engine) -> None:
    now = h(34.5)  # half an hour after the active session started
    with usage_archive.connect() as conn:
        rows = usage(conn, TWO_DAYS, now, account=C).dicts()
    assert [r["period"] for r in rows] == ["2026-10-31", "2026-11-01"]
    # long 10.5, month-end 1, evicted 0.5, crashed 1, gone 1 (1.5), impossible 0.5 (2/3),
    # no-start 0.25, active 0.5 (it was last seen after now: the window ends first), vanished (1/3).
    assert figures(rows[1]) == (8, 9, 15.25, 15.25 + 1 / 3 + 0.5 + 1 / 6, 3, 4, 4, 2, 1.5, 0.0)
    assert rows[1]["period_end"] == now


@pytest.mark.parametrize(
    ("account", "expected_accounts"),
    [(D, [D]), ("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", ["eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"]), (C, [C])],
    ids=["polled-without-sessions", "never-seen", "with-sessions"],
)
def test_usage_of_one_account(usage_archive: Engine, account: str, expected_accounts: list[str]) -> None:
    with usage_archive.connect() as conn:
        rows = usage(conn, TWO_DAYS, NOW, account=account).dicts()
    assert sorted({r["account_id"] for r in rows}) == expected_accounts and len(rows) == 2
    if account != C:
        assert all(figures(r) == ZERO_DAY for r in rows)


def test_a_partial_day_is_cut_to_the_window(usage_archive: Engine) -> None:
    with usage_archive.connect() as conn:
        answer = usage(conn, Window(h(23), h(24.5)), NOW, account=C)
    first, second = answer.dicts()
    # 23:00-24:00: long 1, evicted 1, month-end 1, vanished 20 min (30 at most). 24:00-24:30:
    # long, evicted and month-end 0.5 each, vanished 20 min at most.
    assert figures(first)[:6] == (4, 4, 3 + 1 / 3, 3.5, 4, 4)
    assert figures(second)[:6] == (3, 4, 1.5, 1.5 + 1 / 3, 3, 4)
    assert answer.notes[-1] == "Periods are cut to the window, 2026-10-31 23:00:00 to 2026-11-01 00:30:00 UTC."


def test_bad_periods_and_a_future_window_are_input_errors(usage_archive: Engine) -> None:
    with usage_archive.connect() as conn:
        with pytest.raises(InputError, match="day or month"):
            usage(conn, TWO_DAYS, NOW, by="week")
        with pytest.raises(InputError, match="begins after now"):
            usage(conn, Window(NOW, NOW + timedelta(days=1)), NOW)


def test_usage_of_an_empty_archive(any_engine: Engine) -> None:
    with any_engine.connect() as conn:
        assert usage(conn, TWO_DAYS, NOW).rows == []
        rows = usage(conn, TWO_DAYS, NOW, account=C, by="month").dicts()
    assert [(r["period"], r["sessions"], r["estimated_usd"]) for r in rows] == [("2026-10", 0, 0.0), ("2026-11", 0, 0.0)]


# -- close reasons and durations over the same archive --------------------------------------------

def test_a_reason_sent_as_a_code_and_as_a_name_is_counted_once(usage_archive: Engine) -> None:
    with usage_archive.connect() as conn:
        rows = stats.close_reasons(conn, Window(D0, h(24))).rows
        by_code = sessions_in(conn, Window(D0, h(24)), reason="1").dicts()
        by_name = sessions_in(conn, Window(D0, h(24)), reason="NormalClosure").dicts()
    assert rows == [
        ("closed", "BrowserIdle", "Browser idle", 2, "2: 1, BrowserIdle: 1"),
        ("closed", "NormalClosure", "Normal closure", 2, "1: 1, NormalClosure: 1"),
        ("closed", "1000", "NormalClosure", 1, "1000: 1"),
    ]
    assert sorted(NAMES[r["session_id"]] for r in by_code) == ["month-end", "normal-code", "normal-name"]
    assert by_code == by_name
    assert sorted((r["close_reason"], r["close_reason_raw"]) for r in by_code) == [
        ("NormalClosure", "1"), ("NormalClosure", "1"), ("NormalClosure", "NormalClosure")]


def test_an_end_before_the_start_has_no_duration(usage_archive: Engine) -> None:
    window = Window(h(30), h(34))
    with usage_archive.connect() as conn:
        rows = {NAMES[r["session_id"]]: r for r in sessions_in(conn, window).dicts()}
        answer = stats.durations(conn, window)
    assert rows["impossible"]["duration_seconds"] is None and rows["impossible"]["end_time"] == h(31)
    assert rows["no-start"]["duration_seconds"] is None  # no start time: no duration either
    assert answer.dicts()[0]["sessions"] == 0
    assert answer.notes[-1] == "1 session(s) with an end recorded before its start (session or connection) have no duration there"


# -- the arithmetic ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("intervals", "edges_", "expected"),
    [
        ([(0, 10), (10, 20)], [0, 30], [1]),  # one ends as the other starts: never two at once
        ([(0, 10), (5, 20), (5, 6)], [0, 30], [3]),
        ([(0, 10), (5, 20)], [0, 5, 10, 30], [1, 2, 1]),  # the level carried into a period counts
        ([(-10, 100)], [0, 10, 20], [1, 1]),  # open before the first edge, through both periods
        ([(3, 3)], [0, 10], [0]),  # no time at all: never open
        ([(0, 10), (0, 10), (10, 10)], [0, 10, 20], [2, 0]),
        ([], [0, 10], [0]),
    ],
    ids=["touching", "nested", "carried", "spanning", "zero-length", "ties", "none"],
)
def test_peaks(intervals: list[tuple[int, int]], edges_: list[int], expected: list[int]) -> None:
    assert Intervals([a for a, _ in intervals], [b for _, b in intervals]).peaks(edges_) == expected


@pytest.mark.parametrize(
    ("lo", "hi", "count", "total"),
    [
        (0, 100, 4, 10 + 15 + 0 + 40), (0, 10, 2, 10), (10, 20, 1, 5), (20, 60, 2, 10 + 20), (5, 5, 1, 0),
        (60, 100, 1, 20), (80, 100, 0, 0), (-50, 0, 0, 0),
    ],
    ids=["all", "first-and-the-instant", "after-an-end", "partial", "empty-period-at-an-instant", "tail", "after",
         "before"],
)
def test_interval_counts_and_totals(lo: int, hi: int, count: int, total: int) -> None:
    # [0, 10), [15, 30), an instant at 5, [40, 80)
    intervals = Intervals([0, 15, 5, 40], [10, 30, 5, 80])
    assert (intervals.count(lo, hi), intervals.total_ms(lo, hi)) == (count, total)
    assert [intervals.level_at(t) for t in (0, 5, 10, 15, 79, 80)] == [1, 1, 0, 1, 1, 0]


@pytest.mark.parametrize(
    ("hours", "avg_peak", "expected"),
    [(10.49, 10.0, (10, 0.0)), (10.5, 10.0, (11, 0.09)), (110.2, 12.5, (110, 9.0 + 5.0)), (0.0, 0.0, (0, 0.0))],
    ids=["rounds-down", "half-rounds-up", "both-beyond", "nothing"],
)
def test_bill(hours: float, avg_peak: float, expected: tuple[int, float]) -> None:
    assert bill(hours, avg_peak, Pricing()) == expected
    assert nearest_hour(2.5) == 3 and nearest_hour(3.5) == 4


def test_edges_cross_months_and_years() -> None:
    since, until = datetime(2026, 12, 30, 12, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC)
    assert edges(Window(since, until), "month") == [since, datetime(2027, 1, 1, tzinfo=UTC), until]
    assert edges(Window(since, since + timedelta(days=2)), "day") == [
        since, datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC), since + timedelta(days=2)]
