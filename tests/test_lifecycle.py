"""Lifecycle transitions: pure functions from (stored row, observation) to (row, version)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver.archive.lifecycle import (
    MAX_DETAIL_ATTEMPTS,
    Transition,
    listed_unchanged,
    most_urgent,
    observe_bad_detail,
    observe_detail,
    observe_listed,
    observe_missing,
    observe_vanished,
    observe_waived,
)
from archiver.archive.models import ACTIVE, CLOSED, GONE, VANISHED, sessions_table, versions_table
from archiver.archive.records import STATE_FIELDS, URL_FIELDS, SessionRecord, lifecycle_changed, merge_state, ms_to_datetime, parse_session

ACCOUNT = "0123456789abcdef0123456789abcdef"
SID = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e"
START_MS = 1_700_000_000_000
T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=30)
T2 = T0 + timedelta(seconds=60)
SESSION_COLUMNS = {c.name for c in sessions_table.columns}
VERSION_COLUMNS = {c.name for c in versions_table.columns} - {"id"}

OPEN = {
    "startTime": START_MS,
    "lastUpdated": START_MS + 500,
    "connectionId": "conn-1",
    "connectionStartTime": START_MS + 100,
    "webSocketDebuggerUrl": "wss://h.example/devtools/browser/x?jwt=aaa",
}
CLOSED_FIELDS = {
    "endTime": START_MS + 60_000,
    "connectionEndTime": START_MS + 59_000,
    "lastUpdated": START_MS + 60_000,
    "closeReason": 1000,
    "closeReasonText": "NormalClosure",
}
CLOSED_OBJ = {**OPEN, **CLOSED_FIELDS}


def record(**fields: Any) -> SessionRecord:
    return parse_session({"sessionId": SID, **fields})


def listed(known: dict[str, Any] | None, rec: SessionRecord, *, at: datetime = T1, run_id: int = 2, policy: str = "changed") -> Transition:
    return observe_listed(known, rec, account_id=ACCOUNT, seen_at=at, run_id=run_id, detail_wanted=policy == "changed")


def stored(policy: str = "changed", **changes: Any) -> dict[str, Any]:
    """The row of a session first listed at T0 by run 1 (as the store would hand it back)."""
    row = listed(None, record(**OPEN), at=T0, run_id=1, policy=policy).row
    assert row is not None
    return {**row, **changes}


def assert_shapes(transition: Transition) -> None:
    if transition.row is not None:
        assert set(transition.row) == SESSION_COLUMNS
    if transition.version is not None:
        assert set(transition.version) == VERSION_COLUMNS


# --- a new session --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "due"), [("changed", "new"), ("vanished", None)], ids=["policy-changed", "policy-vanished"])
def test_new_session(policy: str, due: str | None) -> None:
    rec = record(**OPEN)
    t = observe_listed(None, rec, account_id=ACCOUNT, seen_at=T0, run_id=7, detail_wanted=policy == "changed")
    assert t.kind == "new"
    assert t.row is not None and t.version is not None
    assert set(t.row) == SESSION_COLUMNS
    assert set(t.version) == VERSION_COLUMNS
    row = t.row
    assert row["account_id"] == ACCOUNT
    assert row["session_id"] == SID
    assert row["status"] == ACTIVE
    assert row["first_seen_at"] == row["last_seen_at"] == T0
    assert row["last_detail_at"] is None and row["vanished_at"] is None and row["gone_at"] is None
    assert row["detail_due"] == due
    assert row["detail_attempts"] == 0
    assert row["last_run_id"] == 7
    assert row["start_time"] == ms_to_datetime(START_MS)
    assert row["connection_id"] == "conn-1"
    assert row["end_time"] is None
    assert row["web_socket_debugger_url"] == "wss://h.example/devtools/browser/x?jwt=REDACTED"
    assert row["raw"] == rec.raw
    version = t.version
    assert version["source"] == "list"
    assert version["status"] == ACTIVE
    assert version["run_id"] == 7
    assert version["observed_at"] == T0
    assert (version["account_id"], version["session_id"]) == (ACCOUNT, SID)
    assert {name: version[name] for name in STATE_FIELDS} == {name: row[name] for name in STATE_FIELDS}
    assert version["raw"] == rec.raw


def test_new_session_already_closed() -> None:
    t = listed(None, record(**CLOSED_OBJ))
    assert t.kind == "new"
    assert t.row is not None and t.version is not None
    assert t.row["status"] == CLOSED
    assert t.version["status"] == CLOSED
    assert t.row["end_time"] == ms_to_datetime(START_MS + 60_000)
    assert t.row["close_reason"] == "1000"


# --- a known session in a listing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [OPEN, {"startTime": START_MS}, {}],
    ids=["same-fields", "sparser-listing", "only-the-id"],
)
def test_listed_unchanged(fields: dict[str, Any]) -> None:
    t = listed(stored(), record(**fields))
    assert t == Transition("unchanged")


# Each upstream field either absent, null, or one of two values: enough to hit every equal/different case.
FIELD_CHOICES = {
    "startTime": [START_MS, START_MS + 1],
    "endTime": [START_MS + 60_000, START_MS + 61_000],
    "connectionStartTime": [START_MS + 100, START_MS + 200],
    "connectionEndTime": [START_MS + 59_000, START_MS + 58_000],
    "lastUpdated": [START_MS + 500, START_MS + 60_000],
    "connectionId": ["conn-1", "conn-2"],
    "closeReason": [1000, "BrowserIdle"],
    "closeReasonText": ["NormalClosure", "idle"],
    "devtoolsFrontendUrl": ["https://h.example/ui?wss=x", "https://h.example/ui2"],
    "webSocketDebuggerUrl": ["wss://h.example/devtools/browser/x?jwt=aaa", "wss://h.example/other"],
}
observations = st.fixed_dictionaries({}, optional={k: st.sampled_from([None, *v]) for k, v in FIELD_CHOICES.items()})


def news_by_merging(known: dict[str, Any], rec: SessionRecord) -> bool:
    """The listing's news as the merged state shows it: any field or the implied status moved."""
    merged = merge_state(known, rec)
    status = CLOSED if merged["end_time"] is not None else ACTIVE
    urls_moved = any(known.get(name) != merged[name] for name in URL_FIELDS.values())
    return lifecycle_changed(known, merged) or status != known["status"] or urls_moved


