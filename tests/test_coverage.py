"""The coverage report against the ledger of tests/usage_data.py, on every backend.

Account C's cycles (times on 2026-10-31/11-01): 23:00, 23:10, 23:20, 23:30, 23:40 complete;
23:50 partial (two 429s holding requests back 15 s, 7 details owed); 00:00 failed (one 429, 30 s,
12 owed); 00:10 complete (3 owed), 00:20 complete, then nothing until 01:00. Account D: complete
listings at 23:45, 00:05 and 00:25. The session "vanished" left the listing at 00:20.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import Engine

from archiver.errors import InputError
from archiver.reports.coverage import coverage, largest_gap
from archiver.reports.window import Window
from tests.usage_data import NOW, C, D, h

MINUTE = 1 / 60
INCIDENT = Window(h(23 + 40 * MINUTE), h(24 + 40 * MINUTE))
FIGURES = ("cycles", "complete_listings", "incomplete_listings", "largest_gap_seconds", "gap_from", "gap_until",
           "throttled", "throttled_seconds", "worst_backlog", "unknown_end_sessions")


def at(minutes: float) -> datetime:
    """Minutes after 2026-11-01 00:00."""
    return h(24 + minutes * MINUTE)


def figures(row: dict[str, object]) -> tuple[object, ...]:
    return tuple(row[name] for name in FIGURES)


def test_coverage_of_a_window(usage_archive: Engine) -> None:
    with usage_archive.connect() as conn:
        answer = coverage(conn, INCIDENT, NOW)
    rows = {r["account_id"]: r for r in answer.dicts()}
    assert list(rows) == [C, D]
    # C: complete at 23:40, 00:10, 00:20; the window ends at 00:40. Longest: 23:40 to 00:10.
    assert figures(rows[C]) == (5, 3, 2, 1800.0, at(-20), at(10), 3, 45.0, 12, 1)
    # D: 23:40 (the window's start) to 23:45, 23:45 to 00:05, 00:05 to 00:25, 00:25 to 00:40.
    assert figures(rows[D]) == (3, 3, 0, 1200.0, at(-15), at(5), 0, 0.0, 0, 0)
    assert (rows[C]["period_start"], rows[C]["period_end"]) == (INCIDENT.since, INCIDENT.until)


def test_coverage_by_hour(usage_archive: Engine) -> None:
    with usage_archive.connect() as conn:
        rows = coverage(conn, Window(h(23), h(25)), NOW, by="hour", account=C).dicts()
    assert [(r["period_start"], r["period_end"]) for r in rows] == [(h(23), h(24)), (h(24), h(25))]
    # 23:00-24:00: complete every ten minutes to 23:40, then nothing complete to midnight.
    assert figures(rows[0]) == (6, 5, 1, 1200.0, at(-20), at(0), 2, 15.0, 7, 0)
    # 00:00-01:00: the failed cycle, complete at 00:10 and 00:20, then nothing until 01:00 (the
    # next period's first cycle).
    assert figures(rows[1]) == (3, 2, 1, 2400.0, at(20), at(60), 1, 30.0, 12, 1)


def test_coverage_ends_at_now(usage_archive: Engine) -> None:
    with usage_archive.connect() as conn:
        (row,) = coverage(conn, Window(h(24), h(26)), at(30), account=C).dicts()
    # Up to 00:30 only: 00:00 to 00:10, 00:10 to 00:20, 00:20 to 00:30.
    assert figures(row) == (3, 2, 1, 600.0, at(0), at(10), 1, 30.0, 12, 1)
    assert row["period_end"] == at(30)


def test_an_account_never_polled_was_never_covered(usage_archive: Engine) -> None:
    other = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
    with usage_archive.connect() as conn:
        (row,) = coverage(conn, INCIDENT, NOW, account=other).dicts()
    assert row["account_id"] == other
    assert figures(row) == (0, 0, 0, 3600.0, INCIDENT.since, INCIDENT.until, 0, 0.0, None, 0)


def test_an_account_not_polled_in_the_window_has_a_gap_as_long_as_it(usage_archive: Engine) -> None:
    with usage_archive.connect() as conn:
        rows = {r["account_id"]: r for r in coverage(conn, Window(h(40), h(41)), NOW).dicts()}
    assert {account: r["largest_gap_seconds"] for account, r in rows.items()} == {C: 3600.0, D: 3600.0}


def test_coverage_of_an_empty_archive_and_bad_input(any_engine: Engine) -> None:
    with any_engine.connect() as conn:
        assert coverage(conn, INCIDENT, NOW).rows == []
        with pytest.raises(InputError, match="begins after now"):
            coverage(conn, INCIDENT, INCIDENT.since)
        with pytest.raises(InputError, match="use hour, day, month"):
            coverage(conn, INCIDENT, NOW, by="week")


def test_largest_gap() -> None:
    assert largest_gap(at(0), at(60), []) == (3600.0, at(0), at(60))
    assert largest_gap(at(0), at(60), [at(0), at(60)]) == (3600.0, at(0), at(60))
    assert largest_gap(at(0), at(60), [at(10), at(20)]) == (2400.0, at(20), at(60))
    assert largest_gap(at(0), at(60), [at(50)]) == (3000.0, at(0), at(50))
