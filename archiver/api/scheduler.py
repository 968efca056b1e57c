"""The request scheduler of one API token: every request to Cloudflare waits here for its turn.

Cloudflare counts the requests of a token over a window (1200 per 5 minutes) and blocks the whole
token for minutes once it is exceeded, and other tools usually share the token. The archiver may
use a share of that window (``ARCHIVER_RATE_BUDGET``): the scheduler enforces the share as a count
over any window of that length, plus a peak rate, and decides who goes first when requests compete.

Listing pages come first: a listing is the only way to see a session at all. A part of every
window, the listing reserve, is kept for them, so that no number of waiting details can delay a
listing; details share the rest, most urgent first: vanished sessions (oldest vanish first, since
Cloudflare forgets them first), then closed ones missing their reason, then changed, then new.
A request that is not granted before its deadline is not sent (:class:`DeadlineReached`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Hashable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from archiver.errors import DeadlineReached

log = logging.getLogger(__name__)


class Priority(IntEnum):
    """Who goes first; lower goes earlier."""

    LIST = 0
    VANISHED = 1
    CLOSING = 2
    # A final state asked again (the last answer lacked the end or the reason, or never came):
    # after every first ask for one, since a session whose detail answered 404 has likely been
    # forgotten, while one that vanished since can still be caught; before changed and new ones,
    # which keep.
    AGAIN = 3
    CHANGED = 4
    NEW = 5


@dataclass
class Deadline:
    """When waiting requests give up (on the scheduler's clock), or when any of ``also`` does. It
    may be moved (a runner that is stopping moves its deadline to now); :meth:`RequestScheduler.wake`
    makes a move count at once."""

    at: float = math.inf
    also: tuple[Deadline, ...] = ()

    def due(self) -> float:
        return min(self.at, *(other.due() for other in self.also)) if self.also else self.at


@dataclass(frozen=True, slots=True)
class Grant:
    """How long a request waited for its turn, how much of that was a 429's hold-off, and its
    place in the queue (for a retry to keep)."""

    waited: float
    throttled: float
    place: int


@dataclass(order=True)
class _Waiter:
    priority: int
    key: float
    sequence: int
    enqueued: float = field(compare=False)
    deadline: Deadline | None = field(compare=False)
    future: asyncio.Future[Grant] = field(compare=False)
    gone: bool = field(default=False, compare=False)  # its caller stopped waiting: skipped, not searched out


# A wait shorter than this (a lifted peak rate's spacing) is yielded rather than slept.
TINY_WAIT = 0.0005
# After a 429 (the token is busy with other tools too), details may use only this share of their
# part of the window until a whole window has passed without one.
THROTTLED_DETAIL_SHARE = 0.5


class RequestScheduler:
    """Grants requests within ``limit`` per ``window`` seconds (None: no window), at most
    ``peak_rate`` per second and ``max_in_flight`` at once (of which at most
    ``max_details_in_flight`` details), keeping ``listing_reserve`` of every window for listing pages.
    A granted request is in flight until its caller calls :meth:`release`.

    Requests wait here rather than for a connection elsewhere, so that a connection freed goes to
    the most urgent request too: a listing never queues behind details for one.
    """

    def __init__(
        self, *, peak_rate: float, limit: int | None = None, window: float = 300.0, max_in_flight: int | None = None,
        max_details_in_flight: int | None = None, clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
    ) -> None:
        if not peak_rate > 0 or not window > 0 or any(
            bound is not None and bound < 1 for bound in (limit, max_in_flight, max_details_in_flight)
        ):
            raise ValueError("peak_rate and window must be positive, limit and the in-flight bounds at least 1")
        self._limit = limit
        self.window = window
        self.max_in_flight = max_in_flight
        self.max_details_in_flight = max_details_in_flight
        self.in_flight = 0
        self.details_in_flight = 0
        self.spacing = 1.0 / peak_rate
        self._listing_reserve = 0
        self.granted: Counter[Priority] = Counter()
        self.most_in_window = 0  # the most requests granted within any one window so far
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()  # grant times within the last window
        self._details: deque[float] = deque()  # the same, of details only
        self._next_slot = -math.inf
        self._blocked: deque[tuple[float, float]] = deque()  # 429 hold-offs: (from, until)
        self._throttled_until = -math.inf  # details are held to a smaller share until then
        self._queue: list[_Waiter] = []  # a heap; waiters that are gone stay until they surface
        self._gone = 0
        # The earliest deadline among the waiters, as of the last look at them all; a look is due
        # again when it passes, or when a deadline moved (see deadlines_moved).
        self._next_deadline = math.inf
        self._deadlines_moved = False
        self._sequence = itertools.count()
        self._dispatcher: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None

    # -- the callers' side --------------------------------------------------------------------

    async def acquire(
        self, priority: Priority, key: float = 0.0, deadline: Deadline | None = None, place: int | None = None
    ) -> Grant:
        """Wait for this request's turn. ``key`` orders requests of one priority (lower first),
        then the order they came in, unless ``place`` (an earlier grant's: a retry) keeps an
        earlier one; past ``deadline`` the request gives up with DeadlineReached."""
        now = self._clock()
        due = deadline.due() if deadline is not None else math.inf
        sequence = next(self._sequence) if place is None else place
        if not self.waiting and due > now and self._wait_for(priority, now) == 0:
            # Nobody waits and its turn is now: granted at once, without a trip through the
            # dispatcher (most requests of a quiet service).
            self._count_grant(priority, now)
            return Grant(0.0, 0.0, sequence)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(priority, key, sequence, now, deadline, loop.create_future())
        heapq.heappush(self._queue, waiter)
        self._next_deadline = min(self._next_deadline, due)
        self._kick(loop)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            # Cancelling the caller cancels the future it waits on, unless a grant came first.
            if waiter.future.cancelled() or not waiter.future.done():
                if not waiter.gone:
                    waiter.gone = True
                    self._gone += 1
            elif waiter.future.exception() is None:
                self.release(waiter.priority)  # granted, but its caller is gone before it could send
            raise

    def release(self, priority: int) -> None:
        """A granted request (of ``priority``) is done (answered, failed or abandoned): its place
        in flight is free."""
        self.in_flight -= 1
        if priority != Priority.LIST:
            self.details_in_flight -= 1
        self.wake()

    def hold_off(self, seconds: float) -> None:
        """Cloudflare answered 429: let no request through for ``seconds``, and hold details to a
        smaller share of the window until a window has passed."""
        now = self._clock()
        until = now + seconds
        if self._blocked and self._blocked[-1][1] >= now:
            start, end = self._blocked.pop()
            self._blocked.append((start, max(end, until)))
        else:
            self._blocked.append((now, until))
        self._throttled_until = max(self._throttled_until, until + self.window)
        self.wake()

    def count_earlier(self, seconds_ago: Iterable[float]) -> None:
        """Count requests made before this scheduler existed (by other processes of the token, as
        the ledger tells), each ``seconds_ago`` seconds ago, against the window."""
        now = self._clock()
        earlier = sorted(now - ago for ago in seconds_ago if 0 <= ago < self.window)
        # As details too: they leave the listings' reserve as free as any detail would.
        self._sent = deque(sorted([*earlier, *self._sent]))
        self._details = deque(sorted([*earlier, *self._details]))

    @property
    def limit(self) -> int | None:
        """Requests allowed in any window (None: no window)."""
        return self._limit

    @limit.setter
    def limit(self, requests: int | None) -> None:
        self._limit = requests if requests is None else max(1, requests)
        self.wake()

    @property
    def listing_reserve(self) -> int:
        """Requests of every window kept for listing pages."""
        return self._listing_reserve

    @listing_reserve.setter
    def listing_reserve(self, requests: int) -> None:
        self._listing_reserve = max(0, requests)
        self.wake()  # a smaller reserve may let a waiting detail go

    def deadlines_moved(self) -> None:
        """Some waiter's deadline was moved (a stop, a claim let go): look at them all again."""
        self._deadlines_moved = True
        self.wake()

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn now."""
        return len(self._queue) - self._gone

    def in_window(self) -> int:
        """Requests granted within the last window."""
        self._forget_before(self._clock() - self.window)
        return len(self._sent)

    def seconds_for(self, details: int) -> float:
        """About how long ``details`` more detail requests take to be granted if nothing else
        asks: played forward on the window's grants, at the peak rate, each detail past the
        window's share waiting for an earlier one to leave the window."""
        if details <= 0:
            return 0.0
        now = self._clock()
        self._forget_before(now - self.window)
        last = max(now, self._next_slot) - self.spacing
        if self._limit is None:
            return last + details * self.spacing - now
        share = max(1, self._limit - self._listing_reserve)  # of every window, what details may take
        grants = list(self._details)
        for _ in range(details):
            last = max(last + self.spacing, grants[-share] + self.window if len(grants) >= share else -math.inf)
            grants.append(last)
        return max(0.0, last - now)

    # -- granting -----------------------------------------------------------------------------

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._dispatcher is None or self._dispatcher.done() or self._dispatcher.get_loop() is not loop:
            self._dispatcher = loop.create_task(self._dispatch(), name="request-scheduler")
        else:
            self.wake()

    def wake(self) -> None:
        """Make the dispatcher look again (a new request, a hold-off, a deadline moved)."""
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _dispatch(self) -> None:
        try:
            await self._grant_while_waited_for()
        except Exception as exc:
            # A bug here must fail the callers, never leave them waiting for ever.
            log.exception("the request scheduler failed")
            for waiter in self._queue:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
            self._queue.clear()

    async def _grant_while_waited_for(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            wait = self._grant_or_wait(self._clock())
            if wait is not None and wait <= 0:
                continue
            if wait is not None and wait < TINY_WAIT:
                await asyncio.sleep(0)  # the peak rate's next slot is a moment away: just let others run
                continue
            # Until the wait is over, or something changes what may go (a new request, a hold-off).
            self._wake = loop.create_future()
            sleeper = loop.create_task(self._sleep(wait)) if wait is not None else None
            try:
                await asyncio.wait({self._wake} | ({sleeper} if sleeper else set()), return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._wake = None
                if sleeper is not None:
                    sleeper.cancel()

    def _grant_or_wait(self, now: float) -> float | None:
        """Grant the first request whose turn it is and return 0, or return how long to wait
        before anything can change (None: until a new request or a hold-off)."""
        self._expire(now)
        while self._queue and self._queue[0].gone:
            heapq.heappop(self._queue)
            self._gone -= 1
        if not self._queue:
            return 0.0
        head = self._queue[0]
        wait = self._wait_for(head.priority, now)
        if wait is not None and wait <= 0:
            heapq.heappop(self._queue)
            self._count_grant(head.priority, now)
            head.future.set_result(Grant(now - head.enqueued, self._blocked_between(head.enqueued, now), head.sequence))
            return 0.0
        return self._sooner(wait, now)

    def _wait_for(self, priority: int, now: float) -> float | None:
        """0 if a request of this priority may go now, else how long until that may change (None:
        until a release or a new request)."""
        blocked_until = self._blocked[-1][1] if self._blocked else -math.inf
        slot = max(self._next_slot, blocked_until)
        if now < slot:
            return slot - now
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            return None  # until a release wakes the dispatcher
        if priority != Priority.LIST and self.max_details_in_flight is not None and self.details_in_flight >= self.max_details_in_flight:
            return None  # a listing waiting would be at the head of the queue instead
        self._forget_before(now - self.window)
        if self._allowed(priority, now):
            return 0.0
        # A detail (a listing is always allowed while the window has room at all): wait for the
        # window to move on.
        oldest = min(self._sent[0], self._details[0]) if self._details else (self._sent[0] if self._sent else None)
        return oldest + self.window - now if oldest is not None else None

    def _count_grant(self, priority: int, now: float) -> None:
        self.in_flight += 1
        self._sent.append(now)
        if priority != Priority.LIST:
            self.details_in_flight += 1
            self._details.append(now)
        self._next_slot = now + self.spacing
        self.granted[Priority(priority)] += 1
        self.most_in_window = max(self.most_in_window, len(self._sent))

    def _allowed(self, priority: int, now: float) -> bool:
        """Whether a request of this priority may go now. A listing may while the window has room;
        a detail only while the details of the window leave the listing reserve free. If the
        reserve bounds the listings of any window, no window ever holds more than the limit: the
        window up to the last detail it holds had room for that detail beside the reserve, and
        after that detail only listings came. The reserve is what the listings of the window took
        if that was more (it was planned for larger listings then)."""
        if self._limit is None:
            return True
        if len(self._sent) >= self._limit:
            return False
        if priority == Priority.LIST:
            return True
        room = self._limit - max(self._listing_reserve, len(self._sent) - len(self._details))
        if now < self._throttled_until:
            room = int(room * THROTTLED_DETAIL_SHARE)
        return len(self._details) < room

    def _sooner(self, wait: float | None, now: float) -> float | None:
        """``wait``, or less if a waiter's deadline comes first."""
        if self._next_deadline == math.inf:
            return wait
        first = max(0.0, self._next_deadline - now)
        return first if wait is None else min(wait, first)

    def _expire(self, now: float) -> None:
        """Waiters past their deadline are told so and leave the queue. Every waiter is looked at
        only when the earliest deadline passed or one moved, so a long queue costs little."""
        if not self._deadlines_moved and now < self._next_deadline:
            return
        self._deadlines_moved = False
        kept, self._next_deadline = [], math.inf
        for waiter in self._queue:
            if waiter.gone:
                continue
            due = waiter.deadline.due() if waiter.deadline is not None else math.inf
            if due <= now:
                waiter.future.set_exception(DeadlineReached("the request's turn did not come before its deadline"))
                continue
            self._next_deadline = min(self._next_deadline, due)
            kept.append(waiter)
        heapq.heapify(kept)
        self._queue, self._gone = kept, 0

    def _forget_before(self, since: float) -> None:
        while self._sent and self._sent[0] <= since:
            self._sent.popleft()
        while self._details and self._details[0] <= since:
            self._details.popleft()
        while self._blocked and self._blocked[0][1] <= since:
            self._blocked.popleft()

    def _blocked_between(self, start: float, end: float) -> float:
        return sum(max(0.0, min(end, until) - max(start, since)) for since, until in self._blocked)


_SHARED: weakref.WeakValueDictionary[Hashable, RequestScheduler] = weakref.WeakValueDictionary()


def shared_scheduler(key: Hashable, make: Callable[[], RequestScheduler]) -> RequestScheduler:
    """The one scheduler of a token in this process (every client, account and runner using the
    token shares it), made with ``make`` by the first to ask while none is alive."""
    scheduler = _SHARED.get(key)
    if scheduler is None:
        scheduler = make()
        _SHARED[key] = scheduler
    return scheduler
