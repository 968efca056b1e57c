"""The service's parts on their own: pacing, the rate budget, leases, metrics and health."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Connection, Engine, select

from archiver import locks
from archiver.cloudflare import RequestStats
from archiver.config import settings_from
from archiver.emulator import Emulator
from archiver.errors import LeaseLostError
from archiver.metrics import Metrics, MetricsServer
from archiver.pacing import HEADROOM, MAX_PENALTY, Pacer
from archiver.ratelimit import TokenBucket
from archiver.store import runs_table
from archiver.sync import CycleOptions, CycleResult, run_cycle, utcnow
from tests.helpers import archived, client_for

A, B = "a" * 32, "b" * 32
T0 = datetime(2026, 11, 1, tzinfo=UTC)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


# -- pacing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accounts", "requests", "expected"),
    [(1, 2, 10.0), (4, 7, 4 * 7 / 1.0 * HEADROOM), (1, 40, 40 * HEADROOM)],
    ids=["room-in-budget-floor", "many-accounts", "expensive-cycles"],
)
def test_interval_follows_the_budget_but_never_below_the_floor(accounts: int, requests: int, expected: float) -> None:
    pacer = Pacer(interval=30, floor=10, budget_rate=1.0, accounts=accounts)
    assert pacer.after_cycle(A, requests, 0) == pytest.approx(expected)


def test_one_expensive_cycle_moves_the_interval_only_partly() -> None:
    pacer = Pacer(interval=30, floor=1, budget_rate=1.0, accounts=1)
    for _ in range(10):
        pacer.after_cycle(A, 10, 0)
    spiked = pacer.after_cycle(A, 110, 0)
    assert 10 * HEADROOM < spiked < 110 * HEADROOM


def test_429s_back_off_up_to_a_cap_and_recover() -> None:
    pacer = Pacer(interval=30, floor=10, budget_rate=1.0, accounts=1)
    base = pacer.after_cycle(A, 2, 0)
    assert pacer.after_cycle(A, 2, 1) == pytest.approx(2 * base)
    for _ in range(10):
        pacer.after_cycle(A, 2, 1)
    assert pacer.penalty == MAX_PENALTY
    for _ in range(20):
        recovered = pacer.after_cycle(A, 2, 0)
    assert recovered == pytest.approx(base)


def test_settings_derive_the_budget_and_the_floor() -> None:
    defaults = settings_from({})
    assert defaults.budget_rate == pytest.approx(1.0)
    assert defaults.interval_floor == pytest.approx(10.0)
    custom = settings_from({"interval_seconds": 6, "min_interval_seconds": 60, "rate_budget": 0.5})
    assert custom.interval_floor == 6 and custom.budget_rate == pytest.approx(2.0)


# -- the rate budget ---------------------------------------------------------------------------


def test_token_bucket_bursts_then_paces_and_never_exceeds_its_envelope() -> None:
    fake = FakeTime()
    bucket = TokenBucket(2.0, 5, clock=fake.clock, sleep=fake.sleep)
    taken: list[float] = []

    async def take(n: int) -> None:
        for _ in range(n):
            await bucket.acquire()
            taken.append(fake.now)

    asyncio.run(take(45))
    assert taken[:5] == [0.0] * 5  # the saved-up burst
    assert taken[-1] == pytest.approx(20.0)  # then 2 per second
    for start in taken:
        in_window = sum(1 for t in taken if start <= t < start + 10)
        assert in_window <= 5 + 2 * 10


def test_token_bucket_refills_only_up_to_capacity() -> None:
    fake = FakeTime()
    bucket = TokenBucket(1.0, 3, clock=fake.clock, sleep=fake.sleep)
    asyncio.run(bucket.acquire())
    fake.now = 1000
    assert bucket.available == 3


@pytest.mark.parametrize(("rate", "capacity"), [(0, 5), (-1, 5), (float("nan"), 5), (1, 0.5)], ids=["zero", "negative", "nan", "tiny"])
def test_token_bucket_refuses_nonsense(rate: float, capacity: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, capacity)


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


def result(account: str, outcome: str) -> CycleResult:
    return CycleResult(account, 1, outcome, outcome == "ok", {"listed": 3}, 0.25)


def test_metrics_count_cycles_requests_and_successes() -> None:
    now = [1000.0]
    metrics = Metrics([A], clock=lambda: now[0])
    stats = RequestStats(requests=4, retries=2, throttled=1, waited_seconds=1.5, by_status={200: 3, 429: 1})
    metrics.record_cycle(result(A, "ok"), stats)
    now[0] = 1010
    metrics.record_cycle(result(A, "failed"), RequestStats(by_status={500: 2}))
    text = metrics.exposition().decode()
    assert f'archiver_cycles_total{{account="{A}",outcome="ok"}} 1.0' in text
    assert f'archiver_cycles_total{{account="{A}",outcome="failed"}} 1.0' in text
    assert 'archiver_api_requests_total{status="429"} 1.0' in text and 'archiver_api_requests_total{status="500"} 2.0' in text
    assert "archiver_api_retries_total 2.0" in text and "archiver_api_throttled_total 1.0" in text
    assert "archiver_rate_limit_wait_seconds_total 1.5" in text
    assert metrics.last_success[A] == 1000.0  # the failure did not count as a success


def test_health_allows_three_intervals() -> None:
    now = [0.0]
    metrics = Metrics([A, B], clock=lambda: now[0])
    metrics.record_interval(A, 10)
    metrics.record_interval(B, 10)
    assert metrics.health() == (True, "ok")
    now[0] = 25
    metrics.record_cycle(result(A, "partial"), RequestStats())
    now[0] = 31
    healthy, reason = metrics.health()
    assert not healthy and B in reason and A not in reason
    metrics.record_cycle(result(B, "ok"), RequestStats())
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
