"""Schema migrations through Alembic, from code: upgrade, downgrade, and the 'is it current' check."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from archiver.errors import DatabaseNotReadyError, first_line


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at the migrations shipped with this package."""
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.attributes["database_url"] = database_url
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision``."""
    _run(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base`` drops everything)."""
    _run(engine, command.downgrade, revision)


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseNotReadyError(f"cannot read the database: {first_line(exc)}") from exc


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def require_current(engine: Engine) -> None:
    """Raise DatabaseNotReadyError unless the schema is at this version's head."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        state = "has no archiver schema" if current is None else f"is at revision {current}, not {head}"
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
