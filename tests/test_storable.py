"""Values made storable: text without NUL or lone surrogates, JSON bounded in depth, texts in size."""

from __future__ import annotations

import json
from typing import Any

import pytest

from archiver.archive.storable import DEPTH_MARKER, MAX_DEPTH, MAX_TEXT_BYTES, Walk, bounded_text, json_bytes, storable_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("plain", "plain"), ("a\x00b", "a\ufffdb"), ("é\ud800x\udfff", "é\ufffdx\ufffd"), ("😀 é", "😀 é"), ("\x01\x1f", "\x01\x1f")],
    ids=["ascii", "nul", "lone-surrogates", "astral-and-accents", "other-controls-are-storable"],
)
def test_storable_text(text: str, expected: str) -> None:
    assert storable_text(text) == expected
    if text == expected:
        assert storable_text(text) is text  # callers tell a change by identity


def nested(levels: int, leaf: Any = "leaf") -> Any:
    value: Any = leaf
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": "x\x00"}, {"a": "x\ufffd"}),
        ({"\ud800": 1}, {"\ufffd": 1}),
        ({"n": float("nan"), "big": 10**30}, {"n": None, "big": 10**30}),
        (nested(MAX_DEPTH), nested(MAX_DEPTH)),
        (nested(MAX_DEPTH + 1), nested(MAX_DEPTH, leaf=DEPTH_MARKER)),
        ({"ok": [1, 2.5, True, None, "s"]}, {"ok": [1, 2.5, True, None, "s"]}),
    ],
    ids=["nul", "lone-surrogate-key", "nan-beside-a-huge-integer", "deepest-kept", "one-level-too-deep", "plain"],
)
def test_json_bytes_is_json_every_database_reads(value: Any, expected: Any) -> None:
    data = json_bytes(value)
    assert b"\\u0000" not in data and b"\\ud800" not in data
    assert json.loads(data, parse_constant=pytest.fail) == expected  # strict JSON: no NaN


def test_a_walk_redacts_every_string_and_says_what_it_changed() -> None:
    walk = Walk(clean=True, redact=str.upper)
    # The lists start at level 4: the 18th of them would be level 21.
    assert walk.value({"k\x00": ["a", {"b": nested(MAX_DEPTH)}]}) == {"K\ufffd": ["A", {"B": nested(17, leaf=DEPTH_MARKER)}]}
    assert walk.cleaned and walk.cut


def test_a_walk_that_only_redacts_keeps_nul_and_surrogates_for_the_json_escapes() -> None:
    walk = Walk(clean=False, redact=None)
    assert walk.value({"a": "\x00\ud800"}) == {"a": "\x00\ud800"} and not walk.cleaned


@pytest.mark.parametrize(
    ("text", "cut"),
    [("x" * MAX_TEXT_BYTES, False), ("x" * (MAX_TEXT_BYTES + 1), True), ("é" * MAX_TEXT_BYTES, True), ("a\x00b", False)],
    ids=["at-the-limit", "one-byte-over", "multibyte-over", "nul-replaced"],
)
def test_bounded_text_fits_a_text_column_and_says_it_was_cut(text: str, cut: bool) -> None:
    bounded = bounded_text(text)
    assert len(bounded.encode()) <= MAX_TEXT_BYTES and "\x00" not in bounded
    assert bounded.endswith(f" ... [cut to {MAX_TEXT_BYTES} bytes]") is cut


def test_a_walk_cuts_a_string_past_its_longest_before_redacting_it() -> None:
    redacted: list[int] = []
    walk = Walk(clean=False, redact=lambda s: redacted.append(len(s)) or s, longest=10)
    assert walk.value(["x" * 11, "y" * 10]) == ["x" * 10, "y" * 10]
    assert redacted == [10, 10]
