"""End-to-end poll cycles against the emulator over a real loopback socket, checked against its
ground truth, on a real SQLite archive (and on PostgreSQL and MariaDB where marked)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, func, select, update

from archiver.api.cloudflare import RequestStats
from archiver.archive import migrate
from archiver.archive.detailmode import DetailLearner
from archiver.archive.models import rejects_table, runs_table, sessions_table, versions_table
from archiver.archive.records import parse_session
from archiver.archive.store import make_engine
from archiver.archive.sync import AccountState, CycleOptions, run_cycle
from archiver.config import Credentials
from archiver.emulator import Emulator
from archiver.errors import DatabaseError
from tests.helpers import PollLog, archived, client_for, compare_with_truth, cycle, versions_of
from tests.soak import sqlite_locked


@pytest.fixture
def emulator() -> Emulator:
    # A frozen clock: the tests move time themselves, so every run sees the same world.
    return Emulator(
        accounts=1,
        initial_sessions=25,
        seed=11,
        speed=0.0,
        spawn_per_minute=20.0,
        mean_lifetime_s=40.0,
        retention_s=300.0,
        close_reason_style="mixed",
    )


@pytest.fixture
def server(emulator: Emulator) -> Iterator[Any]:
    with emulator.serve(port=0) as running:
        yield running


def ledger(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(runs_table).order_by(runs_table.c.id)).mappings()]


def run_polls(emulator: Emulator, server: Any, engine: Engine, polls: int, step_s: float, **options: Any) -> PollLog:
    log = PollLog()
    for _ in range(polls):
        log.times.append(emulator.clock.now_ms())
        result = cycle(server, emulator, engine, **options)
        assert result.outcome == "ok", result.error
        emulator.clock.advance(step_s)
    return log


def test_archive_matches_ground_truth_over_many_cycles(any_engine: Engine, emulator: Emulator, server: Any) -> None:
    polls = run_polls(emulator, server, any_engine, polls=20, step_s=10.0)
    truth = emulator.truth(emulator.account_ids[0])
    closed_while_polled = [t for t in truth if t["closedAtMs"] and polls.visible(t) and t["closedAtMs"] <= polls.times[-1]]
    assert len(closed_while_polled) >= 10, "the scenario must close sessions for the test to mean anything"
    assert compare_with_truth(any_engine, truth, polls, emulator.account_ids[0]) == []
    runs = ledger(any_engine)
    assert [r["outcome"] for r in runs] == ["ok"] * 20
    assert all(r["listing_complete"] for r in runs)
    # frugal: one list page per cycle, plus one detail per new, changed or vanished session
    assert runs[0]["api_requests"] == 1 + runs[0]["new"]


def test_vanished_policy_fetches_only_vanished(engine: Engine, emulator: Emulator, server: Any) -> None:
    polls = run_polls(emulator, server, engine, polls=8, step_s=10.0, detail_policy="vanished")
    runs = ledger(engine)
    assert runs[0]["api_requests"] == 1  # the listing alone: nothing vanished yet
    assert sum(r["details_fetched"] + r["details_gone"] for r in runs) == sum(r["vanished"] for r in runs)
    assert compare_with_truth(engine, emulator.truth(emulator.account_ids[0]), polls, emulator.account_ids[0]) == []


def test_close_reason_as_number_and_as_string_is_stored_as_text(engine: Engine) -> None:
    for seed, style, expected in ((3, "number", "1"), (4, "string", "NormalClosure")):
        emulator = Emulator(accounts=1, initial_sessions=0, seed=seed, speed=0.0, spawn_per_minute=0.0, close_reason_style=style)
        world = emulator.world(emulator.account_ids[0])
        with emulator.serve(port=0) as server:
            session_id = world.start_session()
            world.connect(session_id)
            cycle(server, emulator, engine)
            world.close(session_id, reason="NormalClosure")
            emulator.clock.advance(1)
            cycle(server, emulator, engine)
        row = archived(engine)[session_id]
        assert (row["status"], row["close_reason"]) == ("closed", expected)
        assert row["close_reason_text"]


def test_paging_with_drift_neither_loses_nor_falsely_vanishes(engine: Engine) -> None:
    emulator = Emulator(accounts=1, initial_sessions=650, seed=5, speed=0.0, spawn_per_minute=0.0, mean_lifetime_s=1e9)
    emulator.set_faults(drift=True)
    with emulator.serve(port=0) as server:
        for _ in range(4):
            result = cycle(server, emulator, engine)
            assert result.counts.get("vanished", 0) == 0 or result.listing_complete
        # sessions that closed during the last listing were seen alive in it: one calm cycle more
        emulator.set_faults(drift=False)
        cycle(server, emulator, engine)
    truth = {t["sessionId"]: t for t in emulator.truth(emulator.account_ids[0])}
    rows = archived(engine)
    assert set(rows) == set(truth)  # nothing lost
    for sid, row in rows.items():
        if truth[sid]["active"]:
            assert row["status"] == "active", f"{sid} is alive but archived as {row['status']}"
        else:
            assert row["status"] == "closed"


def test_detail_budget_carries_over(engine: Engine, emulator: Emulator, server: Any) -> None:
    first = cycle(server, emulator, engine, detail_budget=10)
    assert (first.counts["new"], first.counts["details_fetched"], first.counts["details_carried"]) == (25, 10, 15)
    second = cycle(server, emulator, engine, detail_budget=10)
    third = cycle(server, emulator, engine, detail_budget=10)
    assert second.counts["details_carried"] == 5 and third.counts["details_carried"] == 0
    assert all(r["last_detail_at"] is not None for r in archived(engine).values())


@pytest.mark.parametrize(
    ("setup", "budget", "expected"),
    [
        (lambda emulator: None, 100, {"outcome": "ok", "details_fetched": 25, "details_carried": 0}),
        (lambda emulator: None, 10, {"outcome": "ok", "details_fetched": 10, "details_carried": 15}),
        (lambda emulator: None, 0, {"outcome": "ok", "details_fetched": 0, "details_carried": 25}),
        (lambda emulator: emulator.inject(503, times=100, endpoint="get"), 100,
         {"outcome": "partial", "details_failed": 25, "details_carried": 25}),
        (lambda emulator: emulator.inject(503, times=100, endpoint="list"), 100, {"outcome": "failed", "pages": 0}),
    ],
    ids=["details-within-budget", "budget-leaves-some-owed", "no-budget", "details-failing", "listing-failing"],
)
def test_the_ledger_row_holds_the_cycle_figures_whichever_write_closes_it(
    engine: Engine, emulator: Emulator, server: Any, setup: Callable[[Emulator], None], budget: int, expected: dict[str, Any]
) -> None:
    setup(emulator)
    first = cycle(server, emulator, engine, detail_budget=budget, client={"max_retries": 0})
    then = cycle(server, emulator, engine, detail_budget=budget, client={"max_retries": 0})  # quiet, or more of the same
    runs = ledger(engine)
    for result, row in zip((first, then), runs, strict=True):
        assert (row["id"], row["outcome"], row["listing_complete"]) == (result.run_id, result.outcome, result.listing_complete)
        assert row["finished_at"] is not None
        for name in ("listed", "new", "details_fetched", "details_failed", "details_carried"):
            assert row[name] == result.counts.get(name, 0), name
    assert {name: runs[0][name] for name in expected} == expected


def test_vanished_first_under_a_tight_budget(engine: Engine, emulator: Emulator, server: Any) -> None:
    nothing_fetched = cycle(server, emulator, engine, detail_budget=0)
    assert (nothing_fetched.counts.get("details_fetched", 0), nothing_fetched.counts["details_carried"]) == (0, 25)
    world = emulator.world(emulator.account_ids[0])
    closing = sorted(t["sessionId"] for t in emulator.truth() if t["active"])[:3]
    for sid in closing:
        world.close(sid)
    result = cycle(server, emulator, engine, detail_budget=3)
    assert result.counts["vanished"] == 3
    rows = archived(engine)
    assert {sid for sid, r in rows.items() if r["status"] == "closed"} == set(closing)


def test_forgotten_before_fetch_is_gone_and_keeps_last_state(engine: Engine, emulator: Emulator, server: Any) -> None:
    cycle(server, emulator, engine)
    world = emulator.world(emulator.account_ids[0])
    sid = next(t["sessionId"] for t in emulator.truth() if t["active"])
    before = archived(engine)[sid]
    world.close(sid)
    world.forget(sid)
    first = cycle(server, emulator, engine)
    assert archived(engine)[sid]["status"] == "vanished"  # one 404 may be a glitch: asked again
    assert first.counts["details_gone"] == 1
    cycle(server, emulator, engine)
    cycle(server, emulator, engine)
    row = archived(engine)[sid]
    assert row["status"] == "gone" and row["gone_at"] is not None and row["vanished_at"] is not None
    assert row["start_time"] == before["start_time"]
    assert [v["status"] for v in versions_of(engine, sid)][-2:] == ["vanished", "gone"]


@pytest.mark.parametrize(
    ("status", "times", "outcome", "complete"),
    [
        (429, 1, "ok", True),
        (500, 2, "ok", True),
        (503, 1, "ok", True),
        ("malformed", 1, "ok", True),
        ("reset", 1, "ok", True),
        (500, 10, "failed", False),
        (401, 1, "failed", False),
        (400, 1, "failed", False),
    ],
    ids=["429-retried", "500-retried", "503-retried", "malformed-retried", "reset-retried", "500-exhausted", "401", "400"],
)
def test_listing_errors(engine: Engine, emulator: Emulator, server: Any, status: Any, times: int, outcome: str, complete: bool) -> None:
    cycle(server, emulator, engine)
    world = emulator.world(emulator.account_ids[0])
    world.close(next(t["sessionId"] for t in emulator.truth() if t["active"]))
    emulator.inject(status, times=times, endpoint="list", retry_after=0)
    result = cycle(server, emulator, engine)
    assert (result.outcome, result.listing_complete) == (outcome, complete)
    if complete:
        assert result.counts["vanished"] == 1
    else:
        assert result.error
        assert not any(r["status"] == "vanished" for r in archived(engine).values())
    if status == 429:
        assert ledger(engine)[-1]["throttled"] == 1


def test_detail_errors_carry_the_fetch_over(engine: Engine, emulator: Emulator, server: Any) -> None:
    emulator.inject(503, times=100, endpoint="get")
    first = cycle(server, emulator, engine)
    assert first.outcome == "partial" and first.counts["details_failed"] == 25
    assert first.counts["details_carried"] == 25
    second = cycle(server, emulator, engine)
    assert second.outcome == "ok" and second.counts["details_fetched"] == 25


def test_odd_fields_are_set_aside_and_the_session_kept(engine: Engine, emulator: Emulator, server: Any) -> None:
    emulator.set_faults(odd_fields_rate=1.0)
    result = cycle(server, emulator, engine)
    emulator.set_faults(odd_fields_rate=0.0)
    assert result.counts["rejected"] > 0
    with engine.connect() as conn:
        kept = conn.scalar(select(func.count()).select_from(rejects_table).where(rejects_table.c.kept))
        dropped = conn.scalar(select(func.count()).select_from(rejects_table).where(~rejects_table.c.kept))
    rows = archived(engine)
    truth_ids = {t["sessionId"] for t in emulator.truth()}
    assert kept > 0
    assert set(rows) <= truth_ids
    if dropped:
        assert not result.listing_complete  # an unidentifiable item cannot prove an absence


def test_email_and_key_auth(engine: Engine, emulator: Emulator, server: Any) -> None:
    credentials = Credentials(email=emulator.email, api_key=SecretStr(emulator.api_key))
    result = cycle(server, emulator, engine, client={"credentials": credentials})
    assert result.outcome == "ok" and result.counts["new"] == 25


def test_wrong_token_fails_with_a_plain_message(engine: Engine, emulator: Emulator, server: Any) -> None:
    result = cycle(server, emulator, engine, client={"credentials": Credentials(token=SecretStr("wrong-token"))})
    assert result.outcome == "failed"
    assert "refused the credentials" in (result.error or "")
    assert "wrong-token" not in (result.error or "")


def test_urls_are_stored_redacted(engine: Engine, emulator: Emulator, server: Any) -> None:
    cycle(server, emulator, engine)
    with engine.connect() as conn:
        dump = " ".join(str(tuple(r)) for r in conn.execute(select(sessions_table)))
        dump += " ".join(str(tuple(r)) for r in conn.execute(select(versions_table)))
    assert "jwt=REDACTED" in dump
    for item in emulator.truth():
        token = item["webSocketDebuggerUrl"].rpartition("jwt=")[2]
        assert token not in dump


def test_content_hashes_change_nothing_in_the_archive(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions told unchanged by their stored digest end up exactly as when every listed object
    is parsed and compared field by field (forced here by clearing the digests before each cycle)."""
    from archiver.archive import migrate, plan, sync
    from archiver.archive.store import make_engine

    parsed = 0

    def counting_parse(obj: Any, **kwargs: Any) -> Any:
        nonlocal parsed
        parsed += 1
        return parse_session(obj, **kwargs)

    monkeypatch.setattr(plan, "parse_session", counting_parse)  # listed objects
    monkeypatch.setattr(sync, "parse_session", counting_parse)  # detail answers

    def polled(use_hashes: bool) -> tuple[dict[str, dict[str, Any]], list[list[dict[str, Any]]], int]:
        nonlocal parsed
        parsed = 0
        engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('hashes') / 'a.db'}")
        migrate.upgrade(engine)
        emulator = Emulator(accounts=1, initial_sessions=30, seed=8, speed=0.0, spawn_per_minute=20.0, start_ms=1.8e12)
        world = emulator.world(emulator.account_ids[0])
        with emulator.serve(port=0) as server:

            async def go() -> None:
                async with client_for(server, emulator) as client:
                    for step in range(8):
                        if step == 4:
                            world.disconnect(next(iter(world.active)))
                        if not use_hashes:
                            with engine.begin() as conn:
                                conn.execute(update(sessions_table).values(content_hash=None))
                        api = client.account(emulator.account_ids[0], RequestStats())
                        result = await run_cycle(api, engine, CycleOptions())
                        assert result.outcome == "ok", result.error
                        emulator.clock.advance(10.0)

            asyncio.run(go())
        rows = archived(engine)
        history = [versions_of(engine, sid) for sid in sorted(rows)]
        engine.dispose()
        return rows, history, parsed

    with_hashes, without = polled(True), polled(False)
    listed_in_all = 8 * 30
    assert without[2] >= listed_in_all  # every listed object, and every detail, parsed
    assert with_hashes[2] < without[2] / 2  # most listed objects came back as stored, unparsed
    archiver_clock = {"first_seen_at", "last_seen_at", "last_detail_at", "vanished_at", "gone_at", "observed_at", "id"}

    def essence(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k not in archiver_clock | {"content_hash"}} for row in rows]

    assert essence(list(with_hashes[0].values())) == essence(list(without[0].values()))
    assert [essence(h) for h in with_hashes[1]] == [essence(h) for h in without[1]]


