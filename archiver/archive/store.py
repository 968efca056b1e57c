"""Database I/O: the engine, dialect-aware bulk upserts, loading known state. No HTTP here.

Every function takes a connection; the caller (the poll cycle) decides transaction boundaries.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Collection, Container, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Executable, Table, and_, bindparam, case, create_engine, event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from archiver.archive import sqlitefile
from archiver.archive.models import ACTIVE, rejects_table, runs_table, sessions_table, versions_table
from archiver.archive.plan import Plan
from archiver.archive.records import STATE_FIELDS
from archiver.archive.rows import SessionRow, StoredState
from archiver.archive.storable import bounded_text, json_bytes
from archiver.errors import ConfigError
from archiver.vocabulary import AGAIN_RANK, DETAIL_PRIORITY, FINAL_STATE_DUES, OPEN_STATUSES, Outcome

BATCH_SIZE = 500
SESSION_KEY = ("account_id", "session_id")
DRIVER_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
# URLs as users paste them (Heroku-style postgres://, or no driver named) get the drivers the
# archiver ships with (its postgres and mysql extras), rather than SQLAlchemy's defaults
# (psycopg2, mysqlclient), which it does not install.
SHIPPED_DRIVERS = {
    "postgres": "postgresql+psycopg", "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql",
}
# Database calls block the service's event loop: a server that does not answer must fail a cycle
# within seconds rather than hang it, and a peer that vanished without closing the connection must
# be noticed (TCP keepalives, PyMySQL's read timeout) rather than waited on forever. Every statement
# the archiver sends answers within seconds (exports stream, prunes go in batches), so a minute
# without a byte from the server means it is gone.
_MYSQL_CONNECT_ARGS = {"connect_timeout": 10, "read_timeout": 60, "write_timeout": 60}
SERVER_CONNECT_ARGS: dict[str, dict[str, Any]] = {
    "postgresql": {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3},
    "mysql": _MYSQL_CONNECT_ARGS,
    "mariadb": _MYSQL_CONNECT_ARGS,
}
# The bounds of a poll cycle's statements (see make_engine), in each server's words.
STATEMENT_TIMEOUT_SECONDS = 60
LOCK_TIMEOUT_SECONDS = 10
_MYSQL_LOCK_BOUNDS = (
    f"SET SESSION innodb_lock_wait_timeout = {LOCK_TIMEOUT_SECONDS}",
    f"SET SESSION lock_wait_timeout = {LOCK_TIMEOUT_SECONDS}",  # table and metadata locks
)
BOUNDS: dict[str, tuple[str, ...]] = {
    "postgresql": (f"SET statement_timeout = '{STATEMENT_TIMEOUT_SECONDS}s'", f"SET lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'"),
    "mariadb": (f"SET SESSION max_statement_time = {STATEMENT_TIMEOUT_SECONDS}", *_MYSQL_LOCK_BOUNDS),
    # MySQL bounds only SELECTs' time, in milliseconds, under another name.
    "mysql": (f"SET SESSION max_execution_time = {STATEMENT_TIMEOUT_SECONDS * 1000}", *_MYSQL_LOCK_BOUNDS),
}
# What tells whether a listed session changed: its status and upstream fields, without the raw
# document and the archiver's own columns, which cost most of the time of reading a row.
STATE_COLUMNS: tuple[str, ...] = ("session_id", "status", *STATE_FIELDS)

# Statements used every cycle are built once: SQLAlchemy then reuses their cache key and their
# compiled form instead of rebuilding both on each execution. Ids go in as expanding parameters.
_LOAD_SESSIONS = select(sessions_table).where(
    sessions_table.c.account_id == bindparam("account_id"), sessions_table.c.session_id.in_(bindparam("ids", expanding=True))
)
_LOAD_STATES = select(*(sessions_table.c[name] for name in STATE_COLUMNS)).where(
    sessions_table.c.account_id == bindparam("account_id"), sessions_table.c.session_id.in_(bindparam("ids", expanding=True))
)
_LOAD_HASHES = select(sessions_table.c.session_id, sessions_table.c.content_hash).where(
    sessions_table.c.account_id == bindparam("account_id"), sessions_table.c.session_id.in_(bindparam("ids", expanding=True))
)
_ACTIVE_IDS = select(sessions_table.c.session_id).where(
    sessions_table.c.account_id == bindparam("account_id"), sessions_table.c.status == ACTIVE
)
_DUE_FOR_DETAIL = (
    select(sessions_table)
    .where(sessions_table.c.account_id == bindparam("account_id"), sessions_table.c.detail_due.is_not(None))
    .order_by(
        # By what is owed, a final state asked again after the first asks for one (see
        # scheduler.Priority.AGAIN).
        case(
            (and_(sessions_table.c.detail_attempts > 0, sessions_table.c.detail_due.in_(FINAL_STATE_DUES)), AGAIN_RANK),
            else_=case(DETAIL_PRIORITY, value=sessions_table.c.detail_due, else_=9),
        ),
        # Oldest vanish first (Cloudflare forgets those first); the others oldest first.
        func.coalesce(sessions_table.c.vanished_at, sessions_table.c.first_seen_at),
        sessions_table.c.session_id,
    )
    .limit(bindparam("limit"))
)
_DUE_FOR_DETAIL_BUT = _DUE_FOR_DETAIL.where(sessions_table.c.session_id.not_in(bindparam("but", expanding=True)))
_LAST_DETAIL_MODE = (
    select(runs_table.c.detail_mode, runs_table.c.detail_quiet)
    .where(runs_table.c.account_id == bindparam("account_id"), runs_table.c.detail_mode.is_not(None))
    .order_by(runs_table.c.started_at.desc(), runs_table.c.id.desc())
    .limit(1)
)
_COUNT_DUE = select(func.count()).where(
    sessions_table.c.account_id == bindparam("account_id"), sessions_table.c.detail_due.is_not(None)
)
_FINISH_RUN = update(runs_table).where(runs_table.c.id == bindparam("run"))
_RUNNING = select(runs_table.c.id, runs_table.c.started_at).where(
    runs_table.c.account_id == bindparam("account_id"), runs_table.c.outcome == "running"
)
_ABORT_RUNS = (
    update(runs_table)
    .where(runs_table.c.id.in_(bindparam("ids", expanding=True)))
    .values(outcome=Outcome.ABORTED, finished_at=bindparam("now"), error="the process running this cycle stopped before it ended")
)
# OR FAIL: SQLite keeps a statement journal for a statement that changes many rows and may abort
# (last_seen_at is NOT NULL), so that an abort undoes the statement alone; past 64 KiB it spills to a
# temporary file, which a steady cycle created, filled with 110 KiB and unlinked every time (60
# syscalls, 5% of its time). The cycle rolls its whole transaction back on any error, so the
# statement's own undo is never needed. temp_store=MEMORY would also avoid the file, but would
# hold every temporary table of a report in memory (180 MB for a view over a million sessions).
_TOUCH_SEEN = (
    update(sessions_table)
    .prefix_with("OR FAIL", dialect="sqlite")
    .where(sessions_table.c.account_id == bindparam("account"), sessions_table.c.session_id.in_(bindparam("ids", expanding=True)))
    .values(last_seen_at=bindparam("seen_at"), last_run_id=bindparam("run_id"))
)

_TOUCH_REHASHED = (
    update(sessions_table)
    .where(sessions_table.c.account_id == bindparam("account"), sessions_table.c.session_id == bindparam("id"))
    .values(last_seen_at=bindparam("seen_at"), last_run_id=bindparam("run_id"), content_hash=bindparam("hash"))
)


def make_engine(url: str, *, read_only: bool = False, bounded: bool = False, **kwargs: Any) -> Engine:
    """An engine for the URL; SQLite gets a private (0600) file, WAL and a busy timeout.

    ``read_only`` is for the commands that only read: a SQLite archive is opened read-only (so a
    read-only mount, or a file the user may only read, serves them) and never created.
    ``bounded`` is for the poll cycles: on PostgreSQL and MariaDB no statement runs longer than
    STATEMENT_TIMEOUT_SECONDS, and none waits for a lock longer than LOCK_TIMEOUT_SECONDS (a
    report or an export may take its time; a cycle must not hang on a lock someone holds).
    """
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError("ARCHIVER_DATABASE_URL is not a valid SQLAlchemy URL") from None
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"ARCHIVER_DATABASE_URL: port {port} is not between 1 and 65535")
    if parsed.drivername in SHIPPED_DRIVERS:
        parsed = parsed.set(drivername=SHIPPED_DRIVERS[parsed.drivername])
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlitefile.archive_path(parsed)
        if path is not None and read_only:
            parsed = sqlitefile.read_only(parsed, path)
        elif path is not None:
            sqlitefile.create_private(path)
        if "timeout" not in parsed.query:  # a ?timeout=SECONDS in the URL wins
            kwargs.setdefault("connect_args", {"timeout": 30})
    else:
        kwargs.setdefault("pool_pre_ping", True)
        defaults = SERVER_CONNECT_ARGS.get(backend, {})
        # Settings in the URL's query win over these defaults.
        kwargs.setdefault("connect_args", {k: v for k, v in defaults.items() if k not in parsed.query})
        if backend in ("mysql", "mariadb"):
            # As PostgreSQL's default: InnoDB's REPEATABLE READ locks the gaps next to the rows a
            # transaction touches, so that one account's stalled write would hold up another
            # account's rows beside them in the index. Every cycle's write is fenced by its
            # lease, and reads no row twice in a transaction, so nothing needs more.
            kwargs.setdefault("isolation_level", "READ COMMITTED")
    kwargs.setdefault("json_serializer", json_text)
    try:
        engine = create_engine(parsed, **kwargs)
    except (ModuleNotFoundError, NoSuchModuleError) as exc:
        extra = DRIVER_EXTRAS.get(backend)
        shipped = SHIPPED_DRIVERS.get(backend)
        hint = (f"; use {shipped}:// (pip install 'browser-session-archiver[{extra}]' installs its driver)"
                if extra and shipped else "")
        raise ConfigError(f"ARCHIVER_DATABASE_URL: no database driver for {parsed.drivername}{hint}") from exc
    if backend == "sqlite" and not read_only:
        event.listen(engine, "connect", _sqlite_pragmas)
    if bounded and backend in BOUNDS:
        event.listen(engine, "connect", functools.partial(_bound_statements, backend))
    return engine


def _bound_statements(backend: str, dbapi_connection: Any, _record: Any) -> None:
    if backend == "mysql" and "mariadb" in str(getattr(dbapi_connection, "get_server_info", str)()).lower():
        backend = "mariadb"  # the mysql+pymysql:// URL of a MariaDB server
    cursor = dbapi_connection.cursor()
    for statement in BOUNDS[backend]:
        cursor.execute(statement)
    cursor.close()
    dbapi_connection.commit()  # the settings are the session's, not a transaction's


def json_text(value: Any) -> str:
    """The text of a JSON column's value, as every database takes it (see storable.json_bytes)."""
    return json_bytes(value).decode()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Checkpoints fsync; a larger WAL between them (16 MB) makes a big listing 10% faster.
    cursor.execute("PRAGMA wal_autocheckpoint=4000")
    cursor.close()


