"""The archive's tables (SQLAlchemy 2.0 declarative). Every timestamp is timezone-aware UTC."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Index, Integer, MetaData, String, Text
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
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
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
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


# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
BigId = BigInteger().with_variant(Integer(), "sqlite")
JsonDoc = JSON().with_variant(postgresql.JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JsonDoc}


class SessionFields:
    """The upstream fields of a session, shared by the latest state and its versions."""

    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    connection_start_time: Mapped[datetime | None]
    connection_end_time: Mapped[datetime | None]
    last_updated: Mapped[datetime | None]
    connection_id: Mapped[str | None] = mapped_column(String(128))
    close_reason: Mapped[str | None] = mapped_column(String(64))
    close_reason_text: Mapped[str | None] = mapped_column(String(1024))
    devtools_frontend_url: Mapped[str | None] = mapped_column(Text)
    web_socket_debugger_url: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[dict[str, Any] | None]


class BrowserSession(SessionFields, Base):
    """The latest known state of every session, plus what the archiver observed of it."""

    __tablename__ = "browser_sessions"

    account_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    last_detail_at: Mapped[datetime | None]
    vanished_at: Mapped[datetime | None]
    gone_at: Mapped[datetime | None]
    # Why a detail fetch is owed (vanished > closing > changed > new); what the budget leaves is carried over.
    detail_due: Mapped[str | None] = mapped_column(String(16))
    detail_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_run_id: Mapped[int | None] = mapped_column(BigInteger)
    # records.listing_hash of the listed object the stored state reflects; None once anything
    # else (a detail, the vanish pass) has moved the state on. A listed object with this digest
    # is known unchanged without being parsed.
    content_hash: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
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


class SessionVersion(SessionFields, Base):
    """Append-only history: one row each time a session's lifecycle facts or status changed."""

    __tablename__ = "browser_session_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str] = mapped_column(String(36))
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    observed_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(8))  # list | detail | archiver
    status: Mapped[str] = mapped_column(String(16))

    __table_args__ = (
        Index("ix_browser_session_versions_session", "account_id", "session_id", "observed_at"),
        Index("ix_browser_session_versions_observed_at", "observed_at"),
    )


class SyncRun(Base):
    """The ledger: one row per poll of one account."""

    __tablename__ = "sync_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32))
    worker: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(16))  # running | ok | partial | failed | aborted
    listing_complete: Mapped[bool] = mapped_column(default=False)
    pages: Mapped[int] = mapped_column(default=0)
    listed: Mapped[int] = mapped_column(default=0)
    new: Mapped[int] = mapped_column(default=0)
    changed: Mapped[int] = mapped_column(default=0)
    vanished: Mapped[int] = mapped_column(default=0)
    reappeared: Mapped[int] = mapped_column(default=0)
    details_fetched: Mapped[int] = mapped_column(default=0)
    details_gone: Mapped[int] = mapped_column(default=0)
    details_failed: Mapped[int] = mapped_column(default=0)
    details_carried: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    api_requests: Mapped[int] = mapped_column(default=0)
    retries: Mapped[int] = mapped_column(default=0)
    throttled: Mapped[int] = mapped_column(default=0)
    waited_seconds: Mapped[float] = mapped_column(default=0.0)
    # When the cycle's listing was stored (its details may have come in later).
    listed_at: Mapped[datetime | None]
    # Seconds every request of the cycle was held back by Cloudflare's 429s (part of waited_seconds).
    throttled_seconds: Mapped[float] = mapped_column(default=0.0)
    # Whether details of new and changed sessions were fetched ("details") or the listing was
    # trusted ("listing"); see ARCHIVER_DETAIL_POLICY.
    detail_mode: Mapped[str | None] = mapped_column(String(16))
    # Details in a row, up to the cycle's end, that added nothing to the listing: what the auto
    # policy has learned so far, so that a one-shot sync goes on where the last one stopped.
    detail_quiet: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_sync_runs_account_started", "account_id", "started_at"),
        # Finding a dead worker's 'running' rows must not scan a ledger that grows every cycle.
        Index("ix_sync_runs_account_outcome", "account_id", "outcome"),
        # The ledger report and retention read cycles by time across accounts.
        Index("ix_sync_runs_started_at", "started_at"),
    )


class AccountLease(Base):
    """Which worker polls an account: a lease that lapses if its holder dies."""

    __tablename__ = "account_leases"

    account_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class RejectedRecord(Base):
    """Upstream objects that could not be used as they were, with the reason and the body."""

    __tablename__ = "rejected_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    rejected_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(8))  # list | detail
    session_id: Mapped[str | None] = mapped_column(String(36))
    reason: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    # True when only some fields were bad and the session itself was still archived.
    kept: Mapped[bool] = mapped_column(default=False)

    __table_args__ = (Index("ix_rejected_records_rejected_at", "rejected_at"),)
