"""Retention on real databases: what goes, what stays, in batches."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from archiver.archive import prune as retention
from archiver.archive import store
from archiver.errors import InputError
from tests import archive_data as data
from tests.archive_data import A, m


def build(engine: Engine) -> None:
    data.build(engine)
    rejected = [
        {"account_id": A, "run_id": 1, "rejected_at": at, "source": "list", "session_id": None, "reason": "bad",
         "body": "{}", "kept": False}
        for at in (m(-100), m(-50), m(50))
    ]
    running = {**data.runs()[0], "started_at": m(-500), "finished_at": None, "outcome": "running"}
    with engine.begin() as conn:
        store.insert_rows(conn, store.rejects_table, rejected)
        store.insert_rows(conn, store.runs_table, [running])


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: int(conn.scalar(select(func.count()).select_from(table)) or 0)
            for name, table in (("sessions", store.sessions_table), ("versions", store.versions_table),
                                ("runs", store.runs_table), ("rejected", store.rejects_table))
        }


def column(engine: Engine, table: Any, name: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.scalars(select(table.c[name])))


def old_versions(cutoff_minute: float) -> int:
    return sum(1 for v in data.versions() if v["observed_at"] < m(cutoff_minute))


def test_prune_history_keeps_sessions_and_running_cycles(any_engine: Engine) -> None:
    build(any_engine)
    before = counts(any_engine)
    expected = {"versions": old_versions(0), "runs": 12, "rejected": 2}  # runs from -120 to -10; not the running one
    assert retention.prune(any_engine, m(0), dry_run=True) == expected
    assert counts(any_engine) == before  # a dry run deletes nothing
    assert retention.prune(any_engine, m(0), batch_size=3) == expected
    after = counts(any_engine)
    assert after == {"sessions": 12, "versions": before["versions"] - expected["versions"],
                     "runs": before["runs"] - 12, "rejected": 1}
    assert min(column(any_engine, store.versions_table, "observed_at")) >= m(0)
    assert "running" in column(any_engine, store.runs_table, "outcome")
    assert retention.prune(any_engine, m(0)) == {"versions": 0, "runs": 0, "rejected": 0}  # nothing left to do


@pytest.mark.parametrize(
    ("cutoff", "deleted"),
    [
        (0, {"before"}),  # ended-at-since ends exactly at the cutoff: not before it
        (25, {"before", "crossing-start", "ended-at-since", "no-start", "other-account", "gone"}),
        (10_000, {"before", "crossing-start", "ended-at-since", "no-start", "other-account", "gone", "inside",
                  "crossing-end", "spanning", "vanished", "at-until"}),
    ],
    ids=["at-window-start", "gone-vanished-before-cutoff", "all-but-active"],
)
def test_include_sessions_deletes_ended_sessions_and_their_versions(
    any_engine: Engine, cutoff: float, deleted: set[str]
) -> None:
    build(any_engine)
    result = retention.prune(any_engine, m(cutoff), include_sessions=True, batch_size=2)
    assert result["sessions"] == len(deleted)
    remaining = set(column(any_engine, store.sessions_table, "session_id"))
    assert {data.NAMES[s] for s in remaining} == set(data.NAMES.values()) - deleted
    assert "active" not in deleted
    versions_left = set(column(any_engine, store.versions_table, "session_id"))
    assert versions_left <= remaining  # no version outlives its session


def test_batch_size_must_be_positive(engine: Engine) -> None:
    with pytest.raises(InputError, match="batch-size"):
        retention.prune(engine, m(0), batch_size=0)
