"""The demo: the emulator on a free loopback port, a few poll cycles into SQLite, and a summary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from sqlalchemy import select

from archiver import reports
from archiver.archive import migrate
from archiver.archive.models import sessions_table
from archiver.archive.store import make_engine
from archiver.archive.sync import CycleResult
from archiver.config import settings_from
from archiver.emulator import Emulator
from archiver.service.runner import sync_accounts

# The emulator's clock runs this much faster than real time, so sessions live and die within
# seconds of wall time while keeping realistic simulated lifetimes.
DEMO_SPEED = 10.0


@dataclass
class DemoSummary:
    by_status: list[tuple[str, str, int]]
    reasons: list[tuple[str | None, str | None, int]]
    recent: list[dict[str, Any]]
    emulator_sessions: int
    emulator_closed: int
    alive_while_polling: int  # emulator sessions alive at some time between the first and last poll
    missed: int  # of those, the ones not in the archive
    longest_missed_s: float  # the longest life among them, simulated seconds
    widest_poll_gap_s: float  # the longest a session could live unseen between two listings
    archived: int
    archived_closed_with_reason: int


async def run_demo(
    database_url: str,
    *,
    cycles: int = 8,
    interval: float = 2.0,
    seed: int = 7,
    on_cycle: Callable[[int, list[CycleResult]], None] = lambda _i, _r: None,
) -> DemoSummary:
    """Archive an emulated account for ``cycles`` polls, ``interval`` seconds apart."""
    emulator = Emulator(
        accounts=1,
        initial_sessions=12,
        seed=seed,
        speed=DEMO_SPEED,
        spawn_per_minute=30.0,
        mean_lifetime_s=60.0,
        retention_s=600.0,
        close_reason_style="mixed",
        start_ms=_simulated_start_ms(cycles, interval),
    )
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    with emulator.serve(port=0) as server:
        settings = settings_from(
            {
                "api_token": emulator.token,
                "account_ids": list(emulator.account_ids),
                "base_url": server.base_url,
                "database_url": database_url,
                "rate_limit": 50.0,  # a local emulator, not Cloudflare: no need to be frugal here
                "detail_concurrency": 8,
            }
        )
        polls: list[tuple[float, float]] = []  # simulated start and end of each cycle
        for number in range(1, cycles + 1):
            started = emulator.clock.now_ms()
            results = await sync_accounts(settings, engine)
            polls.append((started, emulator.clock.now_ms()))
            on_cycle(number, results)
            if number < cycles:
                await asyncio.sleep(interval)
        truth = emulator.truth()
    with engine.connect() as conn:
        archived_ids = set(conn.scalars(select(sessions_table.c.session_id)))
        # Only sessions alive at some moment between the end of the first poll and the start of
        # the last could be seen for certain: every such moment lies between two listings. (One
        # that closed while the first cycle was starting up, before its listing, never could.)
        first_poll, last_poll = polls[0][1], polls[-1][0]
        during = [t for t in truth if t["startTime"] <= last_poll and (t["closedAtMs"] or first_poll) >= first_poll]
        missed = [t for t in during if t["sessionId"] not in archived_ids]
        summary = DemoSummary(
            by_status=reports.sessions_by_status(conn),
            reasons=reports.close_reasons(conn),
            recent=reports.recent_closed(conn, 6),
            emulator_sessions=len(truth),
            emulator_closed=sum(1 for t in truth if not t["active"]),
            alive_while_polling=len(during),
            missed=len(missed),
            longest_missed_s=max((_lifetime_ms(t) for t in missed), default=0.0) / 1000,
            # a session can escape every listing only by living between one cycle's start and
            # the next one's end
            widest_poll_gap_s=max((b[1] - a[0] for a, b in pairwise(polls)), default=0.0) / 1000,
            archived=sum(n for _a, _s, n in reports.sessions_by_status(conn)),
            archived_closed_with_reason=sum(n for reason, _t, n in reports.close_reasons(conn) if reason is not None),
        )
    engine.dispose()
    return summary



def _simulated_start_ms(cycles: int, interval: float) -> float:
    """Where the simulated clock starts, so that it reaches the real time about when the demo ends:
    the archive then holds no timestamps in the future, and `archiver report ... --since 1h` right
    after the demo sees all of it."""
    expected_wall_s = (cycles - 1) * interval + cycles * 0.5  # the pauses, and the cycles themselves
    return time.time() * 1000 - (DEMO_SPEED - 1) * expected_wall_s * 1000


def _lifetime_ms(truth_item: dict[str, Any]) -> float:
    end = truth_item["closedAtMs"]
    return float("inf") if end is None else end - truth_item["startTime"]
