"""The reporting views created by migrations 0003 and 0006, with known answers on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text

from archiver.reports.usage import usage
from archiver.reports.window import Window
from tests.archive_data import A, B, m, sid
from tests.usage_data import NAMES, NOW, C, D, h

VIEWS = {"session_durations", "close_reasons_hourly", "concurrent_sessions_per_minute", "browser_usage_daily"}


def utc(value: Any) -> datetime:
    """A view's timestamp as an aware UTC datetime (SQLite gives text, MariaDB naive UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def query(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(text(sql), params).mappings()]


def test_views_exist_but_are_not_tables(archive: Engine) -> None:
    inspector = inspect(archive)
    assert set(inspector.get_view_names()) >= VIEWS
    assert not VIEWS & set(inspector.get_table_names())


def test_session_durations(archive: Engine) -> None:
    rows = {r["session_id"]: r for r in query(archive, "SELECT * FROM session_durations")}
    assert len(rows) == 12
    inside = rows[sid("inside")]
    assert float(inside["duration_seconds"]) == pytest.approx(1200.0)
    assert float(inside["connection_seconds"]) == pytest.approx(840.0)
    assert inside["close_reason"] == "BrowserIdle"
    assert rows[sid("gone")]["duration_seconds"] is None
    assert utc(rows[sid("gone")]["vanished_at"]) == m(21)
    assert float(rows[sid("other-account")]["duration_seconds"]) == pytest.approx(60.0)


def test_close_reasons_hourly(archive: Engine) -> None:
    rows = query(archive, "SELECT * FROM close_reasons_hourly WHERE account_id = :a", a=A)
    found = sorted((utc(r["hour"]), r["status"], r["close_reason"] or "", int(r["sessions"])) for r in rows)
    hour = lambda h: m(0).replace(hour=h)  # noqa: E731
    assert found == [
        (hour(10), "closed", "NormalClosure", 1),
        (hour(12), "closed", "1000", 2),
        (hour(12), "closed", "BrowserIdle", 2),
        (hour(12), "gone", "", 1),
        (hour(12), "vanished", "", 1),
        (hour(13), "closed", "1000", 2),
        (hour(14), "closed", "BrowserIdle", 1),
    ]


Series = dict[tuple[str, datetime], tuple[int, int]]


@pytest.fixture(scope="module")
def series(archive: Engine) -> Series:
    """The whole concurrency view, read once per backend."""
    rows = query(archive, "SELECT minute, account_id, sessions, maybe_sessions FROM concurrent_sessions_per_minute")
    return {(r["account_id"], utc(r["minute"])): (int(r["sessions"]), int(r["maybe_sessions"])) for r in rows}


@pytest.mark.parametrize(
    ("account", "minute", "expected"),
    [
        (A, -120, (1, 0)),  # "before" opens
        (A, -91, (1, 0)),
        (A, -90, (1, 0)),  # "before" ends at 10:30:00: still open at a moment of that minute
        (A, -89, (0, 0)),
        (A, -60, (1, 0)),  # "spanning"
        (A, 0, (4, 0)),  # crossing-start, ended-at-since (ends at 12:00:00), spanning, vanished
        (A, 1, (4, 0)),  # ended-at-since gone; no-start first listed at 12:01
        (A, 20, (4, 0)),  # inside, spanning, gone (last seen 12:20), vanished
        (A, 21, (3, 1)),  # gone is only maybe open: it vanished at 12:21
        (A, 22, (3, 0)),
        (A, 31, (1, 1)),  # spanning; vanished is maybe open until 12:31
        (A, 32, (1, 0)),
        (A, 45, (2, 0)),  # spanning and the still active session
        (A, 120, (2, 0)),  # the series ends at the latest start or end: 14:00
        (B, 5, (1, 0)),
        (B, 6, (1, 0)),
        (B, 7, (0, 0)),
    ],
    ids=lambda v: str(v) if not isinstance(v, str) else v[:1],
)
def test_concurrent_sessions_per_minute(series: Series, account: str, minute: int, expected: tuple[int, int]) -> None:
    assert series[(account, m(minute))] == expected


def test_concurrency_series_covers_seven_days_per_account(series: Series) -> None:
    last = m(120)
    for account in (A, B):
        minutes = sorted(t for a, t in series if a == account)
        assert minutes[0] == last - timedelta(days=7) and minutes[-1] == last
        assert len(minutes) == 7 * 24 * 60 + 1
    assert series[(A, last - timedelta(days=7))] == (0, 0)


def test_concurrency_view_is_empty_on_an_empty_archive(any_engine: Engine) -> None:
    assert query(any_engine, "SELECT * FROM concurrent_sessions_per_minute") == []
    assert query(any_engine, "SELECT * FROM close_reasons_hourly") == []


# -- over tests/usage_data.py: reason names, impossible pairs, daily usage ----------------------------

