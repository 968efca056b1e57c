"""The long-running service: one APScheduler job per account, signals, leases, pacing, metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from archiver import locks
from archiver.cloudflare import CloudflareClient, RequestStats, client_from_settings
from archiver.config import Settings
from archiver.errors import ArchiverError, LeaseLostError, first_line
from archiver.metrics import Metrics, MetricsServer
from archiver.pacing import Pacer
from archiver.ratelimit import TokenBucket
from archiver.store import sessions_table
from archiver.sync import CycleOptions, Fence, run_cycle, utcnow

log = logging.getLogger(__name__)

JITTER_SHARE = 0.1  # spread accounts (and replicas) so their polls do not beat in step
RESCHEDULE_THRESHOLD = 0.1  # change a job's interval only when it moves by more than this share
SESSION_GAUGE_SECONDS = 60.0  # counting every status is not free on a large archive


class Service:
    """Polls every configured account on its own schedule until told to stop."""

    def __init__(self, settings: Settings, engine: Engine, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.accounts = settings.accounts()
        self.options = CycleOptions.from_settings(settings)
        self.metrics = metrics or Metrics(self.accounts)
        self.pacer = Pacer(settings.interval_seconds, settings.interval_floor, settings.budget_rate, len(self.accounts))
        self.lease_seconds = locks.lease_seconds(settings.interval_seconds)
        self.held: set[str] = set()
        self.cycles: dict[str, asyncio.Task[None]] = {}
        self.stopping = asyncio.Event()
        self.running: set[asyncio.Task[None]] = set()
        self.scheduler: AsyncIOScheduler | None = None
        self.client: CloudflareClient | None = None
        self._signals = 0
        self._gauge_refreshed: dict[str, float] = {}
        # Each account's latest listing, parsed: the next cycle re-parses only what changed.

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        server = self._start_metrics_server()
        # The saved-up burst is half the budget's share of one upstream window, so that no window
        # can ever see more than the budget plus that half, far below Cloudflare's limit.
        capacity = max(1.0, self.settings.upstream_limit_requests * self.settings.rate_budget / 2)
        budget = TokenBucket(self.settings.budget_rate, capacity=capacity)
        try:
            async with client_from_settings(self.settings, budget=budget) as client:
                self.client = client
                await self._check_credentials(client)
                self._start_scheduler()
                heartbeat = asyncio.create_task(self._heartbeat())
                await self.stopping.wait()
                await self._shut_down()
                heartbeat.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
                # Everything is written and released: a late signal must not turn exit 0 into a kill.
                signal.signal(sig, signal.SIG_IGN)
            if server is not None:
                server.stop()
        return 0

    def stop(self) -> None:
        """Ask the service to stop (what SIGTERM does)."""
        self.stopping.set()

    # -- start-up -----------------------------------------------------------------------------

    async def _check_credentials(self, client: CloudflareClient) -> None:
        for account_id in self.accounts:
            await client.account(account_id, RequestStats()).probe()
        log.info("credentials accepted for %d account(s)", len(self.accounts))

    def _start_metrics_server(self) -> MetricsServer | None:
        if self.settings.metrics_port is None:
            return None
        server = MetricsServer(self.metrics, self.settings.metrics_host, self.settings.metrics_port)
        server.start()
        return server

    def _start_scheduler(self) -> None:
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        interval = self.pacer.effective()
        now = datetime.now(UTC)
        for index, account_id in enumerate(self.accounts):
            self.metrics.record_interval(account_id, interval)
            self.scheduler.add_job(
                self._poll,
                self._trigger(interval),
                args=[account_id],
                id=account_id,
                max_instances=1,  # an overrunning cycle makes the next one skip, never stack
                coalesce=True,  # after a pause, one catch-up run rather than a burst
                misfire_grace_time=max(1, int(interval)),
                # stagger the first polls a little so accounts do not all start in the same second
                next_run_time=now + timedelta(seconds=min(interval, 5.0) * index / max(1, len(self.accounts))),
            )
        self.scheduler.start()
        log.info("polling %d account(s), interval %.1fs (floor %.1fs)", len(self.accounts), interval, self.pacer.floor)

    def _trigger(self, interval: float) -> IntervalTrigger:
        return IntervalTrigger(seconds=interval, jitter=max(0.0, interval * JITTER_SHARE), timezone=UTC)

    # -- one account's cycle ------------------------------------------------------------------

    async def _poll(self, account_id: str) -> None:
        if self.stopping.is_set():
            return
        task = asyncio.current_task()
        assert task is not None
        self.running.add(task)
        self.cycles[account_id] = task
        try:
            await self._poll_once(account_id)
        except asyncio.CancelledError:
            log.warning("account %s: cycle cancelled by shutdown; its open transaction was rolled back", account_id)
        except (ArchiverError, SQLAlchemyError) as exc:
            # The database is away, or the account was taken over: this cycle is lost, the next
            # one (or the other worker) carries on. Nothing half-written: each step is a transaction.
            self.metrics.cycles.labels(account_id, "failed").inc()
            log.warning("account %s: cycle failed: %s", account_id, first_line(exc))
        except Exception:
            self.metrics.cycles.labels(account_id, "failed").inc()
            log.exception("account %s: cycle failed unexpectedly", account_id)
        finally:
            self.running.discard(task)
            self.cycles.pop(account_id, None)

    async def _poll_once(self, account_id: str) -> None:
        assert self.client is not None
        if not locks.acquire(self.engine, account_id, self.options.worker, self.lease_seconds, utcnow()):
            self.held.discard(account_id)
            log.debug("account %s is being polled by another worker", account_id)
            return
        self.held.add(account_id)
        stats = RequestStats()
        result = await run_cycle(self.client.account(account_id, stats), self.engine, self.options, fence=self._fence(account_id))
        self.metrics.record_cycle(result, stats)
        self._repace(account_id, stats)
        await self._refresh_session_gauge(account_id)

    def _fence(self, account_id: str) -> Fence:
        """The check that opens each write of a cycle: the lease must still be ours (and is renewed)."""
        check = locks.fence(account_id, self.options.worker, self.lease_seconds)

        def confirm(conn: Connection) -> None:
            try:
                check(conn)
            except LeaseLostError:
                self.held.discard(account_id)
                raise

        return confirm

    async def _heartbeat(self) -> None:
        """Renew the leases we hold; stop any cycle whose lease was lost, so two never overlap."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                still_held = locks.renew(self.engine, self.held, self.options.worker, self.lease_seconds, utcnow())
            except SQLAlchemyError as exc:
                log.warning("cannot renew leases: %s", first_line(exc))
                continue
            for account_id in self.held - still_held:
                log.error("account %s: lease lost to another worker", account_id)
                if account_id in self.cycles:
                    self.cycles[account_id].cancel()
            self.held = still_held

    def _repace(self, account_id: str, stats: RequestStats) -> None:
        interval = self.pacer.after_cycle(account_id, stats.requests, stats.throttled)
        for other in self.accounts:
            current = self.metrics.intervals.get(other, interval)
            if abs(interval - current) > RESCHEDULE_THRESHOLD * current and self.scheduler is not None:
                self.scheduler.reschedule_job(other, trigger=self._trigger(interval))
                self.metrics.record_interval(other, interval)
                if other == account_id:
                    log.info(
                        "effective interval now %.1fs (%.1f requests per cycle, budget %.2f requests/s%s)",
                        interval, self.pacer.requests_per_cycle[account_id], self.settings.budget_rate,
                        f", backing off x{self.pacer.penalty:g} after 429s" if self.pacer.penalty > 1 else "",
                    )

    async def _refresh_session_gauge(self, account_id: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._gauge_refreshed.get(account_id, -SESSION_GAUGE_SECONDS) < SESSION_GAUGE_SECONDS:
            return
        self._gauge_refreshed[account_id] = now
        try:
            # The count reads every archived session of the account, so it grows with the archive:
            # it runs in a worker thread, leaving the event loop (other accounts' cycles, the lease
            # heartbeat) free meanwhile.
            counts = await asyncio.to_thread(self._count_sessions, account_id)
        except SQLAlchemyError as exc:
            self._gauge_refreshed.pop(account_id, None)  # try again after the next cycle
            log.warning("account %s: cannot count sessions: %s", account_id, first_line(exc))
            return
        self.metrics.record_sessions(account_id, counts)

    def _count_sessions(self, account_id: str) -> dict[str, int]:
        stmt = (
            select(sessions_table.c.status, func.count())
            .where(sessions_table.c.account_id == account_id)
            .group_by(sessions_table.c.status)
        )
        with self.engine.connect() as conn:
            return {status: n for status, n in conn.execute(stmt)}

    # -- shutdown -----------------------------------------------------------------------------

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: finishing the running cycles (grace %.0fs), starting no new ones", sig.name, self.settings.shutdown_grace_seconds)
            self.stopping.set()
        else:
            log.warning("%s again: stopping now", sig.name)
            for task in list(self.running):
                task.cancel()

    async def _shut_down(self) -> None:
        # Pause, not shut down, first: APScheduler's shutdown cancels the jobs that are running.
        if self.scheduler is not None:
            self.scheduler.pause()
        if self.running:
            done, pending = await asyncio.wait(set(self.running), timeout=self.settings.shutdown_grace_seconds)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("grace period over: cancelled %d running cycle(s)", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        for account_id in self.accounts:
            try:
                locks.release(self.engine, account_id, self.options.worker)
            except SQLAlchemyError as exc:
                # The lease lapses by itself within 0.75 intervals.
                log.warning("account %s: cannot release the lease: %s", account_id, first_line(exc))
        log.info("stopped")
