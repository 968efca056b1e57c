"""The detail policy on its own: what a detail adds to a listing, and how the auto policy learns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from archiver.archive.detailmode import QUIET_STREAK, SAMPLE_EVERY, DetailLearner, DetailMode, detail_adds, learner_for, sampled
from archiver.archive.lifecycle import observe_listed
from archiver.archive.records import parse_session

SID = "0f0e0d0c-0b0a-4909-8807-060504030201"
START_MS = 1_800_000_000_000
LISTED = {
    "sessionId": SID,
    "startTime": START_MS,
    "lastUpdated": START_MS + 1000,
    "connectionId": "conn-1",
    "connectionStartTime": START_MS + 500,
    "devtoolsFrontendUrl": "https://live.browser.run/devtools/inspector.html?wss=live.browser.run/x?jwt=AAA",
}


def stored(listed: dict[str, Any], keep_url_tokens: bool = False) -> dict[str, Any]:
    """The row a listing of ``listed`` leaves in the archive."""
    record = parse_session(listed, keep_url_tokens=keep_url_tokens)
    step = observe_listed(None, record, account_id="a" * 32, seen_at=datetime(2027, 1, 1, tzinfo=UTC), run_id=1, detail_wanted=True)
    assert step.row is not None
    return step.row


@pytest.mark.parametrize(
    ("detail", "adds"),
    [
        ({}, False),
        ({"closeReasonText": "Normal closure"}, True),  # a field the listing lacked
        ({"connectionId": "conn-2"}, True),  # a value the listing gave otherwise
        ({"liveViewUrl": "https://example.test/live"}, True),  # a key the listing did not carry
        ({"lastUpdated": START_MS + 2000, "connectionId": "conn-2"}, None),  # moved on between the two: proves nothing
        ({"devtoolsFrontendUrl": LISTED["devtoolsFrontendUrl"].replace("AAA", "BBB")}, False),  # only a fresh token
        ({"devtoolsFrontendUrl": "https://elsewhere.test/devtools?jwt=AAA"}, True),
        ({"connectionId": None}, False),  # a detail that says less adds nothing
    ],
    ids=["same", "missing-field", "other-value", "extra-key", "moved-on", "fresh-token", "other-url", "says-less"],
)
def test_what_a_detail_adds_to_the_listing(detail: dict[str, Any], adds: bool | None) -> None:
    assert detail_adds(stored(LISTED), parse_session({**LISTED, **detail})) is adds


def test_a_fresh_token_adds_nothing_when_tokens_are_kept() -> None:
    fresh = {**LISTED, "devtoolsFrontendUrl": LISTED["devtoolsFrontendUrl"].replace("AAA", "BBB")}
    assert detail_adds(stored(LISTED, keep_url_tokens=True), parse_session(fresh, keep_url_tokens=True)) is False


def test_auto_switches_to_the_listing_after_a_quiet_streak_and_back_on_one_sample() -> None:
    learner = DetailLearner("auto")
    assert learner.mode == DetailMode.DETAILS and learner.wants_detail(SID)
    switches = [learner.observe(False) for _ in range(QUIET_STREAK)]
    assert switches == [False] * (QUIET_STREAK - 1) + [True]
    assert learner.mode == DetailMode.LISTING
    assert learner.observe(None) is False and learner.mode == DetailMode.LISTING  # inconclusive: no lesson
    assert learner.observe(True) is True and learner.mode == DetailMode.DETAILS and learner.quiet == 0


def test_one_detail_that_adds_restarts_the_streak() -> None:
    learner = DetailLearner("auto")
    for _ in range(QUIET_STREAK - 1):
        learner.observe(False)
    learner.observe(True)
    for _ in range(QUIET_STREAK - 1):
        learner.observe(False)
    assert learner.mode == DetailMode.DETAILS


@pytest.mark.parametrize(("policy", "mode", "wants"), [("changed", DetailMode.DETAILS, True), ("vanished", DetailMode.LISTING, False)])
def test_fixed_policies_never_switch(policy: str, mode: DetailMode, wants: bool) -> None:
    learner = DetailLearner(policy)
    for adds in [False] * (2 * QUIET_STREAK) + [True] * 3:
        assert learner.observe(adds) is False
    assert learner.mode == mode
    ids = [f"{n:08x}-0b0a-4909-8807-060504030201" for n in range(50)]
    assert {learner.wants_detail(i) for i in ids} == {wants}  # no sampling outside auto


def test_the_listing_mode_samples_a_fixed_share_by_id() -> None:
    learner = learner_for("auto", "listing", 40)
    assert learner.mode == DetailMode.LISTING and learner.quiet == 40
    ids = [f"{n:08x}-0b0a-4909-8807-060504030201" for n in range(10_000)]
    wanted = [i for i in ids if learner.wants_detail(i)]
    assert len(wanted) == 10_000 // SAMPLE_EVERY
    assert all(sampled(i) for i in wanted)


@pytest.mark.parametrize(
    ("policy", "last_mode", "mode"),
    [("auto", None, DetailMode.DETAILS), ("auto", "listing", DetailMode.LISTING), ("auto", "bogus", DetailMode.DETAILS),
     ("changed", "listing", DetailMode.DETAILS), ("vanished", "details", DetailMode.LISTING)],
    ids=["never-polled", "resumed", "unknown-mode", "changed-overrides", "vanished-overrides"],
)
def test_a_learner_resumes_the_last_cycles_mode_under_auto_only(policy: str, last_mode: str | None, mode: DetailMode) -> None:
    assert learner_for(policy, last_mode).mode == mode
