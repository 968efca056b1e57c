"""Steady state: a resident service polling one account with 120 open sessions, 5% changing per cycle."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from sqlalchemy import Engine

from archiver.api.cloudflare import RequestStats
from archiver.archive.sync import CycleOptions, run_cycle
from archiver.config import Settings
from bench.harness import Options, Outcome, bench_settings, client, median, migrated_engine, percentile, profiled, sqlite_database
from bench.remote import RemoteEmulator

SESSIONS = 120  # a paid account's concurrency limit
# Per cycle: 2 sessions close, 2 start, 2 connect: 6 of 120, 5%.
CHURN = {"closed": 2, "started": 2, "connected": 2}
# The first cycles fetch the details of every session (100 per cycle at most); after these, every
# cycle sees only the churn.
WARMUP_CYCLES = 5
TARGET_MS = 10.0


@dataclass
class SteadyRun:
    walls_ms: list[float]
    cpus_ms: list[float]
    requests: list[int]

    @property
    def wall_median(self) -> float:
        return median(self.walls_ms)


def emulator(seed: int = 3) -> RemoteEmulator:
    """An account whose sessions change only when the workload says so."""
    return RemoteEmulator(accounts=1, initial_sessions=0, seed=seed, speed=0.0, spawn_per_minute=0.0)


class SteadyAccount:
    """One emulated account in steady state, and the archiver polling it as a resident service does
    (one client, one engine), one measured cycle at a time."""

    def __init__(self, remote: RemoteEmulator, settings: Settings, engine: Engine) -> None:
        self.remote = remote
        self.engine = engine
        self.settings = settings
        self.account = settings.accounts()[0]
        self.options = CycleOptions.from_settings(settings)
        self.run = SteadyRun([], [], [])
        self._client = client(settings)

    async def __aenter__(self) -> SteadyAccount:
        if self.remote.call("active_count", self.account) < SESSIONS:
            self.remote.call("populate", self.account, SESSIONS)
        for _ in range(WARMUP_CYCLES):
            await self._cycle()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def cycle(self, options: Options | None = None, label: str = "") -> None:
        """One measured cycle; it must make exactly the minimal requests: one list page plus one
        detail per new, changed and vanished session."""
        options = options or Options()
        with profiled(options, label):
            wall, cpu, stats, counts = await self._cycle()
        minimal = 1 + sum(counts.get(kind, 0) for kind in ("new", "changed", "vanished"))
        if stats.requests != minimal or minimal != 1 + sum(CHURN.values()):
            raise AssertionError(f"cycle made {stats.requests} requests, expected {minimal} ({counts})")
        self.run.walls_ms.append(wall * 1000)
        self.run.cpus_ms.append(cpu * 1000)
        self.run.requests.append(stats.requests)

    async def _cycle(self) -> tuple[float, float, RequestStats, dict[str, int]]:
        self.remote.call("churn", self.account, **CHURN)
        stats = RequestStats()
        wall, cpu = time.perf_counter(), time.process_time()
        result = await run_cycle(self._client.account(self.account, stats), self.engine, self.options)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if result.outcome != "ok":
            raise AssertionError(f"cycle failed: {result.error}")
        return wall, cpu, stats, result.counts


async def measure(remote: RemoteEmulator, settings: Settings, engine: Engine, cycles: int, options: Options, label: str) -> SteadyRun:
    """Warm-up cycles, then ``cycles`` measured ones (the first of them profiled with --profile)."""
    async with SteadyAccount(remote, settings, engine) as account:
        for number in range(cycles):
            await account.cycle(options if number == 0 else Options(), label)
    return account.run


def report(outcome: Outcome, case: str, run: SteadyRun, *, targets: bool) -> None:
    outcome.add(case, "cycle wall time, median", run.wall_median, "ms", target=TARGET_MS if targets else None, decimals=2)
    outcome.add(case, "cycle wall time, 10th percentile (what a quiet machine approaches)", percentile(run.walls_ms, 0.10), "ms",
                decimals=2)
    outcome.add(case, "cycle wall time, 95th percentile", percentile(run.walls_ms, 0.95), "ms", decimals=2)
    outcome.add(case, "cycle CPU time, median", median(run.cpus_ms), "ms", decimals=2)
    if targets:
        outcome.add(case, "API requests per cycle (1 list + 6 details is minimal)", max(run.requests), "", target=7, decimals=0)


def run(options: Options) -> Outcome:
    outcome = Outcome("steady state")
    cycles = options.pick(200, 40)
    with emulator() as remote, sqlite_database() as url, migrated_engine(url) as engine:
        assert remote.endpoint is not None
        settings = bench_settings(remote.endpoint, url)
        steady = asyncio.run(measure(remote, settings, engine, cycles, options, "steady state"))
    report(outcome, f"SQLite, {SESSIONS} sessions, 5% change, {cycles} cycles", steady, targets=True)
    outcome.notes.append(
        f"One account with {SESSIONS} open sessions; before each cycle 2 close, 2 start and 2 connect (5%). "
        "A resident service: one client (keep-alive connections) and one engine kept from cycle to cycle; "
        f"{WARMUP_CYCLES} warm-up cycles are not counted. Default settings but the detail policy "
        "`changed` (the costliest: the `auto` default stops fetching details that repeat the listing), budget 100, "
        "concurrency 4, with the client-side rate limit and budget lifted. Wall and CPU time "
        "(time.perf_counter, time.process_time) of run_cycle in the archiver's process; the emulator runs in "
        "its own process. Every measured cycle is checked to make exactly 1 list request plus one detail "
        "request per new, changed and vanished session (7)."
    )
    return outcome