@settings(max_examples=300, deadline=None)
@given(observations, observations, st.sampled_from([ACTIVE, CLOSED, VANISHED, GONE]))
def test_listed_unchanged_agrees_with_the_merged_state(before: dict[str, Any], now: dict[str, Any], status: str) -> None:
    first = listed(None, record(**before), at=T0, run_id=1).row
    assert first is not None
    known = {**first, "status": status}
    rec = record(**now)
    state_only = {name: known[name] for name in ("status", *STATE_FIELDS)}
    assert listed_unchanged(known, rec) == listed_unchanged(state_only, rec) == (not news_by_merging(known, rec))
    assert (listed(known, rec).kind == "unchanged") == listed_unchanged(known, rec)


def test_listed_url_only_change_refreshes_without_a_version() -> None:
    known = stored(detail_due="new", detail_attempts=1)
    t = listed(known, record(**{**OPEN, "webSocketDebuggerUrl": "wss://other.example/devtools/browser/x?jwt=bbb"}))
    assert t.kind == "refreshed"
    assert t.version is None
    assert t.row is not None
    assert set(t.row) == SESSION_COLUMNS
    assert t.row["web_socket_debugger_url"] == "wss://other.example/devtools/browser/x?jwt=REDACTED"
    assert t.row["last_seen_at"] == T1
    assert t.row["first_seen_at"] == T0
    assert t.row["status"] == ACTIVE
    assert t.row["detail_due"] == "new"
    assert t.row["detail_attempts"] == 1
    assert t.row["last_run_id"] == 2


LISTED_CHANGE_CASES = [
    # (policy, known due, known attempts, expected due, expected attempts)
    ("changed", "new", 2, "changed", 0),
    ("changed", None, 0, "changed", 0),
    ("changed", "changed", 2, "changed", 2),
    ("vanished", None, 0, None, 0),
    ("vanished", "new", 2, "new", 2),
]


