"""The service's parts on their own: leases, metrics and health."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Connection, Engine, select

from archiver.api.cloudflare import RequestStats
from archiver.archive.models import runs_table
from archiver.archive.sync import CycleOptions, CycleResult, run_cycle, utcnow
from archiver.emulator import Emulator
from archiver.errors import LeaseLostError
from archiver.service import locks
from archiver.service.metrics import Metrics, MetricsServer
from tests.helpers import archived, client_for

A, B = "a" * 32, "b" * 32
T0 = datetime(2026, 11, 1, tzinfo=UTC)


# -- leases ------------------------------------------------------------------------------------


def test_leases_exclude_others_until_they_lapse(any_engine: Engine) -> None:
    assert locks.acquire(any_engine, A, "w1", 10, T0)
    assert locks.acquire(any_engine, A, "w1", 10, T0 + timedelta(seconds=5))  # renew
    assert not locks.acquire(any_engine, A, "w2", 10, T0 + timedelta(seconds=14))
    assert locks.acquire(any_engine, B, "w2", 10, T0)  # accounts are independent
    assert locks.renew(any_engine, [A, B], "w1", 10, T0 + timedelta(seconds=12)) == {A}
    assert not locks.acquire(any_engine, A, "w2", 10, T0 + timedelta(seconds=21))
    assert locks.acquire(any_engine, A, "w2", 10, T0 + timedelta(seconds=23))  # lapsed: taken over
    assert locks.renew(any_engine, [A], "w1", 10, T0 + timedelta(seconds=24)) == set()
    locks.release(any_engine, A, "w1")  # not the holder: nothing happens
    assert not locks.acquire(any_engine, A, "w3", 10, T0 + timedelta(seconds=24))
    locks.release(any_engine, A, "w2")
    assert locks.acquire(any_engine, A, "w3", 10, T0 + timedelta(seconds=24))


def test_a_lapsed_lease_nobody_took_is_still_ours(any_engine: Engine) -> None:
    # Say the database was away for longer than the lease: nobody could take it over meanwhile.
    assert locks.acquire(any_engine, A, "w1", 10, T0)
    assert locks.renew(any_engine, [A], "w1", 10, T0 + timedelta(seconds=30)) == {A}
    assert not locks.acquire(any_engine, A, "w2", 10, T0 + timedelta(seconds=35))  # renewed till 40
    assert locks.acquire(any_engine, A, "w2", 10, T0 + timedelta(seconds=41))
    assert locks.renew(any_engine, [A], "w1", 10, T0 + timedelta(seconds=42)) == set()  # w2's now


def a_process_that_ran() -> tuple[str, subprocess.Popen[bytes]]:
    """A child process of this host and the holder name it would have written (host:pid:start)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stat = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()
    return f"{socket.gethostname()}:{child.pid}:{stat[19]}", child


def test_a_lease_of_a_dead_process_of_this_host_is_taken_over_at_once(any_engine: Engine) -> None:
    holder, child = a_process_that_ran()
    assert locks.acquire(any_engine, A, holder, 600, T0)
    assert not locks.acquire(any_engine, A, "w2", 600, T0 + timedelta(seconds=1))  # alive: its lease holds
    child.kill()
    child.wait()
    assert locks.acquire(any_engine, A, "w2", 600, T0 + timedelta(seconds=2))  # dead: no need to wait 10 minutes
    assert locks.holder_of(any_engine, A) == "w2"


@pytest.mark.parametrize(
    ("name", "dead"),
    [
        ("reused-pid", True),  # the pid lives, but as a process that started at another time
        ("zombie", True),  # killed, not yet reaped by its parent
        ("other-host", False),  # only its lease can tell
        ("no-start-time", False),  # a live pid, and nothing to tell it apart: assume it is the holder
        ("ourselves", False),
        ("not-ours", False),  # a name we did not write
    ],
)
def test_which_holders_are_known_dead(name: str, dead: bool) -> None:
    holder, child = a_process_that_ran()
    host, pid, start = holder.split(":")
    try:
        if name == "zombie":
            child.kill()
            time.sleep(0.2)  # killed; its parent (this test) has not reaped it yet
        candidate = {
            "reused-pid": f"{host}:{pid}:{int(start) + 1}",
            "zombie": holder,
            "other-host": f"another-{host}:{pid}:{int(start) + 1}",
            "no-start-time": f"{host}:{pid}",
            "ourselves": locks.worker_id(),
            "not-ours": "w1",
        }[name]
        assert locks.holder_is_dead(candidate) is dead
    finally:
        child.kill()
        child.wait()


def test_confirm_fences_a_transaction_by_the_lease(any_engine: Engine) -> None:
    assert locks.acquire(any_engine, A, "w1", 10, T0)
    with any_engine.begin() as conn:
        assert locks.confirm(conn, A, "w1", 10, T0 + timedelta(seconds=9))  # and extends it to 19
    assert not locks.acquire(any_engine, A, "w2", 10, T0 + timedelta(seconds=15))
    with any_engine.begin() as conn:
        assert not locks.confirm(conn, A, "w2", 10, T0 + timedelta(seconds=15))
        assert not locks.confirm(conn, B, "w1", 10, T0 + timedelta(seconds=15))  # no lease at all
    assert locks.acquire(any_engine, A, "w2", 10, T0 + timedelta(seconds=20))
    with any_engine.begin() as conn:
        assert not locks.confirm(conn, A, "w1", 10, T0 + timedelta(seconds=21))


