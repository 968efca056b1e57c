"""The archive's tables (SQLAlchemy Core). Every timestamp is timezone-aware UTC.

Core tables rather than ORM classes: nothing maps rows to objects (the archive reads and writes
rows in bulk), and the ORM would be a sixth of `archiver sync`'s start-up. The dialect-specific
types are resolved when a dialect asks, so a command imports only its own database's dialect."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Column, DateTime, Dialect, Double, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.types import TypeDecorator, TypeEngine

from archiver.vocabulary import Status

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The status values, under the short names the lifecycle code reads best with.
ACTIVE, CLOSED, VANISHED, GONE = Status.ACTIVE, Status.CLOSED, Status.VANISHED, Status.GONE


# The text SQLAlchemy's SQLite DATETIME stores (its default storage format).
SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend.

    SQLite and MariaDB have no time-zone type: there we store naive UTC (MariaDB as DATETIME(6),
    so milliseconds survive) and put the zone back on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware UTC datetime is required")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # On SQLite the value becomes the text SQLAlchemy's DATETIME stores, in one step rather
        # than through process_bind_param and then the dialect's own formatting: a cycle binds
        # several timestamps per session, and this is a third of the cost.
        def to_sqlite_text(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given where an aware UTC datetime is required")
            v = value.astimezone(UTC)
            return SQLITE_DATETIME % (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)

        return to_sqlite_text

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], datetime | None] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        # The SQLite text parsed as SQLAlchemy's DATETIME parses it, and made aware, in one step.
        def from_sqlite_text(value: Any) -> datetime | None:
            if value is None:
                return None
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

        return from_sqlite_text

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JsonDocument(TypeDecorator[Any]):
    """JSON, as JSONB on PostgreSQL."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _when(name: str, *, nullable: bool = True) -> Column[datetime]:
    return Column(name, UTCDateTime(), nullable=nullable)


def _count(name: str) -> Column[int]:
    return Column(name, Integer, nullable=False, default=0)


def _session_fields() -> list[Column[Any]]:
    """The upstream fields of a session, shared by the latest state and its versions."""
    return [
        _when("start_time"),
        _when("end_time"),
        _when("connection_start_time"),
        _when("connection_end_time"),
        _when("last_updated"),
        Column("connection_id", String(128)),
        Column("close_reason", String(64)),
        Column("close_reason_text", String(1024)),
        Column("devtools_frontend_url", Text),
        Column("web_socket_debugger_url", Text),
        Column("raw", JsonDocument()),
    ]


# The latest known state of every session, plus what the archiver observed of it.
sessions_table = Table(
    "browser_sessions", metadata,
    Column("account_id", String(32), primary_key=True),
    Column("session_id", String(36), primary_key=True),
    Column("status", String(16), nullable=False),
    _when("first_seen_at", nullable=False),
    _when("last_seen_at", nullable=False),
    _when("last_detail_at"),
    _when("vanished_at"),
    _when("gone_at"),
    # Why a detail fetch is owed (vanished > closing > changed > new); what the budget leaves is carried over.
    Column("detail_due", String(16)),
    _count("detail_attempts"),
    Column("last_run_id", BigInteger),
    # records.listing_hash of the listed object the stored state reflects; None once anything
    # else (a detail, the vanish pass) has moved the state on. A listed object with this digest
    # is known unchanged without being parsed.
    Column("content_hash", String(32)),
    *_session_fields(),
    # The cycle only ever reads an account's active or owed sessions: flat as the archive grows.
    Index("ix_browser_sessions_account_status", "account_id", "status"),
    Index("ix_browser_sessions_account_detail_due", "account_id", "detail_due"),
    Index("ix_browser_sessions_start_time", "start_time"),
    # Reports over a window or a moment, in one index: "ended after T and started before it"
    # (end_time, then start_time read from the index, not the rows), and the sessions whose end
    # is unknown by when they vanished (end_time IS NULL, then a range on vanished_at).
    Index("ix_browser_sessions_end_time", "end_time", "vanished_at", "start_time"),
    # `archiver report session ID` without an account.
    Index("ix_browser_sessions_session_id", "session_id"),
)

# Append-only history: one row each time a session's lifecycle facts or status changed.
versions_table = Table(
    "browser_session_versions", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(32), nullable=False),
    Column("session_id", String(36), nullable=False),
    Column("run_id", BigInteger),
    _when("observed_at", nullable=False),
    Column("source", String(8), nullable=False),  # list | detail | archiver
    Column("status", String(16), nullable=False),
    *_session_fields(),
    Index("ix_browser_session_versions_session", "account_id", "session_id", "observed_at"),
    Index("ix_browser_session_versions_observed_at", "observed_at"),
)

# The ledger: one row per poll of one account.
runs_table = Table(
    "sync_runs", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(32), nullable=False),
    Column("worker", String(128), nullable=False),
    _when("started_at", nullable=False),
    _when("finished_at"),
    Column("outcome", String(16), nullable=False),  # running | ok | partial | failed | aborted
    Column("listing_complete", Boolean, nullable=False, default=False),
    *(_count(name) for name in (
        "pages", "listed", "new", "changed", "vanished", "reappeared", "details_fetched", "details_gone",
        "details_failed", "details_carried", "rejected", "api_requests", "retries", "throttled",
    )),
    Column("waited_seconds", Double, nullable=False, default=0.0),
    # When the cycle's listing was stored (its details may have come in later).
    _when("listed_at"),
    # Seconds every request of the cycle was held back by Cloudflare's 429s (part of waited_seconds).
    Column("throttled_seconds", Double, nullable=False, default=0.0),
    # Whether details of new and changed sessions were fetched ("details") or the listing was
    # trusted ("listing"); see ARCHIVER_DETAIL_POLICY.
    Column("detail_mode", String(16)),
    # Details in a row, up to the cycle's end, that added nothing to the listing: what the auto
    # policy has learned so far, so that a one-shot sync goes on where the last one stopped.
    Column("detail_quiet", Integer),
    Column("error", Text),
    Index("ix_sync_runs_account_started", "account_id", "started_at"),
    # Finding a dead worker's 'running' rows must not scan a ledger that grows every cycle.
    Index("ix_sync_runs_account_outcome", "account_id", "outcome"),
    # The ledger report and retention read cycles by time across accounts.
    Index("ix_sync_runs_started_at", "started_at"),
)

# Which worker polls an account: a lease that lapses if its holder dies.
leases_table = Table(
    "account_leases", metadata,
    Column("account_id", String(32), primary_key=True),
    Column("holder", String(128), nullable=False),
    _when("acquired_at", nullable=False),
    _when("expires_at", nullable=False),
)

# Upstream objects that could not be used as they were, with the reason and the body.
rejects_table = Table(
    "rejected_records", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("account_id", String(32), nullable=False),
    Column("run_id", BigInteger),
    _when("rejected_at", nullable=False),
    Column("source", String(8), nullable=False),  # list | detail
    Column("session_id", String(36)),
    Column("reason", Text, nullable=False),
    Column("body", Text, nullable=False),
    # True when only some fields were bad and the session itself was still archived.
    Column("kept", Boolean, nullable=False, default=False),
    Index("ix_rejected_records_rejected_at", "rejected_at"),
)
