"""The archiver as a library: what the command line does, for a program of its own.

    from archiver import Archive
    archive = Archive.from_environment()      # the settings `archiver` reads
    results = archive.sync()                  # one cycle per account, as `archiver sync`
    recent = archive.sessions(since, until)   # as `archiver report sessions`
    archive.prune(cutoff, dry_run=True)       # as `archiver prune`

The command line wraps this object; the modules underneath (archiver.api, archiver.archive,
archiver.service, archiver.reports) are the parts it is made of.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from archiver.config import Settings, load_settings
from archiver.vocabulary import PRUNE_BATCH

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from archiver.archive.sync import CycleResult
    from archiver.progress import Progress
    from archiver.reports.result import Result


class Archive:
    """One archive database and the accounts its settings name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engines: dict[str, Engine] = {}

    @classmethod
    def from_environment(cls, config_file: Path | None = None) -> Archive:
        """The archive of the settings `archiver` would read: environment over the TOML file."""
        return cls(load_settings(config_file))

    def engine(self, *, bounded: bool = False, read_only: bool = False) -> Engine:
        """The database engine: ``bounded``, statements and lock waits time out (for cycles);
        ``read_only``, a SQLite file is opened read-only and never created (for reports)."""
        from archiver.archive.store import make_engine

        kind = "bounded" if bounded else "read" if read_only else "write"
        if kind not in self._engines:
            url = self.settings.database_url.get_secret_value()
            self._engines[kind] = make_engine(url, bounded=bounded, read_only=read_only)
        return self._engines[kind]

    def upgrade(self) -> None:
        """Migrate the database to the current schema."""
        from archiver.archive import migrate

        migrate.upgrade(self.engine())

    def require_current(self, *, read_only: bool = False) -> None:
        """Raise DatabaseNotReadyError unless the database is at the current schema."""
        from archiver.archive import migrate

        migrate.require_current(self.engine(read_only=read_only))

    def sync(self, progress: Progress | None = None) -> list[CycleResult]:
        """One poll cycle for every configured account (leases taken, ledger rows written);
        ``progress`` (see archiver.progress) is told how far the cycles have got."""
        from archiver.archive import migrate
        from archiver.service.runner import sync_accounts

        self.settings.credentials(), self.settings.accounts()  # fail fast, before the database
        engine = self.engine(bounded=True)
        migrate.require_current(engine)  # on the engine the cycles use: no connection of its own
        return asyncio.run(sync_accounts(self.settings, engine, progress=progress))

    def sessions(self, since: datetime, until: datetime, *, account: str | None = None, reason: str | None = None,
                 status: str | None = None) -> Result:
        """Sessions that started or ended in [since, until)."""
        from archiver.reports.window import Window, sessions_in

        self.require_current(read_only=True)
        with self.engine(read_only=True).connect() as conn:
            return sessions_in(conn, Window(since, until), account=account, reason=reason, status=status)

    def prune(self, cutoff: datetime, *, include_sessions: bool = False, batch_size: int = PRUNE_BATCH,
              dry_run: bool = False, progress: Progress | None = None) -> dict[str, int]:
        """Delete (or count, with ``dry_run``) history older than ``cutoff``, in batches (shown
        on ``progress`` as they go)."""
        from archiver.archive.prune import prune

        self.require_current()
        return prune(self.engine(), cutoff, include_sessions=include_sessions, batch_size=batch_size, dry_run=dry_run,
                     progress=progress)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
