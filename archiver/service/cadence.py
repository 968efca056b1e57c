"""How often every account is listed: the listing cadence, and the part of the rate budget it needs.

The listing is the only way to see a session, so its cadence comes first. Every account is listed
at least every ``ARCHIVER_INTERVAL_SECONDS``, and more often, down to
``ARCHIVER_MIN_INTERVAL_SECONDS``, while that takes no more than a part of the budget
(:data:`FAST_LISTING_SHARE`): unused budget buys shorter gaps between listings, so shorter sessions
are caught. The interval is stretched only when the listing pages alone (many accounts or huge
listings on one token) would take more than :data:`MAX_LISTING_SHARE` of the budget; details never
stretch it. Pure arithmetic over the pages each listing took.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

# Listing faster than the configured interval may take at most this share of the budget, so
# that details (the final state of vanished sessions) keep the larger part.
FAST_LISTING_SHARE = 0.4
# Listing at the configured interval may take up to this share; past it, the interval stretches
# so that details of vanished sessions always keep a part of the window.
MAX_LISTING_SHARE = 0.8
# Listing requests a window may need beyond the average, for retries of failed pages.
RESERVE_MARGIN = 1.1


@dataclass
class Cadence:
    """The listing gap of the accounts sharing one token (and so one budget)."""

    interval: float  # the configured interval: the promise
    floor: float  # never list an account more often than this
    limit: int | None  # requests per window the budget allows (None: no window)
    window: float  # seconds
    accounts: list[str]
    # Each account's listings of about the last window, in pages: the largest counts, so that the
    # reserve covers every listing a window may still hold (and a listing that hovers around a
    # page boundary is planned for at its larger size).
    pages: dict[str, deque[int]] = field(default_factory=dict)

    def record_listing(self, account_id: str, pages: int) -> None:
        """What an account's last listing took; an account not yet listed counts as one page."""
        if pages > 0:
            remembered = math.ceil(self.window / self.floor) + 1  # as many as a window holds, at most
            self.pages.setdefault(account_id, deque(maxlen=remembered)).append(pages)

    def pages_of(self, account_id: str) -> int:
        return max(self.pages.get(account_id, (1,)))

    @property
    def listing_pages(self) -> int:
        """The pages of one listing of every account."""
        return sum(self.pages_of(account) for account in self.accounts)

    def gap(self) -> float:
        """Seconds between two listings of each account."""
        if self.limit is None:
            return self.floor
        pages = self.listing_pages
        if pages * self.window / self.interval > self.limit * MAX_LISTING_SHARE:
            return pages * self.window / (self.limit * MAX_LISTING_SHARE)
        fast = pages * self.window / (self.limit * FAST_LISTING_SHARE)
        return min(self.interval, max(self.floor, fast))

    @property
    def stretched(self) -> bool:
        """Whether the listing pages alone keep the gap above the configured interval."""
        return self.gap() > self.interval

    def reserve(self) -> int:
        """Requests to keep free in every window for listing pages: what the listings of one
        window take at this gap, with a margin for retries, plus the largest listing once more
        (a window may catch one more listing of an account than the average); but never more
        than :data:`MAX_LISTING_SHARE` of the budget, so that details of vanished sessions always
        keep a part of every window. (Without that bound, listings stretched to their full share
        reserved more than all of it once the margin and one large listing were added: an account
        of 10,000 sessions on the default budget could never fetch a detail.)"""
        largest = max((self.pages_of(account) for account in self.accounts), default=1)
        wanted = math.ceil(self.window / self.gap() * self.listing_pages * RESERVE_MARGIN) + largest
        if self.limit is None:
            return wanted
        return min(wanted, max(1, math.floor(self.limit * MAX_LISTING_SHARE)))


def planned(interval: float, floor: float, limit: int | None, window: float, accounts: Iterable[str]) -> Cadence:
    """A cadence for these accounts before any was listed."""
    return Cadence(interval, min(floor, interval), limit, window, list(accounts))
