"""Parse and validate one upstream session object into a typed record; redact URL credentials.

A record is rejected outright only when it cannot be keyed (not an object, no valid sessionId).
A bad field (wrong type, absurd timestamp) is dropped and noted in ``problems`` so the session
itself is still archived: losing a session's existence over one odd field would be worse. So is
a value no database would take (a NUL character, a lone surrogate, nesting past MariaDB's limit):
it is replaced, in the columns and in the raw document, and noted.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from archiver.archive.redact import REDACTED, redact_text, redact_url
from archiver.archive.rows import SessionState, StateField, TextField, TimeField, UrlField
from archiver.archive.storable import MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_TEXT_BYTES, Walk, bounded_text, json_bytes, storable_text
from archiver.errors import BadRecordError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Millisecond timestamps outside 2000..2100 are almost surely seconds, or garbage.
MIN_MS = 946_684_800_000
MAX_MS = 4_102_444_800_000
UUID_PATTERN = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

TIME_FIELDS: dict[str, TimeField] = {
    "startTime": "start_time",
    "endTime": "end_time",
    "connectionStartTime": "connection_start_time",
    "connectionEndTime": "connection_end_time",
    "lastUpdated": "last_updated",
}
# Upstream key -> (attribute, longest value we store).
TEXT_FIELDS: dict[str, tuple[TextField, int]] = {
    "connectionId": ("connection_id", 128),
    "closeReason": ("close_reason", 64),
    "closeReasonText": ("close_reason_text", 1024),
}
URL_FIELDS: dict[str, UrlField] = {
    "devtoolsFrontendUrl": "devtools_frontend_url",
    "webSocketDebuggerUrl": "web_socket_debugger_url",
}
# The facts of a session's lifecycle: a change in any of them is a new version. URLs are left
# out on purpose: they carry short-lived credentials, not lifecycle facts.
LIFECYCLE_FIELDS: tuple[StateField, ...] = (*TIME_FIELDS.values(), *(a for a, _ in TEXT_FIELDS.values()))
STATE_FIELDS: tuple[StateField, ...] = (*LIFECYCLE_FIELDS, *URL_FIELDS.values())
KNOWN_KEYS = frozenset({"sessionId", *TIME_FIELDS, *TEXT_FIELDS, *URL_FIELDS})
# The free-text field: it may quote a URL (an error about a connection), and is redacted as
# unknown fields are. The others are codes and ids.
FREE_TEXT = "closeReasonText"


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One validated observation of a session, as listed or as fetched in detail."""

    session_id: str
    fields: SessionState  # None where the object says nothing (or nothing usable)
    raw: dict[str, Any]  # the upstream object, URL credentials redacted, unknown keys kept
    problems: tuple[str, ...] = ()

    @property
    def end_time(self) -> datetime | None:
        end: datetime | None = self.fields["end_time"]
        return end


def parse_session(obj: Any, *, keep_url_tokens: bool = False) -> SessionRecord:
    """Validate one upstream session object; raise BadRecordError if it cannot be keyed."""
    if not isinstance(obj, dict):
        raise BadRecordError(f"expected a JSON object, got {_json_type(obj)}")
    session_id = obj.get("sessionId")
    if not isinstance(session_id, str) or not UUID_PATTERN.fullmatch(session_id):
        raise BadRecordError(f"sessionId is missing or not a UUID: {_short(session_id)}")
    problems: list[str] = []
    fields = cast(SessionState, dict.fromkeys(STATE_FIELDS))  # every key, each set below
    for key, time_field in TIME_FIELDS.items():
        fields[time_field] = _parse_time(obj.get(key), key, problems)
    _check_order(fields, "start_time", "end_time", problems)
    _check_order(fields, "connection_start_time", "connection_end_time", problems)
    raw = dict(obj)
    for key, (text_field, limit) in TEXT_FIELDS.items():
        value = obj.get(key)
        text = _parse_text(value, key, limit, problems, numbers=(key == "closeReason"))
        if text is not None and key == FREE_TEXT and not keep_url_tokens:
            text = redact_text(text)
        if text is not value and text is not None and isinstance(value, str):
            raw[key] = text  # the document says what the column says
        fields[text_field] = text
    for key, url_field in URL_FIELDS.items():
        url = _parse_text(obj.get(key), key, 8192, problems, numbers=False)
        if url is not None and not keep_url_tokens:
            url = redact_url(url)
        fields[url_field] = url
        if key in raw:
            raw[key] = url if url is not None or raw[key] is None else REDACTED
    if problems or not KNOWN_KEYS.issuperset(obj):
        # Something is odd: every other value of the document is made storable (and redacted) too.
        raw = _storable_raw(raw, None if keep_url_tokens else redact_text, problems)
    return SessionRecord(session_id.lower(), fields, raw, tuple(problems))