def test_a_cycle_stops_writing_once_another_worker_took_the_account(any_engine: Engine) -> None:
    emulator = Emulator(accounts=1, initial_sessions=6, seed=31, speed=0.0, spawn_per_minute=0)
    account = emulator.account_ids[0]
    assert locks.acquire(any_engine, account, "w1", 60, utcnow())
    fenced: list[str] = []

    def fence(conn: Connection) -> None:
        fenced.append("write")
        if len(fenced) == 3:
            # after the ledger row and the listing page: w1 stalls past its lease, w2 takes over
            assert locks.acquire(any_engine, account, "w2", 60, utcnow() + timedelta(seconds=61))
        if not locks.confirm(conn, account, "w1", 60, utcnow()):
            raise LeaseLostError("another worker took the account over")

    with emulator.serve(port=0) as server:

        async def go() -> CycleResult:
            async with client_for(server, emulator) as client:
                api = client.account(account, RequestStats())
                return await run_cycle(api, any_engine, CycleOptions(worker="w1"), fence=fence)

        outcome = asyncio.run(go())
    assert outcome.outcome == "failed" and "another worker" in (outcome.error or "")
    rows = archived(any_engine, account)
    assert len(rows) == 6  # the page stored before the takeover stays
    assert all(r["last_detail_at"] is None for r in rows.values())  # nothing written after it
    with any_engine.connect() as conn:
        run = conn.execute(select(runs_table)).mappings().one()
    assert run["outcome"] == "failed" and run["finished_at"] is not None  # its own ledger row is closed


# -- metrics and health ------------------------------------------------------------------------


def result(account: str, outcome: str, counts: dict[str, int] | None = None) -> CycleResult:
    return CycleResult(account, 1, outcome, outcome == "ok", {"listed": 3, **(counts or {})}, 0.25)


def test_metrics_count_cycles_requests_and_successes() -> None:
    now = [1000.0]
    metrics = Metrics([A], clock=lambda: now[0])
    stats = RequestStats(requests=4, retries=2, throttled=1, waited_seconds=1.5, by_status={200: 3, 429: 1})
    metrics.record_listing(A, 1, True)
    metrics.record_cycle(result(A, "ok"), stats)
    now[0] = 1010
    metrics.record_listing(A, 0, False)  # the listing failed
    metrics.record_cycle(result(A, "failed"), RequestStats(by_status={500: 2}))
    text = metrics.exposition().decode()
    assert f'archiver_cycles_total{{account="{A}",outcome="ok"}} 1.0' in text
    assert f'archiver_cycles_total{{account="{A}",outcome="failed"}} 1.0' in text
    assert 'archiver_api_requests_total{status="429"} 1.0' in text and 'archiver_api_requests_total{status="500"} 2.0' in text
    assert "archiver_api_retries_total 2.0" in text and "archiver_api_throttled_total 1.0" in text
    assert "archiver_rate_limit_wait_seconds_total 1.5" in text
    assert metrics.last_success[A] == 1000.0  # the failure did not count as a success
    metrics.record_cycle(result(A, "ok", counts={"closed:BrowserIdle": 2, "closed:NormalClosure": 1}), stats)
    text = metrics.exposition().decode()
    assert f'archiver_sessions_closed_total{{account="{A}",reason="BrowserIdle"}} 2.0' in text
    assert f'archiver_sessions_closed_total{{account="{A}",reason="NormalClosure"}} 1.0' in text


def test_metrics_say_how_far_the_archive_can_be_trusted() -> None:
    now = [1000.0]
    metrics = Metrics([A, B], clock=lambda: now[0])

    def cycle(complete: bool, pages: int, carried: int, gone: int) -> CycleResult:
        counts = {"details_carried": carried, "gone": gone}
        return CycleResult(A, 1, "ok" if complete else "partial", complete, counts, 0.1, pages=pages)

    metrics.record_listing(A, 1, True)
    metrics.record_cycle(cycle(True, 1, 40, 2), RequestStats())
    now[0] = 1010
    metrics.record_listing(A, 2, False)  # listed, but not completely
    metrics.record_cycle(cycle(False, 2, 12, 1), RequestStats())
    now[0] = 1025
    text = metrics.exposition().decode()
    assert f'archiver_listing_age_seconds{{account="{A}"}} 25.0' in text  # since the last complete listing
    assert f'archiver_listing_age_seconds{{account="{B}"}} 25.0' in text  # never listed: since the start
    assert f'archiver_listing_gap_seconds{{account="{A}"}} 10.0' in text
    assert f'archiver_detail_backlog{{account="{A}"}} 12.0' in text
    assert f'archiver_sessions_gone_total{{account="{A}"}} 3.0' in text


def test_health_allows_three_intervals() -> None:
    now = [0.0]
    metrics = Metrics([A, B], clock=lambda: now[0])
    metrics.record_interval(A, 10)
    metrics.record_interval(B, 10)
    assert metrics.health() == (True, "ok")
    now[0] = 25
    metrics.record_listing(A, 1, False)  # stored, though incomplete: the archive is being kept
    now[0] = 31
    healthy, reason = metrics.health()
    assert not healthy and B in reason and A not in reason
    metrics.record_listing(B, 0, False)  # a listing that failed does not count
    assert not metrics.health()[0]
    metrics.record_listing(B, 1, True)
    assert metrics.health()[0]


def test_metrics_server_over_http() -> None:
    now = [0.0]
    metrics = Metrics([A], clock=lambda: now[0])
    metrics.record_interval(A, 1)
    server = MetricsServer(metrics, "127.0.0.1", 0)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        scraped = httpx.get(f"{base}/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        assert "archiver_effective_interval_seconds" in scraped.text
        assert httpx.get(f"{base}/healthz").status_code == 200
        now[0] = 10
        sick = httpx.get(f"{base}/healthz")
        assert sick.status_code == 503 and A in sick.text
        assert httpx.get(f"{base}/other").status_code == 404
    finally:
        server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/metrics", timeout=1)
