"""Property-based tests: record parsing over any JSON, and poll cycles over random histories.

Example counts come from the Hypothesis profile (tests/conftest.py): moderate by default,
HYPOTHESIS_PROFILE=ci for a reproducible run, HYPOTHESIS_PROFILE=thorough for many more.
"""

from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import Engine, select

from archiver.archive import migrate
from archiver.archive.lifecycle import MAX_DETAIL_ATTEMPTS, observe_listed
from archiver.archive.models import CLOSED, GONE, VANISHED, sessions_table, versions_table
from archiver.archive.records import EPOCH, MAX_MS, MIN_MS, ms_to_datetime, parse_session
from archiver.archive.store import SESSION_KEY, make_engine, upsert
from archiver.emulator import CLOSE_REASONS, Emulator
from archiver.errors import BadRecordError
from tests.helpers import archived, cycle

SID = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e"
ACCOUNT = "0123456789abcdef0123456789abcdef"
TIME_KEYS = ("startTime", "endTime", "connectionStartTime", "connectionEndTime", "lastUpdated")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
plausible_ms = st.integers(min_value=MIN_MS, max_value=MAX_MS) | st.floats(min_value=MIN_MS, max_value=MAX_MS)


# -- records -----------------------------------------------------------------------------------------


@given(st.dictionaries(st.sampled_from([*TIME_KEYS, "closeReason", "closeReasonText", "connectionId",
                                        "devtoolsFrontendUrl", "webSocketDebuggerUrl", "other"]), json_values))
def test_any_field_values_give_a_record_that_the_archive_stores(fields: dict[str, Any]) -> None:
    # Bad field values are dropped with a note, never the session: the row always stores.
    record = parse_session({**fields, "sessionId": SID})
    step = observe_listed(None, record, account_id=ACCOUNT, seen_at=EPOCH + timedelta(days=20000), run_id=1, detail_wanted=True)
    assert step.row is not None and step.row["session_id"] == SID
    engine = _scratch_engine()
    with engine.begin() as conn:
        conn.execute(sessions_table.delete())
        upsert(conn, sessions_table, [step.row], SESSION_KEY)
    stored = archived(engine)[SID]
    for name in ("start_time", "end_time", "close_reason", "close_reason_text", "connection_id"):
        assert stored[name] == step.row[name]


@given(st.sampled_from(TIME_KEYS), plausible_ms)
def test_millisecond_times_round_trip_through_parsing_and_the_database(key: str, ms: float) -> None:
    record = parse_session({"sessionId": SID, key: ms})
    attr = {"startTime": "start_time", "endTime": "end_time", "connectionStartTime": "connection_start_time",
            "connectionEndTime": "connection_end_time", "lastUpdated": "last_updated"}[key]
    value = record.fields[attr]
    assert value == ms_to_datetime(ms) and value.utcoffset() == timedelta(0)
    assert abs((value - EPOCH) / timedelta(milliseconds=1) - ms) <= 0.0005  # microsecond precision
    step = observe_listed(None, record, account_id=ACCOUNT, seen_at=value, run_id=1, detail_wanted=True)
    assert step.row is not None
    engine = _scratch_engine()
    with engine.begin() as conn:
        conn.execute(sessions_table.delete())
        upsert(conn, sessions_table, [step.row], SESSION_KEY)
    assert archived(engine)[SID][attr] == value


@given(st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=80))
def test_close_reason_as_string_or_number_is_kept_as_text(reason: Any) -> None:
    record = parse_session({"sessionId": SID, "closeReason": reason})
    expected = str(int(reason)) if isinstance(reason, float) and reason.is_integer() else str(reason)
    if len(expected) <= 64:
        # NUL and lone surrogates cannot be stored: they become U+FFFD, with a problem noted.
        storable = re.sub("[\x00\ud800-\udfff]", "\ufffd", expected)
        assert record.fields["close_reason"] == storable and bool(record.problems) == (storable != expected)
    else:
        assert record.fields["close_reason"] is None and record.problems


@given(json_values)
def test_any_json_value_is_a_record_or_a_bad_record(value: Any) -> None:
    for obj in (value, {"sessionId": value}, {"sessionId": SID, "closeReason": value, "startTime": value}):
        try:
            parse_session(obj)
        except BadRecordError as exc:
            assert exc.reason


_ENGINES: dict[str, Engine] = {}


def _scratch_engine() -> Engine:
    """One migrated SQLite archive shared by the examples of a record property."""
    if "scratch" not in _ENGINES:
        path = Path(_TEMPLATE.parent) / "scratch.db"
        shutil.copy(_TEMPLATE, path)
        _ENGINES["scratch"] = make_engine(f"sqlite:///{path}")
    return _ENGINES["scratch"]


# -- poll cycles over random histories --------------------------------------------------------------

# What can go wrong in one poll, as scripted emulator faults. The client retries once, so two
# failures in a row exhaust a request.
POLL_FAULTS: dict[str, list[tuple[Any, int, str]]] = {
    "none": [],
    "listing-fails": [(500, 2, "list")],
    "listing-garbled": [("wrong_type", 2, "list")],
    "listing-with-an-invalid-id": [("bad_id", 1, "list")],
    "details-fail": [(503, 1000, "get")],
    "details-null": [("null", 1000, "get")],
    "details-with-invalid-ids": [("bad_id", 1000, "get")],
}
SPOILING = ("details-null", "details-with-invalid-ids")  # they use up a detail attempt


