"""Detail throughput: with 50 ms of latency per request and the rate limit lifted, how many detail
requests per second a cycle completes at a detail concurrency of 1, 8 and 32."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import Engine

from archiver.api.cloudflare import RequestStats
from archiver.archive.sync import CycleOptions, run_cycle
from archiver.config import Settings
from bench.harness import Options, Outcome, bench_settings, client, migrated_engine, sqlite_database
from bench.remote import RemoteEmulator

LATENCY_MS = 50.0
CONCURRENCIES = (1, 8, 32)


async def detail_rate(remote: RemoteEmulator, settings: Settings, engine: Engine, details: int) -> float:
    """Details per second of one cycle that owes ``details`` of them (its listing excluded)."""
    account = settings.accounts()[0]
    async with client(settings) as api_client:
        # First, store the listing without fetching anything: every session is then owed a detail.
        quiet = CycleOptions.from_settings(settings.model_copy(update={"detail_budget": 0}))
        await run_cycle(api_client.account(account, RequestStats()), engine, quiet)
        remote.call("set_faults", latency_ms=LATENCY_MS)
        page_started = time.perf_counter()
        async for _page in api_client.account(account, RequestStats()).listing():
            pass  # what the cycle's listing costs now
        page = time.perf_counter() - page_started
        stats = RequestStats()
        started = time.perf_counter()
        result = await run_cycle(api_client.account(account, stats), engine, CycleOptions.from_settings(settings))
        elapsed = time.perf_counter() - started - page
        remote.call("set_faults", latency_ms=0.0)
    if result.outcome != "ok" or result.counts.get("details_fetched") != details:
        raise AssertionError(f"expected {details} details, got {result.counts} ({result.error})")
    return details / elapsed


def run(options: Options) -> Outcome:
    outcome = Outcome("detail throughput")
    for concurrency in CONCURRENCIES:
        details = options.pick(40, 10) * max(1, concurrency)
        remote = RemoteEmulator(accounts=1, initial_sessions=details, seed=17, speed=0.0, spawn_per_minute=0.0, mean_lifetime_s=1e9)
        with remote, sqlite_database() as url, migrated_engine(url) as engine:
            assert remote.endpoint is not None
            settings = bench_settings(remote.endpoint, url, detail_concurrency=concurrency, detail_budget=details)
            rate = asyncio.run(detail_rate(remote, settings, engine, details))
        ideal = concurrency * 1000 / LATENCY_MS
        outcome.add(f"concurrency {concurrency}, {details} details", "detail requests per second", rate, "/s", decimals=1)
        outcome.add(f"concurrency {concurrency}, {details} details", "share of the latency-bound ideal", 100 * rate / ideal, "%",
                    decimals=0)
    outcome.notes.append(
        f"The emulator answers every request {LATENCY_MS:.0f} ms late. A cycle first stores the listing without "
        "details (budget 0), then one cycle fetches every owed detail (budget = their number) at the given "
        "`ARCHIVER_DETAIL_CONCURRENCY`, rate limit lifted; the time of its one list request is subtracted. "
        "The ideal is concurrency / latency."
    )
    return outcome
