"""The archive's words: session statuses, why a detail is owed, where a version came from and how a
cycle ended. Each value is what the tables store; the enums are strings, so they compare, hash and
serialise as their values.

Nothing here imports the database layer, so the command line can name them (in its choices) without
paying SQLAlchemy's import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """Where a session stands in the archive."""

    ACTIVE = "active"  # in the latest listing, no end time known
    CLOSED = "closed"  # end time known
    VANISHED = "vanished"  # left a complete listing, end not (yet) known
    GONE = "gone"  # Cloudflare forgot it (404) before we learned its end


class Due(StrEnum):
    """Why a detail fetch is owed for a session."""

    VANISHED = "vanished"  # its final state is about to go
    CLOSING = "closing"  # closed, but its reason is missing
    CHANGED = "changed"  # its listed object moved: the detail may carry what the listing did not
    NEW = "new"


class Source(StrEnum):
    """What a version row was learned from."""

    LIST = "list"
    DETAIL = "detail"
    ARCHIVER = "archiver"  # the archiver's own conclusion (vanished: left a complete listing)


class Kind(StrEnum):
    """What one observation did to a session (lifecycle.Transition); a cycle counts each kind."""

    NEW = "new"
    UNCHANGED = "unchanged"
    REFRESHED = "refreshed"  # listed with new values that are no lifecycle fact (a fresh URL token)
    CHANGED = "changed"
    REAPPEARED = "reappeared"  # listed again after it vanished or was given up as gone
    VANISHED = "vanished"
    FETCHED = "fetched"  # a detail answered
    CLOSED = "closed"  # a detail answered with the session's end
    MISSING = "missing"  # a detail found nothing, and the session is asked again or was still listed
    GONE = "gone"  # Cloudflare forgot a vanished session before telling its end
    REJECTED = "rejected"  # a detail answered with something unusable
    WAIVED = "waived"  # a detail owed for a new or changed session let go


class Outcome(StrEnum):
    """How a poll cycle ended, as its ledger row says."""

    OK = "ok"  # complete listing, every detail owed fetched
    PARTIAL = "partial"  # the listing was stored, but it was incomplete or details failed
    FAILED = "failed"
    ABORTED = "aborted"  # stopped by a signal, a deadline, or the death of its process
    SKIPPED = "skipped"  # another worker holds the account's lease (never stored)

    @property
    def failed(self) -> bool:
        return self in (Outcome.FAILED, Outcome.ABORTED)


@dataclass(frozen=True)
class CycleCounter:
    """One thing a poll cycle counts: the key in its counts, its ledger column if it has one
    (``stored``), and the word its log line and the command line's summary give it."""

    name: str
    word: str
    stored: bool = True


# What a cycle's ledger row, its log line and `archiver sync`'s summary report, in this order.
# A stored counter is a column of sync_runs (models.runs_table): adding one takes a line here, the
# column and its migration.
CYCLE_COUNTERS = (
    CycleCounter("listed", "listed"),
    CycleCounter("new", "new"),
    CycleCounter("changed", "changed"),
    CycleCounter("vanished", "vanished"),
    CycleCounter("reappeared", "reappeared"),
    CycleCounter("details_fetched", "details"),
    CycleCounter("details_gone", "gone"),
    CycleCounter("details_waived", "waived", stored=False),
    CycleCounter("details_failed", "failed"),
    CycleCounter("details_carried", "carried"),
    CycleCounter("rejected", "rejected"),
)
STORED_COUNTERS = tuple(counter.name for counter in CYCLE_COUNTERS if counter.stored)

STATUSES = tuple(status.value for status in Status)
# The statuses of sessions whose end is not known yet; the archive's other sessions only grow.
OPEN_STATUSES = (Status.ACTIVE, Status.VANISHED)
# Most urgent first; a final state asked again (AGAIN_RANK) ranks between the first asks for final
# states and the rest: a vanished session's retry must not wait behind new sessions' details.
DETAIL_PRIORITY = {Due.VANISHED: 0, Due.CLOSING: 1, Due.CHANGED: 3, Due.NEW: 4}
AGAIN_RANK = 2
# The dues about a session's final state: a 404 or null for one is asked again a few times.
FINAL_STATE_DUES = (Due.VANISHED, Due.CLOSING)

EXPORT_TABLES = ("sessions", "versions", "runs")
PRUNE_BATCH = 5000  # rows deleted per transaction by default
