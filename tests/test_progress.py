"""Progress on long work: a status line on a terminal, log lines elsewhere; what a cold sync, an
export and a prune show as they go."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from archiver.archive import migrate
from archiver.archive import prune as retention
from archiver.archive.models import sessions_table
from archiver.archive.store import insert_rows, make_engine
from archiver.emulator import Emulator
from archiver.logs import JsonFormatter
from archiver.progress import Progress, counted, duration
from archiver.service.runner import sync_accounts
from tests import archive_data as data
from tests.helpers import archiver_environment
from tests.test_runner import sync_settings

CLEAR = "\r\x1b[2K"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_line_is_rewritten_at_most_every_period_and_cleared_at_the_end() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, every=0.2, clock=clock)
    progress.show("one")  # the first at once
    progress.show("two")  # too soon: not shown
    clock.now += 0.2
    progress.show("three")
    clock.now += 0.2
    progress.show("three")  # nothing new: not written again
    progress.finish()
    assert out.getvalue() == f"{CLEAR}one{CLEAR}three{CLEAR}"


def test_log_lines_come_only_once_work_has_run_a_period_and_carry_their_facts(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = Progress(None, every=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="archiver.progress"):
        progress.show("early", {"rows": 1})  # short work logs nothing
        clock.now += 10.0
        progress.show("listed 3 pages", {"pages": 3})
        progress.show("too soon", {"pages": 4})
        progress.finish()
    assert [r.getMessage() for r in caplog.records] == ["listed 3 pages"]
    document = json.loads(JsonFormatter().format(caplog.records[0]))
    assert document["message"] == "listed 3 pages" and document["pages"] == 3


def test_counted_rows_pass_through_whole_and_are_shown_as_they_go() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, every=0.0, clock=clock)
    rows = list(counted(iter(range(1200)), progress, lambda done: f"{done} rows"))
    assert rows == list(range(1200))
    assert out.getvalue() == f"{CLEAR}500 rows{CLEAR}1000 rows"


@pytest.mark.parametrize(("seconds", "text"), [(0.2, "1 s"), (40, "40 s"), (600, "10 min"), (30_000, "8.3 h")])
def test_durations_read_as_a_person_would_say_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_a_cold_sync_shows_pages_listed_then_details_fetched_and_owed_with_the_time_they_need(engine: Engine) -> None:
    emulator = Emulator(accounts=1, initial_sessions=450, seed=71, speed=0.0, spawn_per_minute=0, mean_lifetime_s=1e9)
    emulator.set_faults(latency_ms=30)
    out = io.StringIO()
    with emulator.serve(port=0) as server:
        # Details for what is new, 20 of them, at 10 requests a second: the details take seconds.
        settings = sync_settings(emulator, server, engine, detail_policy="changed", detail_budget=20, rate_limit=10.0)
        (result,) = asyncio.run(sync_accounts(settings, engine, progress=Progress(out, every=0.05)))
    assert result.outcome == "ok" and result.counts["details_fetched"] == 20
    lines = [line for line in out.getvalue().split(CLEAR) if line]
    assert out.getvalue().endswith(CLEAR)  # cleared before the summary is printed
    listed = result.counts["listed"]
    listing = [re.fullmatch(r"listed (\d+) pages?, (\d+) sessions", line) for line in lines]
    pages_and_sessions = [(int(m[1]), int(m[2])) for m in listing if m]
    assert pages_and_sessions and pages_and_sessions == sorted(pages_and_sessions)  # shown as they grow
    details = [re.fullmatch(rf"listed 3 pages, {listed} sessions; details: (\d+) fetched, (\d+) owed(.*)", line)
               for line in lines]
    fetched_and_owed = [(int(m[1]), int(m[2]), m[3]) for m in details if m]
    assert fetched_and_owed, lines
    assert all(fetched + owed == 20 for fetched, owed, _ in fetched_and_owed)
    assert [fetched for fetched, _, _ in fetched_and_owed] == sorted(fetched for fetched, _, _ in fetched_and_owed)
    # At 10 details a second, what is owed takes a tenth of a second each (shown in whole seconds).
    for _fetched, owed, estimate in fetched_and_owed:
        if owed:
            seconds = re.fullmatch(r" \(about (\d+) s at the rate budget\)", estimate)
            assert seconds and abs(int(seconds[1]) - owed / 10) <= 1, estimate


def on_a_terminal(command: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Run ``command`` with its stderr on a pseudo-terminal; (exit code, stdout, what the terminal showed)."""
    leader, follower = pty.openpty()
    with subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=follower, text=True) as process:
        os.close(follower)
        shown = b""
        try:
            while True:
                ready, _, _ = select.select([leader], [], [], 30)
                if not ready:
                    process.kill()
                    raise AssertionError("no output for 30 s")
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the command ended and the terminal closed
                    break
                if not chunk:
                    break
                shown += chunk
        finally:
            os.close(leader)
        stdout, _ = process.communicate(timeout=30)
    return process.returncode, stdout, shown.decode()


