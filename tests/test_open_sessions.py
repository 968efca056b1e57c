"""The open-sessions gauge of `archiver run`: kept from each cycle's moves, counted in the archive
only when it cannot follow, and then only the open sessions, on every database."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Engine, event, func, select

from archiver.archive.models import sessions_table
from archiver.archive.plan import STATUS_PREFIX, Plan
from archiver.config import settings_from
from archiver.emulator import Emulator
from archiver.service.runner import Runner
from archiver.vocabulary import OPEN_STATUSES, Kind, Status


def open_in_archive(engine: Engine, account: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(sessions_table.c.status, func.count())
            .where(sessions_table.c.account_id == account, sessions_table.c.status.in_(OPEN_STATUSES))
            .group_by(sessions_table.c.status)
        )
        return {**dict.fromkeys(OPEN_STATUSES, 0), **{status: count for status, count in rows}}


def gauge(runner: Runner, account: str) -> dict[str, int]:
    values = {}
    for status in OPEN_STATUSES:
        value = runner.metrics.registry.get_sample_value("archiver_open_sessions", {"account": account, "status": status})
        values[status] = int(value) if value is not None else -1
    return values


def test_the_gauge_follows_churn_from_the_cycles_moves_and_counts_the_archive_once(any_engine: Engine) -> None:
    # Sessions open and close all the time (a tenth of a second of real time is ten simulated
    # seconds); the service polls every 0.3 s. Closed sessions pile up in the archive meanwhile.
    emulator = Emulator(accounts=2, initial_sessions=30, seed=83, speed=100.0, spawn_per_minute=120, mean_lifetime_s=10)
    counts: list[str] = []

    def note_counts(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "count(" in statement.lower() and "browser_sessions.status IN" in statement:
            counts.append(statement)

    event.listen(any_engine, "before_cursor_execute", note_counts)
    with emulator.serve(port=0) as server:
        settings = settings_from({
            "api_token": emulator.token, "account_ids": emulator.account_ids, "base_url": server.base_url,
            "database_url": str(any_engine.url), "interval_seconds": 0.3, "min_interval_seconds": 0.3,
            "rate_limit": 1000.0, "upstream_limit_window_seconds": 3.0, "detail_policy": "changed", "shutdown_grace_seconds": 2.0,
        })
        runner = Runner(settings, any_engine)

        async def serve_a_while() -> None:
            service = asyncio.create_task(runner.serve())
            await asyncio.sleep(3.0)
            runner.stop()
            await service

        asyncio.run(serve_a_while())
    event.remove(any_engine, "before_cursor_execute", note_counts)
    for account in emulator.account_ids:
        in_archive = open_in_archive(any_engine, account)
        assert gauge(runner, account) == in_archive
        with any_engine.connect() as conn:
            ended = conn.scalar(select(func.count()).where(sessions_table.c.account_id == account,
                                                            sessions_table.c.status.in_([Status.CLOSED, Status.GONE])))
        assert ended and ended >= 5, in_archive  # the churn ended sessions: the gauge followed moves out
    # One count of the open sessions per account, at its first cycle, whatever ran beside it.
    assert len(counts) == len(emulator.account_ids), counts


def test_a_plan_counts_moves_between_statuses() -> None:
    from archiver.archive.lifecycle import Transition

    active = {"status": Status.ACTIVE, "close_reason": None}
    plan = Plan()
    plan.add(Transition(Kind.NEW, {"status": Status.ACTIVE, "close_reason": None}))  # type: ignore[typeddict-item]
    plan.add(Transition(Kind.VANISHED, {"status": Status.VANISHED, "close_reason": None}), active)  # type: ignore[typeddict-item]
    plan.add(Transition(Kind.CHANGED, {"status": Status.ACTIVE, "close_reason": None}), active)  # type: ignore[typeddict-item]
    moves = {key: value for key, value in plan.counts.items() if key.startswith(STATUS_PREFIX)}
    assert moves == {"status:active": 0, "status:vanished": 1}
