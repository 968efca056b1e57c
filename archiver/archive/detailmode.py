"""Whether details of listed sessions are worth a request: the ``ARCHIVER_DETAIL_POLICY``.

A listing page is one request for up to 190 sessions; a detail is one request for one session.
Where Cloudflare's listing carries the same fields as its details, a detail of a new or changed
session tells nothing new, and the requests are better spent on listing more often and on the
final state of vanished sessions (always fetched, whatever the policy).

- ``changed``: new and changed sessions always get a detail (mode ``details``).
- ``vanished``: the listing is trusted (mode ``listing``).
- ``auto`` (the default) learns it per account: in mode ``details`` every new and changed session
  gets a detail, and each is compared with what the listing said; after :data:`QUIET_STREAK`
  details in a row that added nothing, the account switches to mode ``listing``, where only a
  sample (one session in :data:`SAMPLE_EVERY`, chosen by id) is still fetched and compared. A
  sample that adds a field or a value switches it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from archiver.archive.records import STATE_FIELDS, URL_FIELDS, SessionRecord
from archiver.archive.redact import redact_url


class DetailMode(StrEnum):
    DETAILS = "details"  # new and changed sessions get a detail
    LISTING = "listing"  # the listing is trusted; only a sample gets one


POLICIES = ("auto", "changed", "vanished")
QUIET_STREAK = 20
SAMPLE_EVERY = 10
# Compared between a listed session and its detail: every field but lastUpdated, whose change
# means the session moved on between the two requests (see detail_adds).
COMPARED_FIELDS = tuple(name for name in STATE_FIELDS if name != "last_updated")
URL_COLUMNS = frozenset(URL_FIELDS.values())


@dataclass
class DetailLearner:
    """One account's detail mode under a policy, and what the auto policy has learned so far."""

    policy: str = "auto"
    mode: DetailMode = DetailMode.DETAILS
    quiet: int = 0  # details in a row that added nothing

    def __post_init__(self) -> None:
        if self.policy == "changed":
            self.mode = DetailMode.DETAILS
        elif self.policy == "vanished":
            self.mode = DetailMode.LISTING

    def wants_detail(self, session_id: str) -> bool:
        """Whether a new or changed listed session is owed a detail now."""
        if self.mode == DetailMode.DETAILS:
            return True
        return self.policy == "auto" and sampled(session_id)

    def observe(self, adds: bool | None) -> bool:
        """Learn from one detail of a listed session (None: inconclusive); True if the mode changed."""
        if self.policy != "auto" or adds is None:
            return False
        if adds:
            self.quiet = 0
            switched = self.mode != DetailMode.DETAILS
            self.mode = DetailMode.DETAILS
            return switched
        self.quiet += 1
        if self.mode == DetailMode.DETAILS and self.quiet >= QUIET_STREAK:
            self.mode = DetailMode.LISTING
            return True
        return False


def learner_for(policy: str, last_mode: str | None, last_quiet: int = 0) -> DetailLearner:
    """An account's learner, resuming where its last cycle left off (an account never polled
    starts in mode details: it has not learned yet what the listing lacks)."""
    learner = DetailLearner(policy)
    if policy == "auto" and last_mode in tuple(DetailMode):
        learner.mode = DetailMode(last_mode)
        learner.quiet = last_quiet
    return learner


def sampled(session_id: str) -> bool:
    """Whether a session is in the sample that mode listing still fetches: a fixed share of
    sessions, by id, so that every process picks the same ones."""
    return int(session_id[:8], 16) % SAMPLE_EVERY == 0


def detail_adds(listed: Mapping[str, Any], record: SessionRecord) -> bool | None:
    """Whether a detail tells what the listed state did not: a field the listing lacked or a
    value it gave otherwise. None when the session changed between the two requests (its
    ``lastUpdated`` moved): then a difference proves nothing."""
    listed_update, detail_update = listed.get("last_updated"), record.fields["last_updated"]
    if listed_update is not None and detail_update is not None and listed_update != detail_update:
        return None
    for name in COMPARED_FIELDS:
        value, known = record.fields[name], listed.get(name)
        if name in URL_COLUMNS and isinstance(value, str) and isinstance(known, str):
            # Every answer may carry a fresh access token (kept with ARCHIVER_KEEP_URL_TOKENS):
            # the URL tells something new only if it differs beyond its credentials.
            value, known = redact_url(value), redact_url(known)
        if value is not None and value != known:
            return True
    listed_raw = listed.get("raw") or {}
    return any(key not in listed_raw for key in record.raw)
