"""One poll cycle for one account: list -> diff -> store -> fetch details -> store -> ledger.

Transactions are per batch of listed objects (the last one with the vanish pass) and per detail
batch, so a cycle that dies at any point leaves whole steps behind, and the next cycle converges to
the same database. The cycle's last write closes its ledger row too, where the figures are known
by then; otherwise a write of its own closes it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from archiver.api.cloudflare import AccountAPI, Listing, RequestStats
from archiver.api.scheduler import Deadline, Priority
from archiver.archive import lifecycle, store
from archiver.archive import plan as plans
from archiver.archive.detailmode import DetailLearner, DetailMode, detail_adds
from archiver.archive.models import ACTIVE
from archiver.archive.plan import STATUS_PREFIX, Plan
from archiver.archive.records import listing_hash, parse_session
from archiver.archive.rows import SessionRow
from archiver.config import Settings
from archiver.errors import ArchiverError, AuthError, BadRecordError, DatabaseError, DeadlineReached, NoAnswer, RetriableError, first_line
from archiver.service.locks import worker_id
from archiver.vocabulary import CYCLE_COUNTERS, FINAL_STATE_DUES, STORED_COUNTERS, Due, Kind, Outcome, Source

log = logging.getLogger(__name__)
T = TypeVar("T")

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


@dataclass(frozen=True)
class CycleOptions:
    detail_policy: str = "auto"
    detail_budget: int = 100
    keep_url_tokens: bool = False
    worker: str = field(default_factory=worker_id)
    cycle_timeout: float | None = None  # seconds; None: no limit

    @classmethod
    def from_settings(cls, settings: Settings) -> CycleOptions:
        return cls(
            detail_policy=settings.detail_policy,
            detail_budget=settings.detail_budget,
            keep_url_tokens=settings.keep_url_tokens,
            cycle_timeout=settings.cycle_timeout_seconds,
        )


# Detail requests wait their turn in the token's request scheduler by why they are owed.
DETAIL_PRIORITIES = {
    Due.VANISHED: Priority.VANISHED, Due.CLOSING: Priority.CLOSING, Due.CHANGED: Priority.CHANGED, Due.NEW: Priority.NEW,
}


def _detail_priority(known: Mapping[str, Any]) -> Priority:
    """In the order of what the detail is owed for; a final state asked again after every first
    ask for one (under a backlog, a retry for a session Cloudflare has likely forgotten must not
    crowd out the first ask for one that vanished since)."""
    if known["detail_attempts"] and known["detail_due"] in FINAL_STATE_DUES:
        return Priority.AGAIN
    return DETAIL_PRIORITIES.get(known["detail_due"], Priority.NEW)


# A detail whose turn did not come before the cycle's details deadline: still owed, not failed.
DEFERRED = object()
# A detail the detail mode no longer wants (a new or changed session, the listing trusted).
WAIVED = object()
DetailResult = tuple[SessionRow, Any, RetriableError | None]
# A complete listing that would vanish at least this many active sessions, and more than this
# share of them, is confirmed by a second listing first: one glitch is not a mass vanish.
MASS_VANISH_LEAST = 10
MASS_VANISH_SHARE = 0.5
# Detail requests in a row that got no answer (their retries spent) before a cycle stops asking.
UNANSWERED_IN_A_ROW = 3
# The ledger counter each kind of detail outcome adds to.
DETAIL_COUNTS = {Kind.GONE: "details_gone", Kind.MISSING: "details_gone", Kind.WAIVED: "details_waived"}


@dataclass
class Claim:
    """A session whose detail a cycle is fetching: that cycle's run, and why it asked. ``released``
    passes if a later cycle finds the session owed for a more urgent reason meanwhile (it vanished):
    the request, if still waiting, is let go, and the later cycle asks in that reason's turn."""

    run_id: int
    reason: str | None  # the row's detail_due when it was claimed (owed rows only are claimed)
    released: Deadline = field(default_factory=Deadline)


@dataclass
class CycleProgress:
    """How far the account's latest cycle has got: pages and sessions listed, details it set out
    to fetch and how many of them are answered (for `archiver sync`'s progress line)."""

    pages: int = 0
    listed: int = 0  # sessions, as the listing counts them (its pages overlap: objects are not sessions)
    details: int = 0
    answered: int = 0


