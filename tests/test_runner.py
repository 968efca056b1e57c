"""The runner behind `archiver sync` and `archiver run`: signals and dead holders for one-shot syncs,
the auto detail policy across syncs, and the listing cadence through an eviction under Cloudflare's
enforced per-token limit (the emulator's, on its accelerated clock)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from archiver.archive.detailmode import sampled
from archiver.archive.store import make_engine
from archiver.config import Settings, settings_from
from archiver.emulator import Emulator
from archiver.service import locks
from archiver.service.locks import leases
from archiver.service.runner import Runner, sync_accounts
from tests.helpers import archived, archiver_environment, ledger


def environment(emulator: Emulator, server: Any, db: Path, **settings: str) -> dict[str, str]:
    return archiver_environment(server.base_url, emulator.token, emulator.account_ids, f"sqlite:///{db}",
                                ARCHIVER_RATE_LIMIT="100", **settings)


def sync_process(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", "sync", "--auto-migrate"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_a_running_cycle(db: Path, process: subprocess.Popen[str], timeout: float = 30) -> Engine:
    engine = make_engine(f"sqlite:///{db}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if any(r["outcome"] == "running" for r in ledger(engine)):
                return engine
        except Exception:  # the schema is not there yet
            pass
        time.sleep(0.05)
    raise AssertionError("no cycle started")


def slow_world() -> Emulator:
    emulator = Emulator(accounts=1, initial_sessions=30, seed=41, speed=0.0, spawn_per_minute=0)
    emulator.set_faults(latency_ms=400)  # a cycle of 30 details takes seconds
    return emulator


def test_a_sync_killed_mid_cycle_does_not_cost_the_next_sync_its_cycle(tmp_path: Path) -> None:
    db = tmp_path / "archive.db"
    emulator = slow_world()
    with emulator.serve(port=0) as server:
        env = environment(emulator, server, db, ARCHIVER_DETAIL_CONCURRENCY="1")
        killed = sync_process(env)
        engine = wait_for_a_running_cycle(db, killed)
        killed.kill()
        killed.communicate()
        emulator.set_faults(latency_ms=0)
        started = time.monotonic()
        again = subprocess.run([sys.executable, "-m", "archiver", "sync"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "skipped" not in again.stdout and ": ok (run 2)" in again.stdout
    assert time.monotonic() - started < 30  # not a lease's lifetime (22.5 s at the defaults) later
    assert [r["outcome"] for r in ledger(engine)] == ["aborted", "ok"]
    assert "took the lease over" in again.stderr


def test_sigterm_lets_a_sync_fetch_what_its_grace_allows_and_keeps_the_rest_owed(tmp_path: Path) -> None:
    db = tmp_path / "archive.db"
    emulator = slow_world()
    with emulator.serve(port=0) as server:
        env = environment(emulator, server, db, ARCHIVER_DETAIL_CONCURRENCY="1", ARCHIVER_SHUTDOWN_GRACE_SECONDS="2")
        process = sync_process(env)
        engine = wait_for_a_running_cycle(db, process)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert time.monotonic() - sent < 3  # within the grace, not the 12 s its 30 details would take
    assert process.returncode == 0, err
    (run,) = ledger(engine)
    assert run["outcome"] == "ok" and run["finished_at"] is not None
    assert run["details_fetched"] + run["details_carried"] == 30 and run["details_carried"] > 0
    assert f"carried {run['details_carried']}" in out
    with engine.connect() as conn:
        assert conn.execute(select(leases)).all() == []  # released: the next sync need not wait


def test_a_sync_whose_requests_outlast_the_grace_is_cancelled_and_says_so(tmp_path: Path) -> None:
    db = tmp_path / "archive.db"
    emulator = slow_world()
    emulator.set_faults(latency_ms=3000)
    with emulator.serve(port=0) as server:
        env = environment(emulator, server, db, ARCHIVER_SHUTDOWN_GRACE_SECONDS="0.5")
        process = sync_process(env)
        engine = wait_for_a_running_cycle(db, process)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert time.monotonic() - sent < 2.5  # the grace period, then the cycle is cancelled
    assert process.returncode == 1, err
    assert "aborted" in out and "cancelled" in out
    runs = ledger(engine)
    assert [r["outcome"] for r in runs] == ["aborted"] and runs[0]["finished_at"] is not None
    with engine.connect() as conn:
        assert conn.execute(select(leases)).all() == []


def sync_settings(emulator: Emulator, server: Any, engine: Engine, **values: Any) -> Settings:
    return settings_from(
        {
            "api_token": emulator.token,
            "account_ids": list(emulator.account_ids),
            "base_url": server.base_url,
            "database_url": str(engine.url),
            "rate_limit": 1000.0,
            **values,
        }
    )


def test_the_auto_policy_trusts_a_listing_that_details_repeat_and_learns_again_when_they_add(engine: Engine) -> None:
    emulator = Emulator(accounts=1, initial_sessions=30, seed=43, speed=0.0, spawn_per_minute=0, mean_lifetime_s=1e6)
    world = emulator.world(emulator.account_ids[0])

    def details_asked() -> int:
        return emulator.stats().get("endpoint:get", 0)

    with emulator.serve(port=0) as server:
        settings = sync_settings(emulator, server, engine)
        asyncio.run(sync_accounts(settings, engine))  # 30 new sessions: details, all alike the listing
        asyncio.run(sync_accounts(settings, engine))  # what the first left (none), in mode listing
        assert [r["detail_mode"] for r in ledger(engine)] == ["listing", "listing"]
        first_details = details_asked()
        assert 20 <= first_details <= 30

        added = [world.start_session(connect=True) for _ in range(60)]
        asyncio.run(sync_accounts(settings, engine))
        expected_sample = sum(1 for sid in added if sampled(sid))
        assert 0 < expected_sample < 60
        assert details_asked() - first_details == expected_sample  # only the sample was asked
        assert all(archived(engine)[sid]["detail_due"] is None for sid in added)  # the rest let go, not owed

        emulator.set_faults(listing_omits=["connectionId"])  # now the listing lacks what details carry
        more = [world.start_session(connect=True) for _ in range(60)]
        asyncio.run(sync_accounts(settings, engine))
        assert ledger(engine)[-1]["detail_mode"] == "details"
        asked = details_asked()
        newest = [world.start_session(connect=True) for _ in range(5)]
        asyncio.run(sync_accounts(settings, engine))
        assert details_asked() - asked == 5  # every new session again
        stored = archived(engine)
        assert all(stored[sid]["connection_id"] is not None for sid in newest)
        assert any(stored[sid]["connection_id"] is not None for sid in more if sampled(sid))


SPEED = 30.0  # simulated seconds per real second
WINDOW_S, INTERVAL_S = 300.0, 30.0  # Cloudflare's window and the default interval, simulated


def test_an_eviction_drains_through_the_window_without_a_429_or_a_late_listing(tmp_path: Path) -> None:
    emulator = Emulator(
        accounts=1, initial_sessions=200, seed=47, speed=SPEED, spawn_per_minute=0, mean_lifetime_s=1e7,
        retention_s=600.0, keep_request_log=True,
    )
    emulator.set_faults(enforce_rate_limit=True)  # 1200 requests per 300 simulated seconds, then a 5-minute block
    account = emulator.account_ids[0]
    engine = make_engine(f"sqlite:///{tmp_path / 'archive.db'}")
    from archiver.archive import migrate

    migrate.upgrade(engine)
    with emulator.serve(port=0) as server:
        settings = sync_settings(
            emulator, server, engine,
            interval_seconds=INTERVAL_S / SPEED, rate_limit=3.0 * SPEED, upstream_limit_window_seconds=WINDOW_S / SPEED,
            shutdown_grace_seconds=1.0,
        )
        runner = Runner(settings, engine)

        async def scenario() -> list[str]:
            service = asyncio.create_task(runner.serve())
            await asyncio.sleep(60 / SPEED)  # a minute of the cold start
            evicted = emulator.world(account).evict()
            deadline = time.monotonic() + 400 / SPEED
            while time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                closed = await asyncio.to_thread(lambda: [r for r in archived(engine).values() if r["status"] == "closed"])
                if len(closed) == len(evicted):
                    break
            runner.stop()
            await service
            return evicted

        evicted = asyncio.run(scenario())
    rows = archived(engine)
    assert len(evicted) == 200
    assert [sid for sid in evicted if rows[sid]["close_reason"] != "SessionEvicted"] == []
    log = emulator.request_log or []
    assert [r for r in log if r.status == 429] == []
    listings = [r.at_ms / 1000 for r in log if r.endpoint == "list"]
    gaps = [b - a for a, b in pairwise(listings)]
    assert max(gaps) <= INTERVAL_S, f"a listing came {max(gaps):.1f} simulated seconds after the one before"
    times = [r.at_ms / 1000 for r in log]
    most_in_a_window = max(sum(1 for t in times if start <= t < start + WINDOW_S) for start in times)
    assert most_in_a_window <= settings.budget_requests
    assert runner.requests.most_in_window <= settings.budget_requests


def test_a_second_sync_counts_the_first_ones_requests_against_the_window(engine: Engine) -> None:
    # A budget of 40 requests in any 4 seconds; the first sync takes 31, the second needs 22 (two
    # listings: two thirds of the sessions closed, which a second listing confirms, and 20 details).
    emulator = Emulator(accounts=1, initial_sessions=30, seed=53, speed=1.0, spawn_per_minute=0, mean_lifetime_s=1e7,
                        keep_request_log=True)
    world = emulator.world(emulator.account_ids[0])
    with emulator.serve(port=0) as server:
        settings = sync_settings(emulator, server, engine, upstream_limit_requests=40, rate_budget=1.0,
                                 upstream_limit_window_seconds=4.0, detail_policy="changed")
        asyncio.run(sync_accounts(settings, engine))
        for session_id in list(world.active)[:20]:
            world.close(session_id)
        started = time.monotonic()
        (second,) = asyncio.run(sync_accounts(settings, engine))
        took = time.monotonic() - started
    assert second.outcome == "ok" and second.counts["vanished"] == 20 and second.counts["details_fetched"] == 20
    times = [r.at_ms / 1000 for r in emulator.request_log or []]
    assert len(times) == 31 + 22
    assert max(sum(1 for t in times if start <= t < start + 4.0) for start in times) <= 40
    assert took > 1.0  # it waited for the first sync's requests to leave the window


def test_replicas_split_the_budget_by_the_accounts_each_holds(engine: Engine) -> None:
    # A budget of 8 requests a second, four accounts; another live replica holds three of them.
    emulator = Emulator(accounts=4, initial_sessions=5, seed=59, speed=1.0, spawn_per_minute=0, mean_lifetime_s=1e7,
                        keep_request_log=True)
    mine, *theirs = emulator.account_ids
    for account in theirs:
        assert locks.acquire(engine, account, "replica-2", 600, datetime.now(UTC))
    with emulator.serve(port=0) as server:
        settings = sync_settings(emulator, server, engine, upstream_limit_requests=8, rate_budget=1.0,
                                 upstream_limit_window_seconds=1.0, detail_policy="changed")
        results = asyncio.run(sync_accounts(settings, engine))
    assert [r.outcome for r in results] == ["ok", "skipped", "skipped", "skipped"]
    times = [r.at_ms / 1000 for r in emulator.request_log or []]
    assert len(times) == 1 + 5  # its listing and five details
    assert max(sum(1 for t in times if start <= t < start + 1.0) for start in times) <= 2  # a quarter of 8
    assert times[-1] - times[0] >= 2.0
