"""Archive growth: the steady cycle with 10,000 versus 1,000,000 sessions already archived, on SQLite
and PostgreSQL. The history is generated inside the database (one INSERT .. SELECT per table)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from sqlalchemy import Engine, text

from archiver.config import Settings
from bench import steady
from bench.harness import Options, Outcome, bench_settings, database, migrated_engine
from bench.remote import RemoteEmulator

RATIO_TARGET = 1.2
SESSION_COLUMNS = (
    "account_id, session_id, status, first_seen_at, last_seen_at, last_detail_at, vanished_at, gone_at, detail_due, "
    "detail_attempts, last_run_id, start_time, end_time, connection_start_time, connection_end_time, last_updated, "
    "connection_id, close_reason, close_reason_text, devtools_frontend_url, web_socket_debugger_url, raw"
)
VERSION_COLUMNS = "account_id, session_id, run_id, observed_at, source, status, start_time, end_time, close_reason, close_reason_text, raw"
RUN_COLUMNS = (
    "account_id, worker, started_at, finished_at, outcome, listing_complete, pages, listed, new, changed, vanished, "
    "reappeared, details_fetched, details_gone, details_failed, details_carried, rejected, api_requests, retries, "
    "throttled, waited_seconds"
)
# Per dialect: a row-number series, a session id, a timestamp some seconds after 2020-01-01, a JSON object.
DIALECT_SQL = {
    "sqlite": {
        "series": "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < :count) ",
        "from": "n",
        "sid": "printf('%08x-0000-4000-8000-%012x', i, i)",
        "at": "(datetime('2020-01-01', '+' || (i * 60 + {s}) || ' seconds') || '.000000')",
        "json": "json_object('sessionId', {sid}, 'closeReason', 'NormalClosure', 'startTime', 1577836800000 + i * 60000)",
        "true": "1",
    },
    "postgresql": {
        "series": "",
        "from": "generate_series(CAST(0 AS bigint), CAST(:count AS bigint) - 1) AS i",
        "sid": "format('%s-0000-4000-8000-%s', lpad(to_hex(i), 8, '0'), lpad(to_hex(i), 12, '0'))",
        "at": "(timestamptz '2020-01-01 00:00:00+00' + (i * 60 + {s}) * interval '1 second')",
        "json": "jsonb_build_object('sessionId', {sid}, 'closeReason', 'NormalClosure', 'startTime', 1577836800000 + i * 60000)",
        "true": "true",
    },
}


def add_history(engine: Engine, account_id: str, sessions: int) -> float:
    """Archive ``sessions`` closed sessions of the account, one version each, and a ledger row per
    ten sessions; return the seconds it took."""
    sql = DIALECT_SQL[engine.dialect.name]
    sid = sql["sid"]
    at = sql["at"].format
    session_values = (
        f":account, {sid}, 'closed', {at(s=0)}, {at(s=40)}, {at(s=41)}, NULL, NULL, NULL, 0, i / 10, {at(s=0)}, "
        f"{at(s=35)}, {at(s=1)}, {at(s=35)}, {at(s=35)}, 'c-' || i, 'NormalClosure', 'Session closed normally', "
        f"NULL, NULL, {sql['json'].format(sid=sid)}"
    )
    version_values = (
        f":account, {sid}, i / 10, {at(s=41)}, 'detail', 'closed', {at(s=0)}, {at(s=35)}, 'NormalClosure', "
        f"'Session closed normally', {sql['json'].format(sid=sid)}"
    )
    run_values = (
        f":account, 'bench:1', {at(s=0)}, {at(s=1)}, 'ok', {sql['true']}, 1, 120, 1, 1, 1, 0, 3, 0, 0, 0, 0, 4, 0, 0, 0.0"
    )
    started = time.perf_counter()
    with engine.begin() as conn:
        for table, columns, values, count in (
            ("browser_sessions", SESSION_COLUMNS, session_values, sessions),
            ("browser_session_versions", VERSION_COLUMNS, version_values, sessions),
            ("sync_runs", RUN_COLUMNS, run_values, max(1, sessions // 10)),
        ):
            statement = f"{sql['series']}INSERT INTO {table} ({columns}) SELECT {values} FROM {sql['from']}"
            conn.execute(text(statement), {"account": account_id, "count": count})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if engine.dialect.name == "postgresql":
            # What autovacuum would do by itself after a bulk load, done now rather than during
            # the measured cycles; and the load's dirty pages written out before them.
            conn.execute(text("VACUUM ANALYZE"))
            conn.execute(text("CHECKPOINT"))
        else:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - started


async def alternate(accounts: list[steady.SteadyAccount], cycles: int) -> None:
    """Cycles on each archive in turn, so that whatever else the machine does weighs on both alike."""
    for _ in range(cycles):
        for account in accounts:
            await account.cycle()


async def compare(setups: list[tuple[RemoteEmulator, Settings, Engine]], cycles: int) -> list[steady.SteadyRun]:
    async with contextlib.AsyncExitStack() as stack:
        accounts = [await stack.enter_async_context(steady.SteadyAccount(*setup)) for setup in setups]
        await alternate(accounts, cycles)
    return [account.run for account in accounts]


def run(options: Options) -> Outcome:
    outcome = Outcome("archive growth")
    sizes = (10_000, options.pick(1_000_000, 100_000))
    cycles = options.pick(100, 30)
    for backend, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        with contextlib.ExitStack() as stack:
            setups = []
            for history in sizes:
                remote = stack.enter_context(steady.emulator())
                assert remote.endpoint is not None
                url = stack.enter_context(database(backend))
                engine = stack.enter_context(migrated_engine(url))
                settings = bench_settings(remote.endpoint, url)
                seconds = add_history(engine, settings.accounts()[0], history)
                outcome.notes.append(f"{name}: {history:,} archived sessions generated in {seconds:.1f} s.")
                setups.append((remote, settings, engine))
            runs = asyncio.run(compare(setups, cycles))
        for history, result in zip(sizes, runs, strict=True):
            steady.report(outcome, f"{name}, {history:,} archived + 120 open", result, targets=False)
        ratio = runs[1].wall_median / runs[0].wall_median
        outcome.add(f"{name}, {sizes[1]:,} vs {sizes[0]:,} archived", "median cycle time ratio", ratio, "x",
                    target=RATIO_TARGET, decimals=2)
    outcome.notes.insert(
        0,
        "The steady-state workload (120 open sessions, 5% change per cycle) on an archive that already holds "
        "that many closed sessions of the same account (one version each, a ledger row per ten), generated "
        "inside the database with INSERT .. SELECT. Both archives are polled in the same run, one cycle on "
        "each in turn, so that other load on the machine weighs on both alike. After the load, SQLite's WAL "
        "is checkpointed; PostgreSQL (a throwaway schema, dropped afterwards) is VACUUM ANALYZEd, as "
        "autovacuum would, and checkpointed, so that no background work overlaps the measured cycles.",
    )
    return outcome
