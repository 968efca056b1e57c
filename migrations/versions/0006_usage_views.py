"""close reasons under their documented names in the views, no duration from an end recorded
before its start, and the browser_usage_daily view

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 09:00:00.000000

The three views of 0003 are created again:

- ``session_durations``: ``close_reason`` is the documented name (``1`` and ``NormalClosure`` are
  both ``NormalClosure``; see archiver/reasons.py), ``close_reason_raw`` the value as stored; a
  duration whose end comes before its start is NULL;
- ``close_reasons_hourly``: counted per documented name, with a text for it;
- ``concurrent_sessions_per_minute``: a session whose end comes before its start counts as one
  whose start and end are unknown (from its first listing; surely until last seen, maybe until
  it vanished), as the reports count it.

And a new one, ``browser_usage_daily``: per UTC ``day`` and ``account_id`` (every account the
archive knows, sessions or not), the ``sessions`` open at some moment of the day or started in
it, ``browser_seconds`` (each session's time clipped to the day), ``peak_concurrency``, and
``unknown_end_sessions``; with ``sessions_max``, ``browser_seconds_max`` and
``peak_concurrency_max``, the upper bounds where ends are unknown (until vanished, or now for a
session still listed), the plain columns being the lower bounds (until last seen). It covers every
day from the first session's to the last one that may hold a session, and computes when read.
Times are handled as seconds since the Unix epoch, so that every database compares numbers.

Like those of 0003, ``browser_usage_daily`` names its tables (``browser_sessions`` and
``sync_runs``): on SQLite, a later migration that has batch mode copy one of them drops it first.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

from archiver.archive import reasons

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DAY = 86400


def _views_0003() -> ModuleType:
    # 0003's dialects, which the views here extend, and its views: the concurrency view builds on
    # its own, and the downgrade restores them. Loaded from its file, as Alembic loads it: migration
    # modules are not importable by name.
    path = Path(__file__).with_name("0003_reporting_views.py")
    spec = importlib.util.spec_from_file_location("_archiver_migration_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


v3 = _views_0003()


class Numeric:
    """Time as seconds since the Unix epoch, and whole UTC days, for one database."""

    def epoch(self, when: str) -> str:
        raise NotImplementedError

    def now(self) -> str:
        raise NotImplementedError

    def day_number(self, seconds: str) -> str:
        return f"FLOOR(({seconds}) / {DAY})"

    def day_start(self, number: str) -> str:
        raise NotImplementedError

    def least(self, a: str, b: str) -> str:
        return f"LEAST({a}, {b})"

    def milliseconds(self, seconds: str) -> str:
        """Seconds rounded to the millisecond that Cloudflare's times carry."""
        return f"ROUND({seconds}, 3)"

    def day_series(self) -> str:
        """CTEs ending in ``days(n)``: every day number from bounds.first_day to bounds.last_day."""
        # Two short recursions crossed: MariaDB caps recursion at 1000 iterations by default.
        return (
            "hundreds(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM hundreds WHERE n < 99),\n"
            "days(n) AS (SELECT b.first_day + h.n * 100 + u.n FROM bounds b CROSS JOIN hundreds h "
            "CROSS JOIN hundreds u WHERE b.first_day + h.n * 100 + u.n <= b.last_day)"
        )


class SQLite(v3.SQLite, Numeric):  # type: ignore[misc, name-defined]
    def epoch(self, when: str) -> str:
        return f"((julianday({when}) - 2440587.5) * 86400.0)"

    def now(self) -> str:
        return self.epoch("'now'")

    def day_number(self, seconds: str) -> str:
        # Epoch seconds are positive: truncating is flooring (SQLite may lack FLOOR).
        return f"CAST(({seconds}) / {DAY} AS INTEGER)"

    def day_start(self, number: str) -> str:
        return f"datetime(({number}) * {DAY}, 'unixepoch')"

    def least(self, a: str, b: str) -> str:
        return f"min({a}, {b})"


class PostgreSQL(v3.PostgreSQL, Numeric):  # type: ignore[misc, name-defined]
    def epoch(self, when: str) -> str:
        return f"CAST(EXTRACT(EPOCH FROM {when}) AS DOUBLE PRECISION)"

    def now(self) -> str:
        return self.epoch("now()")

    def day_number(self, seconds: str) -> str:
        return f"CAST(FLOOR(({seconds}) / {DAY}) AS BIGINT)"

    def day_start(self, number: str) -> str:
        return f"to_timestamp(({number}) * {DAY})"

    def milliseconds(self, seconds: str) -> str:
        return f"CAST(ROUND(CAST({seconds} AS NUMERIC), 3) AS DOUBLE PRECISION)"

    def day_series(self) -> str:
        return "days(n) AS (SELECT generate_series(b.first_day, b.last_day) FROM bounds b)"


