"""How one observation moves a session's stored state: pure functions, no I/O.

Each function takes the stored row (a :class:`SessionRow`, or None for an unknown session) and an
observation, and returns a :class:`Transition`: what kind of move it was, the full row to write (or
None when only ``last_seen_at`` moves) and the version row to append (or None).

A row's ``content_hash`` vouches that a listed object with that digest tells nothing new about
it (see :func:`listed_unchanged`, which reads only the status and the state fields). A listing
sets it; whatever else moves the status or a state field (the vanish pass, a detail, giving up on
a vanished session) clears it, so that the next listing compares field by field again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from archiver.archive.models import ACTIVE, CLOSED, GONE, VANISHED
from archiver.archive.records import STATE_FIELDS, SessionRecord, lifecycle_changed, merge_state
from archiver.archive.rows import SessionRow, SessionState, StoredState, VersionRow
from archiver.vocabulary import DETAIL_PRIORITY, FINAL_STATE_DUES, Due, Kind, Source

# A vanished session whose details still show no end (or no close reason, or nothing at all) is
# asked again a few times: Cloudflare may drop a session from the list a moment before it writes
# the close reason, and one odd answer must not cost the session's final state.
MAX_DETAIL_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Transition:
    kind: Kind
    row: SessionRow | None = None
    version: VersionRow | None = None


def observe_listed(
    known: SessionRow | None,
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
        row: SessionRow = {
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
        return Transition(Kind.NEW, row, _version(row, run_id, seen_at, Source.LIST))
    if listed_unchanged(known, record):
        return Transition(Kind.UNCHANGED)
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
    kind = Kind.REAPPEARED if reappeared else (Kind.CHANGED if changed or version else Kind.REFRESHED)
    return Transition(kind, row, version)


def listed_unchanged(known: StoredState, record: SessionRecord) -> bool:
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


def observe_vanished(known: SessionRow, *, at: datetime, run_id: int) -> Transition:
    """An active session was absent from a complete listing."""
    # content_hash: listed again as it was, the session has reappeared, not stayed unchanged
    row: SessionRow = {**known, "status": VANISHED, "vanished_at": at, "detail_due": Due.VANISHED, "detail_attempts": 0,
                       "last_run_id": run_id, "content_hash": None}
    return Transition(Kind.VANISHED, row, _version(row, run_id, at, Source.ARCHIVER))


def observe_detail(known: SessionRow, record: SessionRecord, *, at: datetime, run_id: int) -> Transition:
    """A detail fetch returned the session."""
    merged = merge_state(known, record)
    attempts = known["detail_attempts"]
    due = None
    status: str
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
    row: SessionRow = {
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
    return Transition(Kind.CLOSED if status == CLOSED else Kind.FETCHED, row, _version(row, run_id, at, Source.DETAIL) if changed else None)


def observe_missing(known: SessionRow, *, at: datetime, run_id: int) -> Transition:
    """A detail fetch found nothing (404 or null): Cloudflare has forgotten the session.

    A session whose final state is owed (vanished, or closed without its reason) is asked again
    until MAX_DETAIL_ATTEMPTS fetches have not given it, and only then given up (a vanished one
    marked gone): one null or 404 may be a passing glitch upstream.
    """
    attempts = known["detail_attempts"] + 1
    if known["detail_due"] in FINAL_STATE_DUES and attempts < MAX_DETAIL_ATTEMPTS:
        return Transition(Kind.MISSING, {**known, "detail_attempts": attempts, "last_run_id": run_id})
    if known["status"] != VANISHED:
        # Still listed (or already closed): nothing is lost, and nothing to wait for.
        return Transition(Kind.MISSING, {**known, "detail_due": None, "detail_attempts": 0, "last_run_id": run_id})
    row: SessionRow = {**known, "status": GONE, "gone_at": at, "detail_due": None, "detail_attempts": 0, "last_run_id": run_id,
                       "content_hash": None}
    return Transition(Kind.GONE, row, _version(row, run_id, at, Source.DETAIL))


def observe_bad_detail(known: SessionRow, *, run_id: int) -> Transition:
    """A detail fetch returned something unusable: try again a bounded number of times."""
    attempts = known["detail_attempts"] + 1
    due = known["detail_due"] if attempts < MAX_DETAIL_ATTEMPTS else None
    return Transition(Kind.REJECTED, {**known, "detail_due": due, "detail_attempts": attempts if due else 0, "last_run_id": run_id})


def observe_waived(known: SessionRow, *, run_id: int) -> Transition:
    """A detail owed for a new or changed session was let go: the detail mode trusts the listing.
    One owed for the session's final state (it vanished or closed since) stays owed."""
    if known["detail_due"] not in (Due.NEW, Due.CHANGED):
        return Transition(Kind.WAIVED)
    return Transition(Kind.WAIVED, {**known, "detail_due": None, "detail_attempts": 0, "last_run_id": run_id})


def _closing_due(status: str, merged: SessionState) -> str | None:
    """"closing" if a closed session's state lacks what its close should tell (its end, reason
    and reason's text), else None: while one is missing, the detail is asked again."""
    return Due.CLOSING if status == CLOSED and (merged["end_time"] is None or merged["close_reason"] is None
                                                     or merged["close_reason_text"] is None) else None


def _state_moved(known: SessionState, merged: SessionState) -> bool:
    return any(known.get(name) != merged[name] for name in STATE_FIELDS)


def most_urgent(a: str | None, b: str | None) -> str | None:
    """The more urgent of two detail reasons."""
    if a is None or b is None:
        return a or b
    return a if DETAIL_PRIORITY[Due(a)] <= DETAIL_PRIORITY[Due(b)] else b


def _version(row: SessionRow, run_id: int, observed_at: datetime, source: str) -> VersionRow:
    return {
        "account_id": row["account_id"],
        "session_id": row["session_id"],
        "run_id": run_id,
        "observed_at": observed_at,
        "source": source,
        "status": row["status"],
        "start_time": row["start_time"],
        "end_time": row["end_time"],
        "connection_start_time": row["connection_start_time"],
        "connection_end_time": row["connection_end_time"],
        "last_updated": row["last_updated"],
        "connection_id": row["connection_id"],
        "close_reason": row["close_reason"],
        "close_reason_text": row["close_reason_text"],
        "devtools_frontend_url": row["devtools_frontend_url"],
        "web_socket_debugger_url": row["web_socket_debugger_url"],
        "raw": row["raw"],
    }