@dataclass
class AccountState:
    """What the cycles of one account share in a process (the runner keeps it from cycle to cycle).

    A cycle's details may still be coming in while the account's next cycle lists it: the next
    cycle leaves alone the sessions other cycles are ``fetching`` (but those it finds owed for a
    more urgent reason), and the ledger rows of cycles still ``running``.
    """

    learner: DetailLearner
    fetching: dict[str, Claim] = field(default_factory=dict)
    running: set[int] = field(default_factory=set)  # ledger rows (run ids) of this process's cycles
    # Details of new and changed sessions still waiting for their turn are let go when the detail
    # mode comes to trust the listing: this passes then.
    still_wanted: Deadline = field(default_factory=Deadline)
    # Where the account's database work runs, one statement after another (None: on the event
    # loop). A slow database then holds up its own account only, and the work of the account's
    # cycles never interleaves, as it never did on the loop.
    db: Executor | None = None
    progress: CycleProgress = field(default_factory=CycleProgress)
    # The account's sessions not yet ended, by status, once counted (None before): every commit of
    # the account's cycles adds the moves it made into and out of those statuses. Commits and the
    # count run one after another on the account's database thread, so none is counted twice.
    open_sessions: dict[str, int] | None = None

    def committed(self, counts: Mapping[str, int]) -> None:
        """A transaction of the account's committed with these plan ``counts``."""
        if self.open_sessions is not None:
            for status in self.open_sessions:
                self.open_sessions[status] += counts.get(STATUS_PREFIX + status, 0)

    def claim(self, run_id: int, rows: Iterable[SessionRow]) -> None:
        for row in rows:
            self.fetching[row["session_id"]] = Claim(run_id, row["detail_due"])

    def unclaim(self, run_id: int, session_ids: Iterable[str]) -> None:
        """Give back the run's claims (those another cycle took over are no longer its own)."""
        for session_id in session_ids:
            claim = self.fetching.get(session_id)
            if claim is not None and claim.run_id == run_id:
                del self.fetching[session_id]

    def release(self, session_ids: Iterable[str]) -> None:
        """Let go the claims of these sessions (their requests, if still waiting, give up)."""
        for session_id in session_ids:
            claim = self.fetching.pop(session_id, None)
            if claim is not None:
                claim.released.at = -math.inf


def owed_more_urgently(claims: Mapping[str, Claim], rows: Iterable[SessionRow]) -> set[str]:
    """The claimed sessions that these rows owe a detail for a more urgent reason than the claim's."""
    urgent = set()
    for row in rows:
        claim, due = claims.get(row["session_id"]), row["detail_due"]
        if claim is not None and due is not None and lifecycle.most_urgent(due, claim.reason) != claim.reason:
            urgent.add(row["session_id"])
    return urgent


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
    pages: int = 0
    detail_mode: str | None = None
    refused: bool = False  # Cloudflare refused the credentials (401/403)

    @property
    def failed(self) -> bool:
        return Outcome(self.outcome).failed


async def run_cycle(
    api: AccountAPI,
    engine: Engine,
    options: CycleOptions,
    *,
    clock: Clock = utcnow,
    fence: Fence | None = None,
    state: AccountState | None = None,
    on_listed: Callable[[int, bool], None] | None = None,
    give_up: Deadline | None = None,
) -> CycleResult:
    """Poll one account once and archive what changed. Errors end up in the ledger row.

    ``state`` is what the account's cycles share (a fresh one if None); ``on_listed(pages,
    complete)`` is called once the listing is stored (or failed): the account's next cycle may
    begin then, beside this one's details; detail
    requests not yet sent when ``give_up`` passes are let go (still owed), and the cycle ends.
    """
    state = state if state is not None else AccountState(DetailLearner(options.detail_policy))
    return await _Cycle(api, engine, options, clock, fence, state, on_listed, give_up).run()


