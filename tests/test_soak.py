"""The chaos soak: the real `archiver run` against the emulator with about 20% faulty requests,
three SIGKILLs with restarts and a database outage, on SQLite and on PostgreSQL; then nothing may
be missing from the archive. `make soak` runs a long one and prints the figures."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from archiver.emulator.app import ServedPage
from tests.soak import (
    SoakFigures,
    SoakPlan,
    SoakRun,
    Supervisor,
    TcpProxy,
    archive_engine,
    compare,
    devtools_url_tokens,
    drive,
    pages_by_account,
    pages_consumed,
    sqlite_locked,
    text_of_every_column,
)


def test_soak_on_sqlite(tmp_path: Path) -> None:
    plan = SoakPlan.from_env(seed=1)
    emulator = plan.emulator()
    db = tmp_path / "archive.db"
    log = tmp_path / "service.log"
    with archive_engine(f"sqlite:///{db}") as engine, emulator.serve(port=0) as server:
        # A short busy timeout, so that the locked file fails writes rather than only delaying them.
        env = plan.service_env(emulator, server.base_url, f"sqlite:///{db}?timeout=1", log_format="json")
        env["CLOUDFLARE_API_TOKEN"] = emulator.token
        supervisor = Supervisor(env, log)
        try:
            run = drive(plan, emulator, supervisor, engine, lambda: sqlite_locked(db))
        finally:
            supervisor.abandon()
        figures = compare(run, engine)
        database_text = text_of_every_column(engine)
    assert_nothing_lost(figures, run)
    assert_outage_was_felt(log.read_text())
    secret_free = [emulator.token, *devtools_url_tokens(emulator)]
    assert_no_secrets(log.read_text(), database_text, secret_free)


def test_soak_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    plan = SoakPlan.from_env(seed=2)
    emulator = plan.emulator()
    url = make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    password = f"pw-{secrets.token_hex(8)}"  # the test server trusts loopback and ignores it
    service_url = url.set(host="127.0.0.1", port=proxy.port, password=password).render_as_string(hide_password=False)
    log = tmp_path / "service.log"
    with archive_engine(postgres_url) as engine, emulator.serve(port=0) as server:
        env = plan.service_env(emulator, server.base_url, service_url, log_format="text")
        env.update({"CLOUDFLARE_EMAIL": emulator.email, "CLOUDFLARE_API_KEY": emulator.api_key})
        supervisor = Supervisor(env, log)
        try:
            run = drive(plan, emulator, supervisor, engine, proxy.outage)
        finally:
            supervisor.abandon()
            proxy.close()
        figures = compare(run, engine)
        database_text = text_of_every_column(engine)
    assert_nothing_lost(figures, run)
    assert_outage_was_felt(log.read_text())
    secret_free = [emulator.api_key, password, *devtools_url_tokens(emulator)]
    assert_no_secrets(log.read_text(), database_text, secret_free)


def assert_nothing_lost(figures: SoakFigures, run: SoakRun) -> None:
    print("\n" + "\n".join(figures.lines(run)))
    plan = run.plan
    # The soak did what it says: cycles, faults, kills and an outage.
    assert run.stop_code == 0
    assert len(run.kills) == plan.kills and run.outage is not None
    assert figures.cycles["ok"] + figures.cycles["partial"] >= plan.cycles
    assert figures.cycles["failed"] + figures.cycles["aborted"] > 0, "the outage and the kills failed no cycle"
    assert 0.6 * plan.fault_share <= figures.faulty_requests / figures.requests <= 1.5 * plan.fault_share
    assert figures.close_reasons_expected >= 20 and figures.incomplete_listings > 0
    # And nothing fell through.
    assert figures.sessions_lost == []
    assert figures.close_reasons_lost == []
    assert figures.duplicate_rows == []
    assert figures.incomplete_unflagged == []
    assert figures.live_marked_vanished == []
    assert figures.stray_requests == 0


def assert_outage_was_felt(log: str) -> None:
    # The running service met the outage (and went on: the figures above hold).
    assert re.search(r"cycle failed: |database error: |cannot renew leases", log), "the outage went unnoticed"


def assert_no_secrets(log: str, database: str, secret_values: list[str]) -> None:
    assert "cycle account=" in log  # the log is the service's
    for value in secret_values:
        assert value not in log
        assert value not in database


def _page(at: float, offset: int, fault: int | str | None, *ids: str) -> ServedPage:
    return ServedPage(at, "acct", offset, fault, ids)


@pytest.mark.parametrize(
    ("served", "pages", "expected"),
    [
        # an answer slower than the client's timeout, asked again: the repeat is what the cycle got
        ([_page(1, 0, None, "a", "b"), _page(2, 180, None, "c"), _page(3, 180, None, "d")], 2, {"a", "b", "d"}),
        # the last attempt failed: the listing ended before that page
        ([_page(1, 0, None, "a"), _page(2, 180, None, "c"), _page(3, 180, 503)], 1, {"a"}),
        # a page requested ahead, dropped when the listing was left early
        ([_page(1, 0, None, "a"), _page(1.5, 180, None, "c")], 1, {"a"}),
        # a spoiled id still delivers the others
        ([_page(1, 0, "bad_id", "a")], 1, {"a"}),
        # a page outside the cycle's window belongs to another cycle
        ([_page(0.5, 0, None, "z"), _page(1, 0, None, "a")], 1, {"a"}),
        # and so does one served once its listing was stored, while its details still came in
        ([_page(1, 0, None, "a"), _page(5, 0, None, "b")], 1, {"a"}),
    ],
    ids=["timed-out-then-repeated", "repeat-failed", "dropped-page-ahead", "spoiled-id", "outside-window",
         "after-its-listing"],
)
def test_pages_consumed_are_those_the_cycle_went_on_with(served: list[ServedPage], pages: int, expected: set[str]) -> None:
    by_account = pages_by_account(served)
    run = {"account_id": "acct", "started_at": datetime.fromtimestamp(0.9, UTC), "listed_at": datetime.fromtimestamp(4, UTC),
           "finished_at": datetime.fromtimestamp(9, UTC), "pages": pages}
    assert {sid for page in pages_consumed(by_account, run) for sid in page.ids} == expected