def _check_order(fields: SessionState, start: TimeField, end: TimeField, problems: list[str]) -> None:
    """An end before its start is stored as observed (it is what upstream said), and noted."""
    start_at, end_at = fields[start], fields[end]
    if start_at is not None and end_at is not None and end_at < start_at:
        problems.append(f"{_UPSTREAM_KEY[end]}: before {_UPSTREAM_KEY[start]} (stored as observed)")


_UPSTREAM_KEY = {attr: key for key, attr in TIME_FIELDS.items()}


def _storable_raw(raw: dict[str, Any], redact: Callable[[str], str] | None, problems: list[str]) -> dict[str, Any]:
    """The raw document with every value storable, and its strings redacted unless tokens are kept."""
    document: dict[str, Any] = {}
    walk = Walk(clean=True, redact=redact, longest=MAX_DOCUMENT_BYTES)
    for key, value in raw.items():
        if key in URL_FIELDS:  # already made storable and redacted
            document[key] = value
            continue
        walk.cleaned = walk.cut = False
        name = walk.text(key)
        document[name] = walk.value(value, 2)
        label = key if key in KNOWN_KEYS else _short(name)
        if walk.cleaned:
            problems.append(f"{label}: NUL characters or lone surrogates replaced by U+FFFD")
        if walk.cut:
            problems.append(f"{label}: nested deeper than {MAX_DEPTH} levels; cut there")
    return _bounded_document(document, problems)


