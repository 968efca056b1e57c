"""How one observation moves a session's stored state: pure functions, no I/O.

Each function takes the stored row (a dict of every ``browser_sessions`` column, or None for an
unknown session) and an observation, and returns a :class:`Transition`: the full row to write (or
None when only ``last_seen_at`` moves) and the version row to append (or None).

A row's ``content_hash`` vouches that a listed object with that digest tells nothing new about
it (see :func:`listed_unchanged`, which reads only the status and the state fields). A listing
sets it; whatever else moves the status or a state field (the vanish pass, a detail, giving up on
a vanished session) clears it, so that the next listing compares field by field again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from archiver.archive.models import ACTIVE, CLOSED, GONE, VANISHED
from archiver.archive.records import STATE_FIELDS, SessionRecord, lifecycle_changed, merge_state
from archiver.vocabulary import DETAIL_PRIORITY, FINAL_STATE_DUES, Due, Source

# A vanished session whose details still show no end (or no close reason, or nothing at all) is
# asked again a few times: Cloudflare may drop a session from the list a moment before it writes
# the close reason, and one odd answer must not cost the session's final state.
MAX_DETAIL_ATTEMPTS = 3
# What a closed session's details should tell; while one is missing the detail is asked again.
CLOSING_FIELDS = ("end_time", "close_reason", "close_reason_text")
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Transition:
    kind: str
    row: Row | None = None
    version: Row | None = None


def observe_listed(
    known: Row | None,
    record: SessionRecord,
    *,
    account_id: str,
    seen_at: datetime,
    run_id: int,
    detail_wanted: bool,
    content_hash: str | None = None,
) -> Transition:
    """A session was in a listing; ``content_hash`` is the listed object's listing_hash.

    ``detail_wanted``: whether a new or changed session is owed a detail (the detail mode's
    choice). A session the listing shows closed without its reason is owed one whatever the mode.
    """
    merged = merge_state(known, record)
    # The new state reflects this object: its digest vouches for it, unless a field of it had to
    # be set aside (such an object is parsed, and its problems noted, every time it is listed).
    content_hash = None if record.problems else content_hash
    status = CLOSED if merged["end_time"] is not None else ACTIVE
    if known is None:
        row = {
            "account_id": account_id,
            "session_id": record.session_id,
            "status": status,
            "first_seen_at": seen_at,
            "last_seen_at": seen_at,
            "last_detail_at": None,
            "vanished_at": None,
            "gone_at": None,
            "detail_due": most_urgent(Due.NEW if detail_wanted else None, _closing_due(status, merged)),
            "detail_attempts": 0,
            "last_run_id": run_id,
            **merged,
            "raw": record.raw,
            "content_hash": content_hash,
        }
        return Transition("new", row, _version(row, run_id, seen_at, Source.LIST))
    if listed_unchanged(known, record):
        return Transition("unchanged")
    changed = lifecycle_changed(known, merged)
    reappeared = known["status"] in (VANISHED, GONE)
    due = known["detail_due"]
    if reappeared and due == Due.VANISHED:
        due = None  # it is listed again: the urgent final-state fetch is moot
    if changed and detail_wanted:
        due = most_urgent(due, Due.CHANGED)
    if known["status"] != CLOSED:  # once: a closed session listed again is not asked again
        due = most_urgent(due, _closing_due(status, merged))
    row = {
        **known,
        **merged,
        "status": status,
        "last_seen_at": seen_at,
        "vanished_at": None if reappeared else known["vanished_at"],
        "gone_at": None if reappeared else known["gone_at"],
        "detail_due": due,
        "detail_attempts": 0 if due != known["detail_due"] else known["detail_attempts"],
        "last_run_id": run_id,
        "raw": record.raw,
        "content_hash": content_hash,
    }
    version = _version(row, run_id, seen_at, Source.LIST) if changed or status != known["status"] else None
    kind = "reappeared" if reappeared else ("changed" if changed or version else "refreshed")
    return Transition(kind, row, version)


def listed_unchanged(known: Row, record: SessionRecord) -> bool:
    """Whether a listing tells nothing new about a known session, so that only its
    ``last_seen_at`` moves: no field differs from a value the record carries, and the status the
    listing implies is the stored one.

    Reads only ``status`` and the :data:`STATE_FIELDS` of ``known``, so the cycle can decide it
    before it loads whole rows, which it then does only for the sessions that did change.
    """
    fields = record.fields
    for name in STATE_FIELDS:
        value = fields[name]
        if value is not None and value != known.get(name):
            return False
    ended = fields["end_time"] is not None or known.get("end_time") is not None
    return bool(known["status"] == (CLOSED if ended else ACTIVE))


def observe_vanished(known: Row, *, at: datetime, run_id: int) -> Transition:
    """An active session was absent from a complete listing."""
    row = {**known, "status": VANISHED, "vanished_at": at, "detail_due": Due.VANISHED, "detail_attempts": 0}
    row["last_run_id"] = run_id
    row["content_hash"] = None  # listed again as it was, it has reappeared: not unchanged
    return Transition("vanished", row, _version(row, run_id, at, Source.ARCHIVER))


def observe_detail(known: Row, record: SessionRecord, *, at: datetime, run_id: int) -> Transition:
    """A detail fetch returned the session."""
    merged = merge_state(known, record)
    attempts = known["detail_attempts"]
    due = None
    if merged["end_time"] is not None:
        status = CLOSED
        if _closing_due(status, merged):
            attempts += 1
            due = Due.CLOSING if attempts < MAX_DETAIL_ATTEMPTS else None
    elif known["status"] == VANISHED:
        status = VANISHED
        attempts += 1
        due = Due.VANISHED if attempts < MAX_DETAIL_ATTEMPTS else None
    else:
        status = known["status"]
    row = {
        **known,
        **merged,
        "status": status,
        "last_detail_at": at,
        "detail_due": due,
        "detail_attempts": attempts if due else 0,
        "last_run_id": run_id,
        "raw": record.raw,
        # A detail that moved the state leaves no listed object vouching for it.
        "content_hash": known.get("content_hash") if status == known["status"] and not _state_moved(known, merged) else None,
    }
    changed = lifecycle_changed(known, merged) or status != known["status"]
    return Transition("closed" if status == CLOSED else "fetched", row, _version(row, run_id, at, Source.DETAIL) if changed else None)


def observe_missing(known: Row, *, at: datetime, run_id: int) -> Transition:
    """A detail fetch found nothing (404 or null): Cloudflare has forgotten the session.

    A session whose final state is owed (vanished, or closed without its reason) is asked again
    until MAX_DETAIL_ATTEMPTS fetches have not given it, and only then given up (a vanished one
    marked gone): one null or 404 may be a passing glitch upstream.
    """
    attempts = known["detail_attempts"] + 1
    if known["detail_due"] in FINAL_STATE_DUES and attempts < MAX_DETAIL_ATTEMPTS:
        return Transition("missing", {**known, "detail_attempts": attempts, "last_run_id": run_id})
    if known["status"] != VANISHED:
        # Still listed (or already closed): nothing is lost, and nothing to wait for.
        row = {**known, "detail_due": None, "detail_attempts": 0, "last_run_id": run_id}
        return Transition("missing", row)
    row = {**known, "status": GONE, "gone_at": at, "detail_due": None, "detail_attempts": 0, "last_run_id": run_id}
    row["content_hash"] = None
    return Transition("gone", row, _version(row, run_id, at, Source.DETAIL))


def observe_bad_detail(known: Row, *, run_id: int) -> Transition:
    """A detail fetch returned something unusable: try again a bounded number of times."""
    attempts = known["detail_attempts"] + 1
    due = known["detail_due"] if attempts < MAX_DETAIL_ATTEMPTS else None
    row = {**known, "detail_due": due, "detail_attempts": attempts if due else 0, "last_run_id": run_id}
    return Transition("rejected", row)


def observe_waived(known: Row, *, run_id: int) -> Transition:
    """A detail owed for a new or changed session was let go: the detail mode trusts the listing.
    One owed for the session's final state (it vanished or closed since) stays owed."""
    if known["detail_due"] not in (Due.NEW, Due.CHANGED):
        return Transition("waived")
    return Transition("waived", {**known, "detail_due": None, "detail_attempts": 0, "last_run_id": run_id})


def _closing_due(status: str, merged: Row) -> str | None:
    """"closing" if a closed session's state lacks what its close should tell, else None."""
    return Due.CLOSING if status == CLOSED and any(merged[name] is None for name in CLOSING_FIELDS) else None


def _state_moved(known: Row, merged: Row) -> bool:
    return any(known.get(name) != merged[name] for name in STATE_FIELDS)


def most_urgent(a: str | None, b: str | None) -> str | None:
    """The more urgent of two detail reasons."""
    if a is None or b is None:
        return a or b
    return a if DETAIL_PRIORITY[Due(a)] <= DETAIL_PRIORITY[Due(b)] else b


def _version(row: Row, run_id: int, observed_at: datetime, source: str) -> Row:
    return {
        "account_id": row["account_id"],
        "session_id": row["session_id"],
        "run_id": run_id,
        "observed_at": observed_at,
        "source": source,
        "status": row["status"],
        **{name: row[name] for name in STATE_FIELDS},
        "raw": row["raw"],
    }
