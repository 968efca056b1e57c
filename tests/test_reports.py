"""Every report against an archive with known answers, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from archiver.errors import InputError
from archiver.reports import Window, ledger, open_at, stats, story
from archiver.reports.window import sessions_in
from tests import archive_data as data
from tests.archive_data import A, B, m, names, sid

WINDOW = Window(*data.WINDOW)


@pytest.fixture
def empty(any_engine: Engine) -> Engine:
    return any_engine


# -- active-at -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("minute", "account", "expected"),
    [
        (0, None, {"crossing-start": "yes", "spanning": "yes", "vanished": "yes"}),
        (1, None, {"crossing-start": "yes", "spanning": "yes", "vanished": "yes", "no-start": "yes"}),
        (5.5, B, {"other-account": "yes"}),
        (5.5, A, {"crossing-start": "yes", "spanning": "yes", "vanished": "yes", "inside": "yes"}),
        (20, None, {"inside": "yes", "spanning": "yes", "vanished": "yes", "gone": "yes"}),
        (20.5, None, {"inside": "yes", "spanning": "yes", "vanished": "yes", "gone": "maybe"}),
        (21.5, None, {"inside": "yes", "spanning": "yes", "vanished": "yes"}),
        (30.5, None, {"spanning": "yes", "vanished": "maybe"}),
        (45, None, {"spanning": "yes", "active": "yes"}),
        (500, None, {"active": "yes"}),
        (-500, None, {}),
    ],
    ids=["at-window-start", "start-unknown-first-listed", "account-b", "account-a", "at-last-seen",
         "between-last-seen-and-vanished", "after-vanished", "vanished-unknown-end", "still-active",
         "far-future-only-listed", "before-everything"],
)
def test_active_at(archive: Engine, minute: float, account: str | None, expected: dict[str, str]) -> None:
    with archive.connect() as conn:
        answer = open_at.open_at(conn, m(minute), account=account)
    found = {data.NAMES[row["session_id"]]: row["open"] for row in answer.dicts()}
    assert found == expected
    maybe = sum(1 for v in expected.values() if v == "maybe")
    assert answer.notes == [f"{len(expected) - maybe} open, {maybe} maybe open (end unknown) at "
                            f"{m(minute):%Y-%m-%d %H:%M:%S} UTC"]


def test_active_at_notes_say_what_is_unknown(archive: Engine) -> None:
    with archive.connect() as conn:
        gone = {r["session_id"]: r for r in open_at.open_at(conn, m(20.5)).dicts()}[sid("gone")]
        no_start = {r["session_id"]: r for r in open_at.open_at(conn, m(2)).dicts()}[sid("no-start")]
    assert gone["note"] == "ended between 2026-11-20 12:20:00 and 2026-11-20 12:21:00"
    assert no_start["note"] == "start unknown, first listed 2026-11-20 12:01:00"
    assert gone["end_time"] is None and gone["last_seen_at"] == m(20) and gone["vanished_at"] == m(21)


def test_closed_without_an_end_time_is_maybe_open_after_last_seen() -> None:
    row = {"start_time": m(0), "first_seen_at": m(0), "end_time": None, "status": "closed", "last_seen_at": m(5),
           "vanished_at": None, "gone_at": None}
    assert open_at.classify(row, m(4)) == ("yes", "")
    assert open_at.classify(row, m(6)) == ("maybe", "end unknown, after 2026-11-20 12:05:00")


def test_active_at_is_sorted_by_start(archive: Engine) -> None:
    with archive.connect() as conn:
        rows = open_at.open_at(conn, m(5.5)).dicts()
    assert [data.NAMES[r["session_id"]] for r in rows] == ["spanning", "vanished", "crossing-start", "inside", "other-account"]


# -- sessions in a window -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, {"active", "crossing-end", "crossing-start", "ended-at-since", "gone", "inside", "no-start",
              "other-account", "vanished"}),
        ({"reason": "1000"}, {"crossing-start", "ended-at-since", "crossing-end"}),
        ({"status": "gone"}, {"gone"}),
        ({"status": "active"}, {"active"}),
        ({"account": B}, {"other-account"}),
        ({"account": A, "reason": "4000"}, set()),
    ],
    ids=["all", "reason", "status-gone", "status-active", "account", "nothing-matches"],
)
def test_sessions_started_or_ended_in_window(archive: Engine, filters: dict[str, str], expected: set[str]) -> None:
    with archive.connect() as conn:
        found = sessions_in(conn, WINDOW, **filters)
    assert names(found.column("session_id")) == expected


def test_sessions_in_window_order_and_values(archive: Engine) -> None:
    with archive.connect() as conn:
        rows = sessions_in(conn, WINDOW).dicts()
    assert [data.NAMES[r["session_id"]] for r in rows] == [
        "vanished", "crossing-start", "ended-at-since", "no-start", "inside", "other-account", "gone", "active",
        "crossing-end",
    ]
    inside = rows[4]
    assert inside["duration_seconds"] == pytest.approx(1200.0)
    assert inside["start_time"] == m(5) and inside["end_time"] == m(25) and inside["close_reason"] == "BrowserIdle"
    assert rows[0]["duration_seconds"] is None


def test_bad_status_and_empty_window_are_input_errors(archive: Engine) -> None:
    with archive.connect() as conn, pytest.raises(InputError, match="unknown status 'open'"):
        sessions_in(conn, WINDOW, status="open")
    with pytest.raises(InputError, match="window is empty"):
        Window(m(10), m(10))


# -- close reasons ------------------------------------------------------------------------------

def test_close_reasons_in_window(archive: Engine) -> None:
    with archive.connect() as conn:
        rows = stats.close_reasons(conn, WINDOW).rows
    assert rows == [
        ("closed", "1000", "NormalClosure", 2, "1000: 2"),
        ("closed", "BrowserIdle", "Browser idle", 2, "BrowserIdle: 2"),
        ("closed", "4000", data.ODD_TEXT, 1, "4000: 1"),
        ("gone", None, None, 1, None),
        ("vanished", None, None, 1, None),
    ]


def test_close_reasons_by_hour_and_day(archive: Engine) -> None:
    wide = Window(m(-180), m(180))
    with archive.connect() as conn:
        hourly = stats.close_reasons(conn, wide, by="hour", account=A).rows
        daily = stats.close_reasons(conn, wide, by="day").dicts()
    hour = lambda h: m(0).replace(hour=h)  # noqa: E731
    assert [row[:5] for row in hourly] == [
        (hour(10), "closed", "NormalClosure", "Normal closure", 1),
        (hour(12), "closed", "1000", "NormalClosure", 2),
        (hour(12), "closed", "BrowserIdle", "Browser idle", 2),
        (hour(12), "gone", None, None, 1),
        (hour(12), "vanished", None, None, 1),
        (hour(13), "closed", "1000", "NormalClosure", 2),
        (hour(14), "closed", "BrowserIdle", "Browser idle", 1),
    ]
    assert {r["day"] for r in daily} == {m(0).replace(hour=0)}
    assert sum(r["sessions"] for r in daily) == 11  # all but the active one
    assert all(isinstance(r["day"], datetime) and r["day"].tzinfo is not None for r in daily)


def test_close_reasons_rejects_unknown_bucket(archive: Engine) -> None:
    with archive.connect() as conn, pytest.raises(InputError, match="hour or day"):
        stats.close_reasons(conn, WINDOW, by="week")


# -- durations ----------------------------------------------------------------------------------

def test_durations(archive: Engine) -> None:
    with archive.connect() as conn:
        answer = stats.durations(conn, WINDOW)
    session, connection = answer.dicts()
    # ended in the window with a start: 60 s, 300 s, 1200 s, 1200 s (no-start has no duration)
    assert session == pytest.approx({"measure": "session", "sessions": 4, "p50_seconds": 750.0, "p90_seconds": 1200.0,
                                     "p99_seconds": 1200.0, "max_seconds": 1200.0, "mean_seconds": 690.0})
    # connections: 240 s, 840 s, 1080 s
    assert connection == pytest.approx({"measure": "connection", "sessions": 3, "p50_seconds": 840.0,
                                        "p90_seconds": 1032.0, "p99_seconds": 1075.2, "max_seconds": 1080.0,
                                        "mean_seconds": 720.0})
    assert answer.notes == ["2 session(s) ended in the window at an unknown moment (vanished or gone) and are left out"]


def test_durations_of_one_account(archive: Engine) -> None:
    with archive.connect() as conn:
        session, connection = stats.durations(conn, WINDOW, account=B).dicts()
    assert session["sessions"] == 1 and session["p50_seconds"] == pytest.approx(60.0)
    assert connection["sessions"] == 0 and connection["p50_seconds"] is None


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [([5.0], 50, 5.0), ([5.0], 99, 5.0), ([1.0, 2.0], 50, 1.5), ([1.0, 2.0, 3.0, 4.0], 90, 3.7),
     ([0.0, 10.0], 0, 0.0), ([0.0, 10.0], 100, 10.0)],
    ids=["one-p50", "one-p99", "two", "four-p90", "p0", "p100"],
)
def test_percentile_interpolates(values: list[float], p: float, expected: float) -> None:
    assert stats.percentile(values, p) == pytest.approx(expected)


# -- one session's story --------------------------------------------------------------------------

def test_session_story(archive: Engine) -> None:
    with archive.connect() as conn:
        (told,) = story.session_story(conn, sid("gone"))
        run_ids = {run["started_at"]: run["id"] for run in ledger.runs(conn, m(-200), account=A).dicts()}
    events = told.events.dicts()
    assert [e["event"] for e in events] == [
        "version (list)", "first listed", "last listed", "version (detail)", "left a complete listing",
        "forgotten by Cloudflare (404)",
    ]
    assert [e["time"] for e in events] == [m(10.25), m(10.25), m(20), m(21), m(21), m(22)]
    assert events[3]["status"] == "gone" and events[3]["run_outcome"] == "ok"
    assert told.session["status"] == "gone" and "raw" not in told.session
    assert "devtools_frontend_url" not in told.session
    assert told.cycles == {
        "cycles_while_listed": 2,  # the cycles at 12:10 (first listed it) and 12:20 (last listed it)
        "complete_listings": 1,  # the 12:20 cycle's listing was incomplete
        "first_run_id": run_ids[m(10)],
        "last_run_id": run_ids[m(20)],
        "last_changed_by_run_id": 1,
    }


def test_session_story_unknown_id_and_account(archive: Engine) -> None:
    with archive.connect() as conn:
        with pytest.raises(InputError, match="no session 'nope' in the archive"):
            story.session_story(conn, "nope")
        with pytest.raises(InputError, match=f"in account {B}"):
            story.session_story(conn, sid("gone"), account=B)
        assert len(story.session_story(conn, sid("other-account"), account=B)) == 1


# -- the ledger ---------------------------------------------------------------------------------

def test_runs_summary(archive: Engine) -> None:
    with archive.connect() as conn:
        rows = ledger.runs_summary(conn, m(0)).dicts()
    a, b = rows
    assert {k: a[k] for k in ledger.SUMMARY_COLUMNS[:13]} == {
        "account_id": A, "cycles": 13, "ok": 11, "partial": 1, "failed": 1, "aborted": 0, "running": 0,
        "incomplete_listings": 2, "api_requests": 29, "retries": 3, "throttled": 3, "waited_seconds": 4.5,
        "with_errors": 2,
    }
    assert (a["first_started"], a["last_started"], a["last_error"]) == (m(0), m(120), "Cloudflare answered 429")
    assert (b["account_id"], b["cycles"], b["last_error"]) == (B, 1, None)


def test_runs_each_in_range(archive: Engine) -> None:
    with archive.connect() as conn:
        rows = ledger.runs(conn, m(0), until=m(30)).dicts()
        only_b = ledger.runs(conn, m(-500), account=B).dicts()
    assert [(r["account_id"], r["started_at"]) for r in rows] == [(A, m(0)), (B, m(5)), (A, m(10)), (A, m(20))]
    assert rows[3]["outcome"] == "partial" and rows[3]["listing_complete"] is False
    assert [r["started_at"] for r in only_b] == [m(5)]


# -- an empty archive -----------------------------------------------------------------------------

def test_every_report_on_an_empty_archive(empty: Engine) -> None:
    with empty.connect() as conn:
        assert open_at.open_at(conn, m(0)).rows == []
        assert sessions_in(conn, WINDOW).rows == []
        assert stats.close_reasons(conn, WINDOW, by="hour").rows == []
        assert [row[:2] for row in stats.durations(conn, WINDOW).rows] == [("session", 0), ("connection", 0)]
        assert ledger.runs(conn, m(0)).rows == [] and ledger.runs_summary(conn, m(0)).rows == []
        with pytest.raises(InputError):
            story.session_story(conn, sid("gone"))


def test_window_edges_are_half_open(archive: Engine) -> None:
    # "ended-at-since" ends exactly at the window's start (inside); "at-until" starts exactly at its end (outside).
    with archive.connect() as conn:
        found = names(sessions_in(conn, Window(m(0), m(60))).column("session_id"))
        later = names(sessions_in(conn, Window(m(60), m(61))).column("session_id"))
    assert "ended-at-since" in found and "at-until" not in found
    assert later == {"at-until"}
    assert Window(m(0), m(0) + timedelta(microseconds=1)).until > m(0)