def chunks(items: Sequence[Any], size: int = BATCH_SIZE) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def upsert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], key: Sequence[str]) -> None:
    """Insert rows, or update every non-key column where the key exists, with the native upsert."""
    if not rows:
        return
    stmt = _upsert_statement(conn.dialect.name, table, tuple(c for c in rows[0] if c not in key), tuple(key))
    for batch in chunks(rows):
        conn.execute(stmt, list(batch))


@functools.lru_cache(maxsize=32)
def _upsert_statement(dialect: str, table: Table, columns: tuple[str, ...], key: tuple[str, ...]) -> Executable:
    # Each dialect's insert is imported here: a process loads its own database's dialect only.
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects import mysql

        my = mysql.insert(table)
        return my.on_duplicate_key_update({c: my.inserted[c] for c in columns})
    if dialect in ("postgresql", "sqlite"):
        native = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert(table)
        upsert: Executable = native.on_conflict_do_update(index_elements=list(key), set_={c: native.excluded[c] for c in columns})
        return upsert
    raise ConfigError(f"ARCHIVER_DATABASE_URL: the {dialect} database is not supported")


def load_sessions(conn: Connection, account_id: str, session_ids: Iterable[str]) -> dict[str, SessionRow]:
    """The stored rows of the given sessions, by session id (unknown ids are absent)."""
    found: dict[str, SessionRow] = {}
    for batch in chunks(list(session_ids)):
        for row in conn.execute(_LOAD_SESSIONS, {"account_id": account_id, "ids": batch}).mappings():
            found[row["session_id"]] = cast(SessionRow, dict(row))
    return found