class MariaDB(v3.MariaDB, Numeric):  # type: ignore[misc, name-defined]
    def epoch(self, when: str) -> str:
        # Not UNIX_TIMESTAMP(): it reads a DATETIME in the connection's time zone; ours hold UTC.
        return f"(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {when}) / 1000000)"

    def now(self) -> str:
        return self.epoch("UTC_TIMESTAMP(6)")

    def day_start(self, number: str) -> str:
        return f"TIMESTAMPADD(DAY, {number}, CAST('1970-01-01' AS DATETIME))"


Dialect = SQLite | PostgreSQL | MariaDB


def dialect() -> Dialect:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        return SQLite()
    if bind.dialect.name == "postgresql":
        return PostgreSQL()
    if bind.dialect.name in ("mysql", "mariadb"):
        return MariaDB()
    raise NotImplementedError(f"no reporting views for {bind.dialect.name}")


def reason_name() -> str:
    return reasons.name_sql("close_reason", op.get_bind().dialect)


def session_durations(d: Dialect) -> str:
    return f"""CREATE VIEW session_durations AS
SELECT account_id, session_id, status, start_time, end_time,
       CASE WHEN end_time >= start_time THEN {d.seconds('start_time', 'end_time')} END AS duration_seconds,
       connection_start_time, connection_end_time,
       CASE WHEN connection_end_time >= connection_start_time
            THEN {d.seconds('connection_start_time', 'connection_end_time')} END AS connection_seconds,
       {reason_name()} AS close_reason, close_reason_text, close_reason AS close_reason_raw,
       first_seen_at, last_seen_at, vanished_at, gone_at
FROM browser_sessions"""


def close_reasons_hourly(d: Dialect) -> str:
    # An unknown end (vanished, gone) is counted at vanished_at, the latest it can have been.
    hour = d.floor('hour', 'COALESCE(end_time, vanished_at)')
    return f"""CREATE VIEW close_reasons_hourly AS
SELECT {hour} AS hour, account_id, status, {reason_name()} AS close_reason,
       MAX(close_reason_text) AS close_reason_text, COUNT(*) AS sessions
FROM browser_sessions
WHERE end_time IS NOT NULL OR (status <> 'active' AND vanished_at IS NOT NULL)
GROUP BY {hour}, account_id, status, {reason_name()}"""


# The sessions as the concurrency of 0003 reads them, but with an end recorded before the start
# taken as unknown: no start or end, and at most until it left the listing (or was last heard of).
TRUSTED_SESSIONS = """(SELECT account_id, status, first_seen_at, last_seen_at, gone_at,
        CASE WHEN end_time < start_time THEN NULL ELSE start_time END AS start_time,
        CASE WHEN end_time < start_time THEN NULL ELSE end_time END AS end_time,
        CASE WHEN end_time < start_time THEN COALESCE(vanished_at, gone_at, last_detail_at, last_seen_at)
             ELSE vanished_at END AS vanished_at
 FROM browser_sessions)"""
SESSIONS_OF_0003 = "FROM browser_sessions s CROSS JOIN bounds b"


def concurrent_sessions_per_minute(d: Dialect) -> str:
    sql = v3.concurrent_sessions_per_minute(d)
    if sql.count(SESSIONS_OF_0003) != 1:
        raise RuntimeError("0003's concurrency view no longer reads the sessions as this migration expects")
    return sql.replace(SESSIONS_OF_0003, f"FROM {TRUSTED_SESSIONS} s CROSS JOIN bounds b")


