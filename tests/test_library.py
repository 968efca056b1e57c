"""The library facade the command line wraps: an Archive syncs, answers for a window and prunes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from archiver import Archive
from archiver.config import settings_from
from archiver.emulator import Emulator
from archiver.errors import DatabaseNotReadyError


def test_an_archive_syncs_reports_and_prunes_as_the_commands_do(tmp_path: Path) -> None:
    emulator = Emulator(accounts=2, initial_sessions=5, seed=11, speed=0.0, spawn_per_minute=0.0)
    with emulator.serve(port=0) as server:
        settings = settings_from({"api_token": emulator.token, "account_ids": emulator.account_ids,
                                  "base_url": server.base_url, "database_url": f"sqlite:///{tmp_path / 'a.db'}",
                                  "rate_limit": 1000.0})
        with Archive(settings) as archive:
            with pytest.raises(DatabaseNotReadyError):
                archive.sync()  # no schema yet: nothing is polled
            archive.upgrade()
            results = archive.sync()
            assert sorted(r.account_id for r in results) == sorted(emulator.account_ids)
            assert all(r.outcome == "ok" and r.counts["listed"] == 5 for r in results)
            now = datetime.now(UTC)
            window = archive.sessions(now - timedelta(days=3650), now + timedelta(days=1))
            truth = {t["sessionId"] for t in emulator.truth()}
            assert {row[window.columns.index("session_id")] for row in window.rows} == truth
            only = archive.sessions(now - timedelta(days=3650), now + timedelta(days=1), account=emulator.account_ids[0])
            assert len(only.rows) == 5
            counts = archive.prune(now + timedelta(days=1), dry_run=True)
            assert counts["runs"] == 2 and counts["versions"] >= 10
            assert archive.prune(now + timedelta(days=1), dry_run=True) == counts  # a dry run deletes nothing