def load_states(conn: Connection, account_id: str, session_ids: Iterable[str]) -> dict[str, StoredState]:
    """The :data:`STATE_COLUMNS` of the given sessions, by session id (unknown ids are absent):
    enough to tell which listed sessions changed, at a fraction of the cost of whole rows."""
    found: dict[str, StoredState] = {}
    for batch in chunks(list(session_ids)):
        for row in conn.execute(_LOAD_STATES, {"account_id": account_id, "ids": batch}):
            found[row[0]] = cast(StoredState, dict(zip(STATE_COLUMNS, row, strict=True)))
    return found


def load_hashes(conn: Connection, account_id: str, session_ids: Iterable[str]) -> dict[str, str | None]:
    """The ``content_hash`` of the given sessions, by session id (unknown ids are absent): the
    narrowest read that tells most of a steady listing unchanged."""
    found: dict[str, str | None] = {}
    for batch in chunks(list(session_ids)):
        found.update(conn.execute(_LOAD_HASHES, {"account_id": account_id, "ids": batch}).all())
    return found


def active_ids_absent_from(conn: Connection, account_id: str, present: Container[str]) -> tuple[list[str], int]:
    """Ids of the account's active sessions that are not in ``present``, sorted, and how many
    active sessions it has. Read row by row: a huge listing's ids are never held twice."""
    active, absent = 0, []
    for session_id in conn.scalars(_ACTIVE_IDS, {"account_id": account_id}):
        active += 1
        if session_id not in present:
            absent.append(session_id)
    return sorted(absent), active