def test_session_durations_name_reasons_and_leave_out_impossible_pairs(usage_archive: Engine) -> None:
    rows = {NAMES[r["session_id"]]: r for r in query(usage_archive, "SELECT * FROM session_durations")}
    assert [(rows[n]["close_reason"], rows[n]["close_reason_raw"]) for n in ("normal-code", "normal-name", "idle-code",
                                                                             "prev-crash", "old-code", "gone")] == [
        ("NormalClosure", "1"), ("NormalClosure", "NormalClosure"), ("BrowserIdle", "2"),
        ("ChromiumCrashed", "Chromium crashed"), ("1000", "1000"), (None, None)]
    assert rows["impossible"]["duration_seconds"] is None  # its end was recorded before its start
    assert float(rows["normal-name"]["duration_seconds"]) == pytest.approx(900.0)


def test_close_reasons_hourly_counts_a_code_and_its_name_together(usage_archive: Engine) -> None:
    rows = query(usage_archive, "SELECT * FROM close_reasons_hourly WHERE account_id = :a", a=C)
    found = {(utc(r["hour"]), r["close_reason"]): (r["close_reason_text"], int(r["sessions"])) for r in rows}
    # idle-code ("2") ended 12:30 and idle-short ("BrowserIdle") 12:15:30: one row.
    assert found[(h(12), "BrowserIdle")] == ("Browser idle", 2)
    assert found[(h(-24), "ChromiumCrashed")] == ("Chromium crashed", 1)  # stored as its text
    assert found[(h(0), "1000")] == ("NormalClosure", 1)


@pytest.fixture(scope="module")
def usage_days(usage_archive: Engine) -> dict[tuple[str, datetime], dict[str, Any]]:
    rows = query(usage_archive, "SELECT * FROM browser_usage_daily")
    return {(r["account_id"], utc(r["day"])): r for r in rows}


def figures(row: dict[str, Any]) -> tuple[object, ...]:
    return (int(row["sessions"]), int(row["sessions_max"]), float(row["browser_seconds"]),
            float(row["browser_seconds_max"]), int(row["peak_concurrency"]), int(row["peak_concurrency_max"]),
            int(row["unknown_end_sessions"]))


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (-3, (1, 1, 18 * 60.0, 18 * 60.0, 1, 1, 0)),  # prev-normal from 23:42
        (-2, (2, 2, 12 * 60.0 + 6 * 60.0, 18 * 60.0, 1, 1, 0)),  # prev-normal to 00:12, prev-crash from 23:54
        (-1, (3, 3, 6 * 60.0 + 12 * 3600.0 + 3600.0, 47160.0, 2, 2, 0)),  # prev-crash, long from 12:00, old-code from 23:00
        (0, (9, 9, 106530.0, 107130.0, 4, 4, 1)),  # tests/test_usage.py: 29.5917 h, 29.7583 h at most
        (1, (8, 9, 105300.0, 155700.0, 3, 4, 4)),  # 29.25 h, 43.25 h at most
        (2, (1, 2, 12 * 3600.0, 12 * 3600.0 + 86400.0, 1, 2, 1)),  # long until noon; active may still run
        (3, (0, 1, 0.0, 86400.0, 0, 1, 1)),
    ],
    ids=["oct-28", "oct-29", "oct-30", "oct-31", "nov-01", "nov-02", "nov-03"],
)
def test_browser_usage_daily(usage_days: dict[tuple[str, datetime], dict[str, Any]], day: int,
                             expected: tuple[object, ...]) -> None:
    assert figures(usage_days[(C, h(24 * day))]) == expected
    assert figures(usage_days[(D, h(24 * day))]) == (0, 0, 0.0, 0.0, 0, 0, 0)  # polled, ran nothing


def test_browser_usage_daily_runs_from_the_first_session_to_today(usage_days: dict[tuple[str, datetime],
                                                                                  dict[str, Any]]) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for account in (C, D):
        days = sorted(day for a, day in usage_days if a == account)
        assert days[0] == h(-72) and days[-1] in (today, today - timedelta(days=1))  # a run across midnight
        assert days == [h(-72) + timedelta(days=k) for k in range(len(days))]


def test_browser_usage_daily_agrees_with_the_report(usage_archive: Engine,
                                                    usage_days: dict[tuple[str, datetime], dict[str, Any]]) -> None:
    with usage_archive.connect() as conn:
        report = usage(conn, Window(h(-72), h(48)), NOW).dicts()
    assert len(report) == 2 * 5
    for row in report:
        view = figures(usage_days[(row["account_id"], row["period_start"])])
        assert view == pytest.approx((row["sessions"], row["sessions_max"], row["browser_hours"] * 3600,
                                      row["browser_hours_max"] * 3600, row["peak_concurrency"],
                                      row["peak_concurrency_max"], row["unknown_end_sessions"]), abs=0.01)


def test_concurrency_takes_an_end_before_the_start_as_unknown(usage_archive: Engine) -> None:
    rows = query(usage_archive, "SELECT minute, sessions, maybe_sessions FROM concurrent_sessions_per_minute "
                                "WHERE account_id = :a", a=C)
    series = {utc(r["minute"]): (int(r["sessions"]), int(r["maybe_sessions"])) for r in rows}
    # "impossible": first listed 08:00, last 08:30, gone from the listing 08:40 (its end says 07:00).
    assert series[h(31.5)] == (1, 0)  # 07:30: long only
    assert series[h(32 + 10 / 60)] == (2, 0)
    assert series[h(32 + 35 / 60)] == (1, 1)
    assert series[h(32 + 41 / 60)] == (1, 0)
