"""A client-side rate limiter shared by every request made with one API token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RateLimiter:
    """Spaces requests at most ``rate`` per second, and holds every caller back after a 429.

    A generic cell-rate scheme with a burst of one: each caller reserves the next free slot and
    sleeps until it. ``hold_off`` pushes all slots past a Retry-After so that callers already
    asleep do not fire into a block (Cloudflare blocks the whole token for minutes).
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not rate > 0:  # also refuses NaN
            raise ValueError("rate must be positive")
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next_slot = 0.0
        self._blocked_until = 0.0

    async def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        waited = 0.0
        while True:
            now = self._clock()
            slot = max(now, self._next_slot, self._blocked_until)
            self._next_slot = slot + self._interval
            if slot <= now:
                return waited
            await self._sleep(slot - now)
            waited += slot - now
            if self._clock() >= self._blocked_until:
                return waited

    def hold_off(self, seconds: float) -> None:
        """Let no request through for the next ``seconds``."""
        self._blocked_until = max(self._blocked_until, self._clock() + seconds)


class TokenBucket:
    """An average-rate budget with a burst allowance: ``rate`` tokens per second, at most
    ``capacity`` saved up. Keeps the archiver within its share of Cloudflare's 5-minute quota."""

    def __init__(
        self,
        rate: float,
        capacity: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not rate > 0 or not capacity >= 1:
            raise ValueError("rate must be positive and capacity at least 1")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity
        self._updated = clock()

    @property
    def available(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens

    async def acquire(self) -> float:
        """Take one token, waiting for it if needed; return the seconds waited."""
        waited = 0.0
        while True:
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                return waited
            wait = (1 - self._tokens) / self.rate
            await self._sleep(wait)
            waited += wait

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
