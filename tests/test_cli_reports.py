"""The report, export, timeline and prune commands, run as real subprocesses on a SQLite archive."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archiver.archive import migrate
from archiver.archive.store import make_engine
from bench.synthetic_archive import Shape, generate, load
from tests import archive_data as data
from tests.test_cli import run


@pytest.fixture(scope="module")
def archive_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    return data.sqlite_env(tmp_path_factory.mktemp("cli-reports"))


AT = "2026-11-20T12:20:30Z"
SINCE, UNTIL = "2026-11-20T12:00:00Z", "2026-11-20T13:00:00+00:00"


def test_active_at_in_every_format(archive_env: tuple[dict[str, str], Path]) -> None:
    env, cwd = archive_env
    outputs = {fmt: run(["report", "active-at", AT, "--format", fmt], env, cwd) for fmt in ("table", "csv", "json", "jsonl")}
    for fmt, result in outputs.items():
        assert result.returncode == 0, (fmt, result.stderr)
        assert result.stderr == "", (fmt, result.stderr)
    table = outputs["table"].stdout
    (maybe,) = [line for line in table.splitlines() if line.startswith("maybe")]
    assert data.sid("gone") in maybe and maybe.endswith("ended between 2026-11-20 12:20:00 and 2026-11-20 12:21:00")
    assert "first_seen_at" not in table  # the terminal gets the brief columns; the other formats every one
    assert table.rstrip().endswith("3 open, 1 maybe open (end unknown) at 2026-11-20 12:20:30 UTC")
    from_csv = list(csv.DictReader(io.StringIO(outputs["csv"].stdout)))
    from_json = json.loads(outputs["json"].stdout)
    from_jsonl = [json.loads(line) for line in outputs["jsonl"].stdout.splitlines()]
    assert from_json == from_jsonl
    assert [r["session_id"] for r in from_csv] == [r["session_id"] for r in from_json]
    assert {data.NAMES[r["session_id"]]: r["open"] for r in from_json} == {
        "spanning": "yes", "vanished": "yes", "inside": "yes", "gone": "maybe"}
    assert from_json[0]["start_time"] == "2026-11-20T11:00:00+00:00"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["report", "sessions", "--since", SINCE, "--until", UNTIL, "--status", "gone", "--format", "jsonl"], ["gone"]),
        (["report", "sessions", "--since", SINCE, "--until", UNTIL, "--reason", "4000", "--format", "jsonl"], ["other-account"]),
        (["report", "sessions", "--since", SINCE, "--until", UNTIL, "--account", data.B, "--format", "jsonl"], ["other-account"]),
    ],
    ids=["status", "reason", "account"],
)
def test_sessions_filters(archive_env: tuple[dict[str, str], Path], args: list[str], expected: list[str]) -> None:
    env, cwd = archive_env
    result = run(args, env, cwd)
    assert result.returncode == 0, result.stderr
    assert [data.NAMES[json.loads(line)["session_id"]] for line in result.stdout.splitlines()] == expected


def test_reasons_durations_runs_and_session(archive_env: tuple[dict[str, str], Path]) -> None:
    env, cwd = archive_env
    reasons = run(["report", "reasons", "--since", SINCE, "--until", UNTIL, "--by", "hour", "--format", "csv"], env, cwd)
    assert reasons.returncode == 0, reasons.stderr
    assert reasons.stdout.splitlines()[:2] == ["hour,status,close_reason,close_reason_text,sessions,as_stored",
                                               "2026-11-20T12:00:00+00:00,closed,1000,NormalClosure,2,1000: 2"]
    durations = run(["report", "durations", "--since", SINCE, "--until", UNTIL, "--format", "json"], env, cwd)
    assert [(d["measure"], d["sessions"], d["p50_seconds"]) for d in json.loads(durations.stdout)] == [
        ("session", 4, 750.0), ("connection", 3, 840.0)]
    runs = run(["report", "runs", "--since", SINCE, "--each", "--account", data.A, "--until", "2026-11-20T12:30Z"], env, cwd)
    assert runs.returncode == 0 and runs.stdout.count("\n") == 2 + 3  # header, rule, three cycles
    assert "Cloudflare answered 429" not in runs.stdout and "listing incomplete: page 2 failed" in runs.stdout
    story = run(["report", "session", data.sid("gone"), "--format", "json"], env, cwd)
    (told,) = json.loads(story.stdout)
    assert told["session"]["status"] == "gone" and told["cycles"]["cycles_while_listed"] == 2
    assert [e["event"] for e in told["events"]][-1] == "forgotten by Cloudflare (404)"
    table = run(["report", "session", data.sid("gone")], env, cwd)
    assert "forgotten by Cloudflare (404)" in table.stdout and "cycles_while_listed" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "active-at", "yesterday-ish"], "error: TIME: 'yesterday-ish' is not a time"),
        (["report", "sessions", "--since", "3x"], "error: --since: '3x' is not a time"),
        (["report", "reasons", "--since", "1h", "--until", "2h"], "error: the window is empty"),
        (["export", "--since", "2026-02-30"], "error: --since: '2026-02-30' is not a time"),
        (["prune", "--older-than", "soon"], "error: 'soon' is not an age"),
        (["report", "session", "00000000-0000-4000-8000-00000000abcd"],
         "error: no session '00000000-0000-4000-8000-00000000abcd' in the archive"),
        (["report", "session", "no-such-session"], "error: ID: 'no-such-session' is not a session id (a UUID)"),
        (["report", "sessions", "--since", "1h", "--account", "acme"],
         "error: --account: 'acme' is not a Cloudflare account id (32 hex digits)"),
        (["timeline", "--since", "1h", "-o", "/nonexistent/t.html"], "error: cannot write /nonexistent/t.html"),
    ],
    ids=["bad-time-argument", "bad-since", "empty-window", "impossible-date", "bad-age", "unknown-session",
         "malformed-session-id", "malformed-account", "unwritable-output"],
)
def test_bad_input_exits_2_with_one_line(archive_env: tuple[dict[str, str], Path], args: list[str], message: str) -> None:
    env, cwd = archive_env
    result = run(args, env, cwd)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert result.stdout == ""


def test_a_reader_that_stops_early_ends_the_export_quietly(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'big.db'}")
    migrate.upgrade(engine)
    generate(Shape(5000, data.T0, days=1), tmp_path)  # far more rows than a pipe holds
    load(engine, tmp_path)
    engine.dispose()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "ARCHIVER_"))}
    with subprocess.Popen(
        [sys.executable, "-m", "archiver", "export", "--since", "2026-11-01"],
        env={**clean, "ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'big.db'}"}, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as export:
        assert export.stdout is not None and export.stderr is not None
        first = export.stdout.readline()
        export.stdout.close()  # as `| head -1` does
        stderr = export.stderr.read()
        assert export.wait(timeout=60) == 1
    assert json.loads(first)["session_id"]
    assert stderr == ""  # no traceback, no complaint about the closed pipe


def test_reports_need_a_migrated_archive(tmp_path: Path) -> None:
    result = run(["report", "active-at", "now"], {"ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"}, tmp_path)
    assert result.returncode == 1 and "archiver db upgrade" in result.stderr


def test_export_timeline_and_prune(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    migrate.upgrade(engine)
    data.build(engine)
    engine.dispose()
    env = {"ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    exported = run(["export", "--since", SINCE, "--until", UNTIL, "--format", "csv", "-o", str(tmp_path / "s.csv")], env, tmp_path)
    assert exported.returncode == 0 and exported.stderr.strip() == "exported 9 sessions rows"
    assert len(list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))) == 9
    versions = run(["export", "--since", SINCE, "--until", UNTIL, "--table", "versions"], env, tmp_path)
    assert all(json.loads(line)["observed_at"].startswith("2026-11-20T12:") for line in versions.stdout.splitlines())
    drawn = run(["timeline", "--since", "2026-11-20T09:00Z", "--until", "2026-11-20T15:00Z", "-o", str(tmp_path / "t.html")], env, tmp_path)
    assert drawn.returncode == 0 and "(12 sessions)" in drawn.stdout
    assert (tmp_path / "t.html").read_text().startswith("<!DOCTYPE html>")
    # Minutes, where months were likely meant: refused, with what it would have deleted.
    refused = run(["prune", "--older-than", "6m", "--include-sessions"], env, tmp_path)
    assert refused.returncode == 2 and refused.stdout.splitlines()[-1].split() == ["sessions", "11"]
    assert refused.stderr.strip() == ("error: --older-than 6m reaches back less than a day: nothing deleted; "
                                      "add --yes if that is meant")
    dry = run(["prune", "--older-than", "1d", "--include-sessions", "--dry-run"], env, tmp_path)
    assert dry.returncode == 0 and "would delete" in dry.stdout
    assert dry.stdout.splitlines()[-1].split() == ["sessions", "11"]  # every ended session; never the active one
    pruned = run(["prune", "--older-than", "1d", "--include-sessions", "--batch-size", "4"], env, tmp_path)
    assert pruned.returncode == 0 and pruned.stdout.splitlines()[-1].split() == ["sessions", "11"]
    left = run(["report", "sessions", "--since", "2026-11-01", "--format", "jsonl"], env, tmp_path)
    assert [data.NAMES[json.loads(line)["session_id"]] for line in left.stdout.splitlines()] == ["active"]


@pytest.mark.parametrize(
    "command",
    [["report"], ["report", "active-at"], ["report", "sessions"], ["report", "reasons"], ["report", "durations"],
     ["report", "session"], ["report", "runs"], ["export"], ["timeline"], ["prune"]],
    ids=" ".join,
)
def test_report_commands_have_help(tmp_path: Path, command: list[str]) -> None:
    result = run([*command, "--help"], {}, tmp_path)
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_ids_are_taken_as_users_type_them(archive_env: tuple[dict[str, str], Path]) -> None:
    """Upper case and stray spaces (a copy from a dashboard) find what the lower-case ids find."""
    env, cwd = archive_env
    window = ["--since", SINCE, "--until", UNTIL, "--format", "jsonl"]
    typed = run(["report", "sessions", *window, "--account", f" {data.B.upper()} "], env, cwd)
    exact = run(["report", "sessions", *window, "--account", data.B], env, cwd)
    assert typed.returncode == 0 and typed.stdout == exact.stdout and typed.stdout
    story = run(["report", "session", data.sid("gone").upper(), "--format", "json"], env, cwd)
    assert story.returncode == 0, story.stderr
    assert json.loads(story.stdout)[0]["session"]["session_id"] == data.sid("gone")