def sessions_due_for_detail(conn: Connection, account_id: str, limit: int, but: Collection[str] = ()) -> list[SessionRow]:
    """Sessions owed a detail fetch, most urgent first (vanished, closing, those two asked again,
    changed, new; the oldest vanish first, the others oldest first), but those in ``but``."""
    if limit <= 0:
        return []
    params: dict[str, Any] = {"account_id": account_id, "limit": limit}
    if but:
        params["but"] = list(but)
    rows = conn.execute(_DUE_FOR_DETAIL_BUT if but else _DUE_FOR_DETAIL, params).mappings()
    return [cast(SessionRow, dict(row)) for row in rows]


def last_detail_mode(conn: Connection, account_id: str) -> tuple[str | None, int]:
    """The detail mode the account's latest cycle that recorded one ran in, and its quiet streak."""
    row = conn.execute(_LAST_DETAIL_MODE, {"account_id": account_id}).first()
    return (row[0], row[1] or 0) if row is not None else (None, 0)


def requests_since(
    conn: Connection, account_ids: Sequence[str], since: datetime, *, except_workers: Container[str] = ()
) -> list[tuple[datetime, int]]:
    """(when, how many) API requests the ledger records for these accounts' cycles since ``since``,
    but those of ``except_workers``: a cycle's requests counted at its end (or its start)."""
    at = func.coalesce(runs_table.c.finished_at, runs_table.c.started_at)
    stmt = select(at, runs_table.c.api_requests, runs_table.c.worker).where(
        runs_table.c.account_id.in_(list(account_ids)),
        # On the (account_id, started_at) index: no cycle runs for an hour.
        runs_table.c.started_at >= since - timedelta(hours=1),
        at >= since,
        runs_table.c.api_requests > 0,
    )
    return [(when, int(count)) for when, count, worker in conn.execute(stmt) if worker not in except_workers]