class Ledger:
    """A cycle's ledger row (sync_runs) and everything it counts: opened first, counted as the
    cycle goes, closed once, in the cycle's last write when it can be (one commit fewer), else in
    a transaction of its own. The cycle's result is made from it, so the row, the log line and
    the result always agree."""

    def __init__(self, account_id: str, worker: str, stats: RequestStats, learner: DetailLearner, clock: Clock) -> None:
        self.account_id = account_id
        self.worker = worker
        self.stats = stats
        self.learner = learner
        self.clock = clock
        self.run_id = 0
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.pages = 0
        self.listing_complete = False
        self.listed_at: datetime | None = None  # when the listing was stored (details may come later)
        self.refused = False  # Cloudflare refused the credentials
        self.closed = False

    def open(self, conn: Connection, now: datetime, running: Collection[int]) -> None:
        # The caller holds this account's lease, so any 'running' row but those of this process's
        # own cycles still fetching details is a dead process's.
        store.abort_stale_runs(conn, self.account_id, before=now, now=now, keep=running)
        self.run_id = store.open_run(conn, self.account_id, self.worker, now)

    def outcome(self) -> Outcome:
        """The outcome of a cycle that went all the way."""
        return Outcome.OK if self.listing_complete and not self.counts["details_failed"] else Outcome.PARTIAL

    def close_in(self, conn: Connection, outcome: str) -> None:
        """Close the row in the caller's transaction (the cycle's last write)."""
        store.finish_run(conn, self.run_id, self.values(outcome))
        self.closed = True

    def close(self, engine: Engine, outcome: str) -> None:
        """Close the row in a transaction of its own; a failure is logged, not raised: the cycle's
        data is committed already, and the next cycle marks a row left running aborted."""
        try:
            with engine.begin() as conn:
                self.close_in(conn, outcome)
        except SQLAlchemyError as exc:
            log.error("account %s run %s: cannot close the ledger row: %s", self.account_id, self.run_id, first_line(exc))

    def values(self, outcome: str) -> dict[str, Any]:
        values: dict[str, Any] = {
            "finished_at": self.clock(),
            "outcome": outcome,
            "listing_complete": self.listing_complete,
            "pages": self.pages,
            "api_requests": self.stats.requests,
            "retries": self.stats.retries,
            "throttled": self.stats.throttled,
            "waited_seconds": round(self.stats.waited_seconds, 3),
            "throttled_seconds": round(self.stats.throttled_seconds, 3),
            "detail_mode": self.learner.mode.value,
            "detail_quiet": self.learner.quiet,
            "listed_at": self.listed_at,
            "error": "; ".join(self.errors)[:4000] or None,
        }
        for name in STORED_COUNTERS:
            values[name] = self.counts[name]
        return values

    def result(self, outcome: str, duration: float) -> CycleResult:
        return CycleResult(
            self.account_id, self.run_id, outcome, self.listing_complete, dict(self.counts), duration,
            "; ".join(self.errors) or None, self.pages, self.learner.mode.value, self.refused,
        )


