"""The client-side rate limiter, on a simulated clock (no real waiting)."""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from archiver.ratelimit import RateLimiter


class VirtualTime:
    """A discrete-event clock: ``sleep`` parks the caller until ``run`` advances time to its wake-up."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.start = start
        self.sleeps: list[float] = []
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0, f"slept {seconds}"
        self.sleeps.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (self.now + seconds, self._seq, future))
        self._seq += 1
        await future

    async def at(self, offset: float, action: Callable[[], Any]) -> None:
        """Run ``action`` at ``start + offset`` of simulated time."""
        if self.start + offset > self.now:
            await self.sleep(self.start + offset - self.now)
        action()

    async def run(self, *coros: Awaitable[Any]) -> list[Any]:
        tasks = [asyncio.ensure_future(c) for c in coros]
        while not all(t.done() for t in tasks):
            for _ in range(20):  # let every runnable task reach its next sleep (or finish)
                await asyncio.sleep(0)
            if not self._waiters:
                continue
            when, _, future = heapq.heappop(self._waiters)
            self.now = max(self.now, when)
            future.set_result(None)
        return [t.result() for t in tasks]

    def elapsed(self) -> float:
        return self.now - self.start


def make(rate: float, vt: VirtualTime) -> RateLimiter:
    return RateLimiter(rate, clock=vt.clock, sleep=vt.sleep)


async def timed_acquire(limiter: RateLimiter, vt: VirtualTime) -> tuple[float, float]:
    """(simulated time the slot was granted, seconds the limiter reported waiting)."""
    waited = await limiter.acquire()
    return vt.elapsed(), waited


@pytest.mark.parametrize(
    ("rate", "callers"),
    [(1.0, 4), (2.0, 5), (4.0, 9), (0.5, 3)],
    ids=["1-per-s", "2-per-s", "4-per-s", "one-every-2s"],
)
def test_concurrent_callers_are_spaced_at_the_rate(rate: float, callers: int) -> None:
    vt = VirtualTime()
    limiter = make(rate, vt)

    async def main() -> list[tuple[float, float]]:
        return await vt.run(*(timed_acquire(limiter, vt) for _ in range(callers)))

    results = asyncio.run(main())
    granted = sorted(t for t, _ in results)
    interval = 1.0 / rate
    assert granted == pytest.approx([i * interval for i in range(callers)])
    # Each caller reports the time it actually waited.
    for at, waited in results:
        assert waited == pytest.approx(at)


def test_first_call_does_not_wait() -> None:
    vt = VirtualTime()
    limiter = make(3.0, vt)
    assert asyncio.run(limiter.acquire()) == 0.0
    assert vt.sleeps == []


def test_sequential_calls_wait_only_the_remaining_interval() -> None:
    vt = VirtualTime()
    limiter = make(2.0, vt)  # one slot every 0.5 s

    async def main() -> list[float]:
        waits = [await limiter.acquire()]
        vt.now += 0.2  # work between requests
        waits.append(await limiter.acquire())
        vt.now += 2.0  # idle for a while: no debt, no burst credit beyond one
        waits.append(await limiter.acquire())
        waits.append(await limiter.acquire())
        return waits

    waits = asyncio.run(vt_run_single(vt, main()))
    assert waits == pytest.approx([0.0, 0.3, 0.0, 0.5])


async def vt_run_single(vt: VirtualTime, coro: Awaitable[Any]) -> Any:
    (result,) = await vt.run(coro)
    return result


def test_hold_off_delays_new_callers() -> None:
    vt = VirtualTime()
    limiter = make(10.0, vt)

    async def main() -> list[tuple[float, float]]:
        await limiter.acquire()
        limiter.hold_off(5.0)
        return await vt.run(timed_acquire(limiter, vt), timed_acquire(limiter, vt))

    results = sorted(asyncio.run(main()))
    assert [t for t, _ in results] == pytest.approx([5.0, 5.1])
    assert [w for _, w in results] == pytest.approx([5.0, 5.1])


def test_hold_off_delays_callers_already_waiting() -> None:
    vt = VirtualTime()
    limiter = make(10.0, vt)  # slots at 0.0, 0.1, 0.2, ...

    async def main() -> list[Any]:
        return await vt.run(
            timed_acquire(limiter, vt),
            timed_acquire(limiter, vt),
            timed_acquire(limiter, vt),
            vt.at(0.05, lambda: limiter.hold_off(2.0)),  # a 429 arrives while two callers sleep
        )

    results = asyncio.run(main())
    granted = sorted(t for t, _ in results[:3])
    assert granted[0] == pytest.approx(0.0)
    # Neither sleeper fires into the block; they resume one interval apart after it.
    assert granted[1] >= 2.05 - 1e-9
    assert granted[1:] == pytest.approx([2.05, 2.15])
    for at, waited in results[:3]:
        assert waited == pytest.approx(at)


def test_hold_off_never_shortens_an_existing_block() -> None:
    vt = VirtualTime()
    limiter = make(100.0, vt)

    async def main() -> tuple[float, float]:
        limiter.hold_off(3.0)
        limiter.hold_off(1.0)
        return await timed_acquire(limiter, vt)

    at, waited = asyncio.run(vt_run_single(vt, main()))
    assert at == pytest.approx(3.0)
    assert waited == pytest.approx(3.0)


def test_hold_off_in_the_past_has_no_effect() -> None:
    vt = VirtualTime()
    limiter = make(1.0, vt)

    async def main() -> float:
        limiter.hold_off(1.0)
        vt.now += 10.0
        return await limiter.acquire()

    assert asyncio.run(vt_run_single(vt, main())) == 0.0


def test_real_clock_and_sleep_are_the_defaults() -> None:
    limiter = RateLimiter(50.0)  # 20 ms apart

    async def main() -> tuple[list[float], float]:
        started = time.monotonic()
        waits = [await limiter.acquire() for _ in range(3)]
        return waits, time.monotonic() - started

    waits, elapsed = asyncio.run(main())
    assert waits[0] == 0.0
    assert all(w >= 0 for w in waits)
    assert elapsed >= 0.04 - 0.002  # the third slot is two intervals after the first


@pytest.mark.parametrize(
    "rate",
    [
        0.0,
        -1.0,
        -math.inf,
        math.nan,
    ],
    ids=["zero", "negative", "minus-inf", "nan"],
)
def test_invalid_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate)
