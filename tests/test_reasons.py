"""One documented name per close reason, in Python and in each database's SQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, literal, null, select

from archiver.archive import reasons


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("1", "NormalClosure"), ("NormalClosure", "NormalClosure"), ("Normal closure", "NormalClosure"),
        ("2", "BrowserIdle"), ("BrowserIdle", "BrowserIdle"), ("Browser idle", "BrowserIdle"),
        ("ConnectionError", "ConnectionError"), ("Connection error", "ConnectionError"),
        ("ChromiumCrashed", "ChromiumCrashed"), ("Chromium crashed", "ChromiumCrashed"),
        ("SessionEvicted", "SessionEvicted"), ("Session evicted", "SessionEvicted"),
        ("1000", "1000"), ("0", "0"), ("normalclosure", "normalclosure"), ("it's odd", "it's odd"), (None, None),
    ],
    ids=lambda v: repr(v),
)
def test_name(stored: str | None, expected: str | None) -> None:
    assert reasons.name(stored) == expected


def test_platform_and_idle_reasons() -> None:
    assert [r for r in ("1", "2", "ChromiumCrashed", "Session evicted", "ConnectionError", "1000", None)
            if reasons.is_platform(r)] == ["ChromiumCrashed", "Session evicted"]
    assert reasons.PLATFORM_VALUES == ["Chromium crashed", "ChromiumCrashed", "Session evicted", "SessionEvicted"]
    assert reasons.IDLE_VALUES == ["2", "Browser idle", "BrowserIdle"]


def test_stored_values_of_a_name_a_code_and_an_unknown_value() -> None:
    assert reasons.stored_values("NormalClosure") == ["1", "Normal closure", "NormalClosure"]
    assert reasons.stored_values("2") == ["2", "Browser idle", "BrowserIdle"]
    assert reasons.stored_values("1000") == ["1000"]


def test_the_sql_case_gives_the_same_names(any_engine: Engine) -> None:
    values = [*reasons.ALIASES, "1000", "it's odd", None]
    with any_engine.connect() as conn:
        for value in values:
            stored = literal(value) if value is not None else null()
            assert conn.scalar(select(reasons.name_of(stored))) == reasons.name(value), value


def test_the_view_text_inlines_quoted_literals(any_engine: Engine) -> None:
    text = reasons.name_sql("close_reason", any_engine.dialect)
    assert text.startswith("CASE close_reason WHEN '1' THEN 'NormalClosure'") and text.endswith("ELSE close_reason END")
    assert ":" not in text and "%(" not in text and "?" not in text  # no bound parameter left
