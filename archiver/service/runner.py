"""The runner: poll cycles for `archiver sync` (one per account) and `archiver run` (on a schedule).

Both modes go through the same steps: take the account's lease before a cycle (a holder that is a
dead process of this host is taken over at once) and keep it renewed by one heartbeat; send every
request through the token's one request scheduler, whose budget replicas split by the accounts
they hold; keep what each account's cycles share (the detail mode, the details being fetched); and
stop alike on SIGTERM or SIGINT: the first lets running cycles finish within
``ARCHIVER_SHUTDOWN_GRACE_SECONDS`` (late in it, detail requests still waiting for their turn are
let go; at its end, what still runs is cancelled, which closes its ledger row as aborted and rolls
back the transaction under way), the second cancels at once. Leases are released on the way out.

The service lists every account at the cadence's gap (see :mod:`archiver.cadence`). A cycle's
details may still be coming in when the account's next listing is due: that listing goes on time,
beside them, so that a detail backlog never delays a listing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from archiver.api.cloudflare import CloudflareClient, RequestStats, client_from_settings, scheduler_for
from archiver.api.scheduler import Deadline
from archiver.archive import store
from archiver.archive.detailmode import learner_for
from archiver.archive.sync import AccountState, Clock, CycleOptions, CycleResult, run_cycle, utcnow
from archiver.config import Settings
from archiver.errors import ArchiverError, AuthError, LeaseLostError, first_line
from archiver.progress import Progress, duration
from archiver.service import locks
from archiver.service.cadence import Cadence, planned
from archiver.service.metrics import Metrics, MetricsServer
from archiver.vocabulary import Outcome

if TYPE_CHECKING:  # APScheduler is imported by the service alone, not by a one-shot sync
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger(__name__)
T = TypeVar("T")

# Each job's trigger fires between (1 - JITTER_SHARE) and 1 times the gap after the last: accounts
# (and replicas) drift apart so their polls do not beat in step, and no gap exceeds the promise.
JITTER_SHARE = 0.1
RESCHEDULE_THRESHOLD = 0.1  # change the jobs' gap only when it moves by more than this share
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A cycle still running this long after its deadline (a share of it, plus seconds) is stuck: closing
# its ledger row takes a moment, so its database work hangs.
STUCK_AFTER_DEADLINE_SHARE = 0.2
STUCK_AFTER_DEADLINE_SECONDS = 5.0
# Cancelled cycles get this long to close their ledger rows; one whose database work hangs is left.
CANCEL_WAIT_SECONDS = 1.0
# After a stop, cycles fetch what they owe for this share of the grace period; then the detail
# requests still waiting for their turn are let go, so the cycles end before the grace does.
LET_GO_SHARE = 0.75


class Runner:
    """Polls the configured accounts: :meth:`sync_once` or :meth:`serve`."""

    def __init__(self, settings: Settings, engine: Engine, *, metrics: Metrics | None = None, clock: Clock = utcnow) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.accounts = settings.accounts()
        self.options = CycleOptions.from_settings(settings)
        self.metrics = metrics or Metrics(self.accounts)
        self.lease_seconds = locks.lease_seconds(settings.interval_seconds)
        self.cadence: Cadence = planned(
            settings.interval_seconds, settings.interval_floor, settings.budget_requests,
            settings.upstream_limit_window_seconds, self.accounts,
        )
        self.states: dict[str, AccountState] = {}
        self.shared_db = ThreadPoolExecutor(max_workers=2, thread_name_prefix="db-leases")
        self.held: set[str] = set()
        self.held_elsewhere: set[str] = set()  # accounts another live worker was found holding
        self.proven: set[str] = set()  # accounts a listing of this process's was answered for
        self.refusal: AuthError | None = None
        self.requests = scheduler_for(settings)
        self._share_budget()
        self.cycles: dict[str, set[asyncio.Task[CycleResult]]] = {account: set() for account in self.accounts}
        self.cycle_started: dict[asyncio.Task[CycleResult], float] = {}
        self.listing: set[str] = set()  # accounts whose cycle is listing them now
        self.overdue: set[str] = set()  # accounts whose listing came due while they were being listed
        self._follow_ups: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.give_up = Deadline()  # moved to now late in the grace period: detail requests not yet sent are let go
        self.jobs: AsyncIOScheduler | None = None
        self.client: CloudflareClient | None = None
        self.gap = self.cadence.gap()
        self._signals = 0

    # -- the two modes ------------------------------------------------------------------------

    async def sync_once(self, progress: Progress | None = None) -> list[CycleResult]:
        """One cycle for every account, concurrently; an account another live worker holds is
        skipped. On a signal, running cycles finish within the grace period (see _finish_running).
        ``progress`` is told, as the cycles go, how far they have got."""
        async with self._running():
            tasks = [asyncio.create_task(self._one_cycle(account)) for account in self.accounts]
            everything = asyncio.gather(*tasks, return_exceptions=True)
            stop = asyncio.create_task(self.stopping.wait())
            reporting = asyncio.create_task(self._report_progress(progress)) if progress is not None else None
            waiting: set[asyncio.Future[Any]] = {everything, stop}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                await asyncio.gather(stop, return_exceptions=True)
                if self.stopping.is_set():
                    await self._finish_running()
                outcomes = await everything
            finally:
                if reporting is not None and progress is not None:
                    reporting.cancel()
                    await asyncio.gather(reporting, return_exceptions=True)
                    progress.finish()
        return [self._result_of(account, outcome) for account, outcome in zip(self.accounts, outcomes, strict=True)]

    async def _report_progress(self, progress: Progress) -> None:
        while True:
            await asyncio.sleep(min(progress.every, 1.0))
            if progress.due():
                progress.show(*self._progress_line())

    def _progress_line(self) -> tuple[str, dict[str, Any]]:
        """Where the cycles stand: pages and sessions listed, details fetched and still owed, and
        about how long the rate budget needs for the rest."""
        states = [self.states[account].progress for account in self.accounts if account in self.states]
        pages, listed = sum(p.pages for p in states), sum(p.listed for p in states)
        fetched = sum(p.answered for p in states)
        owed = sum(p.details - p.answered for p in states)
        left = self.requests.seconds_for(owed)
        whose = f"{len(self.accounts)} accounts: " if len(self.accounts) > 1 else ""
        text = f"{whose}listed {pages:,} page{'' if pages == 1 else 's'}, {listed:,} sessions" if pages else f"{whose}listing"
        if fetched or owed:
            text += f"; details: {fetched:,} fetched, {owed:,} owed"
        if owed:
            text += f" (about {duration(left)} at the rate budget)"
        facts = {"pages": pages, "listed": listed, "details_fetched": fetched, "details_owed": owed,
                 "seconds_left": round(left, 1)}
        return text, facts

    async def serve(self) -> int:
        """Poll every account on its schedule until SIGTERM/SIGINT or :meth:`stop`; the exit code.

        An account's first listing proves the credentials: if Cloudflare refuses them there, the
        service stops and raises the AuthError (a refusal later, a revoked token say, fails that
        account's cycles and is logged). A first listing that fails in a way that may pass (a 5xx,
        a timeout) is tried again by the next cycle, as any other."""
        server = self._start_metrics_server()
        try:
            async with self._running():
                self._start_jobs()
                await self.stopping.wait()
                assert self.jobs is not None
                # Pause, not shut down, first: APScheduler's shutdown cancels the jobs that run.
                self.jobs.pause()
                await self._finish_running()
                self.jobs.shutdown(wait=False)
        finally:
            if server is not None:
                server.stop()
        if self.refusal is not None:
            raise self.refusal
        log.info("stopped")
        return 0

    def stop(self) -> None:
        """Ask the runner to stop (what SIGTERM does): no new cycle starts; running ones finish
        within the grace period (see :meth:`_finish_running`)."""
        self.stopping.set()

    # -- what both modes share ----------------------------------------------------------------

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        """Signals handled, the client open, the leases kept by a heartbeat and released at the end."""
        loop = asyncio.get_running_loop()
        handled = _handle_signals(loop, self._on_signal)
        heartbeat: asyncio.Task[None] | None = None
        try:
            # On the database thread, and let go on a signal: a locked ledger must not hold a stop.
            await self._until_stopped(self._on_shared_db(self._count_earlier_requests))
            # Leases other replicas hold now: this process's share of the budget is known before
            # its first request, not only once its own attempts on those accounts have failed.
            elsewhere: set[str] = set()
            if await self._until_stopped(self._on_shared_db(self._read_leases, elsewhere)):
                self.held_elsewhere |= elsewhere & set(self.accounts)
                self._share_budget()
            async with client_from_settings(self.settings, scheduler=self.requests) as client:
                self.client = client
                heartbeat = asyncio.create_task(self._heartbeat())
                yield
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
            for state in self.states.values():
                if state.db is not None:
                    # What a thread is writing ends as a whole (or times out); nothing new starts.
                    state.db.shutdown(wait=False, cancel_futures=True)
            try:
                await asyncio.wait_for(self._on_shared_db(self._release_leases), timeout=CANCEL_WAIT_SECONDS)
            except TimeoutError:
                log.warning("cannot release the leases in time (they lapse by themselves)")
            self.shared_db.shutdown(wait=False, cancel_futures=True)
            for sig in handled:
                loop.remove_signal_handler(sig)
                # Everything is written and released: a late signal must not turn a clean exit into a kill.
                signal.signal(sig, signal.SIG_IGN)

    def _read_leases(self, elsewhere: set[str]) -> None:
        """Fill ``elsewhere`` with the accounts other workers hold (on a database thread)."""
        try:
            with self.engine.connect() as conn:
                elsewhere |= locks.held_by_others(conn, self.options.worker, self.clock())
        except SQLAlchemyError as exc:
            log.warning("cannot read the leases: %s", first_line(exc))

    def _count_earlier_requests(self) -> None:
        """A fresh scheduler counts what the ledger says this token's accounts asked within the
        last window by workers that are gone (an earlier `archiver sync`, a service before its
        restart), so that one-shot syncs from cron keep to the budget as the service does. Live
        workers (other replicas) count their own, within their part of the budget."""
        if sum(self.requests.granted.values()):
            return  # this process has been counting them itself
        now = self.clock()
        since = now - timedelta(seconds=self.settings.upstream_limit_window_seconds)
        try:
            with self.engine.connect() as conn:
                earlier = store.requests_since(conn, self.accounts, since, except_workers=locks.live_holders(conn, now))
        except SQLAlchemyError as exc:
            log.warning("cannot read the ledger's recent requests: %s", first_line(exc))
            return
        self.requests.count_earlier(
            (now - when).total_seconds() for when, count in earlier for _ in range(count)
        )

    async def _one_cycle(self, account_id: str) -> CycleResult:
        """The account's lease, then one cycle of it (a SKIPPED result if another worker has it).

        The cycle's details may go on after its listing is stored, beside the account's next
        cycle; listings of one account never overlap (see :meth:`_poll`)."""
        assert self.client is not None
        task = asyncio.current_task()
        assert task is not None
        self.cycles[account_id].add(task)
        self.cycle_started[task] = asyncio.get_running_loop().time()
        self.listing.add(account_id)
        told = False

        def listed(pages: int, complete: bool) -> None:
            nonlocal told
            if not told:  # once per cycle: its listing is over, stored or not
                told = True
                self._listed(account_id, pages, complete)

        try:
            state = await self._state(account_id)
            taken = await self._on_db(state, locks.acquire, self.engine, account_id, self.options.worker,
                                      self.lease_seconds, self.clock())
            if not taken:
                self.held.discard(account_id)
                self.held_elsewhere.add(account_id)
                self._share_budget()
                holder = await self._on_db(state, locks.holder_of, self.engine, account_id)
                return self._skipped(account_id, holder)
            self.held.add(account_id)
            self.held_elsewhere.discard(account_id)
            self._share_budget()
            stats = RequestStats()
            try:
                result = await run_cycle(
                    self.client.account(account_id, stats), self.engine, self.options, clock=self.clock,
                    fence=locks.fence(account_id, self.options.worker, self.lease_seconds), state=state,
                    on_listed=listed, give_up=self.give_up,
                )
            except LeaseLostError:
                self.held.discard(account_id)
                self._forget_open(account_id)
                raise
            self.metrics.record_cycle(result, stats)
            return result
        finally:
            self.cycles[account_id].discard(task)
            self.cycle_started.pop(task, None)
            listed(0, False)  # a cycle that ended before its listing did

    def _listed(self, account_id: str, pages: int, complete: bool) -> None:
        """An account's listing is stored (or failed): the cadence learns its size, and a listing
        that came due meanwhile goes now."""
        self.listing.discard(account_id)
        self.metrics.record_listing(account_id, pages, complete)
        if pages:
            self.cadence.record_listing(account_id, pages)
            self._replan()
        if account_id in self.overdue and not self.stopping.is_set():
            self.overdue.discard(account_id)
            follow_up = asyncio.get_running_loop().create_task(self._poll(account_id))
            self._follow_ups.add(follow_up)  # a reference, so the task is not collected half-way
            follow_up.add_done_callback(self._follow_ups.discard)

    async def _state(self, account_id: str) -> AccountState:
        """What the account's cycles share, with a thread of its own for its database work; its
        detail mode resumed from the ledger the first time."""
        if account_id not in self.states:
            db = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-{account_id[:8]}")
            state = AccountState(learner_for(self.options.detail_policy, None), db=db)
            self.states[account_id] = state
            last_mode, last_quiet = await self._on_db(state, self._last_detail_mode, account_id)
            state.learner = learner_for(self.options.detail_policy, last_mode, last_quiet)
        return self.states[account_id]

    def _last_detail_mode(self, account_id: str) -> tuple[str | None, int]:
        with self.engine.connect() as conn:
            return store.last_detail_mode(conn, account_id)

    @staticmethod
    async def _on_db(state: AccountState, work: Callable[..., T], *args: Any) -> T:
        """Database work of an account, on its thread (see AccountState.db)."""
        return await asyncio.get_running_loop().run_in_executor(state.db, functools.partial(work, *args))

    async def _on_shared_db(self, work: Callable[..., T], *args: Any) -> T:
        """Database work of no one account (leases, the ledger's recent requests), on threads of
        the runner's own: not the event loop's default executor, which the loop waits for when it
        closes, hung or not."""
        return await asyncio.get_running_loop().run_in_executor(self.shared_db, functools.partial(work, *args))

    async def _heartbeat(self) -> None:
        """Renew the leases we hold, but those of accounts whose cycle is stuck (run past its
        deadline: its database work hangs), so that a healthy replica can take them over; cancel
        any cycle whose lease was lost, so two never overlap."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            stuck = self._stuck()
            self.metrics.record_stuck(stuck)
            renewing = self.held - stuck.keys()  # not those taken while the renewal runs
            try:
                still_held = await asyncio.wait_for(self._on_shared_db(
                    locks.renew, self.engine, renewing, self.options.worker, self.lease_seconds, self.clock()
                ), timeout=self.lease_seconds / 3)
            except (SQLAlchemyError, TimeoutError) as exc:
                # The leases lapse if this goes on: a worker that cannot reach the database cannot
                # keep an account from a replica that can.
                log.warning("cannot renew leases: %s", first_line(exc) if str(exc) else "the database did not answer")
                continue
            for account_id in renewing - still_held:
                log.error("account %s: lease lost to another worker", account_id)
                self.held.discard(account_id)
                self.held_elsewhere.add(account_id)
                self._forget_open(account_id)
                for task in self.cycles[account_id]:
                    task.cancel()
            self._share_budget()

    def _stuck(self) -> dict[str, float]:
        """Accounts with a cycle running past its deadline and the grace to close it, and for how long."""
        now = asyncio.get_running_loop().time()
        deadline = self.settings.cycle_timeout_seconds
        limit = deadline * (1 + STUCK_AFTER_DEADLINE_SHARE) + STUCK_AFTER_DEADLINE_SECONDS
        stuck: dict[str, float] = {}
        for account_id, tasks in self.cycles.items():
            running = max((now - self.cycle_started[task] for task in tasks if task in self.cycle_started), default=0.0)
            if running > limit:
                if account_id not in self.metrics.stuck:
                    log.error("account %s: a cycle has run %.0fs, past its %.0fs deadline: its database work hangs; "
                              "the lease is left to lapse", account_id, running, self.settings.cycle_timeout_seconds)
                stuck[account_id] = running
        return stuck

    def _release_leases(self) -> None:
        for account_id in self.accounts:  # a no-op for an account whose lease is not ours
            try:
                locks.release(self.engine, account_id, self.options.worker)
            except SQLAlchemyError as exc:
                # The lease lapses by itself within 0.75 intervals.
                log.warning("account %s: cannot release the lease (it lapses by itself): %s", account_id, first_line(exc))
        self.held.clear()

    def _skipped(self, account_id: str, holder: str | None) -> CycleResult:
        log.info("account %s: skipped, %s is polling it", account_id, holder)
        return CycleResult(account_id, 0, Outcome.SKIPPED, False, {}, 0.0, f"skipped: another worker ({holder}) is polling this account")

    def _result_of(self, account_id: str, outcome: CycleResult | BaseException) -> CycleResult:
        """What `archiver sync` reports for an account: its cycle's result, or why it has none."""
        if isinstance(outcome, CycleResult):
            return outcome
        if isinstance(outcome, asyncio.CancelledError):
            return CycleResult(account_id, 0, Outcome.ABORTED, False, {}, 0.0, "cancelled by a signal before the cycle ended")
        if isinstance(outcome, (ArchiverError, SQLAlchemyError)):
            return CycleResult(account_id, 0, Outcome.FAILED, False, {}, 0.0, first_line(outcome))
        raise outcome

    # -- stopping -----------------------------------------------------------------------------

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: finishing the running cycles (grace %.0fs), starting no new ones",
                     sig.name, self.settings.shutdown_grace_seconds)
            self.stop()
        else:
            log.warning("%s again: stopping now", sig.name)
            for task in self._running_cycles():
                task.cancel()

    def _running_cycles(self) -> set[asyncio.Task[CycleResult]]:
        return {task for tasks in self.cycles.values() for task in tasks}

    async def _finish_running(self) -> None:
        """Let running cycles finish within the grace period: they go on fetching what they owe
        until :data:`LET_GO_SHARE` of it has passed; then detail requests still waiting for their
        turn are let go (still owed), so the cycles close their ledger rows as usual; at its end,
        what still runs (a request that hangs) is cancelled, which marks its row aborted."""
        running = self._running_cycles()
        if not running:
            return
        grace = self.settings.shutdown_grace_seconds
        _done, pending = await asyncio.wait(running, timeout=grace * LET_GO_SHARE)
        if pending:
            self.give_up.at = -math.inf
            self.requests.deadlines_moved()
            _done, pending = await asyncio.wait(pending, timeout=grace * (1 - LET_GO_SHARE))
        for task in pending:
            task.cancel()
        if pending:
            log.warning("grace period over: cancelled %d running cycle(s)", len(pending))
            # A cycle whose database work hangs cannot be waited for: the process ends without it.
            await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)

    # -- the service's schedule ---------------------------------------------------------------

    def _judge_credentials(self, result: CycleResult) -> None:
        """Stop the service if Cloudflare refused the credentials on an account's first listing."""
        if result.refused and result.account_id not in self.proven:
            self.refusal = AuthError(f"account {result.account_id}: {result.error}")
            self.stop()
        elif result.pages:
            self.proven.add(result.account_id)

    async def _until_stopped(self, work: Awaitable[None]) -> bool:
        """Run ``work`` unless a stop comes first (then cancel it); whether it finished."""
        task = asyncio.ensure_future(work)
        stop = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(stop, task, return_exceptions=True)
        if task.cancelled():
            return False
        task.result()  # its error, if it failed
        return True

    def _start_metrics_server(self) -> MetricsServer | None:
        if self.settings.metrics_port is None:
            return None
        server = MetricsServer(self.metrics, self.settings.metrics_host, self.settings.metrics_port)
        server.start()
        return server

    def _start_jobs(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.jobs = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        for index, account_id in enumerate(self.accounts):
            self.metrics.record_interval(account_id, self.gap)
            self.jobs.add_job(
                self._poll,
                self._trigger(self.gap),
                args=[account_id],
                id=account_id,
                # The details of a cycle may still be coming in when the account's next listing is
                # due: that one starts beside them (_poll holds back one whose account is still
                # being listed until that listing is stored).
                max_instances=1000,
                coalesce=True,  # after a pause, one catch-up run rather than a burst
                misfire_grace_time=max(1, int(self.gap)),
                # the first listings a little apart (the request scheduler paces them anyway), so
                # that the accounts' cycles do not all fall in the same second ever after
                next_run_time=now + timedelta(seconds=min(self.gap * JITTER_SHARE, 5.0) * index / max(1, len(self.accounts))),
            )
        self.jobs.start()
        self._log_cadence()

    def _trigger(self, gap: float) -> IntervalTrigger:
        from apscheduler.triggers.interval import IntervalTrigger

        return IntervalTrigger(seconds=gap * (1 - JITTER_SHARE), jitter=gap * JITTER_SHARE, timezone=UTC)

    async def _poll(self, account_id: str) -> None:
        if self.stopping.is_set():
            return
        if account_id in self.listing:
            # The account's last listing is still under way (a slow API): this one goes as soon
            # as that one is stored, rather than a whole gap later. Details never hold it back.
            self.overdue.add(account_id)
            return
        try:
            result = await self._one_cycle(account_id)
            self._judge_credentials(result)
            await self._follow_open_sessions(result)
        except asyncio.CancelledError:
            why = "by shutdown" if self.stopping.is_set() else "as its lease was lost"
            log.warning("account %s: cycle cancelled %s; its open transaction was rolled back", account_id, why)
        except (ArchiverError, SQLAlchemyError) as exc:
            # The database is away, or the account was taken over: this cycle is lost, the next
            # one (or the other worker) carries on. Nothing half-written: each step is a transaction.
            self.metrics.cycles.labels(account_id, Outcome.FAILED).inc()
            log.warning("account %s: cycle failed: %s", account_id, first_line(exc))
        except Exception:
            self.metrics.cycles.labels(account_id, Outcome.FAILED).inc()
            log.exception("account %s: cycle failed unexpectedly", account_id)

    async def _follow_open_sessions(self, result: CycleResult) -> None:
        """The open-sessions gauge, from the account's state: counted once (a range of an index,
        as long as the sessions open now, whatever the archive's size), then kept by every commit
        of the account's cycles (AccountState.committed), at no cost as the archive grows."""
        account_id = result.account_id
        state = self.states.get(account_id)
        if state is None:
            return
        if result.outcome == Outcome.SKIPPED:
            self._forget_open(account_id)  # another worker polls it: its figures are that worker's
            return
        if state.open_sessions is None:
            try:
                await self._on_db(state, self._count_open, state, account_id)
            except SQLAlchemyError as exc:
                log.warning("account %s: cannot count open sessions: %s", account_id, first_line(exc))
                return
        if state.open_sessions is not None:
            self.metrics.count_open(account_id, state.open_sessions)

    def _count_open(self, state: AccountState, account_id: str) -> None:
        """On the account's database thread, between its cycles' commits."""
        with self.engine.connect() as conn:
            state.open_sessions = store.count_open(conn, account_id)

    def _forget_open(self, account_id: str) -> None:
        state = self.states.get(account_id)
        if state is not None:
            state.open_sessions = None
        self.metrics.forget_open(account_id)

    def _share_budget(self) -> None:
        """This process's part of the token's budget. Replicas split it by the accounts each holds
        or may take (all but those another worker was found holding: one alone, or a lone
        `archiver sync`, has all of it, from its start-up checks on), so that together they keep
        to it; the reserve for listings is split alike."""
        share = max(1, len(self.accounts) - len(self.held_elsewhere)) / len(self.accounts)
        self.requests.limit = math.floor(self.settings.budget_requests * share)
        self.requests.listing_reserve = math.ceil(self.cadence.reserve() * share)

    def _replan(self) -> None:
        """After a listing: the listing reserve, and the gap if the listings' size moved it."""
        self._share_budget()
        gap = self.cadence.gap()
        if abs(gap - self.gap) <= RESCHEDULE_THRESHOLD * self.gap:
            return
        self.gap = gap
        if self.jobs is not None:
            for account_id in self.accounts:
                self.jobs.reschedule_job(account_id, trigger=self._trigger(gap))
                self.metrics.record_interval(account_id, gap)
            self._log_cadence()

    def _log_cadence(self) -> None:
        pages, gap, interval = self.cadence.listing_pages, self.gap, self.settings.interval_seconds
        if self.cadence.stretched:
            log.warning(
                "listing %d account(s) (%d page(s) a round) every %.0fs: the listing pages alone exceed the "
                "rate budget at the %.0fs interval (ARCHIVER_RATE_BUDGET=%g of %d requests per %.0fs)",
                len(self.accounts), pages, gap, interval, self.settings.rate_budget,
                self.settings.upstream_limit_requests, self.settings.upstream_limit_window_seconds,
            )
        else:
            log.info("listing %d account(s) every %.1fs (interval %.0fs, floor %.1fs), %d of every %d requests kept for listings",
                     len(self.accounts), gap, interval, self.cadence.floor, self.requests.listing_reserve,
                     self.settings.budget_requests)


def _handle_signals(loop: asyncio.AbstractEventLoop, handler: object) -> Iterable[signal.Signals]:
    """Route SIGTERM and SIGINT to ``handler``; the signals handled (none off the main thread)."""
    handled = []
    for sig in STOP_SIGNALS:
        with suppress(RuntimeError, NotImplementedError, ValueError):
            loop.add_signal_handler(sig, handler, sig)  # type: ignore[arg-type]
            handled.append(sig)
    return handled


async def sync_accounts(settings: Settings, engine: Engine, *, clock: Clock = utcnow,
                        progress: Progress | None = None) -> list[CycleResult]:
    """One cycle for every configured account (what `archiver sync` runs)."""
    return await Runner(settings, engine, clock=clock).sync_once(progress)
