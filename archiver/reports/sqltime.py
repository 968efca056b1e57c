"""Time arithmetic in SQL, spelled the way each database needs it.

SQLite keeps timestamps as ISO text, PostgreSQL as ``timestamptz``, MariaDB as ``DATETIME(6)``
holding UTC. These constructs compile to each dialect's own functions, so that reports can
subtract and bucket times inside the database instead of hauling rows into Python.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Float, case
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from archiver.archive.models import UTCDateTime

BUCKETS = ("minute", "hour", "day")
_SQLITE_FORMATS = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}
_MYSQL_FORMATS = {"minute": "%Y-%m-%d %H:%i:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}


class seconds_between(FunctionElement[float]):  # noqa: N801 - reads like the SQL function it is
    """``end - start`` in seconds (a float), NULL when either is NULL."""

    type = Float()
    inherit_cache = True
    name = "seconds_between"

    def __init__(self, start: ColumnElement[Any], end: ColumnElement[Any]) -> None:
        super().__init__(start, end)


class epoch_ms(FunctionElement[int]):  # noqa: N801
    """A timestamp as whole milliseconds since the Unix epoch, NULL when it is NULL."""

    type = BigInteger()
    inherit_cache = True
    name = "epoch_ms"

    def __init__(self, when: ColumnElement[Any]) -> None:
        super().__init__(when)


def duration_seconds(start: ColumnElement[Any], end: ColumnElement[Any]) -> ColumnElement[float]:
    """``end - start`` in seconds; NULL when either is unknown or the end comes before the start.

    An end before its start is an impossible pair, kept in the archive as observed: no duration
    can be read from it.
    """
    return case((end >= start, seconds_between(start, end)), else_=None)


class time_bucket(FunctionElement[Any]):  # noqa: N801
    """The start of the minute, hour or day (UTC) that a timestamp falls in."""

    type = UTCDateTime()
    inherit_cache = True
    name = "time_bucket"

    def __init__(self, unit: str, when: ColumnElement[Any]) -> None:
        if unit not in BUCKETS:
            raise ValueError(f"unknown time bucket {unit!r}")
        self.unit = unit
        super().__init__(when)


def _args(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> list[str]:
    return [compiler.process(arg, **kw) for arg in element.clauses]


@compiles(seconds_between, "sqlite")
def _seconds_sqlite(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = _args(element, compiler, **kw)
    # julianday() is a double of days: good to about 50 microseconds, so round to the millisecond
    # that Cloudflare's times carry.
    return f"ROUND((julianday({end}) - julianday({start})) * 86400.0, 3)"


@compiles(seconds_between, "postgresql")
def _seconds_postgresql(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = _args(element, compiler, **kw)
    return f"CAST(EXTRACT(EPOCH FROM ({end} - {start})) AS DOUBLE PRECISION)"


@compiles(seconds_between, "mysql")
@compiles(seconds_between, "mariadb")
def _seconds_mysql(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = _args(element, compiler, **kw)
    return f"(TIMESTAMPDIFF(MICROSECOND, {start}, {end}) / 1000000.0)"


@compiles(epoch_ms, "sqlite")
def _epoch_sqlite(element: epoch_ms, compiler: SQLCompiler, **kw: Any) -> str:
    (when,) = _args(element, compiler, **kw)
    # 2440587.5 is the Julian day of 1970-01-01 00:00 UTC; the double is good to the millisecond.
    return f"CAST(ROUND((julianday({when}) - 2440587.5) * 86400000.0) AS INTEGER)"


@compiles(epoch_ms, "postgresql")
def _epoch_postgresql(element: epoch_ms, compiler: SQLCompiler, **kw: Any) -> str:
    (when,) = _args(element, compiler, **kw)
    return f"CAST(ROUND(EXTRACT(EPOCH FROM {when}) * 1000) AS BIGINT)"


@compiles(epoch_ms, "mysql")
@compiles(epoch_ms, "mariadb")
def _epoch_mysql(element: epoch_ms, compiler: SQLCompiler, **kw: Any) -> str:
    (when,) = _args(element, compiler, **kw)
    # Not UNIX_TIMESTAMP(): it reads a DATETIME in the connection's time zone, and ours hold UTC.
    return f"CAST(ROUND(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {when}) / 1000) AS SIGNED)"


@compiles(time_bucket, "sqlite")
def _bucket_sqlite(element: time_bucket, compiler: SQLCompiler, **kw: Any) -> str:
    (when,) = _args(element, compiler, **kw)
    return f"strftime('{_SQLITE_FORMATS[element.unit]}', {when})"


@compiles(time_bucket, "postgresql")
def _bucket_postgresql(element: time_bucket, compiler: SQLCompiler, **kw: Any) -> str:
    (when,) = _args(element, compiler, **kw)
    # date_trunc on timestamptz follows the session's TimeZone; buckets are UTC whatever it is.
    return f"(date_trunc('{element.unit}', {when} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"


@compiles(time_bucket, "mysql")
@compiles(time_bucket, "mariadb")
def _bucket_mysql(element: time_bucket, compiler: SQLCompiler, **kw: Any) -> str:
    (when,) = _args(element, compiler, **kw)
    fmt = _MYSQL_FORMATS[element.unit].replace("%", "%%")  # pymysql interpolates with %
    return f"CAST(DATE_FORMAT({when}, '{fmt}') AS DATETIME)"
