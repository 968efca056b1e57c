"""The emulator in a child process, driven over a pipe.

Run in its own process, the emulator's request handling neither shares the archiver's GIL nor
counts in its CPU time or peak RSS, so the figures measured in the archiver's process are its own.
"""

from __future__ import annotations

import multiprocessing
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from archiver.emulator import Emulator

# Spawned, not forked: a fresh interpreter that holds none of the parent's memory.
CONTEXT = multiprocessing.get_context("spawn")
START_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class Endpoint:
    """Where the emulator serves and what it accepts."""

    base_url: str
    token: str
    account_ids: tuple[str, ...]


class RemoteEmulator:
    """An :class:`Emulator` serving on loopback in a child process; use as a context manager."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self._pipe: Connection | None = None
        self._process: Any = None
        self.endpoint: Endpoint | None = None

    def __enter__(self) -> RemoteEmulator:
        parent, child = CONTEXT.Pipe()
        self._process = CONTEXT.Process(target=_serve, args=(child, self.options), name="bench-emulator", daemon=True)
        self._process.start()
        child.close()
        self._pipe = parent
        if not parent.poll(START_TIMEOUT_SECONDS):
            raise RuntimeError("the emulator did not start in time")
        self.endpoint = Endpoint(*_unwrap(parent.recv()))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pipe is not None:
            try:
                self._pipe.send(("stop", (), {}))
                self._pipe.recv()
            except (EOFError, OSError):
                pass
            self._pipe.close()
        if self._process is not None:
            self._process.join(10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join()

    def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """Run one of :data:`COMMANDS` in the emulator's process and return its result."""
        assert self._pipe is not None, "the emulator is not running"
        self._pipe.send((command, args, kwargs))
        return _unwrap(self._pipe.recv())


def _unwrap(message: tuple[str, Any]) -> Any:
    status, value = message
    if status == "error":
        raise RuntimeError(f"emulator process: {value}")
    return value


def churn(emulator: Emulator, account_id: str, closed: int, started: int, connected: int) -> dict[str, int]:
    """Close the oldest ``closed`` sessions, start ``started`` new ones and connect ``connected``
    sessions that were not yet connected: a steady state of a known number of changes."""
    world = emulator.world(account_id)
    with world.lock:
        active = list(world.active)
        for session_id in active[:closed]:
            world.close(session_id)
        unconnected = [s for s in world.active if world.sessions[s].connection_start_ms is None]
        for session_id in unconnected[:connected]:
            world.connect(session_id)
        for _ in range(started):
            world.start_session()
    emulator.clock.advance(0.001)  # the next listing is taken a moment later
    return {"closed": min(closed, len(active)), "started": started, "connected": min(connected, len(unconnected))}


def populate(emulator: Emulator, account_id: str, sessions: int) -> int:
    """Start ``sessions`` long-lived sessions at once; return how many are active."""
    world = emulator.world(account_id)
    with world.lock:
        for _ in range(sessions):
            world.start_session()
        return len(world.active)


def prime(emulator: Emulator, account_id: str) -> int:
    """Build and encode the account's listing as the first request for it would: a big listing's
    first pass costs the emulator (not the archiver) a fifth of a second per 10,000 sessions, which
    a timed sync should not wait out. Returns the number of listed sessions."""
    world = emulator.world(account_id)
    size = len(world.listing())
    world.page_json(0, size)
    return size


def active_count(emulator: Emulator, account_id: str) -> int:
    return len(emulator.world(account_id).active)


def burst(emulator: Emulator, count: int, lifetime_s: float, within_s: float) -> None:
    """Start ``count`` short-lived sessions in every account (see World.burst)."""
    for account_id in emulator.account_ids:
        emulator.world(account_id).burst(count, lifetime_s, within_s)


def evict(emulator: Emulator) -> int:
    """Close every open session of every account at once; return how many."""
    return sum(len(emulator.world(account_id).evict()) for account_id in emulator.account_ids)


def set_spawn_rate(emulator: Emulator, per_minute: float) -> None:
    for account_id in emulator.account_ids:
        world = emulator.world(account_id)
        with world.lock:
            world.advance()
            world.spawn_per_minute = per_minute
            world.reschedule_spawn()


def request_log(emulator: Emulator) -> list[tuple[float, str, int]]:
    return [(r.at_ms, r.endpoint, r.status) for r in emulator.request_log or []]


COMMANDS = {
    "churn": churn,
    "populate": populate,
    "prime": prime,
    "active_count": active_count,
    "truth": lambda emulator, account_id=None: emulator.truth(account_id),
    "stats": lambda emulator: emulator.stats(),
    "set_faults": lambda emulator, **values: emulator.set_faults(**values).to_json(),
    "advance": lambda emulator, seconds: emulator.clock.advance(seconds),
    "now_ms": lambda emulator: emulator.clock.now_ms(),
    "burst": burst,
    "evict": evict,
    "set_spawn_rate": set_spawn_rate,
    "request_log": request_log,
}


def _serve(pipe: Connection, options: dict[str, Any]) -> None:
    emulator = Emulator(**options)
    info = emulator.start(0)
    pipe.send(("ok", (info.base_url, emulator.token, tuple(emulator.account_ids))))
    try:
        while True:
            command, args, kwargs = pipe.recv()
            if command == "stop":
                pipe.send(("ok", None))
                return
            try:
                pipe.send(("ok", COMMANDS[command](emulator, *args, **kwargs)))
            except Exception:  # reported to the parent, which raises it there
                pipe.send(("error", traceback.format_exc(limit=3)))
    except (EOFError, KeyboardInterrupt):
        return
    finally:
        emulator.stop()
