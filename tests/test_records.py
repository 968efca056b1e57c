"""Parsing one upstream session object, URL redaction, and merging observations."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archiver.archive.records import (
    LIFECYCLE_FIELDS,
    REDACTED,
    STATE_FIELDS,
    SessionRecord,
    lifecycle_changed,
    listing_hash,
    merge_state,
    ms_to_datetime,
    parse_session,
    redact_text,
    redact_url,
    reject_body,
)
from archiver.errors import BadRecordError

SID = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e"
# The example object of the reference pages (seeds/000 and 001), verbatim.
SEED_EXAMPLE: dict[str, Any] = {
    "sessionId": "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e",
    "closeReason": "closeReason",
    "closeReasonText": "closeReasonText",
    "connectionEndTime": 0,
    "connectionId": "connectionId",
    "connectionStartTime": 0,
    "devtoolsFrontendUrl": "devtoolsFrontendUrl",
    "endTime": 0,
    "lastUpdated": 0,
    "startTime": 0,
    "webSocketDebuggerUrl": "webSocketDebuggerUrl",
}
# 2023-11-14T22:13:20Z and a few milliseconds after it; .5/.25 are exact in binary floating point.
START_MS = 1_700_000_000_000
DEVTOOLS_URL = (
    "https://live.browser.run/ui/inspector.html"
    "?wss=live.browser.run/api/devtools/browser/182bd5e5?jwt=eyJhbGciOiJIUzI1NiJ9.payload.sig"
)
WS_URL = "wss://live.browser.run/api/devtools/browser/182bd5e5?jwt=eyJhbGciOiJIUzI1NiJ9.payload.sig"
JWT = "eyJhbGciOiJIUzI1NiJ9.payload.sig"


def realistic(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "sessionId": SID,
        "startTime": START_MS,
        "endTime": START_MS + 60_000.5,
        "connectionStartTime": START_MS + 1_000.25,
        "connectionEndTime": START_MS + 59_000,
        "lastUpdated": START_MS + 60_000.5,
        "connectionId": "conn-1",
        "closeReason": "NormalClosure",
        "closeReasonText": "Normal closure",
        "devtoolsFrontendUrl": DEVTOOLS_URL,
        "webSocketDebuggerUrl": WS_URL,
    }
    obj.update(changes)
    return obj


# --- parse_session: the happy paths ---------------------------------------------------------------------


def test_seed_example_parses_and_flags_its_placeholder_times() -> None:
    record = parse_session(SEED_EXAMPLE)
    assert record.session_id == SID
    assert set(record.fields) == set(STATE_FIELDS)
    assert record.fields["connection_id"] == "connectionId"
    assert record.fields["close_reason"] == "closeReason"
    assert record.fields["close_reason_text"] == "closeReasonText"
    # The placeholders are not URLs with credentials: nothing to redact.
    assert record.fields["devtools_frontend_url"] == "devtoolsFrontendUrl"
    assert record.fields["web_socket_debugger_url"] == "webSocketDebuggerUrl"
    # 0 ms (1970) is not a plausible session time: each is dropped and noted, the record is kept.
    for attr in ("start_time", "end_time", "connection_start_time", "connection_end_time", "last_updated"):
        assert record.fields[attr] is None
    assert len(record.problems) == 5
    for key in ("startTime", "endTime", "connectionStartTime", "connectionEndTime", "lastUpdated"):
        assert any(p.startswith(f"{key}:") for p in record.problems)
    assert record.raw == SEED_EXAMPLE


def test_realistic_object_parses_every_field_exactly() -> None:
    record = parse_session(realistic())
    assert record.problems == ()
    assert record.fields["start_time"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert record.fields["end_time"] == datetime(2023, 11, 14, 22, 14, 20, 500, tzinfo=UTC)
    assert record.fields["connection_start_time"] == datetime(2023, 11, 14, 22, 13, 21, 250, tzinfo=UTC)
    assert record.fields["connection_end_time"] == datetime(2023, 11, 14, 22, 14, 19, tzinfo=UTC)
    assert record.fields["last_updated"] == record.fields["end_time"]
    assert record.end_time == record.fields["end_time"]
    assert record.fields["connection_id"] == "conn-1"
    assert record.fields["close_reason"] == "NormalClosure"
    assert record.fields["close_reason_text"] == "Normal closure"
    for attr in ("start_time", "end_time", "connection_start_time", "connection_end_time", "last_updated"):
        assert record.fields[attr].tzinfo is not None
        assert record.fields[attr].utcoffset().total_seconds() == 0


def test_only_session_id_is_required() -> None:
    record = parse_session({"sessionId": SID})
    assert record.problems == ()
    assert record.fields == dict.fromkeys(STATE_FIELDS)
    assert record.end_time is None


def test_nulls_are_missing_values_not_problems() -> None:
    obj = {"sessionId": SID, **{k: None for k in SEED_EXAMPLE if k != "sessionId"}}
    record = parse_session(obj)
    assert record.problems == ()
    assert record.fields == dict.fromkeys(STATE_FIELDS)
    assert record.raw == obj


def test_session_id_is_lower_cased() -> None:
    assert parse_session({"sessionId": SID.upper()}).session_id == SID


def test_unknown_fields_survive_in_raw() -> None:
    obj = realistic(region="WEUR", nested={"a": [1, 2, {"b": None}]}, browserVersion=131)
    record = parse_session(obj)
    assert record.raw["region"] == "WEUR"
    assert record.raw["nested"] == {"a": [1, 2, {"b": None}]}
    assert record.raw["browserVersion"] == 131
    assert record.problems == ()


def test_parse_does_not_modify_its_input() -> None:
    obj = realistic()
    snapshot = json.loads(json.dumps(obj))
    parse_session(obj)
    assert obj == snapshot


# --- closeReason: string in the old spec, number in the new SDKs ------------------------------------------

CLOSE_REASON_CASES = [
    ("NormalClosure", "NormalClosure", False),
    ("BrowserIdle", "BrowserIdle", False),
    ("", "", False),
    (0, "0", False),
    (1000, "1000", False),
    (1000.0, "1000", False),
    (-1, "-1", False),
    (1000.5, "1000.5", False),
    (True, None, True),
    (False, None, True),
    (["x"], None, True),
    ({"code": 1000}, None, True),
    ("x" * 65, None, True),
    ("x" * 64, "x" * 64, False),
]


@pytest.mark.parametrize(
    ("value", "expected", "is_problem"),
    CLOSE_REASON_CASES,
    ids=[
        "string",
        "browser-idle",
        "empty-string",
        "int-zero",
        "int-1000",
        "integral-float",
        "negative",
        "fractional-float",
        "bool-true",
        "bool-false",
        "array",
        "object",
        "too-long",
        "longest-allowed",
    ],
)
def test_close_reason_types(value: Any, expected: str | None, is_problem: bool) -> None:
    record = parse_session({"sessionId": SID, "closeReason": value})
    assert record.fields["close_reason"] == expected
    problems = [p for p in record.problems if p.startswith("closeReason:")]
    assert bool(problems) == is_problem
    assert len(record.problems) == len(problems)


@pytest.mark.parametrize(
    ("key", "value"),
    [("connectionId", 42), ("closeReasonText", 1000), ("closeReasonText", False), ("connectionId", "c" * 129)],
    ids=["connection-id-number", "close-text-number", "close-text-bool", "connection-id-too-long"],
)
def test_other_text_fields_take_only_strings(key: str, value: Any) -> None:
    record = parse_session(realistic(**{key: value}))
    attr = {"connectionId": "connection_id", "closeReasonText": "close_reason_text"}[key]
    assert record.fields[attr] is None
    assert [p.split(":")[0] for p in record.problems] == [key]
    assert record.fields["start_time"] is not None  # the rest of the record is kept


# --- timestamps ------------------------------------------------------------------------------------------

TIME_CASES = [
    (START_MS, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    (START_MS + 0.5, datetime(2023, 11, 14, 22, 13, 20, 500, tzinfo=UTC)),
    (START_MS + 123.25, datetime(2023, 11, 14, 22, 13, 20, 123250, tzinfo=UTC)),
    (START_MS + 999.125, datetime(2023, 11, 14, 22, 13, 20, 999125, tzinfo=UTC)),
    (float(START_MS + 1), datetime(2023, 11, 14, 22, 13, 20, 1000, tzinfo=UTC)),
    (946_684_800_000, datetime(2000, 1, 1, tzinfo=UTC)),
    (4_102_444_800_000, datetime(2100, 1, 1, tzinfo=UTC)),
]


@pytest.mark.parametrize(
    ("ms", "expected"),
    TIME_CASES,
    ids=["whole-second", "half-ms", "quarter-ms", "eighth-ms", "float-whole-ms", "lower-bound", "upper-bound"],
)
def test_millisecond_timestamps_become_exact_aware_utc(ms: float, expected: datetime) -> None:
    assert ms_to_datetime(ms) == expected
    record = parse_session({"sessionId": SID, "startTime": ms})
    assert record.fields["start_time"] == expected
    assert record.fields["start_time"].tzinfo is not None
    assert record.problems == ()


BAD_TIME_CASES = [
    START_MS // 1000,  # seconds, not milliseconds
    START_MS / 1000,
    START_MS * 1000,  # microseconds
    0,
    -1,
    946_684_799_999,
    4_102_444_800_001,
    math.nan,
    math.inf,
    -math.inf,
    "1700000000000",
    "2023-11-14T22:13:20Z",
    True,
    [START_MS],
    {"ms": START_MS},
]


@pytest.mark.parametrize(
    "value",
    BAD_TIME_CASES,
    ids=[
        "seconds-int",
        "seconds-float",
        "microseconds",
        "zero",
        "negative",
        "just-before-2000",
        "just-after-2100",
        "nan",
        "inf",
        "minus-inf",
        "numeric-string",
        "iso-string",
        "bool",
        "array",
        "object",
    ],
)
@pytest.mark.parametrize("key", ["startTime", "endTime", "lastUpdated"], ids=["start", "end", "last-updated"])
def test_implausible_timestamps_are_dropped_and_noted(key: str, value: Any) -> None:
    obj = realistic(**{key: value})
    record = parse_session(obj)
    attr = {"startTime": "start_time", "endTime": "end_time", "lastUpdated": "last_updated"}[key]
    assert record.fields[attr] is None
    assert len(record.problems) == 1
    assert record.problems[0].startswith(f"{key}: ")
    # The rest of the record stays.
    assert record.session_id == SID
    assert record.fields["connection_start_time"] == ms_to_datetime(START_MS + 1_000.25)
    assert record.fields["close_reason"] == "NormalClosure"


def test_huge_integer_timestamp_is_a_field_problem() -> None:
    obj = json.loads(f'{{"sessionId": "{SID}", "startTime": 1{"0" * 400}}}')
    record = parse_session(obj)
    assert record.fields["start_time"] is None
    assert record.problems


# --- records that cannot be keyed -----------------------------------------------------------------------------

BAD_RECORD_CASES = [
    None,
    [],
    [{"sessionId": SID}],
    "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e",
    42,
    True,
    {},
    {"sessionId": None},
    {"sessionId": ""},
    {"sessionId": 123},
    {"sessionId": ["x"]},
    {"sessionId": "not-a-uuid"},
    {"sessionId": SID[:-1]},
    {"sessionId": SID + "0"},
    {"sessionId": SID.replace("-", "")},
    {"sessionId": "{" + SID + "}"},
    {"sessionId": " " + SID},
    {"sessionId": "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26g"},
    {"session_id": SID},
]


@pytest.mark.parametrize(
    "obj",
    BAD_RECORD_CASES,
    ids=[
        "null",
        "empty-array",
        "array-of-sessions",
        "bare-string",
        "number",
        "bool",
        "empty-object",
        "null-id",
        "empty-id",
        "numeric-id",
        "array-id",
        "not-uuid",
        "short-uuid",
        "long-uuid",
        "uuid-without-dashes",
        "braced-uuid",
        "leading-space",
        "non-hex",
        "snake-case-key",
    ],
)
def test_unkeyable_objects_raise_bad_record(obj: Any) -> None:
    with pytest.raises(BadRecordError) as info:
        parse_session(obj)
    assert info.value.reason == str(info.value)
    assert info.value.reason


def test_session_id_with_trailing_newline_is_refused() -> None:
    with pytest.raises(BadRecordError):
        parse_session({"sessionId": SID + "\n"})


def test_bad_record_reason_truncates_long_ids() -> None:
    with pytest.raises(BadRecordError) as info:
        parse_session({"sessionId": "x" * 500})
    assert len(info.value.reason) < 150


# --- URL redaction ------------------------------------------------------------------------------------------

REDACT_CASES = [
    (
        DEVTOOLS_URL,
        "https://live.browser.run/ui/inspector.html"
        "?wss=live.browser.run/api/devtools/browser/182bd5e5?jwt=REDACTED",
    ),
    (WS_URL, "wss://live.browser.run/api/devtools/browser/182bd5e5?jwt=REDACTED"),
    ("https://user:hunter2@host.example/path?x=1", "https://REDACTED@host.example/path?x=REDACTED"),
    ("https://tokenonly@host.example/path", "https://REDACTED@host.example/path"),
    ("https://host.example/path#access_token=abc", "https://host.example/path#REDACTED"),
    ("https://host.example/p?a=1&b=two&c=3", "https://host.example/p?a=REDACTED&b=REDACTED&c=REDACTED"),
    ("https://host.example/p?a=&b=2", "https://host.example/p?a=&b=REDACTED"),
    ("https://host.example/devtools/browser/182bd5e5", "https://host.example/devtools/browser/182bd5e5"),
    ("wss://host.example:8443/p?jwt=abc", "wss://host.example:8443/p?jwt=REDACTED"),
    ("https://host.example/p?wss=h/p?jwt=t1&key=t2#frag", "https://host.example/p?wss=h/p?jwt=REDACTED&key=REDACTED#REDACTED"),
    ("https://host.example/p?wss=h%2Fp%3Fjwt%3Dt1", "https://host.example/p?wss=h/p?jwt=REDACTED"),
    ("http://[::1/p?jwt=abc", REDACTED),
    ("devtoolsFrontendUrl", "devtoolsFrontendUrl"),
    ("wss://h.example/devtools/browser/x;jwt=abc", "wss://h.example/devtools/browser/x;jwt=REDACTED"),
    ("https://h.example/a;s3cr3t/b;k=/c?x=1", "https://h.example/a;REDACTED/b;k=/c?x=REDACTED"),
]


@pytest.mark.parametrize(
    ("url", "expected"),
    REDACT_CASES,
    ids=[
        "devtools-nested-wss-jwt",
        "websocket-jwt",
        "userinfo-password",
        "userinfo-token-only",
        "fragment",
        "several-params",
        "blank-param-kept-blank",
        "no-credentials-untouched",
        "port-kept",
        "nested-plus-sibling-plus-fragment",
        "percent-encoded-nested",
        "unparseable",
        "not-a-url",
        "path-parameter",
        "bare-and-blank-path-parameters",
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["wss://h.example/p?token=QmFzZTY0/c2VjcmV0==", "wss://h.example/p?token=QmFzZTY0%2Fc2VjcmV0"],
    ids=["slash", "encoded-slash"],
)
def test_query_value_with_a_slash_is_redacted(url: str) -> None:
    assert "c2VjcmV0" not in redact_url(url)


def test_bare_query_token_is_redacted() -> None:
    assert "s3cr3tT0k3n" not in redact_url("wss://h.example/p?s3cr3tT0k3n")


def test_urls_are_redacted_in_fields_and_raw_by_default() -> None:
    obj = realistic(webSocketDebuggerUrl="wss://user:pw123@h.example/p?jwt=" + JWT + "#frag")
    record = parse_session(obj)
    dump = json.dumps(record.raw) + json.dumps(record.fields, default=str)
    assert JWT not in dump
    assert "pw123" not in dump
    assert record.raw["devtoolsFrontendUrl"] == record.fields["devtools_frontend_url"]
    assert record.raw["webSocketDebuggerUrl"] == record.fields["web_socket_debugger_url"]
    assert record.fields["web_socket_debugger_url"] == "wss://REDACTED@h.example/p?jwt=REDACTED#REDACTED"
    # The input object still has its tokens: redaction works on a copy.
    assert JWT in obj["devtoolsFrontendUrl"]


def test_keep_url_tokens_keeps_them() -> None:
    obj = realistic()
    record = parse_session(obj, keep_url_tokens=True)
    assert record.fields["devtools_frontend_url"] == DEVTOOLS_URL
    assert record.fields["web_socket_debugger_url"] == WS_URL
    assert record.raw["devtoolsFrontendUrl"] == DEVTOOLS_URL
    assert record.raw["webSocketDebuggerUrl"] == WS_URL


@pytest.mark.parametrize(
    "value",
    [{"url": "wss://h/p?jwt=" + JWT}, ["wss://h/p?jwt=" + JWT], 12345, "wss://h/p?jwt=" + JWT + "x" * 8200],
    ids=["object", "array", "number", "too-long"],
)
def test_unusable_url_values_are_replaced_in_raw(value: Any) -> None:
    record = parse_session(realistic(webSocketDebuggerUrl=value))
    assert record.fields["web_socket_debugger_url"] is None
    assert record.raw["webSocketDebuggerUrl"] == REDACTED
    assert JWT not in json.dumps(record.raw)
    assert any(p.startswith("webSocketDebuggerUrl:") for p in record.problems)


def test_null_url_stays_null_in_raw() -> None:
    record = parse_session(realistic(webSocketDebuggerUrl=None))
    assert record.raw["webSocketDebuggerUrl"] is None
    assert "devtoolsFrontendUrl" in record.raw
    record = parse_session({"sessionId": SID})
    assert "webSocketDebuggerUrl" not in record.raw


# --- merging observations ------------------------------------------------------------------------------------


def test_merge_without_previous_is_the_record() -> None:
    record = parse_session(realistic())
    assert merge_state(None, record) == record.fields


def test_merge_never_erases_a_known_value() -> None:
    full = merge_state(None, parse_session(realistic()))
    sparse = parse_session({"sessionId": SID, "lastUpdated": START_MS + 90_000})
    merged = merge_state(full, sparse)
    assert set(merged) == set(STATE_FIELDS)
    for name in STATE_FIELDS:
        if name == "last_updated":
            assert merged[name] == ms_to_datetime(START_MS + 90_000)
        else:
            assert merged[name] == full[name], name


def test_merge_takes_new_values_over_old() -> None:
    old = merge_state(None, parse_session(realistic(closeReason="BrowserIdle", connectionId="a")))
    new = parse_session(realistic(closeReason=1000, connectionId=None))
    merged = merge_state(old, new)
    assert merged["close_reason"] == "1000"
    assert merged["connection_id"] == "a"


def test_merge_fills_from_a_previous_row_with_extra_columns() -> None:
    previous = {"status": "active", "start_time": ms_to_datetime(START_MS), "first_seen_at": "x"}
    merged = merge_state(previous, parse_session({"sessionId": SID}))
    assert set(merged) == set(STATE_FIELDS)
    assert merged["start_time"] == ms_to_datetime(START_MS)
    assert merged["end_time"] is None


@pytest.mark.parametrize(
    ("changes", "cleared"),
    [
        ({"connectionId": "conn-2"}, True),
        ({"connectionStartTime": START_MS + 70_000}, True),
        ({"connectionId": "conn-1", "connectionStartTime": START_MS + 1_000.25}, False),
        ({}, False),
    ],
    ids=["another-id", "another-start", "same-connection", "says-nothing-of-it"],
)
def test_merge_of_another_connection_keeps_nothing_of_the_previous_one(changes: dict[str, Any], cleared: bool) -> None:
    # The first connection ended; the new observation carries no connectionEndTime at all.
    known = merge_state(None, parse_session(realistic(endTime=None)))
    observed = {k: v for k, v in realistic(endTime=None, **changes).items() if k != "connectionEndTime"}
    if not changes:
        observed = {k: v for k, v in observed.items() if not k.startswith("connection")}
    merged = merge_state(known, parse_session(observed))
    assert (merged["connection_end_time"] is None) is cleared
    if cleared:
        assert merged["connection_id"] == parse_session(observed).fields["connection_id"]
        assert merged["connection_start_time"] == parse_session(observed).fields["connection_start_time"]
    assert merged["start_time"] == known["start_time"]  # the session's own facts stay


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"endTime": START_MS - 1}, "endTime: before startTime (stored as observed)"),
        ({"connectionEndTime": START_MS + 1_000}, "connectionEndTime: before connectionStartTime (stored as observed)"),
        ({"endTime": START_MS}, None),
        ({"startTime": None, "endTime": START_MS - 1}, None),
    ],
    ids=["end-before-start", "connection-end-before-its-start", "zero-length", "start-unknown"],
)
def test_an_end_before_its_start_is_kept_and_noted(changes: dict[str, Any], problem: str | None) -> None:
    obj = realistic(**changes)
    record = parse_session(obj)
    assert record.fields["end_time"] == (None if obj["endTime"] is None else ms_to_datetime(obj["endTime"]))
    assert list(record.problems) == ([problem] if problem else [])


def _state(**changes: Any) -> dict[str, Any]:
    return {**merge_state(None, parse_session(realistic(endTime=None))), **changes}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, False),
        ({"devtools_frontend_url": "https://other/ui"}, False),
        ({"web_socket_debugger_url": None}, False),
        ({"end_time": ms_to_datetime(START_MS + 5)}, True),
        ({"close_reason": "BrowserIdle"}, True),
        ({"connection_id": "conn-2"}, True),
        ({"last_updated": ms_to_datetime(START_MS + 7)}, True),
        ({"start_time": None}, True),
    ],
    ids=["same", "frontend-url-only", "ws-url-only", "end-time", "close-reason", "connection-id", "last-updated", "start-cleared"],
)
def test_lifecycle_changed_ignores_urls(changes: dict[str, Any], expected: bool) -> None:
    previous = _state()
    assert lifecycle_changed(previous, _state(**changes)) is expected


def test_lifecycle_fields_exclude_urls() -> None:
    assert "devtools_frontend_url" not in LIFECYCLE_FIELDS
    assert "web_socket_debugger_url" not in LIFECYCLE_FIELDS
    assert set(LIFECYCLE_FIELDS) < set(STATE_FIELDS)


# --- free text ------------------------------------------------------------------------------------------------

REDACT_TEXT_CASES = [
    ("GET https://h/p?jwt=abc.def&x=1 failed", "GET https://h/p?jwt=REDACTED&x=REDACTED failed"),
    ('{"u": "wss://h/p?token=abc"}', '{"u": "wss://h/p?token=REDACTED"}'),
    ("a;session=xyz", "a;session=REDACTED"),
    ("nothing to hide here", "nothing to hide here"),
    ("key=value without a question mark", "key=value without a question mark"),
    ("q?a.b-c=1", "q?a.b-c=REDACTED"),
    ("lost wss://user:pw@h/p#token=abc.", "lost wss://REDACTED@h/p#REDACTED"),
    ("see h/p#token=abc", "see h/p#token=REDACTED"),
    # A URL runs to a space or a quote: a closing parenthesis goes with the token it may end.
    ("(https://h/ui?wss=live.browser.run/x?jwt=abc) x", "(https://h/ui?wss=live.browser.run/x?jwt=REDACTED x"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    REDACT_TEXT_CASES,
    ids=["url-in-message", "json-quoted", "semicolon", "plain", "no-query", "dotted-key", "userinfo-and-fragment",
         "fragment-without-scheme", "nested-devtools-url-as-a-field-has-it"],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    ("obj", "must_contain", "must_not_contain"),
    [
        ({"sessionId": "bad", "webSocketDebuggerUrl": "wss://h/p?jwt=" + JWT}, '"sessionId": "bad"', JWT),
        (["wss://h/p?jwt=" + JWT], "jwt=REDACTED", JWT),
        ({1: "a", "b": "wss://h/p?k=zzz"}, "k=REDACTED", "zzz"),
        ({"when": datetime(2024, 1, 1, tzinfo=UTC)}, "2024-01-01", None),
        (None, "null", None),
    ],
    ids=["object", "array", "unsortable-keys", "non-json-value", "null"],
)
def test_reject_body(obj: Any, must_contain: str, must_not_contain: str | None) -> None:
    body = reject_body(obj)
    assert must_contain in body
    if must_not_contain is not None:
        assert must_not_contain not in body


def test_reject_body_is_stable_json_for_plain_objects() -> None:
    obj = {"b": 1, "a": [True, None]}
    assert json.loads(reject_body(obj)) == obj
    assert reject_body(obj) == reject_body({"a": [True, None], "b": 1})


# --- the listing hash ---------------------------------------------------------------------------------------


def decoded(obj: Any) -> Any:
    """A fresh copy, as the next listing's JSON decoding would hand it over."""
    return json.loads(json.dumps(obj))


