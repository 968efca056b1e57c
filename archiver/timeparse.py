"""Times and ages given on the command line: ISO-8601 instants, or relative ages such as ``24h``.

An instant without a zone is taken as UTC, since everything in the archive is UTC. A relative
age counts back from "now": ``24h`` is 24 hours ago.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from archiver.errors import InputError

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
AGE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
HINT = "use ISO-8601 (2026-11-21T14:02:00Z) or an age such as 30m, 24h, 7d"


def parse_age(text: str) -> timedelta:
    """A relative age such as ``30m``, ``24h``, ``7d``, ``180d`` or ``2w``, as a positive timedelta."""
    match = AGE_PATTERN.match(text)
    if match is None:
        raise InputError(f"{text!r} is not an age: use a number and a unit (s, m, h, d, w), such as 180d")
    amount, unit = float(match[1]), match[2].lower()
    try:
        age = timedelta(**{UNITS[unit]: amount})
    except OverflowError:
        raise InputError(f"{text!r} is too long an age") from None
    if age <= timedelta(0):
        raise InputError(f"{text!r} is not an age: it must be more than zero")
    return age


def parse_time(text: str, now: datetime) -> datetime:
    """An aware UTC instant from ISO-8601, ``now``, or an age counted back from ``now``."""
    stripped = text.strip()
    if stripped.lower() == "now":
        return now.astimezone(UTC)
    if AGE_PATTERN.match(stripped):
        try:
            return (now - parse_age(stripped)).astimezone(UTC)
        except OverflowError:
            raise InputError(f"{text!r} reaches back before the year 1") from None
    try:
        when = datetime.fromisoformat(stripped.replace("z", "Z"))
    except ValueError:
        raise InputError(f"{text!r} is not a time: {HINT}") from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
