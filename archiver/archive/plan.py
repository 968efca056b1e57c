"""What a page of listed objects, a vanish pass or a batch of detail answers changes in the archive,
worked out without touching the database: a Plan, which store.apply_plan writes in the caller's
transaction.

The listing is planned in three pure steps with a narrow read before each, so that most listed
sessions (unchanged since the last cycle) cost one read of their digests and nothing else:

    digests  -> sort_listed:    unchanged by digest | parsed records | rejects
    states   -> split_moved:    unchanged by value (new digest noted) | moved
    rows     -> plan_moved:     new, changed, reappeared rows and their versions
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from archiver.archive import lifecycle, reasons
from archiver.archive.models import CLOSED
from archiver.archive.records import SessionRecord, parse_session, reject_body
from archiver.archive.rows import RejectRow, SessionRow, StoredState, VersionRow
from archiver.errors import BadRecordError
from archiver.vocabulary import Source

# The count of closes learned in a cycle, by the reason's documented name: "closed:BrowserIdle".
CLOSED_PREFIX = "closed:"
# How many sessions a cycle moved into (positive) or out of (negative) a status: "status:active".
STATUS_PREFIX = "status:"
# A listed object, the id it is listed under (None if it gives no usable one) and its digest.
Hashed = tuple[Any, str | None, str | None]
Parsed = list[tuple[SessionRecord, str | None]]


@dataclass
class Plan:
    """Rows to upsert and versions to insert (of new, changed, vanished or detailed sessions),
    rejects, and for a listing the ids of unchanged sessions and the new digests of unchanged
    ones; with what it counted for the ledger."""

    rows: list[SessionRow] = field(default_factory=list)
    versions: list[VersionRow] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rehashed: dict[str, str] = field(default_factory=dict)
    rejects: list[RejectRow] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, step: lifecycle.Transition, before: SessionRow | None = None) -> None:
        """A transition's row and version (``before``: the row as it was, None for a new
        session). A close whose reason is known for the first time is counted under the reason's
        documented name, and a move from one status to another in the two statuses' counts."""
        if step.row is not None:
            self.rows.append(step.row)
            if before is None or before["status"] != step.row["status"]:
                self.counts[STATUS_PREFIX + step.row["status"]] += 1
                if before is not None:
                    self.counts[STATUS_PREFIX + before["status"]] -= 1
            if _closed_with_reason(step.row) and not (before is not None and _closed_with_reason(before)):
                self.counts[CLOSED_PREFIX + (reasons.name(step.row["close_reason"]) or "")] += 1
        if step.version is not None:
            self.versions.append(step.version)

    def reject(self, context: Context, source: Source, session_id: str | None, reason: str, body: Any, *,
               kept: bool, at: datetime) -> None:
        """Set an upstream object aside with its reason (``kept``: its session was stored anyway)."""
        self.counts["rejected"] += 1
        self.rejects.append({
            "account_id": context.account_id, "run_id": context.run_id, "rejected_at": at, "source": source,
            "session_id": session_id, "reason": reason, "body": reject_body(body), "kept": kept,
        })


@dataclass(frozen=True)
class Context:
    """What planning needs to know of the cycle: whose, which run, how to parse, and whether the
    detail mode wants the details of new and changed sessions."""

    account_id: str
    run_id: int
    keep_url_tokens: bool
    wants_detail: Callable[[str], bool]


def sort_listed(hashed: Iterable[Hashed], stored_hashes: Mapping[str, str | None], seen: set[str], context: Context,
                seen_at: datetime, plan: Plan) -> Parsed:
    """Sessions listed with their stored digest go to ``plan.unchanged``, objects that cannot be
    used to its rejects; the others are parsed and returned with their digests. An id already in
    ``seen`` (overlapping pages, a list that shifted right) is skipped; new ids are added to it."""
    parsed: Parsed = []
    for item, listed_id, digest in hashed:
        if listed_id in seen:
            continue
        if listed_id is not None and digest is not None and stored_hashes.get(listed_id) == digest:
            seen.add(listed_id)
            plan.unchanged.append(listed_id)
            continue
        try:
            record = parse_session(item, keep_url_tokens=context.keep_url_tokens)
        except BadRecordError as exc:
            # Whose record this was is unknown, so the listing cannot prove any absence.
            plan.counts["unidentified"] += 1
            plan.reject(context, Source.LIST, None, exc.reason, item, kept=False, at=seen_at)
            continue
        if record.session_id in seen:
            continue
        seen.add(record.session_id)
        if record.problems:
            plan.reject(context, Source.LIST, record.session_id, "; ".join(record.problems), item, kept=True, at=seen_at)
        parsed.append((record, digest))
    plan.counts["listed"] += len(plan.unchanged) + len(parsed)
    return parsed


def split_moved(parsed: Parsed, states: Mapping[str, StoredState], plan: Plan) -> Parsed:
    """Of the parsed records, those whose state (``states``: the stored sessions' lifecycle
    columns) the listing did not move are unchanged (with their new digest, if they have one);
    the others are returned."""
    moved: Parsed = []
    for record, digest in parsed:
        state = states.get(record.session_id)
        if state is None or not lifecycle.listed_unchanged(state, record):
            moved.append((record, digest))
        elif digest is not None and not record.problems:
            plan.rehashed[record.session_id] = digest
        else:
            plan.unchanged.append(record.session_id)
    plan.counts["unchanged"] += len(plan.unchanged) + len(plan.rehashed)
    return moved


def plan_moved(moved: Parsed, known: Mapping[str, SessionRow], context: Context, seen_at: datetime, plan: Plan) -> None:
    """The rows and versions of the sessions a listing moved (``known``: their stored rows)."""
    for record, digest in moved:
        step = lifecycle.observe_listed(
            known.get(record.session_id), record, account_id=context.account_id, seen_at=seen_at, run_id=context.run_id,
            detail_wanted=context.wants_detail(record.session_id), content_hash=digest,
        )
        plan.counts[step.kind] += 1
        plan.add(step, known.get(record.session_id))


def plan_vanished(rows: Iterable[SessionRow], context: Context, at: datetime, plan: Plan) -> None:
    """The active sessions a complete listing no longer holds: vanished, a detail owed."""
    for row in rows:
        plan.add(lifecycle.observe_vanished(row, at=at, run_id=context.run_id), row)
        plan.counts["vanished"] += 1


def _closed_with_reason(row: SessionRow) -> bool:
    return bool(row["status"] == CLOSED and row["close_reason"] is not None)


def listed_ids(hashed: Sequence[Hashed]) -> list[str]:
    return [listed_id for _, listed_id, _ in hashed if listed_id is not None]
