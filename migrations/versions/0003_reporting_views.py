"""reporting views, and indexes for reports over windows and moments

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 17:10:00.000000

Three views for BI tools and psql, in each database's own SQL:

- ``session_durations``: every session with its duration and connection duration in seconds;
- ``close_reasons_hourly``: sessions ended per UTC hour, account, status and close reason;
- ``concurrent_sessions_per_minute``: per account and UTC minute, the sessions open at some moment
  of that minute (``sessions``) and those that may have been (``maybe_sessions``: the end is only
  known to lie between last seen and vanished). It covers the 7 days up to the latest start or end
  in the archive, so its cost stays bounded however long the history.

Views are not part of the SQLAlchemy metadata, so autogenerate never sees them. On SQLite, a later
migration that has batch mode copy ``browser_sessions`` must drop these views first and create them
again afterwards (SQLite refuses to rename a table under a view that names it).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("concurrent_sessions_per_minute", "close_reasons_hourly", "session_durations")
SERIES_DAYS = 7


class Dialect:
    """The few time expressions the views need, spelled for one database."""

    def seconds(self, start: str, end: str) -> str:
        raise NotImplementedError

    def floor(self, unit: str, when: str) -> str:
        raise NotImplementedError

    def plus_minute(self, when: str) -> str:
        raise NotImplementedError

    def minus_days(self, when: str, days: int) -> str:
        raise NotImplementedError

    def greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"

    def integer(self, expr: str) -> str:
        return f"CAST({expr} AS BIGINT)"

    def minutes(self) -> str:
        """A CTE body giving one row per minute from first_minute to last_minute of ``bounds``."""
        # Two short recursions crossed: MariaDB caps recursion at 1000 iterations by default.
        return (
            f"SELECT {self.plus_minutes('b.first_minute', 'h.n * 60 + m.n')} AS minute "
            f"FROM bounds b CROSS JOIN hours h CROSS JOIN mins m "
            f"WHERE b.first_minute IS NOT NULL AND h.n * 60 + m.n <= {SERIES_DAYS * 24 * 60}"
        )

    def plus_minutes(self, when: str, count: str) -> str:
        raise NotImplementedError

    def series_ctes(self) -> str:
        return (
            f"hours(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM hours WHERE n < {SERIES_DAYS * 24}),\n"
            "mins(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM mins WHERE n < 59),\n"
        )


class SQLite(Dialect):
    FORMATS = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00"}

    def seconds(self, start: str, end: str) -> str:
        return f"ROUND((julianday({end}) - julianday({start})) * 86400.0, 3)"

    def floor(self, unit: str, when: str) -> str:
        return f"strftime('{self.FORMATS[unit]}', {when})"

    def plus_minute(self, when: str) -> str:
        return f"datetime({when}, '+1 minute')"

    def minus_days(self, when: str, days: int) -> str:
        return f"datetime({when}, '-{days} days')"

    def greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})"

    def integer(self, expr: str) -> str:
        return f"CAST({expr} AS INTEGER)"

    def plus_minutes(self, when: str, count: str) -> str:
        return f"datetime({when}, '+' || ({count}) || ' minutes')"


class PostgreSQL(Dialect):
    def seconds(self, start: str, end: str) -> str:
        return f"ROUND(EXTRACT(EPOCH FROM ({end} - {start})), 3)::double precision"

    def floor(self, unit: str, when: str) -> str:
        # date_trunc on timestamptz follows the session's TimeZone; the buckets are UTC.
        return f"(date_trunc('{unit}', {when} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"

    def plus_minute(self, when: str) -> str:
        return f"({when} + interval '1 minute')"

    def minus_days(self, when: str, days: int) -> str:
        return f"({when} - interval '{days} days')"

    def minutes(self) -> str:
        return "SELECT generate_series(b.first_minute, b.last_minute, interval '1 minute') AS minute FROM bounds b"

    def series_ctes(self) -> str:
        return ""


class MariaDB(Dialect):
    FORMATS = {"minute": "%Y-%m-%d %H:%i:00", "hour": "%Y-%m-%d %H:00:00"}

    def seconds(self, start: str, end: str) -> str:
        return f"ROUND(TIMESTAMPDIFF(MICROSECOND, {start}, {end}) / 1000000, 3)"

    def floor(self, unit: str, when: str) -> str:
        return f"CAST(DATE_FORMAT({when}, '{self.FORMATS[unit]}') AS DATETIME)"

    def plus_minute(self, when: str) -> str:
        return f"({when} + INTERVAL 1 MINUTE)"

    def minus_days(self, when: str, days: int) -> str:
        return f"({when} - INTERVAL {days} DAY)"

    def plus_minutes(self, when: str, count: str) -> str:
        return f"({when} + INTERVAL ({count}) MINUTE)"

    def integer(self, expr: str) -> str:
        return f"CAST({expr} AS SIGNED)"


def session_durations(d: Dialect) -> str:
    return f"""CREATE VIEW session_durations AS
SELECT account_id, session_id, status, start_time, end_time,
       {d.seconds('start_time', 'end_time')} AS duration_seconds,
       connection_start_time, connection_end_time,
       {d.seconds('connection_start_time', 'connection_end_time')} AS connection_seconds,
       close_reason, close_reason_text, first_seen_at, last_seen_at, vanished_at, gone_at