class ArchiveMachine(RuleBasedStateMachine):
    """Sessions start, connect, close and are forgotten; polls run with or without faults. After
    every step: nothing listed is lost, nothing open is marked vanished, and close reasons that
    stayed retrievable are archived."""

    def __init__(self) -> None:
        super().__init__()
        self.emulator = Emulator(accounts=1, initial_sessions=2, seed=5, speed=0.0, spawn_per_minute=0,
                                 retention_s=1e9, keep_served_pages=True, start_ms=1.8e12)
        self.account = self.emulator.account_ids[0]
        self.world = self.emulator.world(self.account)
        self.server = self.emulator.start()
        self.path = _TEMPLATE.parent / f"machine-{id(self)}.db"
        shutil.copy(_TEMPLATE, self.path)
        self.engine = make_engine(f"sqlite:///{self.path}")
        self.poll_times: dict[int, float] = {}  # run id -> simulated time of its poll
        self.since_close: dict[str, list[str]] = {}  # session -> faults of the polls after it closed
        self.delivered: set[str] = set()

    def teardown(self) -> None:
        self.emulator.stop()
        self.engine.dispose()
        self.path.unlink(missing_ok=True)

    def _pick(self, data: st.DataObject, active: bool) -> str | None:
        pool = sorted(self.world.active) if active else sorted(self.world.sessions)
        return data.draw(st.sampled_from(pool)) if pool else None

    @rule(connect=st.booleans())
    def start(self, connect: bool) -> None:
        self.world.start_session(connect=connect)

    @rule(data=st.data())
    def connect(self, data: st.DataObject) -> None:
        if (sid := self._pick(data, active=True)) is not None:
            self.world.connect(sid)

    @rule(data=st.data(), reason=st.sampled_from([r[0] for r in CLOSE_REASONS]))
    def close(self, data: st.DataObject, reason: str) -> None:
        if (sid := self._pick(data, active=True)) is not None:
            self.world.close(sid, reason)
            self.since_close[sid] = []

    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        if (sid := self._pick(data, active=False)) is not None:
            self.world.forget(sid)

    @rule(seconds=st.floats(min_value=0.001, max_value=30))
    def wait(self, seconds: float) -> None:
        self.emulator.clock.advance(seconds)

    @rule(fault=st.sampled_from(sorted(POLL_FAULTS)))
    def poll(self, fault: str) -> None:
        for kind, times, endpoint in POLL_FAULTS[fault]:
            self.emulator.inject(kind, times=times, endpoint=endpoint, retry_after=0)
        pages_before = len(self.emulator.served_pages or [])
        result = cycle(self.server, self.emulator, self.engine, client={"max_retries": 1, "max_retry_wait": 0.001})
        self.emulator.clear_injections()
        self.poll_times[result.run_id] = self.emulator.clock.now_ms()
        for page in (self.emulator.served_pages or [])[pages_before:]:
            if page.delivered:
                self.delivered.update(page.ids)
        for faults in self.since_close.values():
            faults.append(fault)
        self.emulator.clock.advance(1)

    @invariant()
    def nothing_listed_is_lost(self) -> None:
        assert self.delivered <= set(archived(self.engine))

    @invariant()
    def no_open_session_is_marked_vanished(self) -> None:
        with self.engine.connect() as conn:
            vanishes = conn.execute(
                select(versions_table.c.session_id, versions_table.c.run_id, versions_table.c.status)
                .where(versions_table.c.status.in_([VANISHED, GONE]))
            ).all()
        for sid, run_id, status in vanishes:
            session = self.world.sessions[sid]
            poll_ms = self.poll_times[run_id]
            assert session.end_ms is not None and session.end_ms <= poll_ms, f"{sid} open at run {run_id}, archived {status}"

    @invariant()
    def close_reasons_that_stayed_retrievable_are_archived(self) -> None:
        rows = archived(self.engine)
        for sid, faults in self.since_close.items():
            session = self.world.sessions[sid]
            spoiled = sum(f in SPOILING for f in faults)
            if sid not in rows or session.forgotten_ms is not None or "none" not in faults or spoiled >= MAX_DETAIL_ATTEMPTS:
                continue
            row = rows[sid]
            assert row["status"] == CLOSED, f"{sid}: closed upstream and polled cleanly since, archived {row['status']}"
            assert row["end_time"] == ms_to_datetime(session.end_ms)
            assert (row["close_reason"], row["close_reason_text"]) == (str(session.public()["closeReason"]), session.reason[2])


@pytest.fixture(scope="module", autouse=True)
def _template(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A migrated SQLite archive that each example copies (migrating anew would dominate the run)."""
    global _TEMPLATE
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    _TEMPLATE = path
    yield
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


_TEMPLATE = Path()
ArchiveMachine.TestCase.settings = settings(stateful_step_count=20)
test_poll_cycles_over_random_histories = ArchiveMachine.TestCase