@pytest.mark.parametrize(
    ("policy", "known_due", "known_attempts", "due", "attempts"),
    LISTED_CHANGE_CASES,
    ids=["changed-over-new", "changed-from-none", "already-changed-keeps-attempts", "vanished-policy", "vanished-policy-keeps-due"],
)
def test_listed_lifecycle_change(policy: str, known_due: str | None, known_attempts: int, due: str | None, attempts: int) -> None:
    known = stored(detail_due=known_due, detail_attempts=known_attempts)
    t = listed(known, record(**{**OPEN, "lastUpdated": START_MS + 9_000, "connectionId": "conn-2"}), policy=policy)
    assert t.kind == "changed"
    assert t.row is not None and t.version is not None
    assert_shapes(t)
    assert t.row["status"] == ACTIVE
    assert t.row["connection_id"] == "conn-2"
    assert t.row["last_updated"] == ms_to_datetime(START_MS + 9_000)
    assert t.row["detail_due"] == due
    assert t.row["detail_attempts"] == attempts
    assert t.row["last_seen_at"] == T1
    assert t.row["first_seen_at"] == T0
    assert t.version["source"] == "list"
    assert t.version["observed_at"] == T1
    assert t.version["connection_id"] == "conn-2"


@pytest.mark.parametrize(("policy", "due"), [("changed", "changed"), ("vanished", None)], ids=["policy-changed", "policy-vanished"])
def test_listed_closed_by_listing(policy: str, due: str | None) -> None:
    known = stored(policy=policy)
    t = listed(known, record(**CLOSED_OBJ), policy=policy)
    assert t.kind == "changed"
    assert t.row is not None and t.version is not None
    assert_shapes(t)
    assert t.row["status"] == CLOSED
    assert t.version["status"] == CLOSED
    assert t.row["end_time"] == ms_to_datetime(START_MS + 60_000)
    assert t.row["close_reason"] == "1000"
    assert t.row["close_reason_text"] == "NormalClosure"
    assert t.row["detail_due"] == due


@pytest.mark.parametrize("policy", ["changed", "vanished"], ids=["details-wanted", "listing-trusted"])
@pytest.mark.parametrize("first", [True, False], ids=["first-listed-closed", "closed-later"])
def test_a_session_listed_closed_without_its_reason_is_owed_a_detail_whatever_the_mode(policy: str, first: bool) -> None:
    without_reason = {k: v for k, v in CLOSED_OBJ.items() if k != "closeReason"}
    t = listed(None if first else stored(policy=policy), record(**without_reason), policy=policy)
    assert t.row is not None and t.row["status"] == CLOSED
    assert t.row["detail_due"] == "closing"
    again = listed({**t.row, "detail_due": None}, record(**without_reason), at=T2, policy=policy)
    assert again.row is None or again.row["detail_due"] is None  # asked once, not at every listing


def test_a_waived_detail_is_let_go_and_changes_nothing_else() -> None:
    known = stored(detail_due="new", detail_attempts=1)
    t = observe_waived(known, run_id=9)
    assert t.kind == "waived" and t.version is None and t.row is not None
    assert_shapes(t)
    assert (t.row["detail_due"], t.row["detail_attempts"], t.row["last_run_id"]) == (None, 0, 9)
    assert {k: v for k, v in t.row.items() if k not in ("detail_due", "detail_attempts", "last_run_id")} == {
        k: v for k, v in known.items() if k not in ("detail_due", "detail_attempts", "last_run_id")
    }


@pytest.mark.parametrize("due", ["vanished", "closing"])
def test_a_waiver_leaves_a_detail_owed_for_the_final_state_alone(due: str) -> None:
    # Asked for as a new session, let go once the listing was trusted; meanwhile it vanished.
    t = observe_waived(stored(detail_due=due, detail_attempts=1), run_id=9)
    assert t.kind == "waived" and t.row is None and t.version is None


def test_listed_closed_session_again_without_end_is_unchanged() -> None:
    known = listed(stored(), record(**CLOSED_OBJ)).row
    assert known is not None
    # A later, sparser listing must not reopen it: a missing endTime never erases the known one.
    sparse = {k: v for k, v in OPEN.items() if k != "lastUpdated"}
    t = listed(known, record(**sparse), at=T2)
    assert t.kind == "unchanged"


