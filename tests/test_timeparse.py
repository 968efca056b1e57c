"""Times and ages on the command line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from archiver.errors import InputError
from archiver.timeparse import parse_age, parse_time

NOW = datetime(2026, 11, 21, 14, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-21T14:02:00Z", datetime(2026, 11, 21, 14, 2, tzinfo=UTC)),
        ("2026-11-21T14:02:00.250z", datetime(2026, 11, 21, 14, 2, 0, 250000, tzinfo=UTC)),
        ("2026-11-21 14:02", datetime(2026, 11, 21, 14, 2, tzinfo=UTC)),
        ("2026-11-21", datetime(2026, 11, 21, tzinfo=UTC)),
        ("2026-11-21T16:02:00+02:00", datetime(2026, 11, 21, 14, 2, tzinfo=UTC)),
        ("2026-11-21T09:02:00-05:00", datetime(2026, 11, 21, 14, 2, tzinfo=UTC)),
        ("  2026-11-21T14:02:00Z  ", datetime(2026, 11, 21, 14, 2, tzinfo=UTC)),
        ("now", NOW),
        ("NOW", NOW),
        ("30m", NOW - timedelta(minutes=30)),
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("180d", NOW - timedelta(days=180)),
        ("2w", NOW - timedelta(weeks=2)),
        ("90s", NOW - timedelta(seconds=90)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("24H", NOW - timedelta(hours=24)),
    ],
    ids=["zulu", "lowercase-z-fraction", "naive-is-utc", "date-only", "plus-offset", "minus-offset", "padded",
         "now", "now-upper", "minutes", "hours", "days", "180-days", "weeks", "seconds", "fractional", "upper-unit"],
)
def test_parse_time(text: str, expected: datetime) -> None:
    parsed = parse_time(text, NOW)
    assert parsed == expected
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    ["", "yesterday", "24", "h", "-5m", "5 minutes", "2026-13-01", "2026-11-21T25:00", "7y", "1e3d", "0x10m"],
    ids=["empty", "word", "no-unit", "no-number", "negative", "spelled-unit", "bad-month", "bad-hour", "unknown-unit",
         "exponent", "hex"],
)
def test_bad_times_are_input_errors(text: str) -> None:
    with pytest.raises(InputError, match="is not a time|is not an age"):
        parse_time(text, NOW)


def test_an_age_reaching_before_year_one_is_an_input_error() -> None:
    with pytest.raises(InputError, match="before the year 1"):
        parse_time("999999d", NOW)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("180d", timedelta(days=180)), ("36h", timedelta(hours=36)), ("12w", timedelta(weeks=12)), ("1s", timedelta(seconds=1))],
    ids=["days", "hours", "weeks", "second"],
)
def test_parse_age(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["0d", "0.0h", "180", "d180", "2026-01-01", "99999999999w"],
                         ids=["zero", "zero-fraction", "no-unit", "unit-first", "a-date", "overflow"])
def test_bad_ages(text: str) -> None:
    with pytest.raises(InputError):
        parse_age(text)


def test_zoned_now_is_kept_as_utc() -> None:
    now = datetime(2026, 11, 21, 16, 2, tzinfo=timezone(timedelta(hours=2)))
    for text, expected in (("1h", datetime(2026, 11, 21, 13, 2, tzinfo=UTC)), ("now", datetime(2026, 11, 21, 14, 2, tzinfo=UTC))):
        parsed = parse_time(text, now)
        assert parsed == expected and parsed.utcoffset() == timedelta(0) and parsed.tzinfo == UTC