def browser_usage_daily(d: Dialect) -> str:
    impossible = "end_time < start_time"
    known_end = f"CASE WHEN {impossible} THEN NULL ELSE end_time END"
    start = f"CASE WHEN {impossible} THEN first_seen_at ELSE COALESCE(start_time, first_seen_at) END"
    latest = f"COALESCE({known_end}, vanished_at, gone_at, last_detail_at, last_seen_at)"
    lo, hi = f"d.n * {DAY}", f"(d.n + 1) * {DAY}"

    def clipped(end: str) -> str:
        return d.greatest("0", f"{d.least(end, hi)} - {d.greatest('p.start_s', lo)}")

    def running(delta: str) -> str:
        return f"SUM({delta}) OVER (PARTITION BY account_id ORDER BY t, ord ROWS UNBOUNDED PRECEDING)"

    first_day, last_day = d.day_number("p.start_s"), d.day_number("p.max_s")
    return f"""CREATE VIEW browser_usage_daily AS
WITH RECURSIVE
raw AS (
    SELECT account_id, {d.epoch(start)} AS start_s,
           {d.epoch(f'COALESCE({known_end}, last_seen_at)')} AS sure_raw,
           CASE WHEN status = 'active' THEN {d.now()} ELSE {d.epoch(latest)} END AS max_raw,
           CASE WHEN {known_end} IS NULL THEN 0 ELSE 1 END AS known
    FROM browser_sessions
),
clamped AS (
    SELECT account_id, start_s, {d.greatest('sure_raw', 'start_s')} AS sure_s, max_raw, known FROM raw
),
spans AS (
    SELECT account_id, start_s, sure_s, {d.greatest('max_raw', 'sure_s')} AS max_s, known FROM clamped
),
bounds AS (
    SELECT {d.day_number('MIN(start_s)')} AS first_day, {d.day_number('MAX(max_s)')} AS last_day FROM spans
),
{d.day_series()},
accounts AS (
    SELECT account_id FROM browser_sessions GROUP BY account_id
    UNION
    SELECT account_id FROM sync_runs GROUP BY account_id
),
pieces AS (
    SELECT p.account_id, {first_day} AS n, p.sure_s - p.start_s AS sure_seconds,
           p.max_s - p.start_s AS max_seconds, 1 AS surely, 1 AS maybe, 1 - p.known AS unknown
    FROM spans p WHERE {first_day} = {last_day}
    UNION ALL
    SELECT p.account_id, d.n, {clipped('p.sure_s')}, {clipped('p.max_s')},
           CASE WHEN p.start_s >= {lo} OR p.sure_s > {lo} THEN 1 ELSE 0 END,
           CASE WHEN p.start_s >= {lo} OR p.max_s > {lo} THEN 1 ELSE 0 END,
           CASE WHEN p.known = 0 AND (p.start_s >= {lo} OR p.max_s > {lo}) THEN 1 ELSE 0 END
    FROM spans p JOIN days d ON d.n >= {first_day} AND d.n <= {last_day}
    WHERE {first_day} <> {last_day}
),
totals AS (
    SELECT account_id, n, SUM(surely) AS sessions, SUM(maybe) AS sessions_max, SUM(sure_seconds) AS seconds,
           SUM(max_seconds) AS seconds_max, SUM(unknown) AS unknown
    FROM pieces GROUP BY account_id, n
),
events AS (
    SELECT account_id, start_s AS t, 2 AS ord, 1 AS sure, 1 AS upper FROM spans
    UNION ALL
    SELECT account_id, sure_s, 0, -1, CASE WHEN known = 1 THEN -1 ELSE 0 END FROM spans
    UNION ALL
    SELECT account_id, max_s, 0, 0, -1 FROM spans WHERE known = 0
    UNION ALL
    SELECT a.account_id, d.n * {DAY}, 1, 0, 0 FROM accounts a CROSS JOIN days d
),
levels AS (
    SELECT account_id, t, {running('sure')} AS sure_level, {running('upper')} AS upper_level FROM events
),
peaks AS (
    SELECT account_id, {d.day_number('t')} AS n, MAX(sure_level) AS peak, MAX(upper_level) AS peak_max
    FROM levels GROUP BY account_id, {d.day_number('t')}
)
SELECT {d.day_start('d.n')} AS day, a.account_id AS account_id,
       {d.integer('COALESCE(x.sessions, 0)')} AS sessions,
       {d.integer('COALESCE(x.sessions_max, 0)')} AS sessions_max,
       {d.milliseconds('COALESCE(x.seconds, 0)')} AS browser_seconds,
       {d.milliseconds('COALESCE(x.seconds_max, 0)')} AS browser_seconds_max,
       {d.integer('COALESCE(k.peak, 0)')} AS peak_concurrency,
       {d.integer('COALESCE(k.peak_max, 0)')} AS peak_concurrency_max,
       {d.integer('COALESCE(x.unknown, 0)')} AS unknown_end_sessions
FROM accounts a CROSS JOIN days d
LEFT JOIN totals x ON x.account_id = a.account_id AND x.n = d.n
LEFT JOIN peaks k ON k.account_id = a.account_id AND k.n = d.n"""


RECREATED = (session_durations, close_reasons_hourly, concurrent_sessions_per_minute)


def upgrade() -> None:
    for view in v3.VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    d = dialect()
    for create in (*RECREATED, browser_usage_daily):
        op.execute(create(d))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS browser_usage_daily")
    for view in v3.VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    d = v3.dialect()
    for create in (v3.session_durations, v3.close_reasons_hourly, v3.concurrent_sessions_per_minute):
        op.execute(create(d))
