"""Schema migrations through Alembic, from code: upgrade, downgrade, and the 'is it current' check.

Alembic is imported only by what migrates or inspects the migrations: the check every `archiver
sync` and `archiver run` makes at start reads the version table itself (Alembic's import is
about 0.4 s of a one-shot sync's process).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Column, Engine, MetaData, String, Table, inspect, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from archiver.errors import DatabaseNotReadyError, first_line

if TYPE_CHECKING:
    from alembic.config import Config

# The revision this version of the archiver works with: the head of migrations/versions (a test
# holds it to Alembic's own answer). A new migration moves it.
HEAD_REVISION = "0006"
VERSION_TABLE = Table("alembic_version", MetaData(), Column("version_num", String(32), primary_key=True))


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at the migrations shipped with this package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.attributes["database_url"] = database_url
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision``."""
    from alembic import command

    _run(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base`` drops everything)."""
    from alembic import command

    _run(engine, command.downgrade, revision)


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision, None if it has no archiver schema."""
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(VERSION_TABLE.name):
                return None
            revision: str | None = conn.execute(select(VERSION_TABLE.c.version_num)).scalar()
            return revision
    except SQLAlchemyError as exc:
        raise DatabaseNotReadyError(f"cannot read the database: {first_line(exc)}") from exc


def head_revision() -> str | None:
    """The head of the shipped migrations, as Alembic reads them."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def require_current(engine: Engine) -> None:
    """Raise DatabaseNotReadyError unless the schema is at this version's head."""
    current = current_revision(engine)
    if current != HEAD_REVISION:
        state = "has no archiver schema" if current is None else f"is at revision {current}, not {HEAD_REVISION}"
        raise DatabaseNotReadyError(f"the database {state}: run `archiver db upgrade` first")


def _run(engine: Engine, action: object, revision: str) -> None:
    config = alembic_config("")
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            action(config, revision)  # type: ignore[operator]
    except OperationalError as exc:
        # Unreachable, locked or refusing us: a message, not a traceback (nor the statement).
        raise DatabaseNotReadyError(f"cannot migrate the database: {first_line(exc)}") from exc


def _script_location() -> Path:
    # In a source checkout the scripts live in ./migrations; installed, they are the
    # archiver.migrations package (pyproject maps one onto the other).
    return Path(str(files("archiver.migrations")))