def test_listing_hash_is_the_same_for_the_same_object_decoded_again() -> None:
    first = listing_hash(decoded(realistic()))
    assert first is not None and len(first) == 32
    assert listing_hash(decoded(realistic())) == first
    # Decoded in one page with others, its strings are shared with them: the digest must not see it.
    page = decoded([realistic(), realistic(), realistic(connectionId=None)])
    assert listing_hash(page[0]) == listing_hash(page[1]) == first


@pytest.mark.parametrize(
    "changes",
    [
        {"endTime": START_MS + 61_000},
        {"closeReason": 1000},
        {"connectionId": None},
        {"extra": [1]},
        {"webSocketDebuggerUrl": WS_URL.replace("sig", "other")},
    ],
    ids=["new-end", "reason-type", "field-nulled", "field-added", "new-url-token"],
)
def test_listing_hash_changes_with_the_object(changes: dict[str, Any]) -> None:
    assert listing_hash(decoded(realistic(**changes))) != listing_hash(decoded(realistic()))


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"closeReason": 1}, {"closeReason": True}),
        ({"closeReason": 1000}, {"closeReason": 1000.0}),
        ({"closeReason": 0}, {"closeReason": False}),
        ({"extra": [1, {"a": 0}]}, {"extra": [1, {"a": False}]}),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ({"a": 1}, {"a": 2}),
    ],
    ids=["int-then-bool", "int-then-float", "zero-then-false", "nested-int-then-bool", "key-order", "different"],
)
def test_listing_hash_tells_json_types_and_key_order_apart(before: dict[str, Any], after: dict[str, Any]) -> None:
    # Python holds these equal (but the last); parsing them does not give the same record.
    assert listing_hash({"sessionId": SID, **before}) != listing_hash({"sessionId": SID, **after})


