"""The `archiver` command, run as a real subprocess, against the emulator and real SQLite files."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from archiver.archive import store
from archiver.archive.store import make_engine
from archiver.emulator import Emulator
from archiver.service import locks

ACCOUNT = "0123456789abcdef0123456789abcdef"


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "ARCHIVER_"))}
    return subprocess.run(
        [sys.executable, "-m", "archiver", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def served() -> Iterator[tuple[Emulator, Any]]:
    emulator = Emulator(accounts=2, initial_sessions=5, seed=2, speed=0.0, spawn_per_minute=0.0)
    with emulator.serve(port=0) as server:
        yield emulator, server


def env_for(emulator: Emulator, server: Any, db: Path) -> dict[str, str]:
    return {
        "CLOUDFLARE_API_TOKEN": emulator.token,
        "CLOUDFLARE_ACCOUNT_ID": ",".join(emulator.account_ids),
        "CLOUDFLARE_BASE_URL": server.base_url,
        "ARCHIVER_DATABASE_URL": f"sqlite:///{db}",
        "ARCHIVER_RATE_LIMIT": "100",
    }


def test_sync_status_and_db_commands(tmp_path: Path, served: tuple[Emulator, Any]) -> None:
    emulator, server = served
    env = env_for(emulator, server, tmp_path / "a.db")
    not_ready = run(["sync"], env, tmp_path)
    assert not_ready.returncode == 1 and "archiver db upgrade" in not_ready.stderr
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    synced = run(["sync"], env, tmp_path)
    assert synced.returncode == 0, synced.stderr
    for account in emulator.account_ids:
        assert re.search(rf"{account}: ok \(run \d+\) listed 5, new 5", synced.stdout)
    status = run(["status"], env, tmp_path)
    assert status.returncode == 0
    assert status.stdout.count(" active ") == 2 and "ok" in status.stdout
    assert emulator.token not in synced.stdout + synced.stderr + status.stdout + status.stderr
    assert run(["db", "downgrade", "base"], env, tmp_path).returncode == 0
    assert "current: none" in run(["db", "current"], env, tmp_path).stdout


def test_sync_skips_an_account_another_worker_is_polling(tmp_path: Path, served: tuple[Emulator, Any]) -> None:
    emulator, server = served
    busy, free = emulator.account_ids
    env = env_for(emulator, server, tmp_path / "a.db")
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    now = datetime.now(UTC)
    assert locks.acquire(engine, busy, "service-host:42", 60, now)
    with engine.begin() as conn:
        running = store.open_run(conn, busy, "service-host:42", now)
    synced = run(["sync"], env, tmp_path)
    assert synced.returncode == 0, synced.stderr
    assert f"{busy}: skipped: another worker (service-host:42) is polling this account" in synced.stdout
    assert re.search(rf"{free}: ok \(run \d+\) listed 5, new 5", synced.stdout)
    with engine.connect() as conn:
        runs = {r.id: (r.account_id, r.outcome) for r in conn.execute(select(store.runs_table))}
        holders = dict(conn.execute(select(locks.c.account_id, locks.c.holder)).all())
    engine.dispose()
    assert runs[running] == (busy, "running")  # the other worker's cycle is left alone
    assert sorted(a for a, _ in runs.values()) == sorted([busy, free])
    assert holders == {busy: "service-host:42"}  # sync released the lease it took


def test_sync_exits_1_when_an_account_fails(tmp_path: Path, served: tuple[Emulator, Any]) -> None:
    emulator, server = served
    env = env_for(emulator, server, tmp_path / "a.db") | {"CLOUDFLARE_API_TOKEN": "not-the-token"}
    result = run(["sync", "--auto-migrate"], env, tmp_path)
    assert result.returncode == 1
    assert "refused the credentials" in result.stdout
    assert "not-the-token" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CLOUDFLARE_ACCOUNT_ID": ACCOUNT}, "CLOUDFLARE_API_TOKEN"),
        ({"CLOUDFLARE_API_TOKEN": "t"}, "CLOUDFLARE_ACCOUNT_ID"),
        ({"CLOUDFLARE_API_TOKEN": "t", "CLOUDFLARE_ACCOUNT_ID": "nope"}, "CLOUDFLARE_ACCOUNT_ID"),
        ({"CLOUDFLARE_API_TOKEN": "t", "CLOUDFLARE_ACCOUNT_ID": ACCOUNT, "ARCHIVER_DETAIL_BUDGET": "-1"}, "ARCHIVER_DETAIL_BUDGET"),
        ({"CLOUDFLARE_API_TOKEN": "t", "CLOUDFLARE_ACCOUNT_ID": ACCOUNT, "CLOUDFLARE_BASE_URL": "http://api.example.com"},
         "CLOUDFLARE_BASE_URL"),
        ({"CLOUDFLARE_API_TOKEN": "t", "CLOUDFLARE_ACCOUNT_ID": ACCOUNT, "ARCHIVER_DATABASE_URL": "mysql+mysqldb://u@h/db"},
         "ARCHIVER_DATABASE_URL"),
    ],
    ids=["no-credentials", "no-account", "bad-account", "bad-budget", "insecure-http", "missing-driver"],
)
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, env: dict[str, str], named: str) -> None:
    result = run(["sync"], env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {named}")


@pytest.mark.parametrize(
    ("command", "database_url"),
    [
        (["run", "--auto-migrate"], "postgresql+psycopg://archiver:pw-Kq3vZ8@127.0.0.1:9/archive"),
        (["sync"], "postgresql+psycopg://archiver:pw-Kq3vZ8@127.0.0.1:9/archive"),
        (["db", "upgrade"], "postgresql+psycopg://archiver:pw-Kq3vZ8@127.0.0.1:9/archive"),
        (["sync"], "sqlite:///{tmp}/no/such/dir/archive.db"),
    ],
    ids=["run-auto-migrate", "sync", "db-upgrade", "sqlite-in-a-missing-directory"],
)
def test_an_unreachable_database_is_one_line_not_a_traceback(tmp_path: Path, command: list[str], database_url: str) -> None:
    env = {"CLOUDFLARE_API_TOKEN": "t", "CLOUDFLARE_ACCOUNT_ID": ACCOUNT, "ARCHIVER_DATABASE_URL": database_url.format(tmp=tmp_path)}
    result = run(command, env, tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode in (1, 2) and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "database" in lines[0]
    assert "pw-Kq3vZ8" not in result.stderr


def test_config_file_and_env_precedence(tmp_path: Path, served: tuple[Emulator, Any]) -> None:
    emulator, server = served
    config = tmp_path / "archiver.toml"
    config.write_text(
        f'api_token = "{emulator.token}"\naccount_id = ["{emulator.account_ids[0]}"]\n'
        f'base_url = "{server.base_url}"\ndatabase_url = "sqlite:///{tmp_path / "file.db"}"\nrate_limit = 100\n'
    )
    config.chmod(0o600)  # it holds the token
    result = run(["--config", str(config), "sync", "--auto-migrate"], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "file.db").exists()
    env_database = {"ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'env.db'}"}
    overridden = run(["--config", str(config), "sync", "--auto-migrate"], env_database, tmp_path)
    assert overridden.returncode == 0 and (tmp_path / "env.db").exists()
    config.write_text('nonsense_key = 1\n')
    bad = run(["--config", str(config), "status"], {}, tmp_path)
    assert bad.returncode == 2 and "nonsense_key" in bad.stderr


@pytest.mark.parametrize("command", [[], ["sync"], ["db"], ["db", "upgrade"], ["status"], ["emulator"], ["demo"]], ids=str)
def test_every_command_has_help(tmp_path: Path, command: list[str]) -> None:
    result = run([*command, "--help"], {}, tmp_path)
    assert result.returncode == 0 and "Usage:" in result.stdout


HEAVY_LIBRARIES = ("sqlalchemy", "alembic", "httpx", "pydantic", "pydantic_settings", "apscheduler", "asyncio")


@pytest.mark.parametrize("command", [["--help"], ["--version"], ["report", "--help"], ["export", "--help"]], ids=" ".join)
def test_help_and_version_import_no_heavy_library(tmp_path: Path, command: list[str]) -> None:
    """What makes `--help`, `--version` and shell completion quick: the commands' modules are
    imported when a command runs, not when the command line is read."""
    probe = (
        "import sys\n"
        "from archiver.cli import cli\n"
        f"try:\n    cli.main({command!r}, prog_name='archiver')\n"
        "except SystemExit:\n    pass\n"
        f"print(sorted(n for n in {HEAVY_LIBRARIES!r} if n in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_demo_archives_sessions_with_close_reasons(tmp_path: Path) -> None:
    result = run(["demo", "--cycles", "4", "--interval", "1"], {}, tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "archiver-demo.db").exists()
    assert "Close reasons" in result.stdout and "Recently closed" in result.stdout
    had = re.search(r"The emulator had (\d+) sessions \((\d+) closed\)", result.stdout)
    archived = re.search(r"The archive holds (\d+), (\d+) of them closed with a recorded reason", result.stdout)
    missed = re.search(
        r"Of the (\d+) sessions alive while it polled, it missed (\d+), each living at most ([\d.]+) simulated seconds, "
        r"between two polls \(up to ([\d.]+)s apart\)", result.stdout,
    )
    assert had and archived and missed, result.stdout
    assert int(archived[2]) > 0
    assert int(missed[1]) - int(missed[2]) <= int(archived[1]) <= int(had[1])
    # only sessions too short-lived for any listing to see were missed
    assert float(missed[3]) <= float(missed[4])


def test_emulator_command_serves_until_interrupted(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "ARCHIVER_"))}
    with subprocess.Popen(
        [sys.executable, "-m", "archiver", "emulator", "--port", "0", "--sessions", "3", "--seed", "4"],
        env=clean, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:
        try:
            assert process.stdout is not None
            lines = {}
            deadline = time.monotonic() + 20
            while len(lines) < 3 and time.monotonic() < deadline:
                line = process.stdout.readline()
                match = re.match(r"\s*export (CLOUDFLARE_\w+)=(\S+)", line)
                if match:
                    lines[match[1]] = match[2]
            response = httpx.get(
                f"{lines['CLOUDFLARE_BASE_URL']}/accounts/{lines['CLOUDFLARE_ACCOUNT_ID']}/browser-rendering/devtools/session",
                headers={"Authorization": f"Bearer {lines['CLOUDFLARE_API_TOKEN']}"},
            )
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
        assert response.status_code == 200 and len(response.json()) == 3


def test_sync_freezes_what_start_up_allocated(tmp_path: Path, served: tuple[Emulator, Any]) -> None:
    import gc

    from click.testing import CliRunner

    from archiver.cli import cli

    emulator, server = served
    env = env_for(emulator, server, tmp_path / "a.db")
    gc.unfreeze()
    try:
        result = CliRunner().invoke(cli, ["sync", "--auto-migrate"], env=env)
        assert result.exit_code == 0, result.output
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_busy_port_is_one_line_and_exit_2(tmp_path: Path, served: tuple[Emulator, Any]) -> None:
    emulator, server = served
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        emulated = run(["emulator", "--port", str(port)], {}, tmp_path, timeout=30)
        env = {"CLOUDFLARE_API_TOKEN": emulator.token, "CLOUDFLARE_ACCOUNT_ID": emulator.account_ids[0],
               "CLOUDFLARE_BASE_URL": server.base_url, "ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}",
               "ARCHIVER_METRICS_PORT": str(port)}
        service = run(["run", "--auto-migrate"], env, tmp_path, timeout=60)
    assert emulated.returncode == 2
    assert emulated.stderr.strip().splitlines() == [f"error: --port {port}: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert service.returncode == 2
    assert service.stderr.strip().splitlines()[-1] == (
        f"error: ARCHIVER_METRICS_PORT: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in service.stderr


def test_json_logs_carry_a_cycles_figures_and_a_fatal_errors_kind_as_fields(tmp_path: Path, served: tuple[Emulator, Any]) -> None:
    emulator, server = served
    env = {"CLOUDFLARE_API_TOKEN": emulator.token, "CLOUDFLARE_ACCOUNT_ID": emulator.account_ids[0],
           "CLOUDFLARE_BASE_URL": server.base_url, "ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}",
           "ARCHIVER_LOG_FORMAT": "json"}
    synced = run(["sync", "--auto-migrate"], env, tmp_path)
    assert synced.returncode == 0, synced.stderr
    records = [json.loads(line) for line in synced.stderr.splitlines()]
    (cycle_record,) = [r for r in records if r.get("outcome")]
    assert cycle_record["account"] == emulator.account_ids[0] and cycle_record["outcome"] == "ok"
    assert cycle_record["listed"] == sum(t["accountId"] == emulator.account_ids[0] for t in emulator.truth())
    assert cycle_record["requests"] >= 1
    assert {"run_id", "new", "changed", "vanished", "details", "throttled", "duration_s"} <= cycle_record.keys()
    failed = run(["status"], {**env, "ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'typo.db'}"}, tmp_path)
    assert failed.returncode == 1
    (fatal,) = [json.loads(line) for line in failed.stderr.splitlines()]
    assert fatal["level"] == "critical" and fatal["kind"] == "DatabaseNotReadyError" and fatal["exit_code"] == 1
    assert "typo.db" in fatal["message"]


def test_shell_completion_completes_commands_quickly(tmp_path: Path) -> None:
    """What the README's completion line sets up: the shell asks `archiver` itself, on every Tab."""
    done = subprocess.run([str(Path(sys.executable).with_name("archiver"))], env={**os.environ, "_ARCHIVER_COMPLETE": "bash_complete",
                          "COMP_WORDS": "archiver rep", "COMP_CWORD": "1"}, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split() == ["plain,report"], done.stdout + done.stderr
