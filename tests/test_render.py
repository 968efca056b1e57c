"""Plain-text tables for the terminal."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from archiver.render import cell, table

CELL_CASES = [
    (None, "-"),
    ("", ""),
    ("text", "text"),
    (0, "0"),
    (42, "42"),
    (True, "True"),
    (1.0, "1.00"),
    (2.345, "2.35"),
    (-0.001, "-0.00"),
    (1234567.891, "1234567.89"),
    (float("nan"), "nan"),
    (Decimal("1.5"), "1.5"),
    (datetime(2026, 11, 1, 14, 2, 3, 999999, tzinfo=UTC), "2026-11-01 14:02:03"),
    (datetime(2026, 1, 2, 3, 4, 5), "2026-01-02 03:04:05"),
]


@pytest.mark.parametrize(
    ("value", "expected"),
    CELL_CASES,
    ids=[
        "none",
        "empty-string",
        "string",
        "zero",
        "int",
        "bool",
        "float-whole",
        "float-rounded",
        "float-tiny-negative",
        "float-large",
        "nan",
        "decimal-not-float",
        "aware-datetime-no-microseconds",
        "naive-datetime",
    ],
)
def test_cell(value: object, expected: str) -> None:
    assert cell(value) == expected


def test_table_pads_columns_to_their_widest_cell() -> None:
    text = table(
        ["status", "n", "seconds"],
        [
            ["active", 3, 1.5],
            ["vanished", None, 12.25],
            ["gone", 10000, None],
        ],
    )
    assert text.split("\n") == [
        "status    n      seconds",
        "--------  -----  -------",
        "active    3      1.50",
        "vanished  -      12.25",
        "gone      10000  -",
    ]


def test_table_columns_line_up() -> None:
    rows = [["a", "bbbbbbbbbb", "c"], ["dddddd", "e", "ffff"]]
    lines = table(["x", "y", "z"], rows).split("\n")
    dashes = lines[1]
    starts = [i for i, ch in enumerate(dashes) if ch == "-" and (i == 0 or dashes[i - 1] == " ")]
    assert starts == [0, 8, 20]
    for line in [lines[0], *lines[2:]]:
        for start in starts[1:]:
            assert line[start - 2 : start] == "  "  # two spaces before every column
            assert line[start] != " "


def test_table_with_datetimes() -> None:
    when = datetime(2026, 11, 1, 14, 2, 0, tzinfo=UTC)
    text = table(["session", "started"], [["s1", when], ["s2", None]])
    assert text.split("\n") == [
        "session  started",
        "-------  -------------------",
        "s1       2026-11-01 14:02:00",
        "s2       -",
    ]


def test_table_without_rows_shows_headers() -> None:
    assert table(["account", "outcome"], []) == "account  outcome\n-------  -------"


def test_table_accepts_any_iterable_of_rows() -> None:
    rows = ((n, n * n) for n in range(1, 4))
    assert table(["n", "square"], rows).split("\n")[-1] == "3  9"


def test_table_has_no_trailing_spaces() -> None:
    text = table(["a", "long header"], [["x", None], ["a much longer cell", ""]])
    assert all(line == line.rstrip() for line in text.split("\n"))


@pytest.mark.parametrize("row", [["only one"], ["one", "two", "three"]], ids=["short-row", "long-row"])
def test_table_rejects_rows_of_the_wrong_width(row: list[str]) -> None:
    with pytest.raises(ValueError):
        table(["a", "b"], [row])