def test_listing_hash_follows_the_url_token_setting() -> None:
    obj = decoded(realistic())
    assert listing_hash(obj, keep_url_tokens=True) != listing_hash(obj)
    assert listing_hash(obj, keep_url_tokens=True) == listing_hash(decoded(obj), keep_url_tokens=True)


def test_listing_hash_of_what_has_none() -> None:
    assert listing_hash([realistic()]) is None
    assert listing_hash("text") is None
    nested: Any = {}
    for _ in range(3000):  # deeper than marshal goes
        nested = {"n": nested}
    assert listing_hash(nested) is None


# --- properties -------------------------------------------------------------------------------------------------

# JSON-like values; integers bounded to what a 64-bit float can hold (see the xfail above for bigger ones).
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
session_keys = st.sampled_from(
    [
        "sessionId",
        "startTime",
        "endTime",
        "connectionStartTime",
        "connectionEndTime",
        "lastUpdated",
        "connectionId",
        "closeReason",
        "closeReasonText",
        "devtoolsFrontendUrl",
        "webSocketDebuggerUrl",
    ]
)
uuids = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
session_like = st.fixed_dictionaries(
    {"sessionId": uuids | json_scalars},
    optional={
        "startTime": st.floats(min_value=9e11, max_value=5e12) | json_values,
        "endTime": st.integers(min_value=9 * 10**11, max_value=5 * 10**12) | json_values,
        "closeReason": st.integers(min_value=-(10**20), max_value=10**20) | json_values,
        "closeReasonText": json_values,
        "connectionId": json_values,
        "webSocketDebuggerUrl": json_values,
    },
).flatmap(lambda d: st.dictionaries(session_keys | st.text(max_size=8), json_values, max_size=3).map(lambda e: {**e, **d}))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, session_like))
def test_parse_returns_a_record_or_bad_record_error(obj: Any) -> None:
    try:
        record = parse_session(obj)
    except BadRecordError as exc:
        assert exc.reason
        return
    assert isinstance(record, SessionRecord)
    assert set(record.fields) == set(STATE_FIELDS)
    assert record.session_id == obj["sessionId"].lower()
    for attr in ("start_time", "end_time", "connection_start_time", "connection_end_time", "last_updated"):
        value = record.fields[attr]
        assert value is None or (isinstance(value, datetime) and value.utcoffset() is not None)
        assert value is None or 2000 <= value.year <= 2100
    for attr in ("connection_id", "close_reason", "close_reason_text", "devtools_frontend_url", "web_socket_debugger_url"):
        assert record.fields[attr] is None or isinstance(record.fields[attr], str)
    # A bad field is dropped, never silently: each present, non-null field that came out None has a problem.
    for key, attr in (("startTime", "start_time"), ("closeReason", "close_reason"), ("connectionId", "connection_id")):
        if obj.get(key) is not None and record.fields[attr] is None:
            assert any(p.startswith(f"{key}:") for p in record.problems)