@pytest.mark.parametrize(("policy"), ["changed", "vanished"], ids=["policy-changed", "policy-vanished"])
@pytest.mark.parametrize(
    ("previous_status", "extra"),
    [(VANISHED, {"vanished_at": T0, "detail_due": "vanished", "detail_attempts": 1}),
     (GONE, {"vanished_at": T0, "gone_at": T1, "detail_due": None})],
    ids=["vanished", "gone"],
)
def test_listed_reappeared(policy: str, previous_status: str, extra: dict[str, Any]) -> None:
    known = stored(policy=policy, status=previous_status, **extra)
    t = listed(known, record(**OPEN), at=T2, run_id=3, policy=policy)
    assert t.kind == "reappeared"
    assert t.row is not None and t.version is not None
    assert_shapes(t)
    assert t.row["status"] == ACTIVE
    assert t.row["vanished_at"] is None
    assert t.row["gone_at"] is None
    assert t.row["detail_due"] is None  # the urgent final-state fetch is moot
    assert t.row["detail_attempts"] == 0
    assert t.row["last_seen_at"] == T2
    assert t.row["last_run_id"] == 3
    assert t.version["status"] == ACTIVE
    assert t.version["source"] == "list"


def test_listed_reappeared_with_a_change_is_due_for_detail() -> None:
    known = stored(status=VANISHED, vanished_at=T0, detail_due="vanished")
    t = listed(known, record(**{**OPEN, "lastUpdated": START_MS + 7_000}), policy="changed")
    assert t.kind == "reappeared"
    assert t.row is not None
    assert t.row["detail_due"] == "changed"


# --- vanished from a complete listing ---------------------------------------------------------------------


def test_observe_vanished() -> None:
    known = stored(detail_due="new", detail_attempts=2)
    t = observe_vanished(known, at=T1, run_id=5)
    assert t.kind == "vanished"
    assert t.row is not None and t.version is not None
    assert_shapes(t)
    assert t.row["status"] == VANISHED
    assert t.row["vanished_at"] == T1
    assert t.row["detail_due"] == "vanished"
    assert t.row["detail_attempts"] == 0
    assert t.row["last_run_id"] == 5
    assert t.row["last_seen_at"] == T0  # it was not seen
    assert t.version["source"] == "archiver"
    assert t.version["status"] == VANISHED
    assert t.version["observed_at"] == T1
    assert t.version["run_id"] == 5
    assert t.version["start_time"] == ms_to_datetime(START_MS)


# --- detail fetches ------------------------------------------------------------------------------------------


def test_detail_of_a_vanished_session_that_closed() -> None:
    known = observe_vanished(stored(), at=T1, run_id=2).row
    assert known is not None
    t = observe_detail(known, record(**CLOSED_OBJ), at=T2, run_id=3)
    assert t.kind == "closed"
    assert t.row is not None and t.version is not None
    assert_shapes(t)
    assert t.row["status"] == CLOSED
    assert t.row["end_time"] == ms_to_datetime(START_MS + 60_000)
    assert t.row["close_reason"] == "1000"
    assert t.row["last_detail_at"] == T2
    assert t.row["detail_due"] is None
    assert t.row["detail_attempts"] == 0
    assert t.row["vanished_at"] == T1  # history of what the archiver saw stays
    assert t.version["source"] == "detail"
    assert t.version["status"] == CLOSED
    assert t.version["close_reason_text"] == "NormalClosure"


def test_detail_of_a_vanished_session_still_open_is_retried_a_bounded_number_of_times() -> None:
    row = observe_vanished(stored(), at=T1, run_id=2).row
    assert row is not None
    seen: list[tuple[str | None, int]] = []
    versions = 0
    for attempt in range(MAX_DETAIL_ATTEMPTS):
        t = observe_detail(row, record(**OPEN), at=T2 + timedelta(seconds=attempt), run_id=3 + attempt)
        assert t.kind == "fetched"
        assert t.row is not None
        assert_shapes(t)
        assert t.row["status"] == VANISHED
        assert t.row["last_detail_at"] == T2 + timedelta(seconds=attempt)
        seen.append((t.row["detail_due"], t.row["detail_attempts"]))
        versions += t.version is not None
        row = t.row
    assert MAX_DETAIL_ATTEMPTS == 3
    assert seen == [("vanished", 1), ("vanished", 2), (None, 0)]
    assert versions == 0  # nothing about the session changed


