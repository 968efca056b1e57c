"""UTC hours, days and months, and a window cut into them (in Python: the reports that need it
read the rows of the window once and total them per period)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from archiver.errors import InputError
from archiver.reports.window import Window

UNITS = ("hour", "day", "month")


def floor(when: datetime, unit: str) -> datetime:
    """The start of the UTC hour, day or month that holds ``when``."""
    hour = when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if unit == "hour":
        return hour
    day = hour.replace(hour=0)
    return day if unit == "day" else day.replace(day=1)


def following(start: datetime, unit: str) -> datetime:
    """The start of the next hour, day or month after the start of one."""
    if unit == "hour":
        return start + timedelta(hours=1)
    if unit == "day":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


def edges(window: Window, unit: str | None) -> list[datetime]:
    """The window's start, every start of an hour, day or month inside it, and its end.

    With no unit, the window is one period.
    """
    if unit is not None and unit not in UNITS:
        raise InputError(f"cannot cut a window by {unit!r}: use {', '.join(UNITS)}")
    cuts = [window.since]
    cut = following(floor(window.since, unit), unit) if unit else window.until
    while cut < window.until:
        cuts.append(cut)
        cut = following(cut, unit)  # type: ignore[arg-type]
    return [*cuts, window.until]


def until_now(window: Window, now: datetime) -> Window:
    """The window, ending at ``now`` if it reaches past it: the archive knows nothing later."""
    if window.since >= now:
        raise InputError("the window begins after now: the archive has nothing to say about it yet")
    return Window(window.since, min(window.until, now))
