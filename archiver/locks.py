"""Per-account leases in the database, so that several workers never poll one account at once.

A lease row names its holder and when it lapses. The holder renews it on a heartbeat, between
cycles and during them; a worker that dies simply stops renewing, and another takes the account
over once the lease has lapsed. This
works the same on SQLite, PostgreSQL and MariaDB, and needs no connection held open.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from archiver.models import AccountLease

leases = AccountLease.__table__
c = leases.c


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


def release(engine: Engine, account_id: str, holder: str) -> None:
    """Give the account up at once (on a clean shutdown), if we hold it."""
    with engine.begin() as conn:
        conn.execute(delete(leases).where(c.account_id == account_id, c.holder == holder))