def count_open(conn: Connection, account_id: str) -> dict[str, int]:
    """The account's sessions not yet ended (active, vanished), counted by status: a range of the
    (account_id, status) index, as long as the sessions open now, whatever the archive's size."""
    stmt = (
        select(sessions_table.c.status, func.count())
        .where(sessions_table.c.account_id == account_id, sessions_table.c.status.in_(OPEN_STATUSES))
        .group_by(sessions_table.c.status)
    )
    return {**dict.fromkeys(OPEN_STATUSES, 0), **{status: count for status, count in conn.execute(stmt)}}


def count_due_for_detail(conn: Connection, account_id: str) -> int:
    return int(conn.scalar(_COUNT_DUE, {"account_id": account_id}) or 0)


def touch_seen(conn: Connection, account_id: str, session_ids: Sequence[str], seen_at: datetime, run_id: int) -> None:
    """Record that unchanged sessions were in a listing. A failure may leave some of them moved
    (an earlier batch, or on SQLite part of a statement): the caller rolls the transaction back."""
    for batch in chunks(session_ids):
        conn.execute(_TOUCH_SEEN, {"account": account_id, "ids": batch, "seen_at": seen_at, "run_id": run_id})


def touch_seen_rehashed(conn: Connection, account_id: str, hashes: Mapping[str, str], seen_at: datetime, run_id: int) -> None:
    """Record that unchanged sessions were in a listing, with the digest of what was listed."""
    rows = [
        {"account": account_id, "id": session_id, "hash": digest, "seen_at": seen_at, "run_id": run_id}
        for session_id, digest in hashes.items()
    ]
    for batch in chunks(rows):
        conn.execute(_TOUCH_REHASHED, list(batch))


def apply_plan(conn: Connection, plan: Plan, account_id: str, seen_at: datetime, run_id: int) -> None:
    """Write a plan in the caller's transaction: one statement per kind of row (and per batch)."""
    upsert(conn, sessions_table, plan.rows, SESSION_KEY)
    insert_rows(conn, versions_table, plan.versions)
    insert_rows(conn, rejects_table, plan.rejects)
    touch_seen(conn, account_id, plan.unchanged, seen_at, run_id)
    touch_seen_rehashed(conn, account_id, plan.rehashed, seen_at, run_id)


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    stmt = _insert_statement(table)
    for batch in chunks(rows):
        conn.execute(stmt, list(batch))


@functools.lru_cache(maxsize=8)
def _insert_statement(table: Table) -> Executable:
    return table.insert()


def open_run(conn: Connection, account_id: str, worker: str, started_at: datetime) -> int:
    """Start a ledger row and return its id."""
    values = {"account_id": account_id, "worker": worker, "started_at": started_at, "outcome": "running"}
    key = conn.execute(_insert_statement(runs_table), values).inserted_primary_key
    assert key is not None  # an insert of one row always has one
    return int(key[0])


def finish_run(conn: Connection, run_id: int, values: Mapping[str, Any]) -> None:
    """Close a ledger row. Its error may quote upstream text: it is made storable first."""
    error = values.get("error")
    if error is not None:
        values = {**values, "error": bounded_text(error)}
    conn.execute(_FINISH_RUN, {"run": run_id, **values})


def note_listed(conn: Connection, run_id: int, listed_at: datetime) -> None:
    """Mark a running ledger row's listing stored (in the listing's last transaction), so that
    the ledger knows of it even if the cycle dies before it closes."""
    conn.execute(_FINISH_RUN, {"run": run_id, "listed_at": listed_at})


def abort_stale_runs(conn: Connection, account_id: str, before: datetime, now: datetime, keep: Container[int] = ()) -> int:
    """Close ledger rows left 'running' by a process that died (but those in ``keep``, cycles of
    the caller's own still under way); return how many."""
    # Found by (account_id, outcome) first: in one statement, SQLite's planner may take the
    # (account_id, started_at) index instead and scan the account's whole ledger every cycle.
    rows = conn.execute(_RUNNING, {"account_id": account_id})
    stale = [run_id for run_id, started_at in rows if started_at < before and run_id not in keep]
    if stale:
        conn.execute(_ABORT_RUNS, {"ids": stale, "now": now})
    return len(stale)
