"""The reporting views created by migration 0003, with known answers on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text

from tests.archive_data import A, B, m, sid

VIEWS = {"session_durations", "close_reasons_hourly", "concurrent_sessions_per_minute"}


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
    assert VIEWS <= set(inspector.get_view_names())
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