def test_ids_listed_in_upper_case_are_known_again(engine: Engine, emulator: Emulator, server: Any) -> None:
    """Sessions are stored under the lower-case id: listed in upper case, they are neither taken for
    new ones nor parsed again once their digest is stored."""
    world = emulator.world(emulator.account_ids[0])
    for session in list(world.sessions.values())[:10]:
        session.session_id = session.session_id.upper()  # as listed; the emulator still finds it by its key
    first = cycle(server, emulator, engine)
    before = archived(engine)
    later = [cycle(server, emulator, engine) for _ in range(2)]
    assert first.outcome == "ok" and first.counts["new"] == len(before) == 25
    assert all(r.outcome == "ok" and r.counts.get("new", 0) == 0 and r.counts["unchanged"] == 25 for r in later), later
    after = archived(engine)
    assert set(after) == set(before) and all(sid == sid.lower() for sid in after)
    assert all(after[sid]["first_seen_at"] == before[sid]["first_seen_at"] for sid in after)
    assert all(after[sid]["content_hash"] is not None for sid in after)


def test_a_cycle_interrupted_mid_details_converges(tmp_path_factory: pytest.TempPathFactory) -> None:
    from archiver.archive import migrate
    from archiver.archive.store import make_engine

    def fresh_engine(name: str) -> Engine:
        engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp(name) / 'a.db'}")
        migrate.upgrade(engine)
        return engine

    def world() -> Emulator:
        return Emulator(accounts=1, initial_sessions=30, seed=21, speed=0.0, spawn_per_minute=0.0, start_ms=1.8e12)

    straight, interrupted = fresh_engine("straight"), fresh_engine("interrupted")
    emu_a, emu_b = world(), world()
    with emu_a.serve(port=0) as server_a:
        cycle(server_a, emu_a, straight)
    with emu_b.serve(port=0) as server_b:
        emu_b.set_faults(latency_ms=200)

        async def interrupted_cycle() -> None:
            async with client_for(server_b, emu_b, max_connections=2) as client:
                task = asyncio.create_task(
                    run_cycle(client.account(emu_b.account_ids[0], RequestStats()), interrupted, CycleOptions())
                )
                await asyncio.sleep(1.6)  # the listing and some details are stored, others in flight
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        asyncio.run(interrupted_cycle())
        assert 0 < sum(r["last_detail_at"] is not None for r in archived(interrupted).values()) < 30
        emu_b.set_faults(latency_ms=0)
        cycle(server_b, emu_b, interrupted)

    def essence(engine: Engine) -> dict[str, tuple[Any, ...]]:
        return {
            sid: (r["status"], r["start_time"], r["end_time"], r["close_reason"], r["detail_due"], len(versions_of(engine, sid)))
            for sid, r in archived(engine).items()
        }

    assert essence(straight) == essence(interrupted)
    assert [r["outcome"] for r in ledger(interrupted)] == ["aborted", "ok"]


