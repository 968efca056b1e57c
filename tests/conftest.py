"""Shared fixtures: real databases (SQLite, PostgreSQL, MariaDB), each test in its own schema.

The PostgreSQL and MariaDB servers are settled once per run by tests/databases.py: the ones
ARCHIVER_TEST_POSTGRES_URL / ARCHIVER_TEST_MYSQL_URL name, else this machine's local ones, else
throwaway servers started for the run. A server that is named but does not answer stops the run;
only MariaDB's tests may be skipped, where its server binaries are absent (see that module).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from archiver.archive import migrate
from archiver.archive.store import make_engine
from tests import databases
from tests.databases import (  # noqa: F401  the hooks that settle the servers, once per run
    pytest_configure,
    pytest_runtest_makereport,
    pytest_terminal_summary,
    pytest_unconfigure,
)

BACKENDS = ["sqlite", "postgresql", "mariadb"]

# Property tests that set no example count of their own take it from the profile: moderate by
# default so the suite stays fast; "ci" (chosen when CI is set) is the same, reproducible: the
# same examples every run; "thorough" explores far more (HYPOTHESIS_PROFILE=thorough make test).
settings.register_profile("default-run", max_examples=25, deadline=None)
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default-run"))


def _fresh_postgres() -> Iterator[str]:
    schema = f"archiver_test_{secrets.token_hex(4)}"
    server_url = databases.postgres_url()
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _fresh_mariadb() -> Iterator[str]:
    database = f"archiver_test_{secrets.token_hex(4)}"
    server_url = databases.mariadb_url()  # skips the test where the run has no MariaDB
    admin = create_engine(server_url)
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4"))
    try:
        yield make_url(server_url).set(database=database).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE `{database}`"))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL to an empty database of each backend, dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'archive.db'}"
    elif request.param == "postgresql":
        yield from _fresh_postgres()
    else:
        yield from _fresh_mariadb()


@pytest.fixture
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A migrated SQLite archive (the embedded default)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'archive.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def any_engine(empty_database_url: str) -> Iterator[Engine]:
    """A migrated archive on each backend."""
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL to an empty PostgreSQL schema of its own, dropped after the test."""
    yield from _fresh_postgres()


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A URL to an empty MariaDB database of its own, dropped after the test."""
    yield from _fresh_mariadb()


def _built_archive(backend: str, tmp_path_factory: pytest.TempPathFactory,
                   build: Callable[[Engine], None]) -> Iterator[Engine]:
    """A migrated archive on one backend, written by ``build``; dropped afterwards."""
    if backend == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('archive') / 'archive.db'}"])
    else:
        urls = _fresh_postgres() if backend == "postgresql" else _fresh_mariadb()
    engine = make_engine(next(urls))
    migrate.upgrade(engine)
    build(engine)
    yield engine
    engine.dispose()
    for _ in urls:  # finishes the generator: drops the schema or database
        pass


@pytest.fixture(scope="module", params=BACKENDS)
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The archive of tests/archive_data.py (known answers), built once per backend and module; read only."""
    from tests import archive_data

    yield from _built_archive(request.param, tmp_path_factory, archive_data.build)


@pytest.fixture(scope="module", params=BACKENDS)
def usage_archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The archive of tests/usage_data.py (known answers), built once per backend and module; read only."""
    from tests import usage_data

    yield from _built_archive(request.param, tmp_path_factory, usage_data.build)
