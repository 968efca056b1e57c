"""The request scheduler of a token, on a simulated clock (no real waiting): the peak rate, the
budget as a count over any window, the listings' reserve, priorities, deadlines and 429 hold-offs."""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from archiver.api.scheduler import Deadline, Grant, Priority, RequestScheduler, shared_scheduler
from archiver.errors import DeadlineReached


class VirtualTime:
    """A discrete-event clock: ``sleep`` parks the caller until ``run`` advances time to its
    wake-up. A sleep cancelled before it ends (the scheduler woken early) moves no time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.start = start
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (self.now + max(0.0, seconds), self._seq, future))
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
            for _ in range(30):  # let every runnable task reach its next sleep (or finish)
                await asyncio.sleep(0)
            while self._waiters and self._waiters[0][2].done():
                heapq.heappop(self._waiters)  # cancelled: no time passes for it
            if not self._waiters:
                continue
            when, _, future = heapq.heappop(self._waiters)
            self.now = max(self.now, when)
            future.set_result(None)
        return [t.result() if not t.cancelled() else None for t in tasks]

    def elapsed(self) -> float:
        return self.now - self.start


def make(vt: VirtualTime, rate: float, **kwargs: Any) -> RequestScheduler:
    return RequestScheduler(peak_rate=rate, clock=vt.clock, sleep=vt.sleep, **kwargs)


async def timed(scheduler: RequestScheduler, vt: VirtualTime, priority: Priority = Priority.LIST, key: float = 0.0,
                deadline: Deadline | None = None, label: Any = None, place: int | None = None) -> tuple[float, Grant, Any]:
    """(simulated time the request was granted, its grant, a label to tell callers apart)."""
    grant = await scheduler.acquire(priority, key, deadline, place)
    return vt.elapsed(), grant, label


def run(vt: VirtualTime, *coros: Awaitable[Any]) -> list[Any]:
    return asyncio.run(vt.run(*coros))


# -- the peak rate -------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "callers"), [(1.0, 4), (2.0, 5), (4.0, 9), (0.5, 3)],
                         ids=["1-per-s", "2-per-s", "4-per-s", "one-every-2s"])
def test_concurrent_callers_are_spaced_at_the_peak_rate(rate: float, callers: int) -> None:
    vt = VirtualTime()
    scheduler = make(vt, rate)
    results = run(vt, *(timed(scheduler, vt) for _ in range(callers)))
    granted = sorted(at for at, _, _ in results)
    assert granted == pytest.approx([i / rate for i in range(callers)])
    for at, grant, _ in results:  # each caller is told how long it waited
        assert grant.waited == pytest.approx(at) and grant.throttled == 0


def test_sequential_requests_wait_only_the_rest_of_the_spacing() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 2.0)  # one every 0.5 s

    async def main() -> list[float]:
        waits = [(await scheduler.acquire(Priority.LIST)).waited]
        vt.now += 0.2  # work between requests
        waits.append((await scheduler.acquire(Priority.LIST)).waited)
        vt.now += 2.0  # idle for a while: no burst credit beyond one
        waits.append((await scheduler.acquire(Priority.LIST)).waited)
        waits.append((await scheduler.acquire(Priority.LIST)).waited)
        return waits

    (waits,) = run(vt, main())
    assert waits == pytest.approx([0.0, 0.3, 0.0, 0.5])


# -- the budget's window and the listings' reserve ----------------------------------------------


def test_no_window_ever_holds_more_than_the_budget() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 100.0, limit=10, window=60.0)
    results = run(vt, *(timed(scheduler, vt, Priority.LIST) for _ in range(35)))
    granted = sorted(at for at, _, _ in results)
    for start in granted:
        assert sum(1 for t in granted if start <= t < start + 60.0) <= 10
    assert granted[:10] == pytest.approx([i * 0.01 for i in range(10)])  # the budget is a count, not an average
    assert granted[10] == pytest.approx(60.0)  # the 11th waits for the first to leave the window
    assert scheduler.most_in_window == 10


def test_details_leave_the_listings_reserve_free() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 100.0, limit=10, window=60.0)
    scheduler.listing_reserve = 4

    async def listing_later() -> tuple[float, Grant, Any]:
        await vt.sleep(1.0)  # arrives after the details have taken their share
        return await timed(scheduler, vt, Priority.LIST, label="list")

    details = [timed(scheduler, vt, Priority.NEW, label="detail") for _ in range(8)]
    results = run(vt, *details, listing_later(), *(timed(scheduler, vt, Priority.LIST, label="list") for _ in range(3)))
    early = sorted((at, label) for at, _, label in results if at < 60.0)
    assert [label for _, label in early].count("detail") == 6  # 10 - the reserve of 4
    assert [label for _, label in early].count("list") == 4  # every listing went through in the first window
    assert max(at for at, _, label in results if label == "list") == pytest.approx(1.0)


def test_a_reserve_as_large_as_the_budget_stops_details_until_it_shrinks() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 100.0, limit=5, window=60.0)
    scheduler.listing_reserve = 5

    async def shrink() -> None:
        await vt.sleep(3.0)
        scheduler.listing_reserve = 2

    results = run(vt, timed(scheduler, vt, Priority.VANISHED), shrink())
    assert results[0][0] == pytest.approx(3.0)


def test_requests_made_before_the_scheduler_count_against_the_window() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 100.0, limit=12, window=300.0)
    scheduler.count_earlier([100.0] * 10 + [400.0] * 50)  # the ledger: 10 in this window, 50 long gone
    results = run(vt, *(timed(scheduler, vt, Priority.LIST) for _ in range(4)))
    granted = sorted(at for at, _, _ in results)
    assert granted[:2] == pytest.approx([0.0, 0.01])
    assert granted[2:] == pytest.approx([200.0, 200.01])  # when the earlier ten leave the window


def test_listings_beyond_the_planned_reserve_keep_their_room_in_the_window() -> None:
    # The reserve was planned for one-page listings, but the window holds eight listing pages
    # (the listings were larger a moment ago): details leave room for those, not only for four.
    vt = VirtualTime()
    scheduler = make(vt, 1000.0, limit=20, window=100.0)
    scheduler.listing_reserve = 4
    run(vt, *(timed(scheduler, vt, Priority.LIST) for _ in range(8)))
    results = run(vt, *(timed(scheduler, vt, Priority.VANISHED) for _ in range(20)))
    assert sum(1 for at, _, _ in results if at < 100.0) == 12  # 20 - 8


# -- priorities ----------------------------------------------------------------------------------


def test_waiting_requests_go_by_priority_then_key() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 1.0)
    waiting = [
        (Priority.NEW, 1.0, "new-1"), (Priority.CHANGED, 5.0, "changed"), (Priority.VANISHED, 9.0, "vanished-late"),
        (Priority.CLOSING, 0.0, "closing"), (Priority.VANISHED, 2.0, "vanished-early"), (Priority.NEW, 0.5, "new-0"),
        (Priority.LIST, 0.0, "list"),
    ]

    async def first_then_the_rest() -> list[Any]:
        await scheduler.acquire(Priority.LIST)  # holds the slot while the others queue up
        return await asyncio.gather(*(timed(scheduler, vt, p, k, label=name) for p, k, name in waiting))

    (results,) = run(vt, first_then_the_rest())
    order = [label for _, _, label in sorted(results, key=lambda r: r[0])]
    assert order == ["list", "vanished-early", "vanished-late", "closing", "changed", "new-0", "new-1"]


def test_a_retry_keeps_its_place_among_requests_of_its_priority_and_key() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 1.0)

    async def first_fails_then_retries() -> list[Any]:
        first = await scheduler.acquire(Priority.NEW)  # sent, and (say) failed
        later = [asyncio.ensure_future(timed(scheduler, vt, Priority.NEW, label=f"later-{n}")) for n in range(3)]
        await asyncio.sleep(0)  # they queue up behind it
        retry = await timed(scheduler, vt, Priority.NEW, label="retry", place=first.place)
        return [retry, *await asyncio.gather(*later)]

    (results,) = run(vt, first_fails_then_retries())
    order = [label for _, _, label in sorted(results, key=lambda r: r[0])]
    assert order == ["retry", "later-0", "later-1", "later-2"]


def test_a_listing_behind_a_backlog_of_details_goes_next() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 2.0, limit=300, window=300.0)
    scheduler.listing_reserve = 40
    backlog = [timed(scheduler, vt, Priority.VANISHED, float(i), label=f"v{i}") for i in range(200)]

    async def listing_at(offset: float) -> tuple[float, Grant, Any]:
        await vt.sleep(offset)
        return await timed(scheduler, vt, Priority.LIST, label="list")

    results = run(vt, *backlog, listing_at(10.2), listing_at(40.2))
    listings = sorted(at for at, _, label in results if label == "list")
    assert listings == pytest.approx([10.5, 40.5])  # each at the next slot, however long the backlog
    vanished = [label for _, _, label in sorted(results, key=lambda r: r[0]) if label != "list"]
    assert vanished == [f"v{i}" for i in range(200)]  # oldest vanish first


def test_no_more_than_max_in_flight_at_once_and_a_freed_place_goes_to_the_most_urgent() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 1000.0, max_in_flight=2)
    order: list[str] = []

    async def request(priority: Priority, label: str, lasts: float) -> None:
        await scheduler.acquire(priority)
        order.append(label)
        assert scheduler.in_flight <= 2
        await vt.sleep(lasts)
        scheduler.release(priority)

    async def listing_later() -> None:
        await vt.sleep(0.5)
        await request(Priority.LIST, "list", 0.1)

    run(vt, *(request(Priority.NEW, f"new-{i}", 1.0) for i in range(4)), listing_later())
    assert order == ["new-0", "new-1", "list", "new-2", "new-3"]  # the listing took the first place freed
    assert scheduler.in_flight == 0


def test_details_keep_to_their_own_bound_in_flight_and_a_listing_goes_beside_them() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 1000.0, max_in_flight=2, max_details_in_flight=1)
    spans: dict[str, tuple[float, float]] = {}

    async def request(priority: Priority, label: str, lasts: float, after: float = 0.0) -> None:
        await vt.sleep(after)
        await scheduler.acquire(priority)
        started = vt.elapsed()
        assert scheduler.details_in_flight <= 1
        await vt.sleep(lasts)
        scheduler.release(priority)
        spans[label] = (started, vt.elapsed())

    run(vt, *(request(Priority.NEW, f"new-{i}", 1.0) for i in range(3)), request(Priority.LIST, "list", 0.1, after=0.5))
    assert [round(spans[f"new-{i}"][0]) for i in range(3)] == [0, 1, 2]  # one detail at a time
    assert spans["list"][0] == pytest.approx(0.5)  # beside the detail in flight, not after it
    assert scheduler.in_flight == scheduler.details_in_flight == 0


def test_a_caller_cancelled_once_granted_frees_its_place() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 1000.0, max_in_flight=1)

    async def main() -> float:
        await scheduler.acquire(Priority.NEW)  # the one place in flight is taken
        doomed = asyncio.create_task(scheduler.acquire(Priority.NEW))
        await asyncio.sleep(0)
        assert scheduler.waiting == 1
        vt.now += 1.0  # past the peak rate's spacing: only the place in flight holds it back
        scheduler.release(Priority.NEW)
        for _ in range(20):  # the dispatcher grants it the place freed...
            await asyncio.sleep(0)
            if scheduler.in_flight:
                break
        assert scheduler.in_flight == 1 and scheduler.waiting == 0 and not doomed.done()
        doomed.cancel()  # ...and its caller is gone before it resumed
        await asyncio.gather(doomed, return_exceptions=True)
        assert scheduler.in_flight == 0
        return (await scheduler.acquire(Priority.NEW)).waited

    (waited,) = run(vt, main())
    assert waited < 0.01  # not held behind a place nobody frees


def test_a_long_queue_is_served_in_linear_time() -> None:
    # 20,000 waiting details (a cold start of 200 accounts of 100 sessions), half of them let go
    # while they wait: each grant must not look at every waiter again.
    vt = VirtualTime()
    scheduler = make(vt, 1000.0)
    stopping = Deadline()

    async def main() -> int:
        await scheduler.acquire(Priority.LIST)
        tasks = [asyncio.create_task(scheduler.acquire(Priority.NEW, float(i), stopping if i % 2 else None))
                 for i in range(20_000)]
        await asyncio.sleep(0)
        for task in tasks[:2000:2]:
            task.cancel()
        stopping.at = -math.inf
        scheduler.deadlines_moved()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return sum(isinstance(r, Grant) for r in results)

    started = time.process_time()
    assert run(vt, main()) == [9_000]  # 20,000 less the 10,000 let go and the 1,000 cancelled
    assert time.process_time() - started < 10  # quadratic, this took minutes


# -- deadlines and cancellation ----------------------------------------------------------------


def test_a_request_not_granted_by_its_deadline_is_not_sent() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 1.0)

    async def late() -> str:
        try:
            await scheduler.acquire(Priority.NEW, deadline=Deadline(vt.now + 2.5))
        except DeadlineReached:
            return f"gave up at {vt.elapsed():g}"
        return "granted"

    results = run(vt, *(timed(scheduler, vt, Priority.CHANGED) for _ in range(5)), late())
    assert results[-1] == "gave up at 2.5"
    assert sorted(at for at, _, _ in results[:-1]) == pytest.approx([0, 1, 2, 3, 4])  # the slot went to the others
    assert scheduler.granted[Priority.NEW] == 0


def test_a_deadline_moved_to_now_releases_every_request_waiting_on_it() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 1.0)
    stopping = Deadline()

    async def waiting(label: int) -> str:
        try:
            await scheduler.acquire(Priority.VANISHED, float(label), stopping)
        except DeadlineReached:
            return f"{label} released at {vt.elapsed():g}"
        return f"{label} granted at {vt.elapsed():g}"

    def stop() -> None:
        stopping.at = vt.now
        scheduler.deadlines_moved()

    results = run(vt, *(waiting(i) for i in range(6)), vt.at(2.5, stop), timed(scheduler, vt, Priority.NEW))
    assert results[:6] == ["0 granted at 0", "1 granted at 1", "2 granted at 2"] + [f"{i} released at 2.5" for i in (3, 4, 5)]
    assert results[-1][0] == pytest.approx(3.0)  # a request without that deadline goes on


def test_a_failing_dispatcher_fails_its_waiters_instead_of_leaving_them_hanging() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 1.0)

    async def main() -> str:
        try:
            await scheduler.acquire(Priority.NEW, deadline=2.5)  # type: ignore[arg-type]  # not a Deadline
        except AttributeError:
            return "failed"
        return "granted"

    assert run(vt, main()) == ["failed"]


def test_a_cancelled_request_leaves_the_queue() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 1.0)

    async def main() -> list[Any]:
        await scheduler.acquire(Priority.LIST)
        doomed = asyncio.create_task(scheduler.acquire(Priority.VANISHED))
        other = asyncio.create_task(timed(scheduler, vt, Priority.NEW))
        await asyncio.sleep(0)
        assert scheduler.waiting == 2
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        assert scheduler.waiting == 1
        return [await other]

    (results,) = run(vt, main())
    assert results[0][0] == pytest.approx(1.0)
    assert scheduler.granted[Priority.VANISHED] == 0


# -- 429s --------------------------------------------------------------------------------------


def test_hold_off_delays_callers_already_waiting_and_says_so() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 10.0)  # slots at 0.0, 0.1, 0.2, ...
    results = run(
        vt,
        timed(scheduler, vt), timed(scheduler, vt), timed(scheduler, vt),
        vt.at(0.05, lambda: scheduler.hold_off(2.0)),  # a 429 arrives while two callers wait
    )
    granted = sorted(results[:3], key=lambda r: r[0])
    assert [at for at, _, _ in granted] == pytest.approx([0.0, 2.05, 2.15])  # none fires into the block
    assert [g.throttled for _, g, _ in granted] == pytest.approx([0.0, 2.0, 2.0])
    assert [g.waited for _, g, _ in granted] == pytest.approx([0.0, 2.05, 2.15])


def test_hold_off_never_shortens_a_block_and_one_in_the_past_does_nothing() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 100.0)

    async def main() -> list[float]:
        scheduler.hold_off(3.0)
        scheduler.hold_off(1.0)
        first = (await scheduler.acquire(Priority.LIST)).waited
        vt.now += 10.0
        return [first, (await scheduler.acquire(Priority.LIST)).waited]

    (waits,) = run(vt, main())
    assert waits == pytest.approx([3.0, 0.0])


def test_after_a_429_details_use_half_their_room_for_a_window() -> None:
    vt = VirtualTime()
    scheduler = make(vt, 1000.0, limit=20, window=10.0)
    scheduler.listing_reserve = 4

    async def main() -> list[Any]:
        scheduler.hold_off(1.0)
        return await asyncio.gather(*(timed(scheduler, vt, Priority.NEW) for _ in range(20)))

    (results,) = run(vt, main())
    granted = sorted(at for at, _, _ in results)
    assert sum(1 for t in granted if t < 10.0) == 8  # half of the 16 the reserve leaves
    assert granted[-1] < 30.0  # and the rest once the window has passed without a 429


# -- construction and sharing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [{"peak_rate": 0.0}, {"peak_rate": -1.0}, {"peak_rate": math.nan}, {"peak_rate": 1.0, "limit": 0},
     {"peak_rate": 1.0, "window": 0.0}, {"peak_rate": 1.0, "max_in_flight": 0},
     {"peak_rate": 1.0, "max_details_in_flight": 0}],
    ids=["zero-rate", "negative-rate", "nan-rate", "zero-limit", "zero-window", "nothing-in-flight", "no-detail-in-flight"],
)
def test_nonsense_is_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RequestScheduler(**params)


def test_one_scheduler_per_token_in_a_process() -> None:
    made: list[RequestScheduler] = []

    def make_one() -> RequestScheduler:
        made.append(RequestScheduler(peak_rate=1.0))
        return made[-1]

    first = shared_scheduler(("base", "token-a"), make_one)
    assert shared_scheduler(("base", "token-a"), make_one) is first
    assert shared_scheduler(("base", "token-b"), make_one) is not first
    assert len(made) == 2


def test_real_clock_and_sleep_are_the_defaults() -> None:
    scheduler = RequestScheduler(peak_rate=50.0)  # 20 ms apart

    async def main() -> list[float]:
        return [(await scheduler.acquire(Priority.LIST)).waited for _ in range(3)]

    waits = asyncio.run(main())
    assert waits[0] < 0.005 and waits[2] >= 0.015


# -- how long owed details take ------------------------------------------------------------------


@pytest.mark.parametrize(("earlier", "details"), [(0, 5), (3, 5), (6, 5), (6, 9), (2, 30), (0, 0)],
                         ids=["room", "room-after-some", "wait-for-the-window", "a-window-and-more", "several-windows", "none"])
def test_the_time_owed_details_take_is_what_the_scheduler_then_takes(earlier: int, details: int) -> None:
    """What a cold sync's progress line promises (the time the budget needs for the rest) is the
    time the scheduler then takes to grant them, within one request's spacing or a tenth."""
    vt = VirtualTime()
    scheduler = make(vt, 2.0, limit=10, window=60.0)
    scheduler.listing_reserve = 2  # details may take 8 of every window

    async def main() -> tuple[float, float]:
        for _ in range(earlier):
            await scheduler.acquire(Priority.NEW)
            scheduler.release(Priority.NEW)
        vt.now += 5.0
        promised, asked_at = scheduler.seconds_for(details), vt.now
        for _ in range(details):
            await scheduler.acquire(Priority.NEW)
            scheduler.release(Priority.NEW)
        return promised, vt.now - asked_at

    ((promised, took),) = run(vt, main())
    assert promised == pytest.approx(took, abs=max(0.5, took * 0.1))