# Tokens drawn from the unreserved URL alphabet, long enough not to appear by chance elsewhere.
HOSTS = ["live.browser.run", "h.example", "127.0.0.1:9222", "[::1]:9222"]
tokens = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=12, max_size=40
).filter(lambda t: not any(t in h for h in HOSTS))
hosts = st.sampled_from(HOSTS)
paths = st.lists(st.text(alphabet="abcdef0123456789-", min_size=1, max_size=8), max_size=4).map(lambda p: "/" + "/".join(p))
param_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@st.composite
def url_with_planted_token(draw: st.DrawFn) -> tuple[str, str]:
    token = draw(tokens)
    scheme = draw(st.sampled_from(["https", "wss", "ws", "http"]))
    host = draw(hosts)
    path = draw(paths)
    others = draw(st.lists(st.tuples(param_names, st.text(alphabet="abc123", max_size=6)), max_size=3))
    name = draw(param_names)
    nested = draw(st.booleans())
    if nested:
        inner = f"{draw(hosts)}{draw(paths)}/x?{name}={token}"
        planted = ("wss", inner)
    else:
        planted = (name, token)
    items = [*others, planted]
    items = draw(st.permutations(items))
    query = "&".join(f"{k}={v}" for k, v in items)
    fragment = draw(st.sampled_from(["", "#" + token, "#frag"]))
    userinfo = draw(st.sampled_from(["", f"user:{token}@", f"{token}@"]))
    return f"{scheme}://{userinfo}{host}{path}?{query}{fragment}", token


