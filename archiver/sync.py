"""One poll cycle for one account: list -> diff -> store -> fetch details -> store -> ledger.

Transactions are per batch of listed objects (the last one with the vanish pass) and per detail
batch, so a cycle that dies at any point leaves whole steps behind, and the next cycle converges to
the same database. The cycle's last write closes its ledger row too, where the figures are known
by then; otherwise a write of its own closes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from archiver import lifecycle, locks, store
from archiver.cloudflare import AccountAPI, Listing, RequestStats, client_from_settings
from archiver.config import Settings
from archiver.errors import ArchiverError, BadRecordError, RetriableError, first_line
from archiver.records import SessionRecord, listing_hash, parse_session, reject_body

log = logging.getLogger(__name__)

# Listed objects are written when this many have arrived, or when the listing ends. A write
# touches index pages all over each index (session ids are random), and every commit writes the
# pages it touched again: a 10,000-session listing stored page by page (200 objects) wrote its
# indexes 50 times over. Bounded, so that a huge listing is never held whole.
LISTING_WRITE_BATCH = 2000
# Detail results are written when this many have arrived, or when the oldest has waited this
# long, so that a slow API or an interrupted cycle loses little work.
DETAIL_WRITE_BATCH = 50
DETAIL_WRITE_SECONDS = 0.5
Clock = Callable[[], datetime]
# Called first in each write transaction of a cycle; raises LeaseLostError if this worker may no
# longer write for the account (the service's lease check).
Fence = Callable[[Connection], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


def default_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class DatabaseError(RetriableError):
    """The database failed mid-cycle; the transaction under way was rolled back."""


@dataclass(frozen=True)
class CycleOptions:
    detail_policy: str = "changed"
    detail_budget: int = 100
    detail_concurrency: int = 4
    keep_url_tokens: bool = False
    worker: str = field(default_factory=default_worker)

    @classmethod
    def from_settings(cls, settings: Settings) -> CycleOptions:
        return cls(
            detail_policy=settings.detail_policy,
            detail_budget=settings.detail_budget,
            detail_concurrency=settings.detail_concurrency,
            keep_url_tokens=settings.keep_url_tokens,
        )


# The outcome of an account that `sync_accounts` left alone because another worker holds its
# lease: no cycle ran, and the ledger has no row for it.
SKIPPED = "skipped"


@dataclass
class CycleResult:
    """What one cycle did; the same figures are in its ledger row."""

    account_id: str
    run_id: int
    outcome: str
    listing_complete: bool
    counts: dict[str, int]
    duration_seconds: float
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.outcome in ("failed", "aborted")


async def run_cycle(
    api: AccountAPI,
    engine: Engine,
    options: CycleOptions,
    *,
    clock: Clock = utcnow,
    fence: Fence | None = None,
) -> CycleResult:
    """Poll one account once and archive what changed. Errors end up in the ledger row."""
    return await _Cycle(api, engine, options, clock, fence).run()


@dataclass
class _Writes:
    """What one write of a cycle changes: whole rows and versions (of new, changed, vanished or
    detailed sessions), rejects, and for a listing the ids of unchanged sessions and the new
    digests of unchanged ones."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rehashed: dict[str, str] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: lifecycle.Transition) -> None:
        if step.row is not None:
            self.rows.append(step.row)
        if step.version is not None:
            self.versions.append(step.version)

    def store_rows(self, conn: Connection) -> None:
        """Write the rows, versions and rejects: one statement per kind."""
        store.upsert(conn, store.sessions_table, self.rows, store.SESSION_KEY)
        store.insert_rows(conn, store.versions_table, self.versions)
        store.insert_rows(conn, store.rejects_table, self.rejects)