@pytest.mark.parametrize("missing", ["closeReason", "closeReasonText"])
def test_detail_that_shows_the_end_without_its_reason_is_asked_again(missing: str) -> None:
    row = observe_vanished(stored(), at=T1, run_id=2).row
    assert row is not None
    partial = {k: v for k, v in CLOSED_OBJ.items() if k != missing}
    seen = []
    for attempt in range(MAX_DETAIL_ATTEMPTS):
        t = observe_detail(row, record(**partial), at=T2 + timedelta(seconds=attempt), run_id=3 + attempt)
        assert t.row is not None and t.row["status"] == CLOSED and t.row["end_time"] is not None
        seen.append((t.row["detail_due"], t.row["detail_attempts"]))
        row = t.row
    assert seen == [("closing", 1), ("closing", 2), (None, 0)]  # bounded: the end itself is kept
    owed = observe_detail(observe_vanished(stored(), at=T1, run_id=2).row or {}, record(**partial), at=T2, run_id=3).row
    assert owed is not None
    # the next answer carries the reason: the session is complete and nothing more is owed
    done = observe_detail(owed, record(**CLOSED_OBJ), at=T2, run_id=4)
    assert done.row is not None and done.version is not None
    assert (done.row["close_reason"], done.row["close_reason_text"], done.row["detail_due"]) == ("1000", "NormalClosure", None)


def test_missing_detail_of_a_closed_session_owed_its_reason_is_asked_again() -> None:
    owed = observe_detail(
        observe_vanished(stored(), at=T1, run_id=2).row or {}, record(**{**OPEN, "endTime": START_MS + 60_000}), at=T2, run_id=3
    ).row
    assert owed is not None and (owed["detail_due"], owed["detail_attempts"]) == ("closing", 1)
    t = observe_missing(owed, at=T2, run_id=4)
    assert t.row is not None and (t.row["status"], t.row["detail_due"], t.row["detail_attempts"]) == (CLOSED, "closing", 2)
    last = observe_missing(t.row, at=T2, run_id=5)
    assert last.row is not None and (last.row["status"], last.row["detail_due"]) == (CLOSED, None)
    assert last.version is None  # closed stays closed: it is not gone


def test_detail_of_a_vanished_session_with_new_facts_records_a_version() -> None:
    known = observe_vanished(stored(), at=T1, run_id=2).row
    assert known is not None
    t = observe_detail(known, record(**{**OPEN, "connectionEndTime": START_MS + 20_000}), at=T2, run_id=3)
    assert t.kind == "fetched"
    assert t.row is not None and t.version is not None
    assert t.row["status"] == VANISHED
    assert t.version["connection_end_time"] == ms_to_datetime(START_MS + 20_000)
    assert t.version["source"] == "detail"


@pytest.mark.parametrize(
    ("fields", "expect_version"),
    [(OPEN, False), ({"startTime": START_MS}, False), ({**OPEN, "connectionId": "conn-9"}, True)],
    ids=["same", "sparser", "changed"],
)
def test_detail_of_an_active_session(fields: dict[str, Any], expect_version: bool) -> None:
    known = stored(detail_due="new", detail_attempts=1)
    t = observe_detail(known, record(**fields), at=T1, run_id=4)
    assert t.kind == "fetched"
    assert t.row is not None
    assert_shapes(t)
    assert t.row["status"] == ACTIVE
    assert t.row["detail_due"] is None
    assert t.row["detail_attempts"] == 0
    assert t.row["last_detail_at"] == T1
    assert t.row["last_seen_at"] == T0  # a detail is not a listing
    assert t.row["start_time"] == ms_to_datetime(START_MS)
    assert t.row["connection_id"] == fields.get("connectionId", "conn-1")
    assert (t.version is not None) is expect_version


def test_detail_of_an_active_session_that_closed() -> None:
    t = observe_detail(stored(), record(**CLOSED_OBJ), at=T1, run_id=4)
    assert t.kind == "closed"
    assert t.row is not None and t.version is not None
    assert t.row["status"] == CLOSED
    assert t.version["status"] == CLOSED


# --- detail found nothing (404 / null) ----------------------------------------------------------------------------


def test_missing_detail_of_a_vanished_session_is_asked_again_then_makes_it_gone() -> None:
    known = observe_vanished(stored(), at=T1, run_id=2).row
    assert known is not None
    for attempt in range(1, MAX_DETAIL_ATTEMPTS):
        # A null or a 404 may be a passing glitch: the final state is asked for again.
        again = observe_missing(known, at=T2, run_id=3)
        assert again.kind == "missing" and again.version is None and again.row is not None
        assert_shapes(again)
        assert (again.row["status"], again.row["detail_due"], again.row["detail_attempts"]) == (VANISHED, "vanished", attempt)
        known = again.row
    t = observe_missing(known, at=T2, run_id=3)
    assert t.kind == "gone"
    assert t.row is not None and t.version is not None
    assert_shapes(t)
    assert t.row["status"] == GONE
    assert t.row["gone_at"] == T2
    assert t.row["vanished_at"] == T1
    assert t.row["detail_due"] is None
    assert t.row["detail_attempts"] == 0
    assert t.row["last_run_id"] == 3
    # Its last known state stays.
    assert {n: t.row[n] for n in STATE_FIELDS} == {n: known[n] for n in STATE_FIELDS}
    assert t.version["status"] == GONE
    assert t.version["source"] == "detail"
    assert t.version["observed_at"] == T2