@settings(max_examples=200, deadline=None)
@given(url_with_planted_token(), st.sampled_from(["devtoolsFrontendUrl", "webSocketDebuggerUrl"]), json_values)
def test_planted_url_tokens_never_reach_raw_or_fields(planted: tuple[str, str], key: str, extra: Any) -> None:
    url, token = planted
    record = parse_session({"sessionId": SID, key: url, "other": extra})
    assert token not in json.dumps(record.raw[key])
    assert token not in str(record.fields["devtools_frontend_url"])
    assert token not in str(record.fields["web_socket_debugger_url"])
    redacted = record.raw[key]
    # The host survives redaction, so the value stays useful for forensics.
    assert urlsplit(redacted).hostname == urlsplit(url).hostname
    assert all(v in ("", REDACTED) or "/" in v for _, v in parse_qsl(urlsplit(redacted).query, keep_blank_values=True))
    kept = parse_session({"sessionId": SID, key: url}, keep_url_tokens=True)
    assert kept.raw[key] == url


def _twin(value: Any) -> Any:
    """A value Python holds equal to ``value`` whose JSON differs (or the value itself)."""
    if value is True or value is False:
        return int(value)
    if isinstance(value, int):
        return float(value) if abs(value) < 2**53 else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return dict(reversed([(k, _twin(v)) for k, v in value.items()]))
    if isinstance(value, list):
        return [_twin(v) for v in value]
    return value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(session_like, st.data())