class _Cycle:
    def __init__(
        self, api: AccountAPI, engine: Engine, options: CycleOptions, clock: Clock, fence: Fence | None,
        state: AccountState, on_listed: Callable[[int, bool], None] | None, give_up: Deadline | None,
    ) -> None:
        self.api = api
        self.engine = engine
        self.options = options
        self.clock = clock
        self.fence = fence
        self.state = state
        self.learner = state.learner
        self.on_listed = on_listed
        self.give_up = give_up
        self.suspect: list[str] = []  # active sessions a complete listing left out, too many to believe at once
        self.suspect_at = clock()
        self.listing_failed = False  # Cloudflare failed a page: no detail request would fare better
        self.failing_in_a_row = 0  # detail requests that failed for want of an answer, one after another
        self.stop_details = Deadline()  # passes when the detail requests still waiting should give up
        self.account_id = api.account_id
        self.seen: set[str] = set()
        self.ledger = Ledger(self.account_id, options.worker, api.stats, state.learner, clock)
        self.progress = CycleProgress()
        self.uncommitted: Counter[str] = Counter()  # what the plans of the open transaction counted

    async def run(self) -> CycleResult:
        started = time.perf_counter()
        self.state.progress = self.progress  # the account's progress is its latest cycle's
        opened_at = self.clock()
        listing = self.api.listing()
        # The first page is asked for before the ledger row is written, so that the server
        # prepares it meanwhile; if the row cannot be written, the page is dropped.
        listing.start()
        try:
            await asyncio.sleep(0)  # lets the request go out
            await self._db(self._open_run, opened_at, frozenset(self.state.running))
            self.state.running.add(self.ledger.run_id)
        except BaseException:
            await listing.drop()
            raise
        outcome = Outcome.FAILED
        try:
            async with asyncio.timeout(self.options.cycle_timeout):
                try:
                    due = await self._list(listing)
                finally:
                    if self.on_listed is not None:
                        self.on_listed(self.ledger.pages, self.ledger.listing_complete)
                if self.ledger.pages and not self.listing_failed:
                    await self._fetch_details(due)
                    outcome = self.ledger.outcome()
                elif self.ledger.pages:
                    # Cloudflare failed the listing (unreachable, throttled, erring): detail
                    # requests would fare no better. What is owed stays owed.
                    outcome = Outcome.PARTIAL
                    await self._db(self._count_carried)
        except TimeoutError:
            outcome = Outcome.PARTIAL if self.ledger.listed_at is not None else Outcome.FAILED
            self.ledger.errors.append(f"stopped at the cycle's {self.options.cycle_timeout:g}s deadline; what it owes stays owed")
            if not self.ledger.closed:
                await self._db(self._count_carried)
        except asyncio.CancelledError:
            outcome = Outcome.ABORTED
            self.ledger.errors.append("cancelled (shutdown) before the cycle ended")
            raise
        except SQLAlchemyError as exc:
            self.ledger.errors.append(f"database error: {type(exc).__name__}: {first_line(exc)}")
        except ArchiverError as exc:
            self.ledger.refused = isinstance(exc, AuthError)
            self.ledger.errors.append(str(exc))
        except Exception as exc:
            self.ledger.errors.append(f"internal error: {type(exc).__name__}: {exc}")
            raise
        finally:
            duration = time.perf_counter() - started
            if not self.ledger.closed:
                await self._db(self.ledger.close, self.engine, outcome)
            self.state.running.discard(self.ledger.run_id)
        result = self.ledger.result(outcome, duration)
        _log_result(result, self.api.stats)
        return result

    async def _db(self, work: Callable[..., T], *args: Any) -> T:
        """Run database work where the account's runs (see AccountState.db)."""
        if self.state.db is None:
            return work(*args)
        return await asyncio.get_running_loop().run_in_executor(self.state.db, functools.partial(work, *args))

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction of the cycle's; what the plans applied in it counted is told to the
        account's state once (and only if) it commits."""
        self.uncommitted = Counter()
        with self.engine.begin() as conn:
            if self.fence is not None:
                self.fence(conn)
            yield conn
        self.state.committed(self.uncommitted)

    def _open_run(self, now: datetime, running: frozenset[int]) -> None:
        try:
            with self._transaction() as conn:
                self.ledger.open(conn, now, running)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot open a ledger row: {first_line(exc)}") from exc

    # -- listing ------------------------------------------------------------------------------

    async def _list(self, listing: Listing) -> list[SessionRow]:
        """List every page and store what it says; return the sessions owed a detail fetch."""
        pending: list[Any] = []
        seen_at = self.clock()
        try:
            # Closed however the loop ends, so that a page requested ahead is not left in flight.
            async with aclosing(aiter(listing)) as pages:
                async for items in pages:
                    self.ledger.pages = self.progress.pages = listing.pages
                    self.progress.listed = listing.brought
                    if not pending:
                        seen_at = self.clock()
                    pending.extend(items)
                    if len(pending) >= LISTING_WRITE_BATCH:
                        await self._store_listed(pending, seen_at)
                        pending = []
        except RetriableError as exc:
            # What did arrive is as good as ever; the listing stays incomplete.
            self.listing_failed = True
            self.ledger.errors.append(f"listing incomplete after {listing.pages} page(s): {exc}")
            return await self._store_listed(pending, seen_at, ended=listing) if self.ledger.pages else []
        except ArchiverError:
            # Refused half-way (the token revoked, say): the pages that came were answered to
            # credentials Cloudflare accepted, and are kept; the listing proves no absence.
            if pending:
                await self._store_listed(pending, seen_at)
            raise
        return await self._store_listed(pending, seen_at, ended=listing)

    async def _store_listed(self, items: Sequence[Any], seen_at: datetime, ended: Listing | None = None) -> list[SessionRow]:
        """Store listed objects (see _write_listed); claims of other cycles on sessions now owed
        more urgently are let go, so that this cycle asks for them in their turn."""
        if not items and ended is None:
            return []
        due, taken_over = await self._db(self._write_listed, items, seen_at, ended, dict(self.state.fetching))
        if taken_over:
            self.state.release(taken_over)
            self.api.client.scheduler.deadlines_moved()
        if ended is not None and self.suspect:
            return await self._confirm_vanish()
        return due

    def _write_listed(
        self, items: Sequence[Any], seen_at: datetime, ended: Listing | None, claims: Mapping[str, Claim]
    ) -> tuple[list[SessionRow], set[str]]:
        """Store listed objects. With ``ended``, the listing they end, in the same transaction (one
        commit fewer a cycle): if it was complete, mark what it no longer holds vanished; read the
        sessions owed a detail fetch (returned, with the ``claims`` this cycle takes over); and if
        none is, close the ledger row."""
        keep_url_tokens = self.options.keep_url_tokens
        hashed = [(item, _listed_id(item), listing_hash(item, keep_url_tokens=keep_url_tokens)) for item in items]
        with self._transaction() as conn:
            plan = self._plan_listed(conn, hashed, seen_at)
            if ended is not None:
                self._end_listing(conn, ended, plan)
            self._apply(conn, plan, seen_at)  # the vanish pass's included
            taken_over = owed_more_urgently(claims, plan.rows)
            if ended is None or self.suspect:  # a suspect vanish waits for the confirming listing
                return [], taken_over
            due = self._end_write(conn, claims.keys() - taken_over)
        return due, taken_over

    def _end_write(self, conn: Connection, elsewhere: Collection[str]) -> list[SessionRow]:
        """The listing's last write, closing: note when it was stored, read the sessions owed a
        detail (but those of ``elsewhere``), and if none is, close the ledger row."""
        self.ledger.listed_at = self.clock()
        due = self._read_due(conn, elsewhere)
        if not due and self.read_all_due:
            self.ledger.counts["details_carried"] = self.owed_elsewhere
            self.ledger.close_in(conn, self.ledger.outcome())
        else:
            store.note_listed(conn, self.ledger.run_id, self.ledger.listed_at)
        return due

    async def _confirm_vanish(self) -> list[SessionRow]:
        """A complete listing left most of the active sessions out (say, one empty page between two
        full ones): a second listing, at once, says which truly left. Only those are vanished, when
        it first saw them gone; if it cannot tell (incomplete), none is."""
        held = await self._ids_listed_again()
        confirmed = [] if held is None else [session_id for session_id in self.suspect if session_id not in held]
        if held is None:
            self.ledger.listing_complete = False
            self.ledger.errors.append(f"listing incomplete: it left out {len(self.suspect)} active sessions, and a second "
                               "listing could not confirm it")
        elif len(confirmed) < len(self.suspect):
            log.warning("account %s: a listing left out %d active sessions, but %d were listed again at once: a "
                        "glitch, not an end", self.account_id, len(self.suspect), len(self.suspect) - len(confirmed))
        due, taken_over = await self._db(self._write_confirmed, confirmed, dict(self.state.fetching))
        if taken_over:
            self.state.release(taken_over)
            self.api.client.scheduler.deadlines_moved()
        return due

    async def _ids_listed_again(self) -> set[str] | None:
        """The session ids of a second listing, or None if it did not complete (or held an item
        without a usable id, which cannot prove an absence)."""
        listing = self.api.listing()
        ids: set[str] = set()
        try:
            async with aclosing(aiter(listing)) as pages:
                async for items in pages:
                    for item in items:
                        listed_id = _listed_id(item)
                        if listed_id is None:
                            return None
                        ids.add(listed_id)
        except RetriableError:
            return None
        finally:
            self.ledger.pages += listing.pages
        return ids if listing.complete else None

    def _write_confirmed(self, confirmed: Sequence[str], claims: Mapping[str, Claim]) -> tuple[list[SessionRow], set[str]]:
        """Vanish the sessions the second listing confirmed gone (still active), then close the
        listing's writes as _write_listed does."""
        plan = Plan()
        with self._transaction() as conn:
            rows = store.load_sessions(conn, self.account_id, confirmed).values()
            plans.plan_vanished((row for row in rows if row["status"] == ACTIVE), self._context(), self.suspect_at, plan)
            self._apply(conn, plan, self.suspect_at)
            taken_over = owed_more_urgently(claims, plan.rows)
            due = self._end_write(conn, claims.keys() - taken_over)
        return due, taken_over

    def _read_due(self, conn: Connection, elsewhere: Collection[str]) -> list[SessionRow]:
        """The sessions owed a detail that this cycle fetches: the budget's worth, most urgent
        first, but for those other cycles of the account are fetching (``elsewhere``). Notes
        whether the read saw every owed session, and how many the other cycles have."""
        budget = self.options.detail_budget
        due = store.sessions_due_for_detail(conn, self.account_id, budget, but=elsewhere)
        self.read_all_due = len(due) < budget
        self.owed_elsewhere = len(elsewhere)
        return due

    def _apply(self, conn: Connection, plan: Plan, at: datetime) -> None:
        """Write a plan, and count what it counted into the ledger."""
        store.apply_plan(conn, plan, self.account_id, at, self.ledger.run_id)
        self.ledger.counts.update(plan.counts)
        self.uncommitted.update(plan.counts)

    def _context(self) -> plans.Context:
        return plans.Context(self.account_id, self.ledger.run_id, self.options.keep_url_tokens, self.learner.wants_detail)

    def _plan_listed(self, conn: Connection, hashed: Sequence[plans.Hashed], seen_at: datetime) -> Plan:
        """What listed objects change in the archive (nothing written yet): see archive.plan."""
        context, plan = self._context(), Plan()
        # Most listed sessions are as they were: those whose object has the digest stored with
        # them are told apart without parsing, on one narrow read.
        stored_hashes = store.load_hashes(conn, self.account_id, plans.listed_ids(hashed))
        parsed = plans.sort_listed(hashed, stored_hashes, self.seen, context, seen_at, plan)
        # The rest are compared on a few columns (every stored session has an entry in
        # stored_hashes); whole rows are read only for the sessions that did move.
        states = store.load_states(conn, self.account_id, [r.session_id for r, _ in parsed if r.session_id in stored_hashes])
        moved = plans.split_moved(parsed, states, plan)
        known = store.load_sessions(conn, self.account_id, [r.session_id for r, _ in moved if r.session_id in states])
        plans.plan_moved(moved, known, context, seen_at, plan)
        return plan

    def _end_listing(self, conn: Connection, ended: Listing, plan: Plan) -> None:
        """Whether the listing was complete; if it was, its active sessions that it no longer holds
        are vanished (read before this write's upsert: every session it touches was listed)."""
        unidentified = self.ledger.counts["unidentified"] + plan.counts["unidentified"]  # earlier writes', and this one's
        self.ledger.listing_complete = ended.complete and not unidentified
        if ended.problem:
            self.ledger.errors.append(f"listing incomplete: {ended.problem}")
        elif ended.complete and unidentified:
            self.ledger.errors.append(f"listing incomplete: {unidentified} item(s) without a usable sessionId")
        if not self.ledger.listing_complete:
            return
        at = self.clock()
        absent, active = store.active_ids_absent_from(conn, self.account_id, self.seen)
        if len(absent) >= MASS_VANISH_LEAST and len(absent) > active * MASS_VANISH_SHARE:
            self.suspect, self.suspect_at = absent, at  # for a second listing to confirm
            return
        plans.plan_vanished(store.load_sessions(conn, self.account_id, absent).values(), self._context(), at, plan)

    # -- details ------------------------------------------------------------------------------

    async def _fetch_details(self, due: Sequence[SessionRow]) -> None:
        """Fetch the details ``due`` (the budget's worth, most urgent first) and store them; the
        last write closes the ledger row when the read saw every owed session. Details the detail
        mode no longer wants are let go unasked; those not sent before ``give_up`` stay owed."""
        if not due:
            if not self.read_all_due:  # some are owed beyond what was read: count them
                await self._db(self._count_carried)
            return
        self.state.claim(self.ledger.run_id, due)
        try:
            batch: list[DetailResult] = [(row, WAIVED, None) for row in due if not self._worth_fetching(row)]
            tasks = [asyncio.create_task(self._fetch(row)) for row in due if self._worth_fetching(row)]
            self.progress.details = len(tasks)
            oldest = time.monotonic()
            still_owed = 0
            try:
                for next_done in asyncio.as_completed(tasks):
                    batch.append(await next_done)
                    self.progress.answered += 1
                    if len(batch) == 1:
                        oldest = time.monotonic()
                    if len(batch) >= DETAIL_WRITE_BATCH or time.monotonic() - oldest >= DETAIL_WRITE_SECONDS:
                        still_owed += await self._store_details(batch)
                        batch = []
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if self.read_all_due:
                # Every owed session was read: what is still owed is what this cycle's fetches left
                # owed, and what earlier cycles are still fetching.
                await self._store_details(batch, still_owed + self.owed_elsewhere)
            else:
                await self._store_details(batch)
                await self._db(self._count_carried)
        finally:
            self.state.unclaim(self.ledger.run_id, (row["session_id"] for row in due))

    def _worth_fetching(self, known: SessionRow) -> bool:
        """Whether an owed detail is still wanted: those of new and changed sessions only while
        the detail mode wants them; those about a session's final state always."""
        return known["detail_due"] not in (Due.NEW, Due.CHANGED) or self.learner.wants_detail(known["session_id"])

    async def _fetch(self, known: SessionRow) -> DetailResult:
        """One detail, in its turn: a vanished session's before a closing one's, a closing one's
        before a changed one's, a changed one's before a new one's; oldest first within each."""
        session_id, reason = known["session_id"], known["detail_due"]
        since = known["vanished_at"] if reason == Due.VANISHED and known["vanished_at"] else known["first_seen_at"]
        give_up: tuple[Deadline, ...] = (self.give_up,) if self.give_up is not None else ()
        if reason in (Due.NEW, Due.CHANGED):
            give_up += (self.state.still_wanted,)
        claim = self.state.fetching.get(session_id)
        if claim is not None:
            give_up += (claim.released,)
        try:
            body = await self.api.get_session(
                session_id, priority=_detail_priority(known), key=since.timestamp(),
                deadline=Deadline(also=give_up), abort=self.stop_details,
            )
        except DeadlineReached:
            return known, DEFERRED if self._worth_fetching(known) else WAIVED, None
        except RetriableError as exc:
            if isinstance(exc, NoAnswer):
                self._no_answer()
            return known, None, exc
        finally:
            self.state.unclaim(self.ledger.run_id, (session_id,))
        self.failing_in_a_row = 0
        return known, body, None

    def _no_answer(self) -> None:
        """A detail request got no answer at all, its retries spent. After a few in a row,
        Cloudflare is unreachable for now: the requests still waiting give up (they stay owed)
        rather than each spend its timeouts and retries for nothing."""
        self.failing_in_a_row += 1
        if self.failing_in_a_row == UNANSWERED_IN_A_ROW:
            self.ledger.errors.append(f"{UNANSWERED_IN_A_ROW} detail requests in a row got no answer: the rest wait for the next cycle")
            self.stop_details.at = -math.inf
            self.api.client.scheduler.deadlines_moved()

    def _count_carried(self) -> None:
        with self.engine.connect() as conn:
            self.ledger.counts["details_carried"] = store.count_due_for_detail(conn, self.account_id)

    async def _store_details(self, batch: Sequence[DetailResult], owed_before: int | None = None) -> int:
        """Store a batch of detail results (see _write_details); return how many of its sessions
        are still owed one. Then the detail mode learns from what the details added."""
        answered = [(known, body) for known, body, error in batch if error is None and body is not DEFERRED]
        for _known, _body, error in batch:
            if error is not None:
                self.ledger.counts["details_failed"] += 1
                self._note_detail_error(error)
        unanswered = len(batch) - len(answered)  # failed or not sent: still owed
        if not answered and owed_before is None:
            return unanswered
        switches: list[DetailMode] = []
        owed_else = None if owed_before is None else owed_before + unanswered
        still_owed = unanswered + await self._db(self._write_details, answered, owed_else, switches)
        for mode in switches:
            self._switched(mode)
        return still_owed

    def _write_details(self, answered: Sequence[tuple[SessionRow, Any]], owed_before: int | None,
                       switches: list[DetailMode]) -> int:
        """Write detail answers; return how many of their sessions are still owed one. The detail
        mode learns from each detail of a listed session; its ``switches`` are added to the list.
        With ``owed_before`` (how many else stay owed, when the cycle read every owed session),
        this is the cycle's last write, and it closes the ledger row too (with what was learned)."""
        closing = owed_before is not None
        still_owed = 0
        at = self.clock()
        plan, context = Plan(), self._context()
        with self._transaction() as conn:
            # The next cycle of the account may have listed these sessions meanwhile (or marked
            # them vanished): each answer applies to the state as it is now.
            current = store.load_sessions(conn, self.account_id, [known["session_id"] for known, _ in answered])
            for known, body in answered:
                now = current.get(known["session_id"])
                if now is None:
                    continue  # pruned meanwhile
                if body is WAIVED:
                    step = lifecycle.observe_waived(now, run_id=self.ledger.run_id)
                else:
                    step = self._detail_step(known["detail_due"], now, body, at, context, plan, switches)
                self.ledger.counts[DETAIL_COUNTS.get(step.kind, "details_fetched")] += 1
                if step.kind == Kind.GONE:
                    self.ledger.counts["gone"] += 1  # a session whose end the archive will never learn
                still_owed += int((step.row or now)["detail_due"] is not None)
                plan.add(step, now)
            if closing:
                self.ledger.counts["details_carried"] = (owed_before or 0) + still_owed
            self._apply(conn, plan, at)
            if closing:
                self.ledger.close_in(conn, self.ledger.outcome())
        return still_owed

    def _detail_step(self, reason: str | None, known: SessionRow, body: Any, at: datetime, context: plans.Context,
                     plan: Plan, switches: list[DetailMode]) -> lifecycle.Transition:
        """What a detail answer (asked because of ``reason``) makes of the session's current row."""
        session_id = known["session_id"]
        if body is None:
            return lifecycle.observe_missing(known, at=at, run_id=self.ledger.run_id)
        try:
            record = parse_session(body, keep_url_tokens=self.options.keep_url_tokens)
            if record.session_id != session_id:
                raise BadRecordError(f"asked for {session_id}, got {record.session_id}")
        except BadRecordError as exc:
            plan.reject(context, Source.DETAIL, session_id, exc.reason, body, kept=False, at=at)
            return lifecycle.observe_bad_detail(known, run_id=self.ledger.run_id)
        if record.problems:
            plan.reject(context, Source.DETAIL, session_id, "; ".join(record.problems), body, kept=True, at=at)
        if reason in (Due.NEW, Due.CHANGED) and self.learner.observe(detail_adds(known, record)):
            switches.append(self.learner.mode)
        return lifecycle.observe_detail(known, record, at=at, run_id=self.ledger.run_id)

    def _switched(self, mode: DetailMode) -> None:
        """The detail mode switched: say so, and to mode listing, let go the details of new and
        changed sessions asked for so far and still waiting for their turn (those in the sample
        are asked again next cycle)."""
        switched, self.state.still_wanted = self.state.still_wanted, Deadline()
        if mode == DetailMode.LISTING:
            switched.at = -math.inf
            self.api.client.scheduler.deadlines_moved()
        if mode == DetailMode.DETAILS:
            log.info("account %s: a detail carried what the listing lacked: fetching details of new and changed "
                     "sessions again (mode details)", self.account_id)
        else:
            log.info("account %s: %d details in a row added nothing to the listing: trusting the listing, "
                     "fetching a sample only (mode listing)", self.account_id, self.learner.quiet)

    def _note_detail_error(self, error: RetriableError) -> None:
        message = f"detail fetch failed: {error}"
        if message not in self.ledger.errors and len(self.ledger.errors) < 5:
            self.ledger.errors.append(message)