FROM browser_sessions"""


def close_reasons_hourly(d: Dialect) -> str:
    # An unknown end (vanished, gone) is counted at vanished_at, the latest it can have been.
    ended = "COALESCE(end_time, vanished_at)"
    return f"""CREATE VIEW close_reasons_hourly AS
SELECT {d.floor('hour', ended)} AS hour, account_id, status, close_reason, close_reason_text, COUNT(*) AS sessions
FROM browser_sessions
WHERE end_time IS NOT NULL OR (status <> 'active' AND vanished_at IS NOT NULL)
GROUP BY {d.floor('hour', ended)}, account_id, status, close_reason, close_reason_text"""


def concurrent_sessions_per_minute(d: Dialect) -> str:
    # Each session adds +1 at the minute it opened and -1 after the minute it was last surely
    # open; a running sum over the minute series then counts the sessions open in each minute.
    # Sessions whose end is unknown are "maybe" open from after last_seen_at to vanished_at.
    # Events before the series are moved to its first minute, where they cancel out.
    first = "b.first_minute"
    after = lambda when: d.greatest(d.plus_minute(d.floor("minute", when)), first)  # noqa: E731
    running = lambda delta: (  # noqa: E731
        f"SUM(COALESCE({delta}, 0)) OVER (PARTITION BY a.account_id ORDER BY m.minute ROWS UNBOUNDED PRECEDING)"
    )
    return f"""CREATE VIEW concurrent_sessions_per_minute AS
WITH RECURSIVE
latest(t) AS (
    SELECT MAX(start_time) FROM browser_sessions
    UNION ALL
    SELECT MAX(end_time) FROM browser_sessions
),
bounds AS (
    SELECT {d.minus_days(d.floor('minute', 'MAX(t)'), SERIES_DAYS)} AS first_minute,
           {d.floor('minute', 'MAX(t)')} AS last_minute
    FROM latest
),
{d.series_ctes()}minutes AS (
    {d.minutes()}
),
spans AS (
    SELECT s.account_id,
           {d.floor('minute', 'COALESCE(s.start_time, s.first_seen_at)')} AS opened,
           CASE WHEN s.end_time IS NOT NULL THEN s.end_time
                WHEN s.status = 'active' THEN NULL
                ELSE s.last_seen_at END AS sure_until,
           CASE WHEN s.end_time IS NULL AND s.status <> 'active'
                THEN COALESCE(s.vanished_at, s.gone_at) END AS maybe_until,
           CASE WHEN s.end_time IS NULL AND s.status <> 'active' THEN 1 ELSE 0 END AS end_unknown
    FROM browser_sessions s CROSS JOIN bounds b
    WHERE (s.end_time >= b.first_minute OR s.end_time IS NULL)
      AND COALESCE(s.start_time, s.first_seen_at) < {d.plus_minute('b.last_minute')}
),
events AS (
    SELECT p.account_id, {d.greatest('p.opened', first)} AS minute, 1 AS sure, 0 AS maybe
    FROM spans p CROSS JOIN bounds b
    UNION ALL
    SELECT p.account_id, {after('p.sure_until')}, -1, 0
    FROM spans p CROSS JOIN bounds b WHERE p.sure_until IS NOT NULL
    UNION ALL
    SELECT p.account_id, {after('p.sure_until')}, 0, 1
    FROM spans p CROSS JOIN bounds b WHERE p.end_unknown = 1
    UNION ALL
    SELECT p.account_id, {after(d.greatest('p.maybe_until', 'p.sure_until'))}, 0, -1
    FROM spans p CROSS JOIN bounds b WHERE p.end_unknown = 1 AND p.maybe_until IS NOT NULL
),
deltas AS (
    SELECT account_id, minute, SUM(sure) AS sure, SUM(maybe) AS maybe FROM events GROUP BY account_id, minute
),
accounts AS (SELECT DISTINCT account_id FROM spans)
SELECT m.minute AS minute, a.account_id AS account_id,
       {d.integer(running('e.sure'))} AS sessions,
       {d.integer(running('e.maybe'))} AS maybe_sessions
FROM accounts a CROSS JOIN minutes m
LEFT JOIN deltas e ON e.account_id = a.account_id AND e.minute = m.minute"""


def dialect() -> Dialect:
    name = op.get_bind().dialect.name
    if name == "sqlite":
        return SQLite()
    if name == "postgresql":
        return PostgreSQL()
    if name in ("mysql", "mariadb"):
        return MariaDB()
    raise NotImplementedError(f"no reporting views for {name}")


def upgrade() -> None:
    with op.batch_alter_table('browser_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_browser_sessions_end_time')
        batch_op.create_index('ix_browser_sessions_end_time', ['end_time', 'vanished_at', 'start_time'], unique=False)
        batch_op.create_index('ix_browser_sessions_session_id', ['session_id'], unique=False)
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.create_index('ix_sync_runs_started_at', ['started_at'], unique=False)
    d = dialect()
    for create in (session_durations, close_reasons_hourly, concurrent_sessions_per_minute):
        op.execute(create(d))


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_runs_started_at')
    with op.batch_alter_table('browser_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_browser_sessions_session_id')
        batch_op.drop_index('ix_browser_sessions_end_time')
        batch_op.create_index('ix_browser_sessions_end_time', ['end_time'], unique=False)