@pytest.mark.parametrize("status", [ACTIVE, CLOSED], ids=["active", "closed"])
def test_missing_detail_of_a_session_not_vanished(status: str) -> None:
    known = stored(status=status, detail_due="new", detail_attempts=2)
    t = observe_missing(known, at=T1, run_id=3)
    assert t.kind == "missing"
    assert t.version is None
    assert t.row is not None
    assert_shapes(t)
    assert t.row["status"] == status
    assert t.row["gone_at"] is None
    assert t.row["detail_due"] is None
    assert t.row["detail_attempts"] == 0
    assert t.row["last_run_id"] == 3


# --- detail returned something unusable ------------------------------------------------------------------------------


@pytest.mark.parametrize("due", ["vanished", "changed", "new"], ids=["vanished", "changed", "new"])
def test_bad_detail_is_retried_a_bounded_number_of_times(due: str) -> None:
    row = stored(detail_due=due)
    seen = []
    for run_id in range(3, 3 + MAX_DETAIL_ATTEMPTS):
        t = observe_bad_detail(row, run_id=run_id)
        assert t.kind == "rejected"
        assert t.version is None
        assert t.row is not None
        assert_shapes(t)
        assert t.row["last_run_id"] == run_id
        assert t.row["status"] == row["status"]
        seen.append((t.row["detail_due"], t.row["detail_attempts"]))
        row = t.row
    assert seen == [(due, 1), (due, 2), (None, 0)]


# --- priorities -------------------------------------------------------------------------------------------------------

URGENCY_CASES = [
    (None, None, None),
    (None, "new", "new"),
    ("changed", None, "changed"),
    ("new", "changed", "changed"),
    ("changed", "new", "changed"),
    ("changed", "vanished", "vanished"),
    ("vanished", "new", "vanished"),
    ("new", "new", "new"),
    ("vanished", "vanished", "vanished"),
]


# --- the content hash -------------------------------------------------------------------------------------


def test_a_listing_stores_the_digest_of_what_it_listed() -> None:
    new = observe_listed(None, record(**OPEN), account_id=ACCOUNT, seen_at=T0, run_id=1, detail_wanted=True, content_hash="a" * 32)
    assert new.row is not None and new.row["content_hash"] == "a" * 32
    changed = observe_listed(
        stored(content_hash="a" * 32), record(**CLOSED_OBJ), account_id=ACCOUNT, seen_at=T1, run_id=2, detail_wanted=True,
        content_hash="b" * 32,
    )
    assert changed.row is not None and changed.row["content_hash"] == "b" * 32
    # The digest vouches for the state it leaves: listed as it was, the object is unchanged.
    assert listed_unchanged(changed.row, record(**CLOSED_OBJ))


def test_a_listed_object_with_a_bad_field_is_never_vouched_for() -> None:
    bad = record(**{**OPEN, "endTime": "soon"})
    assert bad.problems
    new = observe_listed(None, bad, account_id=ACCOUNT, seen_at=T0, run_id=1, detail_wanted=True, content_hash="a" * 32)
    assert new.row is not None and new.row["content_hash"] is None


def test_what_moves_the_status_clears_the_digest() -> None:
    known = stored(content_hash="a" * 32)
    vanished = observe_vanished(known, at=T1, run_id=2).row
    assert vanished is not None and vanished["content_hash"] is None
    known_vanished = {**known, "status": VANISHED, "detail_due": "vanished", "detail_attempts": MAX_DETAIL_ATTEMPTS - 1}
    gone = observe_missing(known_vanished, at=T2, run_id=3).row
    assert gone is not None and gone["status"] == GONE and gone["content_hash"] is None


