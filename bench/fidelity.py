"""Capture fidelity: the service, with default settings, against sessions with exponential lifetimes
(mean 60 s) on the emulator's accelerated clock: which share is archived with its close reason."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Engine, select

from archiver.config import Settings
from archiver.records import ms_to_datetime
from archiver.service import Service
from archiver.store import sessions_table
from bench.harness import Options, Outcome, migrated_engine, sqlite_database
from bench.remote import RemoteEmulator

SPEED = 10.0  # simulated seconds per real second
INTERVAL_S = 30.0  # ARCHIVER_INTERVAL_SECONDS's default, in simulated seconds
BUCKETS = ((0.0, 1.0), (1.0, 2.0), (2.0, 5.0), (5.0, float("inf")))  # lifetimes, in poll intervals
TARGET_SHARE = 99.0
DRAIN_S = 240.0  # simulated seconds the service keeps running after the last counted close


def scaled_settings(endpoint: Any, database_url: str) -> Settings:
    """The default settings with every time scaled to the emulator's clock: the interval, the peak
    rate limit and the rate budget's window (so the budget is its default share per simulated second)."""
    from archiver.config import settings_from

    return settings_from(
        {
            "api_token": endpoint.token,
            "account_ids": list(endpoint.account_ids),
            "base_url": endpoint.base_url,
            "database_url": database_url,
            "interval_seconds": INTERVAL_S / SPEED,
            "rate_limit": 3.0 * SPEED,
            "upstream_limit_window_seconds": 300.0 / SPEED,
            "shutdown_grace_seconds": 5.0,
        }
    )


async def serve_for(settings: Settings, engine: Engine, seconds: float) -> Service:
    service = Service(settings, engine)
    asyncio.get_running_loop().call_later(seconds, service.stop)
    await service.run()
    return service


def captured(row: dict[str, Any] | None, truth: dict[str, Any]) -> bool:
    """Archived as closed, with the end time and close reason Cloudflare had."""
    if row is None or row["status"] != "closed" or truth["closeReason"] is None:
        return False
    return row["end_time"] == ms_to_datetime(truth["endTime"]) and row["close_reason"] == str(truth["closeReason"])


def run(options: Options) -> Outcome:
    outcome = Outcome("capture fidelity")
    observed_s = options.pick(1800.0, 600.0)  # simulated seconds in which closes are counted
    remote = RemoteEmulator(accounts=1, seed=23, speed=SPEED, mean_lifetime_s=60.0)  # the emulator's defaults otherwise
    with remote, sqlite_database() as url, migrated_engine(url) as engine:
        assert remote.endpoint is not None
        settings = scaled_settings(remote.endpoint, url)
        account = settings.accounts()[0]
        started_ms = remote.call("now_ms")
        service = asyncio.run(serve_for(settings, engine, (observed_s + DRAIN_S) / SPEED))
        truth = remote.call("truth", account)
        requests = remote.call("stats").get("requests", 0)
        elapsed_s = (remote.call("now_ms") - started_ms) / 1000
        with engine.connect() as conn:
            rows = {r["session_id"]: dict(r) for r in conn.execute(select(sessions_table)).mappings()}
    counted_until = started_ms + observed_s * 1000
    # Sessions that began after the first poll and closed within the observed time.
    closed = [t for t in truth if t["closedAtMs"] is not None and started_ms < t["startTime"] and t["closedAtMs"] <= counted_until]
    long_lived_total = long_lived_captured = 0
    for low, high in BUCKETS:
        members = [t for t in closed if low <= (t["closedAtMs"] - t["startTime"]) / 1000 / INTERVAL_S < high]
        hits = sum(captured(rows.get(t["sessionId"]), t) for t in members)
        if low >= 2.0:
            long_lived_total += len(members)
            long_lived_captured += hits
        name = f"{low:g}-{high:g}" if high != float("inf") else f">{low:g}"
        share = 100.0 * hits / len(members) if members else 0.0
        outcome.add(f"lifetime {name} intervals ({len(members)} sessions)", "archived with close reason", share, "%", decimals=1)
    share = 100.0 * long_lived_captured / long_lived_total if long_lived_total else 0.0
    outcome.add(f"lifetime > 2 intervals ({long_lived_total} sessions)", "archived with close reason", share, "%", target_min=TARGET_SHARE, decimals=1)
    budget_per_s = settings.budget_rate / SPEED
    outcome.add("the whole run", "API requests per simulated second", requests / elapsed_s, "/s", target=budget_per_s, decimals=2)
    outcome.add("the whole run", "effective poll interval at the end (simulated)", service.pacer.effective() * SPEED, "s", decimals=1)
    outcome.notes.append(
        f"`archiver run` (the Service, in-process) polls an emulated account whose clock runs {SPEED:g}x: sessions "
        "start at the emulator's default rate (30 per minute) with exponential lifetimes (mean 60 s) and are "
        f"forgotten 300 s after they close. Every setting is the default, scaled to the clock: interval "
        f"{INTERVAL_S:g} s, rate limit 3/s, rate budget 25% of 1200 requests per 5 minutes (1 request per simulated "
        f"second). Counted: sessions that started after the first poll and closed within {observed_s:g} simulated "
        f"seconds; the service runs {DRAIN_S:g} s longer to fetch their final state. Buckets are lifetimes in "
        f"configured intervals ({INTERVAL_S:g} s). A session counts as captured when the archive holds it as "
        "closed with Cloudflare's end time and close reason."
    )
    return outcome
