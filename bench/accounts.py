"""Many accounts: 200 accounts of 50 sessions each, polled by one process: the time for a full round."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import Engine

from archiver.api.cloudflare import RequestStats
from archiver.archive.sync import CycleOptions, CycleResult, run_cycle
from archiver.config import Settings
from bench.harness import Options, Outcome, bench_settings, client, median, migrated_engine, sqlite_database
from bench.remote import RemoteEmulator

ACCOUNTS = 200
SESSIONS = 50
# Per account and round: one session closes, one starts, one connects (3 of 50, about 5%).
CHURN = {"closed": 1, "started": 1, "connected": 1}


async def rounds(remote: RemoteEmulator, settings: Settings, engine: Engine, count: int) -> list[tuple[float, float, int]]:
    """``count`` rounds over every account, all accounts at once under one client, as `archiver sync`
    polls them; each round's wall time, CPU time and API requests."""
    accounts = settings.accounts()
    options = CycleOptions.from_settings(settings)
    figures = []
    async with client(settings) as api_client:
        for number in range(count):
            if number:
                for account in accounts:
                    remote.call("churn", account, **CHURN)
            stats = {account: RequestStats() for account in accounts}
            wall, cpu = time.perf_counter(), time.process_time()
            results: list[CycleResult] = await asyncio.gather(
                *(run_cycle(api_client.account(a, stats[a]), engine, options) for a in accounts)
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            failed = [r for r in results if r.outcome != "ok"]
            if failed:
                raise AssertionError(f"{len(failed)} cycles failed: {failed[0].error}")
            figures.append((wall, cpu, sum(s.requests for s in stats.values())))
    return figures


def run(options: Options) -> Outcome:
    outcome = Outcome("many accounts")
    count = options.pick(6, 3)
    remote = RemoteEmulator(accounts=ACCOUNTS, initial_sessions=SESSIONS, seed=13, speed=0.0, spawn_per_minute=0.0, mean_lifetime_s=1e9)
    with remote, sqlite_database() as url, migrated_engine(url) as engine:
        assert remote.endpoint is not None
        settings = bench_settings(remote.endpoint, url)
        figures = asyncio.run(rounds(remote, settings, engine, count))
    case = f"SQLite, {ACCOUNTS} accounts x {SESSIONS} sessions"
    first, steady = figures[0], figures[1:]
    outcome.add(f"{case}, first round", "round wall time", first[0], "s", decimals=2)
    outcome.add(f"{case}, first round", "API requests", first[2], "", decimals=0)
    outcome.add(f"{case}, steady rounds", "round wall time, median", median([f[0] for f in steady]), "s", decimals=2)
    outcome.add(f"{case}, steady rounds", "round CPU time, median", median([f[1] for f in steady]), "s", decimals=2)
    outcome.add(f"{case}, steady rounds", "API requests per round", median([f[2] for f in steady]), "", decimals=0)
    outcome.notes.append(
        f"One process polls {ACCOUNTS} accounts at once under one client (as `archiver sync` does), rate limit "
        f"lifted. The first round archives {ACCOUNTS * SESSIONS:,} new sessions and fetches their details; before "
        "each later round, one session per account closes, one starts and one connects. Default settings "
        "otherwise (the client keeps at most 4 connections)."
    )
    return outcome
