"""Exports stream rows of a window as CSV or JSON Lines, and read back to what the archive holds."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from archiver.errors import InputError
from archiver.render import write_rows
from archiver.reports import Window
from archiver.reports import export as exporting
from tests import archive_data as data
from tests.archive_data import B, m

WINDOW = Window(*data.WINDOW)
SESSIONS_IN_WINDOW = {"active", "crossing-end", "crossing-start", "ended-at-since", "gone", "inside", "no-start",
                      "other-account", "vanished"}


def exported(engine: Engine, what: str, fmt: str, window: Window = WINDOW, account: str | None = None) -> str:
    out = io.StringIO()
    with engine.connect() as conn:
        columns, rows = exporting.export_rows(conn, what, window, account=account)
        assert isinstance(rows, Iterator)  # rows come from the cursor as they are read
        count = write_rows(out, fmt, columns, rows)
    text = out.getvalue()
    assert count == text.count("\n") - (1 if fmt == "csv" else 0)
    return text


def test_sessions_as_jsonl(archive: Engine) -> None:
    text = exported(archive, "sessions", "jsonl")
    assert "\u2028" not in text  # escaped, so that every line-based tool sees one object per line
    lines = [json.loads(line) for line in text.splitlines()]
    assert {data.NAMES[row["session_id"]] for row in lines} == SESSIONS_IN_WINDOW
    inside = next(row for row in lines if row["session_id"] == data.sid("inside"))
    assert inside["start_time"] == "2026-11-20T12:05:00+00:00" and inside["end_time"] == "2026-11-20T12:25:00+00:00"
    assert inside["raw"] == {"sessionId": data.sid("inside")}
    odd = next(row for row in lines if row["account_id"] == B)
    assert odd["close_reason_text"] == data.ODD_TEXT


def test_sessions_as_csv(archive: Engine) -> None:
    rows = list(csv.DictReader(io.StringIO(exported(archive, "sessions", "csv"))))
    assert {data.NAMES[row["session_id"]] for row in rows} == SESSIONS_IN_WINDOW
    gone = next(row for row in rows if row["session_id"] == data.sid("gone"))
    assert gone["end_time"] == "" and gone["vanished_at"] == "2026-11-20T12:21:00+00:00"
    assert json.loads(gone["raw"]) == {"sessionId": data.sid("gone")}
    odd = next(row for row in rows if row["account_id"] == B)
    assert odd["close_reason_text"] == data.ODD_TEXT


def test_versions_and_runs_by_their_own_times(archive: Engine) -> None:
    versions = [json.loads(line) for line in exported(archive, "versions", "jsonl").splitlines()]
    expected = sorted(v["observed_at"] for v in data.versions() if m(0) <= v["observed_at"] < m(60))
    assert [v["observed_at"] for v in versions] == [t.isoformat() for t in expected]
    runs = list(csv.DictReader(io.StringIO(exported(archive, "runs", "csv", account=B))))
    assert [(r["account_id"], r["started_at"]) for r in runs] == [(B, "2026-11-20T12:05:00+00:00")]


def test_empty_window_exports_only_a_header(archive: Engine) -> None:
    far = Window(m(10_000), m(10_001))
    assert exported(archive, "sessions", "jsonl", far) == ""
    assert exported(archive, "sessions", "csv", far).startswith("account_id,session_id,")


def test_unknown_table_is_an_input_error(engine: Engine) -> None:
    with engine.connect() as conn, pytest.raises(InputError, match="cannot export 'secrets'"):
        exporting.export_rows(conn, "secrets", WINDOW)
