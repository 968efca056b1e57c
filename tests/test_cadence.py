"""The listing cadence: every account listed at least every interval, faster while the budget has
room, slower only when the listing pages alone exceed their share; and the reserve it keeps."""

from __future__ import annotations

import pytest

from archiver.config import settings_from
from archiver.service.cadence import FAST_LISTING_SHARE, MAX_LISTING_SHARE, planned

# The defaults: 30 s interval, a 10 s floor, 25% of 1200 requests per 300 s.
INTERVAL, FLOOR, LIMIT, WINDOW = 30.0, 10.0, 300, 300.0


def accounts(n: int) -> list[str]:
    return [f"{i:032x}" for i in range(n)]


@pytest.mark.parametrize(
    ("count", "pages", "gap"),
    [
        (1, 1, FLOOR),  # one small account: the floor, at a tenth of the budget
        (10, 1, 10 * WINDOW / (LIMIT * FAST_LISTING_SHARE)),  # faster than the interval while it takes a share
        (20, 1, INTERVAL),  # the promise, though listing takes two thirds of the budget
    ],
    ids=["one-account-floor", "ten-accounts-between", "twenty-accounts-interval"],
)
def test_the_gap_is_the_floor_while_the_budget_has_room_and_never_above_the_interval(count: int, pages: int, gap: float) -> None:
    cadence = planned(INTERVAL, FLOOR, LIMIT, WINDOW, accounts(count))
    for account in cadence.accounts:
        cadence.record_listing(account, pages)
    assert cadence.gap() == pytest.approx(gap)
    assert not cadence.stretched


@pytest.mark.parametrize(("count", "pages"), [(200, 1), (1, 80)], ids=["many-accounts", "huge-listing"])
def test_only_listing_pages_beyond_their_share_stretch_the_gap(count: int, pages: int) -> None:
    cadence = planned(INTERVAL, FLOOR, LIMIT, WINDOW, accounts(count))
    for account in cadence.accounts:
        cadence.record_listing(account, pages)
    assert cadence.stretched
    listings_per_window = WINDOW / cadence.gap() * count * pages
    assert listings_per_window == pytest.approx(LIMIT * MAX_LISTING_SHARE)


def test_details_never_move_the_gap() -> None:
    # The cadence knows only listing pages: a backlog, a cold start or an eviction changes nothing.
    cadence = planned(INTERVAL, FLOOR, LIMIT, WINDOW, accounts(1))
    before = cadence.gap()
    cadence.record_listing(cadence.accounts[0], 1)
    assert cadence.gap() == before == FLOOR


@pytest.mark.parametrize(("count", "pages"), [(1, 1), (10, 1), (30, 1), (200, 1), (3, 7)], ids=["1x1", "10x1", "30x1", "200x1", "3x7"])
def test_the_reserve_covers_every_listing_a_window_holds(count: int, pages: int) -> None:
    cadence = planned(INTERVAL, FLOOR, LIMIT, WINDOW, accounts(count))
    for account in cadence.accounts:
        cadence.record_listing(account, pages)
    most_listings_in_a_window = (int(WINDOW // cadence.gap()) + 1) * count * pages
    wanted = min(most_listings_in_a_window, WINDOW / cadence.gap() * count * pages * 1.1 + pages)
    assert cadence.reserve() >= min(wanted, LIMIT * MAX_LISTING_SHARE)
    assert cadence.reserve() < LIMIT  # details always keep a part


@pytest.mark.parametrize(("count", "pages"), [(1, 53), (1, 80), (200, 1), (4, 40)], ids=["10k-sessions", "16k-sessions", "200x1", "4x40"])
def test_listings_stretched_to_their_share_leave_details_the_rest_of_every_window(count: int, pages: int) -> None:
    # An account of 10,000 open sessions lists 53 pages: on the default budget its listings are
    # stretched to 80% of it, and the reserve with its margin and one more listing came to 317 of
    # the 300 requests: no detail was ever granted, and no close reason learned.
    cadence = planned(INTERVAL, FLOOR, LIMIT, WINDOW, accounts(count))
    for account in cadence.accounts:
        cadence.record_listing(account, pages)
    assert cadence.stretched
    assert LIMIT - cadence.reserve() >= LIMIT * (1 - MAX_LISTING_SHARE)


def test_an_account_not_yet_listed_counts_as_one_page_and_empty_listings_keep_the_last_figure() -> None:
    cadence = planned(INTERVAL, FLOOR, LIMIT, WINDOW, accounts(2))
    assert cadence.listing_pages == 2
    cadence.record_listing(cadence.accounts[0], 5)
    cadence.record_listing(cadence.accounts[0], 0)  # a cycle whose listing failed tells nothing
    assert cadence.listing_pages == 6


def test_without_a_window_the_floor_is_the_gap() -> None:
    assert planned(INTERVAL, FLOOR, None, WINDOW, accounts(50)).gap() == FLOOR


def test_settings_derive_the_budget_and_the_floor() -> None:
    defaults = settings_from({})
    assert defaults.budget_requests == 300
    assert defaults.interval_floor == pytest.approx(10.0)
    custom = settings_from({"interval_seconds": 6, "min_interval_seconds": 60, "rate_budget": 0.5})
    assert custom.interval_floor == 6 and custom.budget_requests == 600


def test_a_listing_around_a_page_boundary_is_planned_at_its_larger_size() -> None:
    cadence = planned(INTERVAL, FLOOR, LIMIT, WINDOW, accounts(1))
    account = cadence.accounts[0]
    for pages in (1, 2, 1, 2):  # 185 sessions, then 195, then 185...
        cadence.record_listing(account, pages)
    assert cadence.listing_pages == 2
    for _ in range(int(WINDOW / FLOOR)):  # a window's worth of listings at the floor
        cadence.record_listing(account, 1)
    assert cadence.listing_pages == 2  # a window may still hold the larger listing
    cadence.record_listing(account, 1)
    assert cadence.listing_pages == 1  # once it has left it
