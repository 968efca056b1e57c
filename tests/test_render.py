"""Plain-text tables for the terminal."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from archiver.render import cell, table, write_rows

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


ROWS = [
    ("s1", datetime(2026, 11, 1, 14, 2, 0, 500000, tzinfo=UTC), None, 1.25, Decimal("2.5"), {"a": [1, "é"]}),
    ("s,2 \"q\"\nline", None, True, 0, None, None),
]
COLUMNS = ["id", "at", "flag", "seconds", "exact", "doc"]


def test_write_rows_csv() -> None:
    out = io.StringIO()
    assert write_rows(out, "csv", COLUMNS, iter(ROWS)) == 2
    parsed = list(csv.reader(io.StringIO(out.getvalue())))
    assert parsed == [
        COLUMNS,
        ["s1", "2026-11-01T14:02:00.500000+00:00", "", "1.25", "2.5", '{"a":[1,"é"]}'],
        ['s,2 "q"\nline', "", "True", "0", "", ""],
    ]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_write_rows_json_and_jsonl(fmt: str) -> None:
    out = io.StringIO()
    assert write_rows(out, fmt, COLUMNS, iter(ROWS)) == 2
    text = out.getvalue()
    documents = json.loads(text) if fmt == "json" else [json.loads(line) for line in text.splitlines()]
    assert documents == [
        {"id": "s1", "at": "2026-11-01T14:02:00.500000+00:00", "flag": None, "seconds": 1.25, "exact": 2.5,
         "doc": {"a": [1, "é"]}},
        {"id": 's,2 "q"\nline', "at": None, "flag": True, "seconds": 0, "exact": None, "doc": None},
    ]


@pytest.mark.parametrize(("fmt", "expected"), [("json", "[]\n"), ("jsonl", ""), ("csv", "a,b\n"), ("table", "a  b\n-  -\n")])
def test_write_rows_without_rows(fmt: str, expected: str) -> None:
    out = io.StringIO()
    assert write_rows(out, fmt, ["a", "b"], []) == 0
    assert out.getvalue() == expected


def test_write_rows_streams_csv_and_jsonl() -> None:
    seen: list[int] = []
    out = io.StringIO()

    def rows() -> Iterator[tuple[int]]:
        for n in range(3):
            seen.append(len(out.getvalue().splitlines()))  # lines written before this row was asked for
            yield (n,)

    write_rows(out, "jsonl", ["n"], rows())
    assert seen == [0, 1, 2]


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown output format"):
        write_rows(io.StringIO(), "xml", ["a"], [])