class _Cycle:
    def __init__(
        self, api: AccountAPI, engine: Engine, options: CycleOptions, clock: Clock, fence: Fence | None
    ) -> None:
        self.api = api
        self.engine = engine
        self.options = options
        self.clock = clock
        self.fence = fence
        self.account_id = api.account_id
        self.run_id = 0
        self.seen: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.listing_complete = False
        self.pages = 0
        self.errors: list[str] = []
        self.closed = False  # whether the ledger row is closed (in the cycle's last write, when it can be)

    async def run(self) -> CycleResult:
        started = time.perf_counter()
        opened_at = self.clock()
        listing = self.api.listing()
        # The first page is asked for before the ledger row is written, so that the server
        # prepares it meanwhile; if the row cannot be written, the page is dropped.
        listing.start()
        try:
            await asyncio.sleep(0)  # lets the request go out
            self.run_id = self._open_run(opened_at)
        except BaseException:
            await listing.drop()
            raise
        outcome = "failed"
        try:
            due = await self._list(listing)
            if self.pages:
                await self._fetch_details(due)
                outcome = self._outcome()
        except asyncio.CancelledError:
            outcome = "aborted"
            self.errors.append("cancelled (shutdown) before the cycle ended")
            raise
        except SQLAlchemyError as exc:
            self.errors.append(f"database error: {type(exc).__name__}: {first_line(exc)}")
        except ArchiverError as exc:
            self.errors.append(str(exc))
        except Exception as exc:
            self.errors.append(f"internal error: {type(exc).__name__}: {exc}")
            raise
        finally:
            duration = time.perf_counter() - started
            if not self.closed:
                self._close_run(outcome)
        result = CycleResult(
            self.account_id,
            self.run_id,
            outcome,
            self.listing_complete,
            dict(self.counts),
            duration,
            "; ".join(self.errors) or None,
        )
        _log_result(result, self.api.stats)
        return result

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            if self.fence is not None:
                self.fence(conn)
            yield conn

    # -- the ledger ---------------------------------------------------------------------------

    def _open_run(self, now: datetime) -> int:
        try:
            with self._transaction() as conn:
                # The caller holds this account's lock, so any 'running' row is a dead process's.
                store.abort_stale_runs(conn, self.account_id, before=now, now=now)
                return store.open_run(conn, self.account_id, self.options.worker, now)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot open a ledger row: {first_line(exc)}") from exc

    def _outcome(self) -> str:
        """The outcome of a cycle that went all the way."""
        return "ok" if self.listing_complete and not self.counts["details_failed"] else "partial"

    def _close_run(self, outcome: str) -> None:
        try:
            with self.engine.begin() as conn:
                store.finish_run(conn, self.run_id, self._ledger_values(outcome))
        except SQLAlchemyError as exc:
            # The cycle's data is already committed step by step; only its ledger row is stale,
            # and the next cycle marks it aborted.
            log.error("account %s run %s: cannot close the ledger row: %s", self.account_id, self.run_id, first_line(exc))

    def _ledger_values(self, outcome: str) -> dict[str, Any]:
        stats = self.api.stats
        values: dict[str, Any] = {
            "finished_at": self.clock(),
            "outcome": outcome,
            "listing_complete": self.listing_complete,
            "pages": self.pages,
            "api_requests": stats.requests,
            "retries": stats.retries,
            "throttled": stats.throttled,
            "waited_seconds": round(stats.waited_seconds, 3),
            "error": "; ".join(self.errors)[:4000] or None,
        }
        for name in ("listed", "new", "changed", "vanished", "reappeared", "details_fetched", "details_gone",
                     "details_failed", "details_carried", "rejected"):
            values[name] = self.counts[name]
        return values

    # -- listing ------------------------------------------------------------------------------

    async def _list(self, listing: Listing) -> list[dict[str, Any]]:
        """List every page and store what it says; return the sessions owed a detail fetch."""
        pending: list[Any] = []
        seen_at = self.clock()
        try:
            # Closed however the loop ends, so that a page requested ahead is not left in flight.
            async with aclosing(aiter(listing)) as pages:
                async for items in pages:
                    self.pages = listing.pages
                    if not pending:
                        seen_at = self.clock()
                    pending.extend(items)
                    if len(pending) >= LISTING_WRITE_BATCH:
                        self._store_listed(pending, seen_at)
                        pending = []
        except RetriableError as exc:
            # What did arrive is as good as ever; the listing stays incomplete.
            self.errors.append(f"listing incomplete after {listing.pages} page(s): {exc}")
            return self._store_listed(pending, seen_at, ended=listing) if self.pages else []
        return self._store_listed(pending, seen_at, ended=listing)

    def _store_listed(self, items: Sequence[Any], seen_at: datetime, ended: Listing | None = None) -> list[dict[str, Any]]:
        """Store listed objects. With ``ended``, the listing they end, in the same transaction (one
        commit fewer a cycle): if it was complete, mark what it no longer holds vanished; read the
        sessions owed a detail fetch (returned); and if none is, close the ledger row."""
        if not items and ended is None:
            return []
        keep_url_tokens = self.options.keep_url_tokens
        hashed = [(item, _listed_id(item), listing_hash(item, keep_url_tokens=keep_url_tokens)) for item in items]
        with self._transaction() as conn:
            writes = self._diff_listed(conn, hashed, seen_at)
            if ended is not None:
                self._end_listing(conn, ended, writes)
            writes.store_rows(conn)  # the vanish pass's rows and versions included
            store.touch_seen(conn, self.account_id, writes.unchanged, seen_at, self.run_id)
            store.touch_seen_rehashed(conn, self.account_id, writes.rehashed, seen_at, self.run_id)
            if ended is None:
                return []
            due = store.sessions_due_for_detail(conn, self.account_id, self.options.detail_budget)
            nothing_owed = not due and self.options.detail_budget > 0
            if nothing_owed:
                store.finish_run(conn, self.run_id, self._ledger_values(self._outcome()))
        self.closed = nothing_owed
        return due

    def _diff_listed(self, conn: Connection, hashed: Sequence[tuple[Any, str | None, str | None]], seen_at: datetime) -> _Writes:
        """What listed objects change in the archive (nothing written yet)."""
        # Most listed sessions are as they were: those whose object has the digest stored with
        # them are told apart without parsing, on one narrow read.
        stored_hashes = store.load_hashes(conn, self.account_id, [sid for _, sid, _ in hashed if sid is not None])
        unchanged, parsed, rejects = self._sort_listed(hashed, stored_hashes, seen_at)
        self.counts["listed"] += len(unchanged) + len(parsed)
        # The rest are parsed and compared on a few columns (those stored at all: every stored
        # session has an entry in stored_hashes); whole rows are read only for the sessions
        # that did change.
        states = store.load_states(conn, self.account_id, [r.session_id for r, _ in parsed if r.session_id in stored_hashes])
        writes = _Writes(unchanged=unchanged, rejects=rejects)
        moved: list[tuple[SessionRecord, str | None]] = []
        for record, digest in parsed:
            state = states.get(record.session_id)
            if state is None or not lifecycle.listed_unchanged(state, record):
                moved.append((record, digest))
            elif digest is not None and not record.problems:
                writes.rehashed[record.session_id] = digest
            else:
                writes.unchanged.append(record.session_id)
        self.counts["unchanged"] += len(writes.unchanged) + len(writes.rehashed)
        known = store.load_sessions(conn, self.account_id, [r.session_id for r, _ in moved if r.session_id in states])
        for record, digest in moved:
            step = lifecycle.observe_listed(
                known.get(record.session_id),
                record,
                account_id=self.account_id,
                seen_at=seen_at,
                run_id=self.run_id,
                policy=self.options.detail_policy,
                content_hash=digest,
            )
            self.counts[step.kind] += 1
            writes.add(step)
        return writes

    def _end_listing(self, conn: Connection, ended: Listing, writes: _Writes) -> None:
        """Whether the listing was complete; if it was, its active sessions that it no longer holds
        are vanished (read before this write's upsert: every session it touches was listed)."""
        self.listing_complete = ended.complete and not self.counts["unidentified"]
        if ended.problem:
            self.errors.append(f"listing incomplete: {ended.problem}")
        elif ended.complete and self.counts["unidentified"]:
            self.errors.append(f"listing incomplete: {self.counts['unidentified']} item(s) without a usable sessionId")
        if not self.listing_complete:
            return
        at = self.clock()
        absent = store.active_ids_absent_from(conn, self.account_id, self.seen)
        for row in store.load_sessions(conn, self.account_id, absent).values():
            writes.add(lifecycle.observe_vanished(row, at=at, run_id=self.run_id))
            self.counts["vanished"] += 1

    def _sort_listed(
        self,
        hashed: Sequence[tuple[Any, str | None, str | None]],
        stored_hashes: dict[str, str | None],
        seen_at: datetime,
    ) -> tuple[list[str], list[tuple[SessionRecord, str | None]], list[dict[str, Any]]]:
        """The ids of sessions listed with their stored digest (unchanged), the other objects'
        records with their digests, and the rejects. An id already seen in this listing
        (overlapping pages, a list that shifted right) is skipped.
        """
        unchanged: list[str] = []
        parsed: list[tuple[SessionRecord, str | None]] = []
        rejects: list[dict[str, Any]] = []
        for item, listed_id, digest in hashed:
            if listed_id in self.seen:
                continue
            if listed_id is not None and digest is not None and stored_hashes.get(listed_id) == digest:
                self.seen.add(listed_id)
                unchanged.append(listed_id)
                continue
            try:
                record = parse_session(item, keep_url_tokens=self.options.keep_url_tokens)
            except BadRecordError as exc:
                # We cannot tell whose record this was, so this listing cannot prove any absence.
                self.counts["unidentified"] += 1
                rejects.append(self._reject("list", None, exc.reason, item, kept=False, at=seen_at))
                continue
            if record.session_id in self.seen:
                continue
            self.seen.add(record.session_id)
            if record.problems:
                rejects.append(self._reject("list", record.session_id, "; ".join(record.problems), item, True, seen_at))
            parsed.append((record, digest))
        return unchanged, parsed, rejects

    # -- details ------------------------------------------------------------------------------

    async def _fetch_details(self, due: Sequence[dict[str, Any]]) -> None:
        """Fetch the details ``due`` (the budget's worth, most urgent first) and store them; the
        last write closes the ledger row when the budget left no owed session out."""
        if not due:
            if self.options.detail_budget == 0:  # nothing was read: whatever is owed is carried
                self._count_carried()
            return
        semaphore = asyncio.Semaphore(self.options.detail_concurrency)

        async def fetch(known: dict[str, Any]) -> tuple[dict[str, Any], Any, RetriableError | None]:
            async with semaphore:
                try:
                    return known, await self.api.get_session(known["session_id"]), None
                except RetriableError as exc:
                    return known, None, exc

        tasks = [asyncio.create_task(fetch(row)) for row in due]
        batch: list[tuple[dict[str, Any], Any, RetriableError | None]] = []
        oldest = 0.0
        still_owed = 0
        try:
            for next_done in asyncio.as_completed(tasks):
                batch.append(await next_done)
                if len(batch) == 1:
                    oldest = time.monotonic()
                if len(batch) >= DETAIL_WRITE_BATCH or time.monotonic() - oldest >= DETAIL_WRITE_SECONDS:
                    still_owed += self._store_details(batch)
                    batch = []
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if len(due) < self.options.detail_budget:
            # The budget left nothing out: what is still owed is what this cycle's fetches left owed.
            self._store_details(batch, still_owed)
        else:
            self._store_details(batch)
            self._count_carried()

    def _count_carried(self) -> None:
        with self.engine.connect() as conn:
            self.counts["details_carried"] = store.count_due_for_detail(conn, self.account_id)

    def _store_details(self, batch: Sequence[tuple[dict[str, Any], Any, RetriableError | None]],
                       owed_before: int | None = None) -> int:
        """Store a batch of detail results; return how many of its sessions are still owed one.
        With ``owed_before`` (how many earlier batches left owed, when no owed session was left
        out of the cycle), this is the cycle's last write, and it closes the ledger row too."""
        at = self.clock()
        writes = _Writes()
        still_owed = 0
        for known, body, error in batch:
            if error is not None:
                self.counts["details_failed"] += 1
                self._note_detail_error(error)
                still_owed += 1
                continue
            step = self._detail_step(known, body, at, writes.rejects)
            self.counts[{"gone": "details_gone", "missing": "details_gone"}.get(step.kind, "details_fetched")] += 1
            still_owed += int((step.row or known)["detail_due"] is not None)
            writes.add(step)
        closing = owed_before is not None
        if closing:
            self.counts["details_carried"] = owed_before + still_owed
        if writes.rows or writes.versions or writes.rejects or closing:
            with self._transaction() as conn:
                writes.store_rows(conn)
                if closing:
                    store.finish_run(conn, self.run_id, self._ledger_values(self._outcome()))
            self.closed = closing
        return still_owed

    def _detail_step(self, known: dict[str, Any], body: Any, at: datetime, rejects: list[dict[str, Any]]) -> lifecycle.Transition:
        session_id = known["session_id"]
        if body is None:
            return lifecycle.observe_missing(known, at=at, run_id=self.run_id)
        try:
            record = parse_session(body, keep_url_tokens=self.options.keep_url_tokens)
            if record.session_id != session_id:
                raise BadRecordError(f"asked for {session_id}, got {record.session_id}")
        except BadRecordError as exc:
            rejects.append(self._reject("detail", session_id, exc.reason, body, False, at))
            return lifecycle.observe_bad_detail(known, run_id=self.run_id)
        if record.problems:
            rejects.append(self._reject("detail", session_id, "; ".join(record.problems), body, True, at))
        return lifecycle.observe_detail(known, record, at=at, run_id=self.run_id)

    def _note_detail_error(self, error: RetriableError) -> None:
        message = f"detail fetch failed: {error}"
        if message not in self.errors and len(self.errors) < 5:
            self.errors.append(message)

    def _reject(self, source: str, session_id: str | None, reason: str, body: Any, kept: bool, at: datetime) -> dict[str, Any]:
        self.counts["rejected"] += 1
        return {
            "account_id": self.account_id,
            "run_id": self.run_id,
            "rejected_at": at,
            "source": source,
            "session_id": session_id,
            "reason": reason,
            "body": reject_body(body),
            "kept": kept,
        }