def test_a_ledger_row_that_cannot_be_written_fails_the_cycle_and_drops_its_first_page(
    tmp_path: Path, emulator: Emulator, server: Any
) -> None:
    path = tmp_path / "archive.db"
    engine = make_engine(f"sqlite:///{path}?timeout=0.2")
    migrate.upgrade(engine)

    async def go() -> None:
        async with client_for(server, emulator) as client:
            with pytest.raises(DatabaseError, match="cannot open a ledger row"):
                await run_cycle(client.account(emulator.account_ids[0], RequestStats()), engine, CycleOptions())
            # nothing of the cycle is left running: the page asked for ahead was dropped
            assert asyncio.all_tasks() == {asyncio.current_task()}

    with sqlite_locked(path):
        asyncio.run(go())
    assert ledger(engine) == [] and archived(engine) == {}
    assert cycle(server, emulator, engine).outcome == "ok"  # and the next one goes on
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_late_details_of_one_cycle_apply_to_what_the_next_cycle_stored(backend: str, request: pytest.FixtureRequest,
                                                                      tmp_path: Path) -> None:
    # Cycle A asks for a new session's detail, which comes late; meanwhile the session closes and
    # cycle B, listing beside A's details, marks it vanished and asks for its final state itself.
    # A's answer (taken while the session was open) must not turn it back into an open session.
    url = f"sqlite:///{tmp_path / 'a.db'}" if backend == "sqlite" else request.getfixturevalue(
        "postgres_url" if backend == "postgresql" else "mariadb_url")
    engine = make_engine(url)
    migrate.upgrade(engine)
    emulator = Emulator(accounts=1, initial_sessions=0, seed=61, speed=0.0, spawn_per_minute=0)
    world = emulator.world(emulator.account_ids[0])
    session_id = world.start_session(connect=True)
    emulator.set_faults(timeout_s=1.0)
    emulator.inject("timeout", endpoint="get")  # the answer as it is now, a second late
    state = AccountState(DetailLearner("changed"))

    async def go(server: Any) -> list[str]:
        async with client_for(server, emulator, timeout=5.0) as client:
            listed = asyncio.Event()
            first = asyncio.create_task(run_cycle(
                client.account(world.account_id, RequestStats()), engine, CycleOptions(detail_policy="changed"),
                state=state, on_listed=lambda pages, complete: listed.set(),
            ))
            await listed.wait()
            await asyncio.sleep(0.2)  # A's detail request is on its way
            world.close(session_id, reason="NormalClosure")
            second = await run_cycle(client.account(world.account_id, RequestStats()), engine, CycleOptions(), state=state)
            assert second.counts["vanished"] == 1 and second.counts["details_fetched"] == 1  # its final state, at once
            statuses = [archived(engine)[session_id]["status"]]
            await first
            return [*statuses, archived(engine)[session_id]["status"]]

    with emulator.serve(port=0) as server:
        assert asyncio.run(go(server)) == ["closed", "closed"]  # A's late answer reopened nothing
    row = archived(engine)[session_id]
    assert (row["close_reason"], row["detail_due"]) == ("NormalClosure", None)
    assert [v["status"] for v in versions_of(engine, session_id)] == ["active", "vanished", "closed"]
    engine.dispose()


def test_closes_are_counted_by_reason_once_each_as_their_reason_is_learned(engine: Engine) -> None:
    """An eviction: every open session closes as SessionEvicted; the cycle that learns their ends
    counts them under that name, and a later cycle that hears them again counts nothing."""
    emulator = Emulator(accounts=1, initial_sessions=6, seed=21, speed=0.0, spawn_per_minute=0, mean_lifetime_s=1e9)
    with emulator.serve(port=0) as server:
        first = cycle(server, emulator, engine)
        evicted = emulator.world(emulator.account_ids[0]).evict()
        learned = cycle(server, emulator, engine)
        again = cycle(server, emulator, engine)
    assert not [k for k in first.counts if k.startswith("closed:")]
    assert len(evicted) == 6 and learned.counts["closed:SessionEvicted"] == 6
    assert [k for k in learned.counts if k.startswith("closed:")] == ["closed:SessionEvicted"]
    assert not [k for k in again.counts if k.startswith("closed:")]
