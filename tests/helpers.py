"""Helpers for end-to-end tests: run cycles against an emulator and compare with its ground truth."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Engine, select

from archiver.api.cloudflare import CloudflareClient, RequestStats
from archiver.archive.models import runs_table, sessions_table, versions_table
from archiver.archive.records import ms_to_datetime
from archiver.archive.sync import CycleOptions, CycleResult, run_cycle
from archiver.config import Credentials


def client_for(server: Any, emulator: Any, credentials: Credentials | None = None, **overrides: Any) -> CloudflareClient:
    """A client for the emulator, fast to give up (tests do not wait out real backoffs)."""
    options: dict[str, Any] = {"rate_limit": 1000.0, "timeout": 2.0, "max_retries": 3, "max_retry_wait": 0.2}
    options.update(overrides)
    return CloudflareClient(server.base_url, credentials or Credentials(token=SecretStr(emulator.token)), **options)


def cycle(
    server: Any, emulator: Any, engine: Engine, account_id: str | None = None, **options: Any
) -> CycleResult:
    """One real cycle over the loopback socket."""
    client_options = options.pop("client", {})
    account = account_id or emulator.account_ids[0]

    async def go() -> CycleResult:
        async with client_for(server, emulator, **client_options) as client:
            return await run_cycle(client.account(account, RequestStats()), engine, CycleOptions(**options))

    return asyncio.run(go())


def archiver_environment(base_url: str, token: str, accounts: Sequence[str], database_url: str, **settings: str) -> dict[str, str]:
    """The environment of an `archiver` process against an emulator: this process's, without any
    archiver or Cloudflare setting of its own, and with these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "ARCHIVER_"))}
    env.update({
        "CLOUDFLARE_API_TOKEN": token, "CLOUDFLARE_ACCOUNT_ID": ",".join(accounts), "CLOUDFLARE_BASE_URL": base_url,
        "ARCHIVER_DATABASE_URL": database_url, **settings,
    })
    return env


def ledger(engine: Engine) -> list[dict[str, Any]]:
    """Every ledger row, oldest first."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(runs_table).order_by(runs_table.c.id)).mappings()]


def archived(engine: Engine, account_id: str | None = None) -> dict[str, dict[str, Any]]:
    stmt = select(sessions_table)
    if account_id:
        stmt = stmt.where(sessions_table.c.account_id == account_id)
    with engine.connect() as conn:
        return {row["session_id"]: dict(row) for row in conn.execute(stmt).mappings()}


def versions_of(engine: Engine, session_id: str) -> list[dict[str, Any]]:
    stmt = select(versions_table).where(versions_table.c.session_id == session_id).order_by(versions_table.c.id)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(stmt).mappings()]


@dataclass
class PollLog:
    """Simulated times (ms) at which listings were taken, to say which sessions were visible."""

    times: list[float] = field(default_factory=list)
    # With a running clock a listing happens a moment after its poll time: only sessions alive
    # for this long after a poll time count as surely listed.
    margin_ms: float = 0.0

    def visible(self, truth_item: dict[str, Any]) -> bool:
        start = truth_item["startTime"]
        closed = truth_item["closedAtMs"]
        return any(start <= t and (closed is None or t + self.margin_ms < closed) for t in self.times)


def compare_with_truth(engine: Engine, truth: list[dict[str, Any]], polls: PollLog, account_id: str) -> list[str]:
    """Differences between the archive and the emulator's ground truth, as readable lines."""
    rows = archived(engine, account_id)
    problems: list[str] = []
    for item in truth:
        sid = item["sessionId"]
        if not polls.visible(item):
            continue
        row = rows.get(sid)
        if row is None:
            problems.append(f"{sid}: listed during a poll but not archived")
            continue
        if row["start_time"] != ms_to_datetime(item["startTime"]):
            problems.append(f"{sid}: start_time {row['start_time']} != {ms_to_datetime(item['startTime'])}")
        closed_at = item["closedAtMs"]
        forgotten_at = item["forgottenAtMs"]
        last_poll = polls.times[-1]
        if closed_at is not None and closed_at <= last_poll and (forgotten_at is None or forgotten_at > last_poll):
            if row["status"] != "closed":
                problems.append(f"{sid}: closed upstream, archived as {row['status']}")
                continue
            if row["end_time"] != ms_to_datetime(item["endTime"]):
                problems.append(f"{sid}: end_time {row['end_time']} != {ms_to_datetime(item['endTime'])}")
            expected_reason = None if item["closeReason"] is None else str(item["closeReason"])
            if row["close_reason"] != expected_reason or row["close_reason_text"] != item["closeReasonText"]:
                problems.append(f"{sid}: close reason {row['close_reason']!r} != {expected_reason!r}")
        if item["active"] and row["status"] != "active":
            problems.append(f"{sid}: still open upstream, archived as {row['status']}")
    return problems

