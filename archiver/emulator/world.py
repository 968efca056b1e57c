"""One account's simulated browser sessions: they start, connect, disconnect and close with a
reason on the simulated clock; closed ones leave the list at once and are forgotten later."""

from __future__ import annotations

import heapq
import itertools
import json
import math
import random
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from archiver.emulator.clock import Clock

# (string form, numeric code, human text): the older spec sends the string, newer SDKs the code.
# Cloudflare documents the codes 1 (NormalClosure) and 2 (BrowserIdle) only; a reason without a
# documented code (None) is sent as its string whatever the style.
CloseReason = tuple[str, int | None, str]
CLOSE_REASONS: tuple[CloseReason, ...] = (
    ("NormalClosure", 1, "Normal closure"),
    ("BrowserIdle", 2, "Browser idle"),
    ("ConnectionError", None, "Connection error"),
    ("ChromiumCrashed", None, "Chromium crashed"),
    ("SessionEvicted", None, "Session evicted"),
)
# Evictions come from World.evict (infrastructure maintenance closes every session at once).
REASON_WEIGHTS = (60, 30, 6, 4, 0)
NEVER = float("inf")


@dataclass
class SimSession:
    session_id: str
    start_ms: float
    numeric_reason: bool
    secret: str
    connection_id: str | None = None
    connection_start_ms: float | None = None
    connection_end_ms: float | None = None
    end_ms: float | None = None
    reason: CloseReason | None = None
    last_updated_ms: float = 0.0
    forgotten_ms: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The object Cloudflare would return for this session."""
        ws = f"live.browser.run/api/devtools/browser/{self.session_id}?jwt={self.secret}"
        reason = None
        if self.reason is not None:
            code = self.reason[1]
            reason = code if self.numeric_reason and code is not None else self.reason[0]
        return {
            "sessionId": self.session_id,
            "startTime": self.start_ms,
            "endTime": self.end_ms,
            "connectionStartTime": self.connection_start_ms,
            "connectionEndTime": self.connection_end_ms,
            "lastUpdated": self.last_updated_ms,
            "connectionId": self.connection_id,
            "closeReason": reason,
            "closeReasonText": self.reason[2] if self.reason else None,
            "devtoolsFrontendUrl": f"https://live.browser.run/devtools/inspector.html?wss={ws}",
            "webSocketDebuggerUrl": f"wss://{ws}",
        }


class World:
    """The sessions of one account. Thread-safe; advances lazily to the clock's now."""

    def __init__(
        self,
        account_id: str,
        clock: Clock,
        rng: random.Random,
        *,
        initial_sessions: int = 20,
        spawn_per_minute: float = 30.0,
        mean_lifetime_s: float = 60.0,
        retention_s: float = 300.0,
        close_reason_style: str = "mixed",
        median_lifetime_s: float | None = None,
        lifetime_sigma: float = 1.0,
    ) -> None:
        """Sessions arrive as a Poisson process (``spawn_per_minute``) and live an exponential
        time of mean ``mean_lifetime_s``, or, with ``median_lifetime_s``, a log-normal time of that
        median and shape ``lifetime_sigma`` (most short, a long tail, as real browser sessions)."""
        if close_reason_style not in ("string", "number", "mixed"):
            raise ValueError("close_reason_style must be string, number or mixed")
        self.account_id = account_id
        self.clock = clock
        self.rng = rng
        self.spawn_per_minute = spawn_per_minute
        self.mean_lifetime_s = mean_lifetime_s
        self.retention_s = retention_s
        self.close_reason_style = close_reason_style
        self.median_lifetime_s = median_lifetime_s
        self.lifetime_sigma = lifetime_sigma
        self.lock = threading.RLock()
        self.sessions: dict[str, SimSession] = {}
        self.active: dict[str, SimSession] = {}
        self._snapshot: list[dict[str, Any]] | None = None
        self._encoded: list[bytes | None] = []  # the snapshot's items as JSON, encoded on demand
        self._events: list[tuple[float, int, str, str]] = []
        self._planned: list[tuple[float, int, float]] = []  # sessions to start later: (start, seq, lifetime)
        self._sequence = itertools.count()
        now = clock.now_ms()
        self._now = now
        self._next_spawn = now + self._spawn_gap_ms()
        for start, lifetime_ms in sorted(self._already_open(now) for _ in range(initial_sessions)):
            self._spawn(start, lifetime_ms=lifetime_ms, connect=True, past=True)

    # -- reading ------------------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """The active sessions in list order (by start); cached until something changes."""
        with self.lock:
            self.advance()
            if self._snapshot is None:
                self._snapshot = [s.public() for s in self.active.values()]
                self._encoded = [None] * len(self._snapshot)
            return self._snapshot

    def page_json(self, offset: int, limit: int) -> bytes:
        """One page of the listing as the JSON array the API returns. Each item is encoded once
        per snapshot, so that paging through a large list costs the emulator next to nothing."""
        with self.lock:
            items = self.listing()[offset : offset + limit]
            encoded = self._encoded
            for index, item in enumerate(items, start=offset):
                if encoded[index] is None:
                    encoded[index] = json.dumps(item, separators=(",", ":")).encode()
            return b"[" + b",".join(encoded[offset : offset + len(items)]) + b"]"  # type: ignore[arg-type]

    def get(self, session_id: str) -> dict[str, Any] | None:
        """One session's object, or None if unknown or forgotten."""
        with self.lock:
            self.advance()
            session = self.sessions.get(session_id)
            if session is None or session.forgotten_ms is not None:
                return None
            return session.public()

    def truth(self) -> list[dict[str, Any]]:
        """Every session this world ever had, with its state and when it closed / was forgotten."""
        with self.lock:
            self.advance()
            return [
                {
                    **s.public(),
                    "closedAtMs": s.end_ms,
                    "forgottenAtMs": s.forgotten_ms,
                    "active": s.session_id in self.active,
                }
                for s in self.sessions.values()
            ]

    # -- manual control -----------------------------------------------------------------------

    def start_session(self, lifetime_s: float | None = None, connect: bool = False) -> str:
        """Start a session now; it closes by itself only if ``lifetime_s`` is given."""
        with self.lock:
            self.advance()
            lifetime = NEVER if lifetime_s is None else lifetime_s * 1000
            return self._spawn(self._now, lifetime_ms=lifetime, connect=False, past=False, connect_now=connect)

    def connect(self, session_id: str) -> None:
        with self.lock:
            self.advance()
            self._connect(self.sessions[session_id], self._now)

    def disconnect(self, session_id: str) -> None:
        with self.lock:
            self.advance()
            self._disconnect(self.sessions[session_id], self._now)

    def close(self, session_id: str, reason: str | None = None) -> None:
        """Close a session now, with the named reason (string form) or a random one."""
        with self.lock:
            self.advance()
            chosen = next((r for r in CLOSE_REASONS if r[0] == reason), None) if reason else None
            self._close(self.sessions[session_id], self._now, chosen)

    def burst(self, count: int, lifetime_s: float, within_s: float) -> None:
        """Start ``count`` sessions at random moments of the next ``within_s`` seconds, each living
        ``lifetime_s`` give or take a quarter (a batch job's browsers, say)."""
        with self.lock:
            self.advance()
            for _ in range(count):
                start = self._now + self.rng.uniform(0, within_s * 1000)
                lifetime = lifetime_s * 1000 * self.rng.uniform(0.75, 1.25)
                heapq.heappush(self._planned, (start, next(self._sequence), lifetime))

    def evict(self) -> list[str]:
        """Close every active session now as evicted (infrastructure maintenance); return their ids."""
        with self.lock:
            self.advance()
            evicted = list(self.active)
            reason = next(r for r in CLOSE_REASONS if r[0] == "SessionEvicted")
            for session_id in evicted:
                self._close(self.sessions[session_id], self._now, reason)
            return evicted

    def forget(self, session_id: str) -> None:
        """Make a session answer 404 from now on."""
        with self.lock:
            self.advance()
            session = self.sessions[session_id]
            if session.session_id in self.active:
                self._close(session, self._now, None)
            session.forgotten_ms = self._now

    def close_one_before(self, index: int) -> bool:
        """Close a random active session at a list position below ``index`` (page drift)."""
        with self.lock:
            ids = list(self.active)[: max(0, min(index, len(self.active)))]
            if not ids:
                return False
            self._close(self.active[self.rng.choice(ids)], self._now, None)
            return True

    # -- simulation ---------------------------------------------------------------------------

    def advance(self) -> None:
        """Process every spawn and event due up to the clock's now, in time order."""
        with self.lock:
            now = max(self._now, self.clock.now_ms())
            while True:
                next_event = self._events[0][0] if self._events else NEVER
                if self._planned and self._planned[0][0] <= min(now, next_event):
                    at, _seq, lifetime = heapq.heappop(self._planned)
                    self._spawn(at, lifetime_ms=lifetime, connect=True, past=False)
                    continue
                if self.spawn_per_minute > 0 and self._next_spawn <= min(now, next_event):
                    at = self._next_spawn
                    self._next_spawn += self._spawn_gap_ms()
                    self._spawn(at, lifetime_ms=self._lifetime_ms(), connect=True, past=False)
                    continue
                if next_event > now:
                    break
                at, _seq, kind, session_id = heapq.heappop(self._events)
                self._apply(kind, self.sessions[session_id], at)
            self._now = now

    def reschedule_spawn(self) -> None:
        """Draw the next arrival afresh, after ``spawn_per_minute`` changed."""
        with self.lock:
            self._next_spawn = self._now + self._spawn_gap_ms()

    def _lifetime_ms(self) -> float:
        if self.median_lifetime_s is not None:
            return self.rng.lognormvariate(math.log(self.median_lifetime_s * 1000), self.lifetime_sigma)
        return self.rng.expovariate(1.0) * self.mean_lifetime_s * 1000

    def _already_open(self, now: float) -> tuple[float, float]:
        """(start, lifetime) of a session open when the world begins."""
        if self.median_lifetime_s is not None:
            # A whole life drawn, and the moment of it we are at drawn within it.
            lifetime = self._lifetime_ms()
            return now - self.rng.uniform(0, lifetime), lifetime
        # Began within the last hour (at most); lifetimes are memoryless, so the remaining life
        # is drawn afresh from now.
        start = now - self.rng.uniform(0, min(self.mean_lifetime_s, 3600.0) * 1000)
        return start, now - start + self.rng.expovariate(1.0) * self.mean_lifetime_s * 1000

    def _spawn_gap_ms(self) -> float:
        if self.spawn_per_minute <= 0:
            return NEVER
        return self.rng.expovariate(self.spawn_per_minute / 60_000)

    def _spawn(self, start: float, *, lifetime_ms: float, connect: bool, past: bool, connect_now: bool = False) -> str:
        session_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        numeric = self.close_reason_style == "number" or (self.close_reason_style == "mixed" and self.rng.random() < 0.5)
        session = SimSession(session_id, start, numeric, secrets.token_urlsafe(24), last_updated_ms=start)
        self.sessions[session_id] = session
        self.active[session_id] = session
        self._snapshot = None
        close_at = start + lifetime_ms
        if connect_now:
            self._connect(session, start)
        elif connect and self.rng.random() < 0.9:
            connect_at = start + self.rng.uniform(200, 2000)
            if connect_at < close_at:
                if past and connect_at <= self._now:
                    self._connect(session, connect_at)
                else:
                    self._schedule(connect_at, "connect", session_id)
                if self.rng.random() < 0.2:
                    self._schedule(connect_at + (close_at - connect_at) * self.rng.uniform(0.5, 0.95), "disconnect", session_id)
        if close_at != NEVER:
            self._schedule(close_at, "close", session_id)
        return session_id

    def _schedule(self, at: float, kind: str, session_id: str) -> None:
        heapq.heappush(self._events, (at, next(self._sequence), kind, session_id))

    def _apply(self, kind: str, session: SimSession, at: float) -> None:
        if kind == "connect":
            self._connect(session, at)
        elif kind == "disconnect":
            self._disconnect(session, at)
        elif kind == "close":
            self._close(session, at, None)
        elif kind == "forget" and session.forgotten_ms is None:
            session.forgotten_ms = at

    def _connect(self, session: SimSession, at: float) -> None:
        if session.end_ms is not None or session.connection_start_ms is not None:
            return
        session.connection_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        session.connection_start_ms = at
        self._touch(session, at)

    def _disconnect(self, session: SimSession, at: float) -> None:
        if session.end_ms is not None or session.connection_start_ms is None or session.connection_end_ms is not None:
            return
        session.connection_end_ms = at
        self._touch(session, at)

    def _close(self, session: SimSession, at: float, reason: CloseReason | None) -> None:
        if session.end_ms is not None:
            return
        if session.connection_start_ms is not None and session.connection_end_ms is None:
            session.connection_end_ms = at
        session.end_ms = at
        session.reason = reason or self.rng.choices(CLOSE_REASONS, weights=REASON_WEIGHTS)[0]
        self.active.pop(session.session_id, None)
        self._touch(session, at)
        self._schedule(at + self.retention_s * 1000, "forget", session.session_id)

    def _touch(self, session: SimSession, at: float) -> None:
        session.last_updated_ms = at
        if session.session_id in self.active or session.end_ms == at:
            self._snapshot = None
