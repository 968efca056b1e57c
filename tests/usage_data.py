"""An archive with known answers for usage, coverage and incidents, around the end of October 2026.

Account C ran sessions that cross midnight and the month's end, close with documented codes and
names, idle out, crash and are evicted, end unknown (vanished, gone, still active, an end recorded
before the start), and closes at the same hour on earlier days; account D was polled but ran
nothing. Times are hours after D0 (2026-10-31 00:00 UTC). The figures the tests expect are worked
out by hand in tests/test_usage.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from archiver.archive import store
from archiver.archive.models import ACTIVE, GONE, VANISHED
from tests.archive_data import ledger_row, session, sid

C = "cccccccccccccccccccccccccccccccc"
D = "dddddddddddddddddddddddddddddddd"
D0 = datetime(2026, 10, 31, tzinfo=UTC)
NOW = D0 + timedelta(days=2)  # "now" for every report over this archive: 2026-11-02 00:00


def h(hours: float) -> datetime:
    """D0 plus some hours."""
    return D0 + timedelta(hours=hours)


def _session(name: str, **fields: Any) -> dict[str, Any]:
    return session(name, account=C, clock=h, **fields)


MINUTE = 1 / 60
SESSIONS = [
    _session("normal-code", start=10, end=11, reason="1", text="Normal closure"),
    _session("normal-name", start=10.5, end=10.75, reason="NormalClosure", text="Normal closure"),
    _session("idle-code", start=12, end=12.5, reason="2", text="Browser idle"),
    _session("idle-short", start=12.25, end=12.25 + 0.5 * MINUTE, reason="BrowserIdle", text="Browser idle"),
    _session("month-end", start=23, end=25, reason="1", text="Normal closure"),
    _session("crashed", start=26, end=27, reason="ChromiumCrashed", text="Chromium crashed"),
    _session("evicted", start=22, end=24.5, reason="SessionEvicted", text="Session evicted"),
    _session("gone", status=GONE, start=29, end=None, seen=(29.01, 30), vanished=30.5, gone=30.51),
    _session("vanished", status=VANISHED, start=23.5, end=None, seen=(23.51, 23 + 50 * MINUTE),
             vanished=24 + 20 * MINUTE),
    _session("impossible", start=32, end=31, seen=(32, 32.5), vanished=32 + 40 * MINUTE, reason="1"),
    _session("no-start", start=None, end=33.25, seen=(33, 33.2), reason="1", text="Normal closure"),
    _session("active", status=ACTIVE, start=34, end=None, seen=(34.01, 35)),
    _session("old-code", start=-1, end=0.5, reason="1000", text="NormalClosure"),
    _session("long", start=-12, end=60, reason="1", text="Normal closure"),
    # Closes at the incident's hour on earlier days: two days and three days before.
    _session("prev-crash", start=-48 + 23.9, end=-48 + 24.1, reason="Chromium crashed", text="Chromium crashed"),
    _session("prev-normal", start=-72 + 23.7, end=-72 + 24.2, reason="NormalClosure", text="Normal closure"),
]
NAMES = {row["session_id"]: name for row, name in zip(SESSIONS, [
    "normal-code", "normal-name", "idle-code", "idle-short", "month-end", "crashed", "evicted", "gone", "vanished",
    "impossible", "no-start", "active", "old-code", "long", "prev-crash", "prev-normal"], strict=True)}
assert all(sid(name) == session_id for session_id, name in NAMES.items())

# The incident: at 2026-11-01 00:10, thirty minutes either side.
INCIDENT_AT = h(24 + 10 * MINUTE)


def runs() -> list[dict[str, Any]]:
    """C every 10 minutes from 23:00 to 00:20 and at 01:00, with trouble around midnight; D three times."""
    minutes = {-60: {}, -50: {}, -40: {}, -30: {}, -20: {},
               -10: {"outcome": "partial", "error": "listing incomplete", "throttled": 2, "throttled_seconds": 15.0,
                     "details_carried": 7},
               0: {"outcome": "failed", "error": "Cloudflare answered 429", "throttled": 1, "throttled_seconds": 30.0,
                   "details_carried": 12},
               10: {"details_carried": 3}, 20: {}, 60: {}}
    rows = [ledger_row(C, h(24 + minute * MINUTE), **fields) for minute, fields in minutes.items()]
    rows += [ledger_row(D, h(24 + minute * MINUTE)) for minute in (-15, 5, 25)]
    return rows


def build(engine: Engine) -> None:
    """Write the sessions and the ledger through the store."""
    with engine.begin() as conn:
        store.upsert(conn, store.sessions_table, SESSIONS, store.SESSION_KEY)
        store.insert_rows(conn, store.runs_table, runs())
