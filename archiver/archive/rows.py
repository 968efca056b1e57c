"""The rows the archive reads and writes, typed: what a parsed record says of a session, a
``browser_sessions`` row, a version, a rejected object.

They are TypedDicts, plain dicts at run time: the cycle hands them to SQLAlchemy's executemany as
they are, and copies them with ``{**row, ...}``, where dataclasses would cost a conversion per row
(tens of thousands on a cold listing). mypy checks every key and value against these classes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypedDict

TimeField = Literal["start_time", "end_time", "connection_start_time", "connection_end_time", "last_updated"]
TextField = Literal["connection_id", "close_reason", "close_reason_text"]
UrlField = Literal["devtools_frontend_url", "web_socket_debugger_url"]
StateField = Literal[
    "start_time", "end_time", "connection_start_time", "connection_end_time", "last_updated",
    "connection_id", "close_reason", "close_reason_text", "devtools_frontend_url", "web_socket_debugger_url",
]  # TimeField | TextField | UrlField, spelt out: mypy reads a union of aliases as a plain str key


class SessionState(TypedDict):
    """The upstream fields of a session (records.STATE_FIELDS): what a record says, or what is
    known once it is merged with the stored row."""

    start_time: datetime | None
    end_time: datetime | None
    connection_start_time: datetime | None
    connection_end_time: datetime | None
    last_updated: datetime | None
    connection_id: str | None
    close_reason: str | None
    close_reason_text: str | None
    devtools_frontend_url: str | None
    web_socket_debugger_url: str | None


class StoredState(SessionState):
    """What the cycle reads to tell a listed session unchanged (store.load_states)."""

    session_id: str
    status: str


class SessionRow(StoredState):
    """A ``browser_sessions`` row: the latest known state, and what the archiver observed of it."""

    account_id: str
    first_seen_at: datetime
    last_seen_at: datetime
    last_detail_at: datetime | None
    vanished_at: datetime | None
    gone_at: datetime | None
    detail_due: str | None
    detail_attempts: int
    last_run_id: int | None
    content_hash: str | None
    raw: dict[str, Any] | None


class VersionRow(SessionState):
    """A ``browser_session_versions`` row: the state a session moved to, when and from what source."""

    account_id: str
    session_id: str
    run_id: int | None
    observed_at: datetime
    source: str
    status: str
    raw: dict[str, Any] | None


class RejectRow(TypedDict):
    """A ``rejected_records`` row: an upstream object set aside, with its reason."""

    account_id: str
    run_id: int | None
    rejected_at: datetime
    source: str
    session_id: str | None
    reason: str
    body: str
    kept: bool
