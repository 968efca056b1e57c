"""`archiver run` as a real subprocess against the emulator over loopback, with real SQLite."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from archiver import __version__
from archiver.archive.models import runs_table
from archiver.archive.store import make_engine
from archiver.emulator import Emulator
from tests.helpers import PollLog, archiver_environment, compare_with_truth


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningService:
    def __init__(self, emulator: Emulator, server: Any, db: Path, **settings: str) -> None:
        self.metrics_port = free_port()
        env = archiver_environment(
            server.base_url, emulator.token, emulator.account_ids, f"sqlite:///{db}",
            ARCHIVER_METRICS_PORT=str(self.metrics_port), ARCHIVER_LOG_FORMAT="json", **settings,
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "archiver", "run", "--auto-migrate"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.output = ""

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5)

    def wait_until_serving(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.finish()
            try:
                self.get("/metrics")
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the service never served /metrics")

    def finish(self, timeout: float = 30) -> str:
        _out, err = self.process.communicate(timeout=timeout)
        self.output = err
        return err


@pytest.fixture
def service_factory() -> Iterator[Any]:
    started: list[RunningService] = []

    def start(*args: Any, **kwargs: Any) -> RunningService:
        service = RunningService(*args, **kwargs)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.communicate()


def polling_every(seconds: str) -> dict[str, str]:
    """Settings for a service that polls at a fixed interval, the client-side rate limits lifted."""
    return {
        "ARCHIVER_INTERVAL_SECONDS": seconds,
        "ARCHIVER_MIN_INTERVAL_SECONDS": seconds,
        "ARCHIVER_RATE_LIMIT": "100",
        "ARCHIVER_RATE_BUDGET": "1",
    }


def ledger(db: Path) -> list[dict[str, Any]]:
    engine: Engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(runs_table).order_by(runs_table.c.id)).mappings()]
    engine.dispose()
    return rows


def wait_for_cycles(db: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            try:
                if sum(r["outcome"] in ("ok", "partial") for r in ledger(db)) >= count:
                    return
            except Exception:  # the schema may not exist yet
                pass
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} cycles in {timeout}s")


def wait_for_running_cycle(db: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["outcome"] == "running" for r in ledger(db)):
        assert time.monotonic() < deadline, "no cycle started"
        time.sleep(0.05)


def assert_no_overlap(runs: list[dict[str, Any]]) -> None:
    """Listings of one account never overlap: a cycle starts once the one before stored its listing
    (or ended without one). Its details may still be coming in meanwhile."""
    by_account: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_account.setdefault(run["account_id"], []).append(run)
    for account_runs in by_account.values():
        for before, after in pairwise(account_runs):
            assert before["finished_at"] is not None
            listed = before["listed_at"] or before["finished_at"]
            assert after["started_at"] >= listed, f"the listings of runs {before['id']} and {after['id']} overlap"


def test_service_polls_and_stops_on_sigterm_mid_cycle(tmp_path: Path, service_factory: Any) -> None:
    # A real-time clock (speed 1): sessions open and close while the service polls every second.
    emulator = Emulator(accounts=2, initial_sessions=8, seed=8, speed=1.0, spawn_per_minute=60, mean_lifetime_s=6)
    db = tmp_path / "archive.db"
    with emulator.serve(port=0) as server:
        service = service_factory(
            emulator, server, db, **polling_every("1"), ARCHIVER_SHUTDOWN_GRACE_SECONDS="10",
            # a roomy budget, so that the pacer keeps the configured interval (this test is about
            # polling and shutdown; test_default_budget_never_meets_a_429 is about the budget)
            ARCHIVER_UPSTREAM_LIMIT_REQUESTS="12000",
        )
        service.wait_until_serving()
        wait_for_cycles(db, 12, timeout=60)
        emulator.set_faults(latency_ms=300)  # so that the signal lands inside a cycle
        wait_for_running_cycle(db)
        sent = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        service.finish()
        assert service.process.returncode == 0, service.output
        assert time.monotonic() - sent < 10
        truth = emulator.truth()
    runs = ledger(db)
    # the cycle under way when the signal came finished within its grace period
    assert all(r["outcome"] == "ok" for r in runs)
    assert_no_overlap(runs)
    for account in emulator.account_ids:
        mine = [r for r in runs if r["account_id"] == account and r["outcome"] == "ok"]
        polls = PollLog([r["started_at"].timestamp() * 1000 for r in mine], margin_ms=1000)
        account_truth = [t for t in truth if t["accountId"] == account]
        assert sum(1 for t in account_truth if t["closedAtMs"] and polls.visible(t)) >= 3
        assert compare_with_truth(make_engine(f"sqlite:///{db}"), account_truth, polls, account) == []
    assert emulator.token not in service.output
    assert '"message": "cycle account=' in service.output  # one JSON line per cycle


def test_listings_of_one_account_never_overlap_against_a_slow_api(tmp_path: Path, service_factory: Any) -> None:
    emulator = Emulator(accounts=1, initial_sessions=5, seed=9, speed=1.0, spawn_per_minute=120, mean_lifetime_s=5)
    emulator.set_faults(latency_ms=400)  # a listing alone takes longer than the interval
    db = tmp_path / "archive.db"
    with emulator.serve(port=0) as server:
        service = service_factory(
            emulator, server, db, **polling_every("0.3"), ARCHIVER_DETAIL_CONCURRENCY="1",
        )
        service.wait_until_serving()
        wait_for_cycles(db, 5, timeout=40)
        service.process.send_signal(signal.SIGTERM)
        service.finish()
    assert service.process.returncode == 0
    runs = ledger(db)
    assert max(r["finished_at"] - r["started_at"] for r in runs).total_seconds() > 0.3
    assert_no_overlap(runs)


def test_metrics_and_healthz(tmp_path: Path, service_factory: Any) -> None:
    emulator = Emulator(accounts=1, initial_sessions=4, seed=10, speed=0.0, spawn_per_minute=0)
    db = tmp_path / "archive.db"
    with emulator.serve(port=0) as server:
        service = service_factory(
            emulator, server, db, **polling_every("0.5"), ARCHIVER_MAX_RETRIES="0",
        )
        service.wait_until_serving()
        wait_for_cycles(db, 2, timeout=20)
        healthy = service.get("/healthz")
        metrics = service.get("/metrics").text
        account = emulator.account_ids[0]
        assert healthy.status_code == 200
        assert f'archiver_cycles_total{{account="{account}",outcome="ok"}}' in metrics
        assert f'archiver_open_sessions{{account="{account}",status="active"}} 4.0' in metrics
        assert 'archiver_api_requests_total{status="200"}' in metrics
        assert "archiver_cycle_duration_seconds_bucket" in metrics
        assert f'archiver_last_success_timestamp_seconds{{account="{account}"}}' in metrics
        assert "archiver_rate_limit_wait_seconds_total" in metrics
        assert f'archiver_build_info{{python="{platform.python_version()}",version="{__version__}"}} 1.0' in metrics
        assert "process_resident_memory_bytes" in metrics and "python_info" in metrics
        assert "_created" not in metrics
        emulator.set_faults(error_rate=1.0, error_statuses=(500,))
        deadline = time.monotonic() + 15
        while service.get("/healthz").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        unhealthy = service.get("/healthz")
        assert unhealthy.status_code == 503
        assert account in unhealthy.text and "no listing stored" in unhealthy.text
        assert 'archiver_api_requests_total{status="500"}' in service.get("/metrics").text
        service.process.send_signal(signal.SIGTERM)
        service.finish()
    assert service.process.returncode == 0


def test_default_budget_never_meets_a_429(tmp_path: Path, service_factory: Any) -> None:
    # Cloudflare's 1200 requests / 5 minutes, scaled to 60 / 15 s on both sides so the test is short.
    emulator = Emulator(accounts=2, initial_sessions=30, seed=12, speed=1.0, spawn_per_minute=240, mean_lifetime_s=8)
    emulator.set_faults(enforce_rate_limit=True, rate_limit_requests=60, rate_limit_window_s=15)
    db = tmp_path / "archive.db"
    with emulator.serve(port=0) as server:
        service = service_factory(
            emulator, server, db, ARCHIVER_INTERVAL_SECONDS="1",
            ARCHIVER_UPSTREAM_LIMIT_REQUESTS="60", ARCHIVER_UPSTREAM_LIMIT_WINDOW_SECONDS="15",
        )
        service.wait_until_serving()
        time.sleep(20)
        service.process.send_signal(signal.SIGTERM)
        service.finish()
    assert service.process.returncode == 0, service.output
    stats = emulator.stats()
    assert stats.get("status:429", 0) == 0
    assert stats["requests"] >= 15  # it did work, at the budget's pace
    assert sum(r["throttled"] for r in ledger(db)) == 0


def test_bad_credentials_are_reported_at_start(tmp_path: Path) -> None:
    emulator = Emulator(accounts=1, initial_sessions=1, seed=13, speed=0.0)
    with emulator.serve(port=0) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "ARCHIVER_"))}
        env.update({
            "CLOUDFLARE_API_TOKEN": "wrong", "CLOUDFLARE_ACCOUNT_ID": emulator.account_ids[0],
            "CLOUDFLARE_BASE_URL": server.base_url, "ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}",
        })
        not_migrated = subprocess.run([sys.executable, "-m", "archiver", "run"], env=env, capture_output=True, text=True, timeout=30)
        refused = subprocess.run([sys.executable, "-m", "archiver", "run", "--auto-migrate"], env=env, capture_output=True, text=True,
                                 timeout=30)
    assert not_migrated.returncode == 1 and "archiver db upgrade" in not_migrated.stderr
    assert refused.returncode == 1 and "refused the credentials" in refused.stderr


def test_a_second_signal_stops_at_once_without_half_writes(tmp_path: Path, service_factory: Any) -> None:
    emulator = Emulator(accounts=1, initial_sessions=6, seed=15, speed=0.0, spawn_per_minute=0)
    db = tmp_path / "archive.db"
    with emulator.serve(port=0) as server:
        service = service_factory(
            emulator, server, db, **polling_every("0.5"), ARCHIVER_SHUTDOWN_GRACE_SECONDS="60",
        )
        service.wait_until_serving()
        wait_for_cycles(db, 1, timeout=20)
        emulator.set_faults(latency_ms=5000)  # the next cycle hangs on its listing
        wait_for_running_cycle(db)
        service.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert service.process.poll() is None  # waiting for the cycle, within its grace
        sent = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        service.finish()
        assert time.monotonic() - sent < 3
    assert service.process.returncode == 0, service.output
    runs = ledger(db)
    assert runs[-1]["outcome"] == "aborted" and runs[-1]["finished_at"] is not None
    assert all(r["outcome"] in ("ok", "aborted") for r in runs)
