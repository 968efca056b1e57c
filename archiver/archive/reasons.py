"""Close reasons: one documented name for a reason however it arrived, and which ones the platform caused.

Cloudflare sends ``closeReason`` as a string in the older spec (``NormalClosure``) and as a
numeric code in newer SDKs (``1``); the archive keeps what came, as text. Reports, views and
metrics show the documented name instead, so that the same reason is counted once. A value not
listed here (an undocumented code such as ``1000``, a new text) is shown as it came.

Views cannot call Python: :func:`name_sql` renders the same mapping as a SQL ``CASE`` for them. A
change to the mapping therefore needs a migration that creates the views again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Dialect, case, column


@dataclass(frozen=True)
class Reason:
    """A documented close reason: its name, its numeric code (as stored: text) and its text."""

    name: str
    code: str | None
    text: str
    # Ended by Cloudflare's own infrastructure, not by the client: said not to be billed.
    platform: bool = False


IDLE = Reason("BrowserIdle", "2", "Browser idle")
DOCUMENTED = (
    Reason("NormalClosure", "1", "Normal closure"),
    IDLE,
    Reason("ConnectionError", None, "Connection error"),
    Reason("ChromiumCrashed", None, "Chromium crashed", platform=True),
    Reason("SessionEvicted", None, "Session evicted", platform=True),
)
# Every stored value that means a documented reason: its name, its code, and its text (some
# clients send the text where the name belongs).
ALIASES: dict[str, str] = {
    value: reason.name for reason in DOCUMENTED for value in (reason.name, reason.code, reason.text) if value
}
PLATFORM_NAMES = frozenset(reason.name for reason in DOCUMENTED if reason.platform)
# The stored values of the reasons the platform caused, and of idle closes.
PLATFORM_VALUES = sorted(raw for raw, alias in ALIASES.items() if alias in PLATFORM_NAMES)
IDLE_VALUES = sorted(raw for raw, alias in ALIASES.items() if alias == IDLE.name)


def name(raw: str | None) -> str | None:
    """The documented name of a stored close reason, or the value itself when it is not documented."""
    if raw is None:
        return None
    return ALIASES.get(raw, raw)


def stored_values(reason: str) -> list[str]:
    """Every stored value that ``reason`` (a name, a code or a raw value) stands for, sorted."""
    named = name(reason)
    values = {raw for raw, alias in ALIASES.items() if alias == named}
    return sorted(values | {reason})


def is_platform(raw: str | None) -> bool:
    """Whether a stored close reason says Cloudflare's infrastructure ended the session."""
    return raw in PLATFORM_VALUES


def name_of(stored: ColumnElement[Any]) -> ColumnElement[Any]:
    """The documented name of a close reason column, computed in the database."""
    renamed = {raw: alias for raw, alias in ALIASES.items() if raw != alias}
    return case(renamed, value=stored, else_=stored)


def name_sql(column_name: str, dialect: Dialect) -> str:
    """:func:`name_of` as SQL text for a view, its values inlined as quoted literals."""
    expression = name_of(column(column_name))
    return str(expression.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
