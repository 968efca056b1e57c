"""Several `archiver run` processes on one server database share the accounts through leases, and
take over from one killed with SIGKILL. Real PostgreSQL and MariaDB, real processes, real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select

from archiver.archive import migrate
from archiver.archive.models import runs_table
from archiver.archive.store import make_engine
from archiver.emulator import Emulator
from archiver.service.locks import leases
from tests.helpers import PollLog, compare_with_truth
from tests.test_service import assert_no_overlap

INTERVAL = 2.0


def start_replica(emulator: Emulator, base_url: str, database_url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "ARCHIVER_"))}
    env.update(
        {
            "CLOUDFLARE_API_TOKEN": emulator.token,
            "CLOUDFLARE_ACCOUNT_ID": ",".join(emulator.account_ids),
            "CLOUDFLARE_BASE_URL": base_url,
            "ARCHIVER_DATABASE_URL": database_url,
            "ARCHIVER_INTERVAL_SECONDS": str(INTERVAL),
            "ARCHIVER_MIN_INTERVAL_SECONDS": str(INTERVAL),
            "ARCHIVER_RATE_LIMIT": "100",
            "ARCHIVER_RATE_BUDGET": "1",
            # a roomy budget, so that the effective interval is the configured one
            "ARCHIVER_UPSTREAM_LIMIT_REQUESTS": "12000",
        }
    )
    return subprocess.Popen([sys.executable, "-m", "archiver", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_replicas_share_accounts_and_take_over_from_a_killed_one(backend: str, request: pytest.FixtureRequest) -> None:
    database_url: str = request.getfixturevalue("postgres_url" if backend == "postgresql" else "mariadb_url")
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    emulator = Emulator(accounts=6, initial_sessions=6, seed=14, speed=1.0, spawn_per_minute=20, mean_lifetime_s=8)
    replicas: list[subprocess.Popen[str]] = []
    try:
        with emulator.serve(port=0) as server:
            replicas = [start_replica(emulator, server.base_url, database_url) for _ in range(3)]
            time.sleep(8)
            victim = busiest(replicas, engine)
            victim.send_signal(signal.SIGKILL)
            killed_at = time.time()
            time.sleep(10)
            survivors = [r for r in replicas if r is not victim]
            for replica in survivors:
                replica.send_signal(signal.SIGTERM)
            for replica in survivors:
                _out, err = replica.communicate(timeout=30)
                assert replica.returncode == 0, err
            truth = emulator.truth()
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.kill()
            replica.communicate()

    with engine.connect() as conn:
        runs = [dict(r) for r in conn.execute(select(runs_table).order_by(runs_table.c.id)).mappings()]
    engine.dispose()
    assert_no_overlap(runs)
    victim_worker = next(w for w in {r["worker"] for r in runs} if w.split(":")[1] == str(victim.pid))  # host:pid:start
    orphaned = {r["account_id"] for r in runs if r["worker"] == victim_worker}
    assert orphaned, "the killed replica held no account: the test proves nothing"
    for account in emulator.account_ids:
        mine = [r for r in runs if r["account_id"] == account]
        after_kill = [r for r in mine if r["started_at"].timestamp() > killed_at]
        assert after_kill and all(r["worker"] != victim_worker for r in after_kill)
        if account in orphaned:
            # taken over within two intervals of the kill
            assert after_kill[0]["started_at"].timestamp() - killed_at <= 2 * INTERVAL
        polls = PollLog([r["started_at"].timestamp() * 1000 for r in mine if r["outcome"] == "ok"], margin_ms=1000)
        assert compare_with_truth(engine, [t for t in truth if t["accountId"] == account], polls, account) == []
    engine.dispose()


def busiest(replicas: list[subprocess.Popen[str]], engine: Any) -> subprocess.Popen[str]:
    """The replica holding the most account leases right now."""
    with engine.connect() as conn:
        holders = list(conn.scalars(select(leases.c.holder)))
    by_pid = {replica.pid: replica for replica in replicas}
    counts = Counter(int(holder.split(":")[1]) for holder in holders)  # host:pid:start
    return by_pid[counts.most_common(1)[0][0]]
