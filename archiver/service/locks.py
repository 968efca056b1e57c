"""Per-account leases in the database, so that several workers never poll one account at once.

A lease row names its holder and when it lapses. The holder renews it on a heartbeat, between
cycles and during them; a worker that dies simply stops renewing, and another takes the account
over once the lease has lapsed; a holder that is a process of this host known to be dead (its pid
is gone, or belongs to another process now) is taken over at once. This works the same on SQLite,
PostgreSQL and MariaDB, and needs no connection held open.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from archiver.archive.models import leases_table
from archiver.errors import LeaseLostError

log = logging.getLogger(__name__)
leases: Table = leases_table
c = leases.c


def lease_seconds(interval_seconds: float) -> float:
    """How long a lease lasts: renewed every third of its life, it survives two missed renewals,
    yet lapses soon enough after its holder dies that another worker takes over within two intervals."""
    return max(0.75 * interval_seconds, 1.0)


def worker_id() -> str:
    """This process as a lease holder and in the ledger: host, pid, and the process's start time
    where the system tells it, so that a later process given the same pid is not taken for it."""
    pid = os.getpid()
    facts = _process_facts(pid)
    return f"{socket.gethostname()}:{pid}" + (f":{facts[1]}" if facts else "")


def holder_is_dead(holder: str) -> bool:
    """Whether a holder named by :func:`worker_id` is a process of this host that no longer runs:
    its pid is gone or a zombie, or now belongs to a process that started at another time."""
    host, _, rest = holder.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another host's process (or a name we did not write): only its lease tells
    pid = int(pid_text)
    if pid == os.getpid():
        return holder != worker_id()  # our pid, so an earlier process that had it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it runs, as another user
    facts = _process_facts(pid)
    if facts is None:
        return False  # no /proc here: the pid is taken, so assume it is the holder
    state, current_start = facts
    return state == "Z" or (bool(started) and current_start != started)


def _process_facts(pid: int) -> tuple[str, str] | None:
    """A process's state letter and start time (clock ticks since boot) on Linux, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The fields after the command name, which may itself hold spaces and parentheses: the state
    # is the line's 3rd field, the start time its 22nd.
    fields = stat.rpartition(")")[2].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def acquire(engine: Engine, account_id: str, holder: str, ttl_seconds: float, now: datetime) -> bool:
    """Take or renew the account's lease; False if another live holder has it.

    A holder whose lease is still valid but that is a dead process of this host (a one-shot sync
    killed mid-cycle, say) is taken over at once rather than after its lease lapses.
    """
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
        pass  # a row exists and is someone else's, still valid
    current = holder_of(engine, account_id)
    if current is None or not holder_is_dead(current):
        return False
    with engine.begin() as conn:
        taken = conn.execute(
            update(leases)
            .where(c.account_id == account_id, c.holder == current)
            .values(holder=holder, expires_at=expires, acquired_at=now)
        )
    if taken.rowcount == 1:
        log.info("account %s: took the lease over from %s, a process of this host that no longer runs", account_id, current)
    return taken.rowcount == 1


def renew(engine: Engine, account_ids: Iterable[str], holder: str, ttl_seconds: float, now: datetime) -> set[str]:
    """Extend the leases we hold among ``account_ids``; return the accounts still ours.

    A lease that lapsed while nobody took it over (say, the database was away for a while) is
    still ours: the holder column, changed only by a taker, says who owns an account.

    A lease row locked by a transaction under way is left alone (SKIP LOCKED): it is one of our
    cycles' writes, whose fence renews the lease when it commits, or a taker's, whose outcome the
    next renewal sees. Waiting for it would make one account's stalled write hold back the
    renewal of every lease, and through them every other account's writes.
    """
    ids = list(account_ids)
    if not ids:
        return set()
    with engine.begin() as conn:
        ours = set(conn.scalars(select(c.account_id).where(c.account_id.in_(ids), c.holder == holder)))
        free = list(conn.scalars(
            select(c.account_id).where(c.account_id.in_(ours), c.holder == holder).with_for_update(skip_locked=True)
        )) if ours else []
        if free:
            conn.execute(update(leases).where(c.account_id.in_(free)).values(expires_at=now + timedelta(seconds=ttl_seconds)))
    return ours


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


def live_holders(conn: Connection, now: datetime) -> set[str]:
    """The workers whose leases are valid now."""
    return set(conn.scalars(select(c.holder).where(c.expires_at >= now)))


def held_by_others(conn: Connection, holder: str, now: datetime) -> set[str]:
    """The accounts whose lease another worker holds, valid now."""
    return set(conn.scalars(select(c.account_id).where(c.expires_at >= now, c.holder != holder)))


def holder_of(engine: Engine, account_id: str) -> str | None:
    """Who holds the account's lease (live or lapsed), if anyone."""
    with engine.connect() as conn:
        return conn.scalar(select(c.holder).where(c.account_id == account_id))


def release(engine: Engine, account_id: str, holder: str) -> None:
    """Give the account up at once (on a clean shutdown), if we hold it."""
    with engine.begin() as conn:
        conn.execute(delete(leases).where(c.account_id == account_id, c.holder == holder))