@pytest.mark.parametrize(
    ("detail", "kept"),
    [(OPEN, True), ({**OPEN, "connectionEndTime": START_MS + 900}, False), (CLOSED_OBJ, False),
     ({**OPEN, "webSocketDebuggerUrl": "wss://other.example/x?jwt=b"}, False)],
    ids=["same-state", "new-field", "closed", "new-url"],
)
def test_a_detail_keeps_the_digest_only_if_it_moved_nothing(detail: dict[str, Any], kept: bool) -> None:
    known = stored(content_hash="a" * 32)
    row = observe_detail(known, record(**detail), at=T1, run_id=2).row
    assert row is not None and row["content_hash"] == ("a" * 32 if kept else None)
    if kept:  # it still vouches: the listed object it stands for is unchanged against the new state
        assert listed_unchanged(row, record(**OPEN))


def test_a_failed_detail_keeps_the_digest() -> None:
    known = stored(content_hash="a" * 32)
    assert observe_bad_detail(known, run_id=2).row["content_hash"] == "a" * 32  # type: ignore[index]
    assert observe_missing(known, at=T1, run_id=2).row["content_hash"] == "a" * 32  # type: ignore[index]


@pytest.mark.parametrize(("a", "b", "expected"), URGENCY_CASES, ids=[f"{a}-{b}" for a, b, _ in URGENCY_CASES])
def test_most_urgent(a: str | None, b: str | None, expected: str | None) -> None:
    assert most_urgent(a, b) == expected
    assert most_urgent(b, a) == expected


# --- invariants across every transition ----------------------------------------------------------------------------------


def every_transition() -> list[tuple[str, Transition, dict[str, Any] | None]]:
    active = stored()
    vanished = observe_vanished(stored(), at=T1, run_id=2).row
    assert vanished is not None
    last_try = {**vanished, "detail_attempts": MAX_DETAIL_ATTEMPTS - 1}
    return [
        ("new", listed(None, record(**OPEN)), None),
        ("refreshed", listed(active, record(**{**OPEN, "devtoolsFrontendUrl": "https://x/ui?a=1"})), active),
        ("changed", listed(active, record(**{**OPEN, "connectionId": "c"})), active),
        ("closed-by-listing", listed(active, record(**CLOSED_FIELDS)), active),
        ("reappeared", listed(vanished, record(**OPEN)), vanished),
        ("vanished", observe_vanished(active, at=T1, run_id=2), active),
        ("detail-closed", observe_detail(vanished, record(**CLOSED_FIELDS), at=T2, run_id=3), vanished),
        ("detail-open", observe_detail(vanished, record(**OPEN), at=T2, run_id=3), vanished),
        ("detail-active", observe_detail(active, record(**OPEN), at=T2, run_id=3), active),
        ("gone", observe_missing(last_try, at=T2, run_id=3), last_try),
        ("missing-once", observe_missing(vanished, at=T2, run_id=3), vanished),
        ("missing", observe_missing(active, at=T2, run_id=3), active),
        ("rejected", observe_bad_detail(vanished, run_id=3), vanished),
    ]


@pytest.mark.parametrize("index", range(13), ids=[name for name, _, _ in every_transition()])
def test_every_transition_writes_whole_rows_for_the_same_session(index: int) -> None:
    _, t, known = every_transition()[index]
    assert t.row is not None
    assert_shapes(t)
    assert (t.row["account_id"], t.row["session_id"]) == (ACCOUNT, SID)
    if known is not None:
        assert t.row["first_seen_at"] == known["first_seen_at"]
    if t.version is not None:
        assert t.version["status"] == t.row["status"]
        assert {n: t.version[n] for n in STATE_FIELDS} == {n: t.row[n] for n in STATE_FIELDS}


def test_transitions_do_not_modify_the_stored_row() -> None:
    active = stored(detail_due="new", detail_attempts=1)
    vanished = observe_vanished(stored(), at=T1, run_id=2).row
    assert vanished is not None
    before = (copy.deepcopy(active), copy.deepcopy(vanished))
    listed(active, record(**CLOSED_OBJ))
    listed(vanished, record(**OPEN))
    observe_vanished(active, at=T1, run_id=2)
    observe_detail(vanished, record(**CLOSED_FIELDS), at=T2, run_id=3)
    observe_detail(active, record(**OPEN), at=T2, run_id=3)
    observe_missing(vanished, at=T2, run_id=3)
    observe_bad_detail(active, run_id=3)
    assert (active, vanished) == before