def test_one_listing_hash_is_one_json_text_and_one_parse(first: Any, data: st.DataObject) -> None:
    # What the cycle relies on to skip parsing: objects share a digest exactly when they are the
    # same JSON, and then they parse alike.
    second = data.draw(st.sampled_from([first, _twin(first), {**first, "sessionId": _twin(first["sessionId"])}]))
    same_text = json.dumps(first) == json.dumps(second)
    assert (listing_hash(first) == listing_hash(second)) == same_text
    if same_text:
        try:
            expected = parse_session(first)
        except BadRecordError:
            with pytest.raises(BadRecordError):
                parse_session(second)
            return
        assert parse_session(second) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(session_like)
def test_a_decoded_copy_has_the_same_listing_hash(obj: Any) -> None:
    if _json_safe(obj):
        assert listing_hash(decoded(obj)) == listing_hash(obj)


def _json_safe(obj: Any) -> bool:
    try:
        return decoded(obj) == obj
    except ValueError:
        return False


def redact_url_generally(url: str, depth: int = 0) -> str:
    """The redaction spelled out with urlsplit and urlunsplit for every URL: the reference that
    redact_url's shortcut for plain URLs must always agree with."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
        segments = []
        for segment in parts.path.split("/"):
            name, *params = segment.split(";")
            for param in params:
                key, has_value, value = param.partition("=")
                if has_value:
                    name += f";{key}={REDACTED if value else ''}"
                else:
                    name += f";{REDACTED if param else ''}"
            segments.append(name)
        items = []
        for item in parts.query.split("&") if parts.query else []:
            key, has_value, value = item.partition("=")
            if not has_value:
                items.append(REDACTED)
            elif "?" in unquote(value) and depth < 3:
                items.append(f"{key}={redact_url_generally(unquote(value), depth + 1)}")
            else:
                items.append(f"{key}={REDACTED if value else ''}")
        return urlunsplit((parts.scheme, netloc, "/".join(segments), "&".join(items), REDACTED if parts.fragment else ""))
    except ValueError:
        return REDACTED


url_pieces = st.sampled_from(
    ["https://", "wss://", "HTTP://", "ws:", "//", "h.example", "[::1]", "[", "user:pw@", "@", ":9222", "/", "/a/b",
     "?", "?x=", "&", "=", "jwt=abc", "wss=", "live.browser.run/x?jwt=t", "%3F", "#", "#frag", " ", "\t", "\n", "é",
     ":", "a:b", "\x00", "x", ";", ";jwt=t", "=t"]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(url_pieces, max_size=8).map("".join) | st.text(max_size=40) | url_with_planted_token().map(lambda p: p[0]))
def test_redact_url_agrees_with_the_general_redaction(url: str) -> None:
    assert redact_url(url) == redact_url_generally(url)


def test_redact_url_of_the_emulators_urls_agrees_with_the_general_redaction() -> None:
    from archiver.emulator import Emulator

    emulator = Emulator(accounts=1, initial_sessions=20, seed=4, speed=0.0, spawn_per_minute=0)
    for item in emulator.world(emulator.account_ids[0]).listing():
        for key in ("devtoolsFrontendUrl", "webSocketDebuggerUrl"):
            assert redact_url(item[key]) == redact_url_generally(item[key])
            assert "jwt=REDACTED" in redact_url(item[key])