def _listed_id(item: Any) -> str | None:
    """The id a listed object's session is stored under, if it gives one (parsing checks it)."""
    session_id = item.get("sessionId") if isinstance(item, dict) else None
    return session_id.lower() if isinstance(session_id, str) else None


def _log_result(result: CycleResult, stats: RequestStats) -> None:
    """One line per cycle; in JSON logs its figures are fields of their own too."""
    counted = {counter.word: result.counts.get(counter.name, 0) for counter in CYCLE_COUNTERS}
    facts: dict[str, Any] = {
        "account": result.account_id, "run_id": result.run_id, "outcome": str(result.outcome),
        "complete": result.listing_complete, "pages": result.pages, **counted, "mode": result.detail_mode,
        "requests": stats.requests, "retries": stats.retries, "throttled": stats.throttled,
        "duration_s": round(result.duration_seconds, 3), "error": result.error,
    }
    words = " ".join(f"{word}={value}" for word, value in counted.items())
    log.log(
        logging.WARNING if result.failed else logging.INFO,
        "cycle account=%s run=%d outcome=%s complete=%s pages=%d %s mode=%s requests=%d retries=%d throttled=%d "
        "duration=%.3fs%s",
        result.account_id, result.run_id, result.outcome, result.listing_complete, result.pages, words,
        result.detail_mode, stats.requests, stats.retries, stats.throttled, result.duration_seconds,
        f" error={result.error}" if result.error else "",
        extra={"facts": facts},
    )
