"""Parse and validate one upstream session object into a typed record; redact URL credentials.

A record is rejected outright only when it cannot be keyed (not an object, no valid sessionId).
A bad field (wrong type, absurd timestamp) is dropped and noted in ``problems`` so the session
itself is still archived: losing a session's existence over one odd field would be worse.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from archiver.errors import BadRecordError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Millisecond timestamps outside 2000..2100 are almost surely seconds, or garbage.
MIN_MS = 946_684_800_000
MAX_MS = 4_102_444_800_000
UUID_PATTERN = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
REDACTED = "REDACTED"

TIME_FIELDS = {
    "startTime": "start_time",
    "endTime": "end_time",
    "connectionStartTime": "connection_start_time",
    "connectionEndTime": "connection_end_time",
    "lastUpdated": "last_updated",
}
# Upstream key -> (attribute, longest value we store).
TEXT_FIELDS = {
    "connectionId": ("connection_id", 128),
    "closeReason": ("close_reason", 64),
    "closeReasonText": ("close_reason_text", 1024),
}
URL_FIELDS = {
    "devtoolsFrontendUrl": "devtools_frontend_url",
    "webSocketDebuggerUrl": "web_socket_debugger_url",
}
# The facts of a session's lifecycle: a change in any of them is a new version. URLs are left
# out on purpose: they carry short-lived credentials, not lifecycle facts.
LIFECYCLE_FIELDS: tuple[str, ...] = (*TIME_FIELDS.values(), *(a for a, _ in TEXT_FIELDS.values()))
STATE_FIELDS: tuple[str, ...] = (*LIFECYCLE_FIELDS, *URL_FIELDS.values())


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One validated observation of a session, as listed or as fetched in detail."""

    session_id: str
    fields: dict[str, Any]  # attribute -> value for every STATE_FIELDS name; None when missing
    raw: dict[str, Any]  # the upstream object, URL credentials redacted, unknown keys kept
    problems: tuple[str, ...] = ()

    @property
    def end_time(self) -> datetime | None:
        return self.fields["end_time"]


def parse_session(obj: Any, *, keep_url_tokens: bool = False) -> SessionRecord:
    """Validate one upstream session object; raise BadRecordError if it cannot be keyed."""
    if not isinstance(obj, dict):
        raise BadRecordError(f"expected a JSON object, got {_json_type(obj)}")
    session_id = obj.get("sessionId")
    if not isinstance(session_id, str) or not UUID_PATTERN.fullmatch(session_id):
        raise BadRecordError(f"sessionId is missing or not a UUID: {_short(session_id)}")
    problems: list[str] = []
    fields: dict[str, Any] = {}
    for key, attr in TIME_FIELDS.items():
        fields[attr] = _parse_time(obj.get(key), key, problems)
    for key, (attr, limit) in TEXT_FIELDS.items():
        fields[attr] = _parse_text(obj.get(key), key, limit, problems, numbers=(key == "closeReason"))
    raw = dict(obj)
    for key, attr in URL_FIELDS.items():
        url = _parse_text(obj.get(key), key, 8192, problems, numbers=False)
        if url is not None and not keep_url_tokens:
            url = redact_url(url)
        fields[attr] = url
        if key in raw:
            raw[key] = url if url is not None or raw[key] is None else REDACTED
    return SessionRecord(session_id.lower(), fields, raw, tuple(problems))


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
_HASH_PERSON = {False: b"list-v1-redacted", True: b"list-v1-kept"}


def merge_state(previous: Mapping[str, Any] | None, record: SessionRecord) -> dict[str, Any]:
    """The latest known value of every field: what the record says, else what we knew before.

    Upstream omits or nulls fields freely (a listing may carry less than a detail), so a missing
    value never erases a known one.
    """
    if previous is None:
        return dict(record.fields)
    return {
        name: record.fields[name] if record.fields[name] is not None else previous.get(name)
        for name in STATE_FIELDS
    }


def lifecycle_changed(previous: Mapping[str, Any], merged: Mapping[str, Any]) -> bool:
    """Whether the merged state differs from the stored one in a lifecycle fact."""
    return any(previous.get(name) != merged[name] for name in LIFECYCLE_FIELDS)


def ms_to_datetime(ms: float) -> datetime:
    """Upstream milliseconds since the epoch as an aware UTC datetime (microsecond precision)."""
    return EPOCH + timedelta(milliseconds=ms)


def redact_url(url: str, _depth: int = 0) -> str:
    """The URL with every credential replaced: passwords, query values, fragments.

    A query value that is itself a URL with a query (DevTools' ``?wss=host/path?jwt=...``) is
    redacted recursively rather than wholesale, so the host and path stay useful for forensics.
    """
    try:
        plain = _split_plain_url(url)
        if plain is not None:
            # What urlunsplit would join, without urlsplit's and urlunsplit's general machinery.
            head, query = plain
            return f"{head}?{_redact_query(query, _depth)}"
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
        fragment = REDACTED if parts.fragment else ""
        return urlunsplit((parts.scheme, netloc, parts.path, _redact_query(parts.query, _depth), fragment))
    except ValueError:
        return REDACTED


def _redact_query(query: str, depth: int) -> str:
    items = []
    for item in query.split("&") if query else []:
        key, has_value, value = item.partition("=")
        if not has_value:
            items.append(REDACTED)  # a bare ?token is a value without a key
        elif "?" in unquote(value) and depth < 3:
            items.append(f"{key}={redact_url(unquote(value), depth + 1)}")  # a URL with its own query
        else:
            items.append(f"{key}={REDACTED if value else ''}")
    return "&".join(items)


# The everyday shapes of a DevTools URL, "scheme://host/path?query" and "host/path?query", in
# printable ASCII without a fragment, brackets or user info. For these, urlsplit only splits and
# urlunsplit joins the parts back as they were, so redaction can skip both (most of its cost).
_PLAIN_URL = re.compile(r"([a-z][a-z0-9+.\-]*://[^/?#@\[\]]+(?:/[^?#]*)?)\?([^#]+)")
_PLAIN_PATH = re.compile(r"([^/?#:][^?#:]*)\?([^#]+)")


def _split_plain_url(url: str) -> tuple[str, str] | None:
    """(everything before the first ``?``, the query) for a URL of a plain shape, else None."""
    if not url.isascii() or not url.isprintable() or " " in url:
        return None
    match = _PLAIN_URL.fullmatch(url) or _PLAIN_PATH.fullmatch(url)
    return (match[1], match[2]) if match else None


_QUERY_SECRET = re.compile(r"(?P<key>[?&;][\w.\-]+=)(?P<value>[^&\s\"'\\]+)")


def redact_text(text: str) -> str:
    """A coarse safety net for free text (reject bodies): blank every ``?key=value`` value."""
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{REDACTED}", text)


def reject_body(obj: Any) -> str:
    """A rejected object as text for the rejects table, with anything URL-like redacted."""
    try:
        text = json.dumps(obj, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(obj)
    return redact_text(text)


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
    return value


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