def _listed_id(item: Any) -> str | None:
    """The id a listed object's session is stored under, if it gives one (parsing checks it)."""
    session_id = item.get("sessionId") if isinstance(item, dict) else None
    return session_id.lower() if isinstance(session_id, str) else None


def _log_result(result: CycleResult, stats: Any) -> None:
    c = result.counts
    log.log(
        logging.WARNING if result.failed else logging.INFO,
        "cycle account=%s run=%d outcome=%s complete=%s listed=%d new=%d changed=%d vanished=%d "
        "details=%d gone=%d carried=%d rejected=%d requests=%d retries=%d throttled=%d duration=%.3fs%s",
        result.account_id, result.run_id, result.outcome, result.listing_complete,
        c.get("listed", 0), c.get("new", 0), c.get("changed", 0), c.get("vanished", 0),
        c.get("details_fetched", 0), c.get("details_gone", 0), c.get("details_carried", 0), c.get("rejected", 0),
        stats.requests, stats.retries, stats.throttled, result.duration_seconds,
        f" error={result.error}" if result.error else "",
    )


async def sync_accounts(settings: Settings, engine: Engine, *, clock: Clock = utcnow) -> list[CycleResult]:
    """One cycle for every configured account, concurrently, under one shared rate limiter.

    Each account's lease is taken first, as the service takes it, so that a one-off sync never
    runs beside another worker's cycle of the same account: such an account is skipped.
    """
    options = CycleOptions.from_settings(settings)
    accounts = settings.accounts()
    ttl = locks.lease_seconds(settings.interval_seconds)
    async with client_from_settings(settings) as client, locks.leases_kept(engine, accounts, options.worker, ttl) as held:
        cycles = [
            run_cycle(
                client.account(account_id, RequestStats()), engine, options, clock=clock,
                fence=locks.fence(account_id, options.worker, ttl),
            )
            if account_id in held
            else _skipped(engine, account_id)
            for account_id in accounts
        ]
        return list(await asyncio.gather(*cycles))


async def _skipped(engine: Engine, account_id: str) -> CycleResult:
    holder = locks.holder_of(engine, account_id)
    log.info("account %s: skipped, %s is polling it", account_id, holder)
    return CycleResult(account_id, 0, SKIPPED, False, {}, 0.0, f"skipped: another worker ({holder}) is polling this account")