def test_archiver_sync_shows_progress_on_a_terminal_and_not_in_a_pipe(tmp_path: Path) -> None:
    emulator = Emulator(accounts=1, initial_sessions=600, seed=73, speed=0.0, spawn_per_minute=0, mean_lifetime_s=1e9)
    emulator.set_faults(latency_ms=100)
    with emulator.serve(port=0) as server:
        env = archiver_environment(server.base_url, emulator.token, emulator.account_ids,
                                   f"sqlite:///{tmp_path / 'a.db'}", ARCHIVER_RATE_LIMIT="100")
        command = [sys.executable, "-m", "archiver", "sync", "--auto-migrate"]
        code, stdout, shown = on_a_terminal(command, env, tmp_path)
        assert code == 0, shown
        assert re.search(rf"{re.escape(CLEAR)}listed \d+ pages?, \d+ sessions", shown), shown
        assert shown.endswith(CLEAR), shown  # the line is cleared before the summary is printed
        assert "ok (run 1) listed 600" in stdout
        piped = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "listed " not in piped.stderr


def test_archiver_export_to_a_file_shows_rows_written_on_a_terminal(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'a.db'}"
    engine = make_engine(database)
    migrate.upgrade(engine)
    now = datetime.now(UTC)
    rows = [
        {"account_id": "a" * 32, "session_id": f"00000000-0000-4000-8000-{n:012d}", "status": "closed",
         "first_seen_at": now, "last_seen_at": now, "start_time": now - timedelta(minutes=5), "end_time": now,
         "detail_attempts": 0}
        for n in range(1200)
    ]
    with engine.begin() as conn:
        insert_rows(conn, sessions_table, rows)
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "ARCHIVER_"))}
    env["ARCHIVER_DATABASE_URL"] = database
    code, _stdout, shown = on_a_terminal(
        [sys.executable, "-m", "archiver", "export", "--since", "1h", "-o", "out.jsonl"], env, tmp_path
    )
    assert code == 0, shown
    assert f"{CLEAR}exporting sessions: 500 rows written" in shown
    assert "exported 1200 sessions rows" in shown
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 1200


def test_prune_shows_rows_deleted_batch_by_batch(engine: Engine) -> None:
    data.build(engine)
    out = io.StringIO()
    counts = retention.prune(engine, data.m(0), batch_size=3, progress=Progress(out, every=0.0))
    lines = [line for line in out.getvalue().split(CLEAR) if line]
    assert lines[0] == "pruning versions: 3 deleted (3 rows in all)"
    assert lines[-1] == f"pruning runs: {counts['runs']} deleted ({sum(counts.values())} rows in all)"
    assert out.getvalue().endswith(CLEAR)


def test_a_short_sync_off_a_terminal_logs_no_progress(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    emulator = Emulator(accounts=1, initial_sessions=5, seed=79, speed=0.0, spawn_per_minute=0)
    with emulator.serve(port=0) as server, caplog.at_level(logging.INFO, logger="archiver.progress"):
        started = time.monotonic()
        asyncio.run(sync_accounts(sync_settings(emulator, server, engine), engine, progress=Progress(None)))
        assert time.monotonic() - started < 10
    assert [record for record in caplog.records if record.name == "archiver.progress"] == []


def test_a_line_longer_than_the_terminal_is_cut_to_its_width() -> None:
    leader, follower = pty.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 20, 0, 0))
        with os.fdopen(follower, "w", closefd=False) as terminal:
            progress = Progress(terminal, every=0.0)
            progress.show("listed 3 pages, 450 sessions")
        shown = os.read(leader, 1024).decode()
    finally:
        os.close(leader)
        os.close(follower)
    assert shown == f"{CLEAR}listed 3 pages, 45…"  # 19 columns: the cursor never wraps to a new line