def _bounded_document(document: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """The document if its JSON fits MAX_DOCUMENT_BYTES; else the fields that fit, known ones first."""
    if len(json_bytes(document)) <= MAX_DOCUMENT_BYTES:
        return document
    kept: set[str] = set()
    room = MAX_DOCUMENT_BYTES - 2
    for key in sorted(document, key=lambda k: k not in KNOWN_KEYS):
        entry = len(json_bytes({key: document[key]})) - 1  # its text with a separator
        if entry <= room:
            kept.add(key)
            room -= entry
    left_out = [_short(k) for k in document if k not in kept]
    problems.append(
        f"raw: more than the {MAX_DOCUMENT_BYTES} bytes of JSON kept: left out "
        f"{len(left_out)} field(s): {', '.join(left_out[:3])}{', ...' if len(left_out) > 3 else ''}"
    )
    return {k: v for k, v in document.items() if k in kept}


def listing_hash(obj: Any, *, keep_url_tokens: bool = False) -> str | None:
    """A digest of an upstream object exactly as it was decoded, or None if it cannot have one.

    Two objects share a digest only if they are identical JSON: the same keys in the same order
    and the same values of the same types (Python holds ``1``, ``1.0`` and ``True`` equal, JSON
    does not). :func:`parse_session` is pure, so such objects parse to the same record: an
    archive that stores the digest of the listed object its state reflects can tell an unchanged
    listed session without parsing it again. The URL token setting is part of the digest, since
    it changes what parsing gives.
    """
    if not isinstance(obj, dict):
        return None
    try:
        # marshal is exact about types and key order, and five times as fast as json.dumps. Format
        # 2 is the newest without back-references, which would make the bytes depend on how many
        # references to a value exist, not only on the value.
        data = marshal.dumps(obj, 2)
    except ValueError:  # nested deeper than marshal goes
        return None
    return hashlib.blake2b(data, digest_size=16, person=_HASH_PERSON[keep_url_tokens]).hexdigest()


# Changes to what parse_session makes of an object must change this, so that digests stored by an
# older release no longer vouch for their rows.
_HASH_PERSON = {False: b"list-v2-redacted", True: b"list-v2-kept"}


def merge_state(previous: SessionState | None, record: SessionRecord) -> SessionState:
    """The latest known value of every field: what the record says, else what we knew before.

    Upstream omits or nulls fields freely (a listing may carry less than a detail), so a missing
    value never erases a known one, with one exception: a record of another connection (another
    ``connectionId`` or connection start) says all that is known of the session's connection
    now. The previous connection's end, kept beside the new start, would be a connection that
    ended before it began.
    """
    fields = record.fields
    if previous is None:
        return fields.copy()
    merged = cast(SessionState, {name: fields[name] if fields[name] is not None else previous.get(name) for name in STATE_FIELDS})
    if _another_connection(previous, fields):
        merged["connection_id"] = fields["connection_id"]
        merged["connection_start_time"] = fields["connection_start_time"]
        merged["connection_end_time"] = fields["connection_end_time"]
    return merged


def _another_connection(previous: SessionState, fields: SessionState) -> bool:
    return _differ(fields["connection_id"], previous.get("connection_id")) or _differ(
        fields["connection_start_time"], previous.get("connection_start_time")
    )


def _differ(new: object, old: object) -> bool:
    return new is not None and old is not None and new != old


def lifecycle_changed(previous: SessionState, merged: SessionState) -> bool:
    """Whether the merged state differs from the stored one in a lifecycle fact."""
    return any(previous.get(name) != merged[name] for name in LIFECYCLE_FIELDS)


def ms_to_datetime(ms: float) -> datetime:
    """Upstream milliseconds since the epoch as an aware UTC datetime (microsecond precision)."""
    return EPOCH + timedelta(milliseconds=ms)


def reject_body(obj: Any) -> str:
    """A rejected object as text for the rejects table: its JSON, every string in it redacted as a
    stored field is, NUL characters and lone surrogates kept as the escapes they came as (the
    text is ASCII), and cut past what a TEXT column takes."""
    redacted = Walk(clean=False, redact=redact_text, longest=MAX_TEXT_BYTES).value(obj)
    try:
        text = json.dumps(redacted, sort_keys=True, default=str)
    except TypeError:  # keys of types that do not sort together
        text = json.dumps(redacted, default=str)
    return bounded_text(text)


def _parse_time(value: Any, key: str, problems: list[str]) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"{key}: expected milliseconds, got {_json_type(value)}")
        return None
    # Compare before any float conversion: JSON integers may be arbitrarily large.
    if (isinstance(value, float) and not math.isfinite(value)) or not MIN_MS <= value <= MAX_MS:
        problems.append(f"{key}: {_short(value)} is not a plausible millisecond timestamp")
        return None
    return ms_to_datetime(value)


def _parse_text(value: Any, key: str, limit: int, problems: list[str], *, numbers: bool) -> str | None:
    if value is None:
        return None
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        # closeReason is a string in the older spec and a numeric code in newer SDKs.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        value = str(value)
    if not isinstance(value, str):
        problems.append(f"{key}: expected a string, got {_json_type(value)}")
        return None
    if len(value) > limit:
        problems.append(f"{key}: longer than {limit} characters")
        return None
    if value.isascii() and "\x00" not in value:  # the common case, without a call
        return value
    storable = storable_text(value)
    if storable is not value:
        problems.append(f"{key}: NUL characters or lone surrogates replaced by U+FFFD")
    return storable


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
