"""Per-account leases in the database, so that several workers never poll one account at once.

A lease row names its holder and when it lapses. The holder renews it on a heartbeat, between
cycles and during them; a worker that dies simply stops renewing, and another takes the account
over once the lease has lapsed. This
works the same on SQLite, PostgreSQL and MariaDB, and needs no connection held open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from archiver.errors import LeaseLostError, first_line
from archiver.models import AccountLease

log = logging.getLogger(__name__)
leases = AccountLease.__table__
c = leases.c


def lease_seconds(interval_seconds: float) -> float:
    """How long a lease lasts: renewed every third of its life, it survives two missed renewals,
    yet lapses soon enough after its holder dies that another worker takes over within two intervals."""
    return max(0.75 * interval_seconds, 1.0)


def acquire(engine: Engine, account_id: str, holder: str, ttl_seconds: float, now: datetime) -> bool:
    """Take or renew the account's lease; False if another live holder has it."""
    expires = now + timedelta(seconds=ttl_seconds)
    with engine.begin() as conn:
        taken = conn.execute(
            update(leases)
            .where(c.account_id == account_id, or_(c.holder == holder, c.expires_at < now))
            .values(holder=holder, expires_at=expires, acquired_at=now)
        )
        if taken.rowcount == 1:
            return True
    try:
        with engine.begin() as conn:
            conn.execute(insert(leases).values(account_id=account_id, holder=holder, acquired_at=now, expires_at=expires))
        return True
    except IntegrityError:
        return False  # a row exists and is someone else's, still valid


def renew(engine: Engine, account_ids: Iterable[str], holder: str, ttl_seconds: float, now: datetime) -> set[str]:
    """Extend every lease we hold among ``account_ids`` in one statement; return those still ours.

    A lease that lapsed while nobody took it over (say, the database was away for a while) is
    still ours: the holder column, changed only by a taker, says who owns an account.
    """
    ids = list(account_ids)
    if not ids:
        return set()
    with engine.begin() as conn:
        conn.execute(
            update(leases)
            .where(c.account_id.in_(ids), c.holder == holder)
            .values(expires_at=now + timedelta(seconds=ttl_seconds))
        )
        return set(conn.scalars(select(c.account_id).where(c.account_id.in_(ids), c.holder == holder)))


def confirm(conn: Connection, account_id: str, holder: str, ttl_seconds: float, now: datetime) -> bool:
    """Within the caller's transaction: extend our lease on the account; False if it is not ours.

    The update locks the lease row until the transaction ends, so no other worker can take the
    account over between this check and the caller's writes (a fence for each write step).
    """
    result = conn.execute(
        update(leases)
        .where(c.account_id == account_id, c.holder == holder)
        .values(expires_at=now + timedelta(seconds=ttl_seconds))
    )
    return result.rowcount == 1


def fence(account_id: str, holder: str, ttl_seconds: float) -> Callable[[Connection], None]:
    """A check for the start of each write transaction of a cycle: renew the lease, or raise
    LeaseLostError if another worker has taken the account over."""

    def check(conn: Connection) -> None:
        if not confirm(conn, account_id, holder, ttl_seconds, datetime.now(UTC)):
            raise LeaseLostError("another worker took the account over; this cycle stopped writing")

    return check


def holder_of(engine: Engine, account_id: str) -> str | None:
    """Who holds the account's lease (live or lapsed), if anyone."""
    with engine.connect() as conn:
        return conn.scalar(select(c.holder).where(c.account_id == account_id))


@asynccontextmanager
async def leases_kept(engine: Engine, account_ids: Iterable[str], holder: str, ttl_seconds: float) -> AsyncIterator[set[str]]:
    """Take the lease of every account no other live worker holds, keep them renewed while the
    block runs, and release them at its end. Yields the accounts taken."""
    held = {a for a in account_ids if acquire(engine, a, holder, ttl_seconds, datetime.now(UTC))}
    heartbeat = asyncio.create_task(_renew_forever(engine, held, holder, ttl_seconds))
    try:
        yield held
    finally:
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
        for account_id in held:
            try:
                release(engine, account_id, holder)
            except SQLAlchemyError as exc:
                log.warning("account %s: cannot release the lease (it lapses by itself): %s", account_id, first_line(exc))


async def _renew_forever(engine: Engine, held: set[str], holder: str, ttl_seconds: float) -> None:
    while True:
        await asyncio.sleep(ttl_seconds / 3)
        try:
            renew(engine, held, holder, ttl_seconds, datetime.now(UTC))
        except SQLAlchemyError as exc:
            log.warning("cannot renew leases: %s", first_line(exc))


def release(engine: Engine, account_id: str, holder: str) -> None:
    """Give the account up at once (on a clean shutdown), if we hold it."""
    with engine.begin() as conn:
        conn.execute(delete(leases).where(c.account_id == account_id, c.holder == holder))
