"""The API client against scripted responses (through httpx.MockTransport, streamed as a server's
would be): paging, auth, retries, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from itertools import pairwise
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from archiver.api import cloudflare
from archiver.api.cloudflare import (
    PAGE_OVERLAP,
    PAGE_SIZE,
    CloudflareClient,
    Listing,
    RequestStats,
    client_from_settings,
)
from archiver.config import Credentials, settings_from
from archiver.errors import AuthError, ConfigError, FatalError, RetriableError

ACCOUNT = "0123456789abcdef0123456789abcdef"
SID = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e"
TOKEN = "tok-SECRET-Sn3lZJTBX6kkg7OdcBUAxOO9"
API_KEY = "key-SECRET-144c9defac04969c7bfad8e"
BASE = "https://api.test.invalid/client/v4"
LIST_PATH = f"/client/v4/accounts/{ACCOUNT}/browser-rendering/devtools/session"
AUTH_ERROR = {"success": False, "errors": [{"code": 10000, "message": "Authentication error"}], "messages": [], "result": None}
INTERNAL_ERROR = {"success": False, "errors": [{"code": 2000, "message": "Internal error"}], "messages": [], "result": None}


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries back off for milliseconds, not seconds (tests that measure backoff set their own)."""
    monkeypatch.setattr(cloudflare, "BACKOFF_BASE_SECONDS", 0.001)


def sid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def session(n: int) -> dict[str, Any]:
    return {"sessionId": sid(n), "startTime": 1_700_000_000_000 + n}


Step = Callable[[httpx.Request], httpx.Response]


def reply(status: int = 200, body: Any = None, *, content: bytes | None = None, headers: dict[str, str] | None = None) -> Step:
    """A step that answers a fresh response each time (a Response cannot be sent twice)."""

    def step(request: httpx.Request) -> httpx.Response:
        if content is not None:
            return httpx.Response(status, content=content, headers=headers)
        return httpx.Response(status, content=json.dumps(body).encode(), headers=headers)

    return step


def fail_with(exc_type: type[httpx.TransportError]) -> Step:
    def step(request: httpx.Request) -> httpx.Response:
        raise exc_type("connection trouble", request=request)

    return step


class Script:
    """Answers requests with the given steps in order; the last step repeats. Records every request."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(time.monotonic())
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return step(request)

    def gaps(self) -> list[float]:
        return [b - a for a, b in pairwise(self.times)]


class _Streamed(httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body


def scripted(handler: Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]) -> httpx.MockTransport:
    """A transport answering with ``handler``'s responses, their bodies streamed as from a socket
    (a response built with its content is read already, and the client reads bodies as they come)."""
    async def answer(request: httpx.Request) -> httpx.Response:
        built = handler(request)
        if not isinstance(built, httpx.Response):
            built = await built
        return httpx.Response(built.status_code, headers=built.headers, stream=_Streamed(built.content), request=request)

    return httpx.MockTransport(answer)


def make_client(handler: Callable[[httpx.Request], httpx.Response], credentials: Credentials | None = None,
                **options: Any) -> CloudflareClient:
    settings: dict[str, Any] = {"rate_limit": 1000.0, "max_retries": 3, "max_retry_wait": 0.05}
    settings.update(options)
    return CloudflareClient(
        BASE, credentials or Credentials(token=SecretStr(TOKEN)), transport=scripted(handler), **settings
    )


def get_session(handler: Callable[[httpx.Request], httpx.Response], session_id: str = SID, **options: Any) -> tuple[Any, RequestStats]:
    stats = RequestStats()

    async def go() -> Any:
        async with make_client(handler, **options) as client:
            return await client.account(ACCOUNT, stats).get_session(session_id)

    return asyncio.run(go()), stats


def get_session_error(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> tuple[BaseException, RequestStats]:
    stats = RequestStats()

    async def go() -> None:
        async with make_client(handler, **options) as client:
            await client.account(ACCOUNT, stats).get_session(SID)

    with pytest.raises(Exception) as info:
        asyncio.run(go())
    return info.value, stats


def list_all(handler: Callable[[httpx.Request], httpx.Response],
             **options: Any) -> tuple[Listing, list[list[Any]], list[bool], RequestStats]:
    """Every page of a listing, and ``listing.complete`` as seen while each page was being handled."""
    stats = RequestStats()
    pages: list[list[Any]] = []
    complete_during: list[bool] = []

    async def go() -> Listing:
        async with make_client(handler, **options) as client:
            listing = client.account(ACCOUNT, stats).listing()
            async for page in listing:
                pages.append(page)
                complete_during.append(listing.complete)
            return listing

    listing = asyncio.run(go())
    return listing, pages, complete_during, stats


class ListServer:
    """Serves limit/offset pages of a session list that may change between requests."""

    def __init__(self, *lists: list[dict[str, Any]], envelope: bool = False) -> None:
        self.lists = list(lists)  # the list as it is at the 1st, 2nd, ... request; the last one stays
        self.envelope = envelope
        self.params: list[tuple[int, int]] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.path == LIST_PATH
        self.requests.append(request)
        limit = int(request.url.params["limit"])
        offset = int(request.url.params["offset"])
        self.params.append((limit, offset))
        current = self.lists[min(len(self.params) - 1, len(self.lists) - 1)]
        page = current[offset : offset + limit]
        body: Any = {"success": True, "errors": [], "messages": [], "result": page} if self.envelope else page
        return httpx.Response(200, json=body)


# --- paging ---------------------------------------------------------------------------------------------

PAGING_CASES = [
    (0, [0]),
    (1, [0]),
    (199, [0]),
    (200, [0, 190]),
    (201, [0, 190]),
    (390, [0, 190, 380]),
    (450, [0, 190, 380]),
    (1000, [0, 190, 380, 570, 760, 950]),
]


@pytest.mark.parametrize(("count", "offsets"), PAGING_CASES, ids=[f"{c}-sessions" for c, _ in PAGING_CASES])
@pytest.mark.parametrize("envelope", [False, True], ids=["bare", "enveloped"])
def test_listing_pages_with_overlap_until_a_short_page(count: int, offsets: list[int], envelope: bool) -> None:
    assert (PAGE_SIZE, PAGE_OVERLAP) == (200, 10)
    sessions = [session(n) for n in range(count)]
    server = ListServer(sessions, envelope=envelope)
    listing, pages, complete_during, stats = list_all(server)
    assert server.params == [(200, offset) for offset in offsets]
    assert listing.pages == len(offsets) == len(pages)
    assert stats.requests == len(offsets)
    assert stats.by_status == {200: len(offsets)}
    assert {item["sessionId"] for page in pages for item in page} == {s["sessionId"] for s in sessions}
    assert all(len(page) == 200 for page in pages[:-1])
    assert len(pages[-1]) < 200
    assert listing.problem is None
    assert complete_during == [False] * len(offsets)
    assert listing.complete is True


@pytest.mark.parametrize("bad_id", [["a", "list"], {"an": "object"}, 7, None, "not-a-uuid"],
                         ids=["list", "object", "number", "null", "string"])
def test_items_with_any_json_session_id_are_paged_over_and_passed_on(bad_id: Any) -> None:
    sessions = [session(n) for n in range(250)]
    sessions[195] = {**sessions[195], "sessionId": bad_id}  # in the overlap of both pages
    sessions[3] = {**sessions[3], "sessionId": bad_id}
    listing, pages, _, _ = list_all(ListServer(sessions))
    assert listing.complete and listing.pages == 2  # the sync, not the client, judges items
    assert sum(item["sessionId"] == bad_id for page in pages for item in page) == 3


def test_a_list_that_never_ends_but_creeps_forward_is_not_paged_for_ever() -> None:
    requests: list[int] = []

    def creeping(request: httpx.Request) -> httpx.Response:
        # Every page overlaps the one before, as a real list does, but brings 5 new sessions only.
        requests.append(int(request.url.params["offset"]))
        start = 5 * (len(requests) - 1)
        return httpx.Response(200, json=[session(n) for n in range(start, start + 200)])

    listing, pages, _, _ = list_all(creeping)
    assert not listing.complete and "the list does not end" in (listing.problem or "")
    assert len(requests) == len(pages) == 4  # 215 sessions need 2 pages, and a little slack


def test_listing_left_early_is_not_complete() -> None:
    server = ListServer([session(n) for n in range(450)])

    async def go() -> Listing:
        async with make_client(server) as client:
            listing = client.account(ACCOUNT, RequestStats()).listing()
            async with contextlib.aclosing(aiter(listing)) as pages:  # as the poll cycle leaves a listing
                async for _page in pages:
                    break
            return listing

    listing = asyncio.run(go())
    assert listing.complete is False
    # The second page is requested ahead while the first is handed over; whether that request
    # reached the server before it was cancelled is a matter of scheduling. Nothing beyond it is.
    assert len(server.params) <= 2


def test_listing_requests_the_next_page_while_the_caller_holds_this_one() -> None:
    server = ListServer([session(n) for n in range(450)])
    requested_while_held: list[int] = []

    async def go() -> Listing:
        async with make_client(server) as client:
            listing = client.account(ACCOUNT, RequestStats()).listing()
            async with contextlib.aclosing(aiter(listing)) as pages:
                async for _page in pages:
                    await asyncio.sleep(0.05)  # the caller stores the page
                    requested_while_held.append(len(server.params))
            return listing

    listing = asyncio.run(go())
    assert listing.complete and listing.pages == 3
    assert requested_while_held == [2, 3, 3]  # the next page was on its way; none after the last


def test_a_listing_closed_early_cancels_the_page_on_its_way() -> None:
    server = ListServer([session(n) for n in range(450)])

    async def go() -> tuple[Listing, list[asyncio.Task[Any]]]:
        async with make_client(server) as client:
            listing = client.account(ACCOUNT, RequestStats()).listing()
            async with contextlib.aclosing(aiter(listing)) as pages:
                async for _page in pages:
                    break
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            return listing, others

    listing, pending = asyncio.run(go())
    assert listing.complete is False and pending == []
    assert len(server.params) <= 2


@pytest.mark.parametrize(
    ("shift", "complete"),
    [(0, True), (5, True), (9, True), (11, False), (60, False), (500, False)],
    ids=["no-shift", "shift-5", "shift-9", "shift-11", "shift-60", "all-replaced"],
)
def test_listing_flags_a_list_that_shifted_past_the_overlap(shift: int, complete: bool) -> None:
    before = [session(n) for n in range(300)]
    # Between the first and second request, the first `shift` sessions closed (or, at 500, every
    # session was replaced by new ones).
    after = [session(n) for n in range(1000, 1300)] if shift == 500 else before[shift:]
    server = ListServer(before, after)
    listing, pages, _, _ = list_all(server)
    assert len(pages) == 2  # the listing still reads to the end
    assert listing.complete is complete
    assert (listing.problem is None) is complete
    if not complete:
        assert "shifted" in (listing.problem or "")


def test_listing_with_a_right_shift_repeats_items_but_is_complete() -> None:
    before = [session(n) for n in range(300)]
    after = [session(n) for n in range(2000, 2020)] + before  # 20 new sessions sort first
    listing, pages, _, _ = list_all(ListServer(before, after))
    ids = [item["sessionId"] for page in pages for item in page]
    assert {s["sessionId"] for s in before} <= set(ids)
    assert len(ids) > len(set(ids))  # overlap and shift repeat some: the caller de-duplicates
    assert listing.complete is True


@pytest.mark.parametrize(
    "body",
    [{"sessionId": SID}, "sessions", 42, None, {"success": True, "result": {"sessionId": SID}}],
    ids=["object", "string", "number", "null", "enveloped-object"],
)
def test_listing_that_is_not_an_array_is_an_upstream_error(body: Any) -> None:
    with pytest.raises(RetriableError, match="expected a JSON array"):
        list_all(Script(reply(200, body)))


def test_listing_error_leaves_it_incomplete() -> None:
    full = [session(n) for n in range(200)]
    script = Script(reply(200, full), reply(400, {"success": False, "errors": [{"code": 1, "message": "bad"}]}))
    stats = RequestStats()
    listing: Listing | None = None

    async def go() -> None:
        nonlocal listing
        async with make_client(script) as client:
            listing = client.account(ACCOUNT, stats).listing()
            async for _ in listing:
                pass

    with pytest.raises(FatalError):
        asyncio.run(go())
    assert listing is not None and listing.complete is False
    assert listing.pages == 1


# --- auth and requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credentials", "present", "absent"),
    [
        (Credentials(token=SecretStr(TOKEN)), {"authorization": f"Bearer {TOKEN}"}, ["x-auth-email", "x-auth-key"]),
        (
            Credentials(email="ops@example.com", api_key=SecretStr(API_KEY)),
            {"x-auth-email": "ops@example.com", "x-auth-key": API_KEY},
            ["authorization"],
        ),
    ],
    ids=["bearer-token", "email-and-global-key"],
)
def test_auth_headers_are_sent(credentials: Credentials, present: dict[str, str], absent: list[str]) -> None:
    server = ListServer([session(1)])
    script = Script(reply(500, INTERNAL_ERROR), reply(200, session(1)))

    async def go() -> None:
        async with make_client(server, credentials) as client:
            async for _ in client.account(ACCOUNT, RequestStats()).listing():
                pass
        async with make_client(script, credentials) as client:
            await client.account(ACCOUNT, RequestStats()).get_session(SID)

    asyncio.run(go())
    for request in [*server.requests, *script.requests]:  # retries carry the credentials too
        for name, value in present.items():
            assert request.headers[name] == value
        for name in absent:
            assert name not in request.headers
        assert request.headers["accept"] == "application/json"


def test_get_session_requests_the_detail_path() -> None:
    script = Script(reply(200, {**session(7), "closeReason": 1000}))
    body, stats = get_session(script, sid(7))
    assert body == {**session(7), "closeReason": 1000}
    (request,) = script.requests
    assert request.method == "GET"
    assert str(request.url) == f"{BASE}/accounts/{ACCOUNT}/browser-rendering/devtools/session/{sid(7)}"
    assert stats.requests == 1
    assert stats.by_status == {200: 1}


def test_base_url_trailing_slash_is_ignored() -> None:
    script = Script(reply(200, []))

    async def go() -> None:
        client = CloudflareClient(BASE + "/", Credentials(token=SecretStr(TOKEN)), transport=scripted(script))
        async with client:
            async for _ in client.account(ACCOUNT, RequestStats()).listing():
                pass

    asyncio.run(go())
    assert script.requests[0].url.path == LIST_PATH


def test_client_from_settings_uses_base_url_and_credentials() -> None:
    settings = settings_from({"base_url": "http://127.0.0.1:8787/client/v4", "api_token": TOKEN, "max_retries": 0})
    script = Script(reply(503, {}))

    async def go() -> None:
        async with client_from_settings(settings, transport=scripted(script)) as client:
            assert client.max_retries == 0
            await client.account(ACCOUNT, RequestStats()).get_session(SID)

    with pytest.raises(RetriableError):
        asyncio.run(go())
    (request,) = script.requests  # max_retries=0 from the settings: no retry
    assert str(request.url).startswith("http://127.0.0.1:8787/client/v4/accounts/")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_client_from_settings_without_credentials_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CLOUDFLARE_API_TOKEN"):
        client_from_settings(settings_from({}))


# --- detail results -----------------------------------------------------------------------------------------

DETAIL_CASES = [
    (reply(200, session(3)), session(3)),
    (reply(200, {"success": True, "errors": [], "messages": [], "result": session(3)}), session(3)),
    (reply(200, {**session(3), "sessionId": sid(3).upper()}), {**session(3), "sessionId": sid(3).upper()}),
    (reply(404, {"success": False, "errors": [{"code": 404, "message": "Session not found"}], "result": None}), None),
    (reply(404, content=b"Not Found"), None),
]


@pytest.mark.parametrize(
    ("step", "expected"),
    DETAIL_CASES,
    ids=["bare-object", "enveloped-object", "upper-case-id", "404-envelope", "404-plain"],
)
def test_get_session_results(step: Step, expected: Any) -> None:
    script = Script(step)
    body, stats = get_session(script, sid(3))
    assert body == expected
    assert len(script.requests) == 1  # a 404 is an answer, not a failure: no retry
    assert stats.retries == 0


DOUBTFUL_DETAILS = [
    reply(200, None),
    reply(200, {"success": True, "result": None}),
    reply(200, session(4)),
    reply(200, {**session(3), "sessionId": "not-a-uuid"}),
    reply(200, {k: v for k, v in session(3).items() if k != "sessionId"}),
]
DOUBTFUL_IDS = ["json-null", "enveloped-null", "another-session", "invalid-id", "no-id"]


@pytest.mark.parametrize("doubtful", DOUBTFUL_DETAILS, ids=DOUBTFUL_IDS)
def test_a_doubtful_detail_is_asked_again_at_once(doubtful: Step) -> None:
    script = Script(doubtful, reply(200, session(3)))
    got, stats = get_session(script, sid(3))
    assert got == session(3)
    assert len(script.requests) == 2 and stats.retries == 1


@pytest.mark.parametrize("doubtful", DOUBTFUL_DETAILS, ids=DOUBTFUL_IDS)
def test_a_doubtful_detail_that_persists_is_the_answer(doubtful: Step) -> None:
    script = Script(*[doubtful] * 10)
    got, stats = get_session(script, sid(3), max_retries=2)
    first = doubtful(httpx.Request("GET", "https://h.invalid/")).json()
    assert got == (first.get("result") if isinstance(first, dict) and "result" in first else first)
    assert len(script.requests) == 3 and stats.retries == 2  # bounded, and not an error


@pytest.mark.parametrize("body", [[session(3)], "session", 42, True], ids=["array", "string", "number", "boolean"])
def test_detail_of_the_wrong_type_is_a_garbled_answer_and_retried(body: Any) -> None:
    script = Script(reply(200, body), reply(200, session(3)))
    got, stats = get_session(script, sid(3))
    assert got == session(3)
    assert len(script.requests) == 2 and stats.retries == 1


# --- errors that are not retried ----------------------------------------------------------------------------

FATAL_CASES = [
    (400, {"success": False, "errors": [{"code": 1001, "message": "Invalid session id"}]}, FatalError, "code 1001: Invalid session id"),
    (401, AUTH_ERROR, AuthError, "code 10000: Authentication error"),
    (403, AUTH_ERROR, AuthError, "code 10000: Authentication error"),
    (405, {}, FatalError, "HTTP 405"),
    (422, ["not", "an", "envelope"], FatalError, "no error details"),
]


@pytest.mark.parametrize(
    ("status", "body", "error_type", "needle"),
    FATAL_CASES,
    ids=["400", "401", "403", "405", "422"],
)
def test_client_errors_are_fatal_and_not_retried(status: int, body: Any, error_type: type[Exception], needle: str) -> None:
    script = Script(reply(status, body), reply(200, session(1)))
    error, stats = get_session_error(script)
    assert type(error) is error_type
    assert not isinstance(error, RetriableError)
    assert needle in str(error)
    assert f"HTTP {status}" in str(error)
    assert len(script.requests) == 1
    assert stats.retries == 0
    assert stats.by_status == {status: 1}


def test_404_on_the_list_is_fatal() -> None:
    with pytest.raises(FatalError, match="HTTP 404"):
        list_all(Script(reply(404, {"success": False, "errors": [{"code": 7003, "message": "No route"}]})))


# --- errors that are retried ----------------------------------------------------------------------------------

RETRIED_STEPS = [
    reply(500, INTERNAL_ERROR),
    reply(502, content=b"<html>bad gateway</html>"),
    reply(503, {"success": False, "errors": [{"code": 503, "message": "No browser available"}]}),
    reply(504, content=b""),
    reply(520, content=b"origin error"),
    reply(429, AUTH_ERROR | {"errors": [{"code": 971, "message": "Please wait"}]}, headers={"Retry-After": "0"}),
    reply(429, {}),
    reply(200, content=b"{not json"),
    reply(200, content=b""),
    reply(200, {"success": False, "errors": [{"code": 2000, "message": "oops"}], "result": None}),
    fail_with(httpx.ConnectError),
    fail_with(httpx.ReadTimeout),
    fail_with(httpx.RemoteProtocolError),
]
RETRIED_IDS = [
    "500",
    "502-html",
    "503",
    "504-empty",
    "520",
    "429",
    "429-without-retry-after",
    "malformed-json",
    "empty-200",
    "200-envelope-failure",
    "connect-error",
    "read-timeout",
    "protocol-error",
]


@pytest.mark.parametrize("step", RETRIED_STEPS, ids=RETRIED_IDS)
def test_transient_failure_is_retried_then_succeeds(step: Step) -> None:
    script = Script(step, reply(200, session(5)))
    body, stats = get_session(script, sid(5))
    assert body == session(5)
    assert len(script.requests) == 2
    assert stats.requests == 2
    assert stats.retries == 1
    assert sum(stats.by_status.values()) == 2
    assert stats.by_status[200] >= 1


@pytest.mark.parametrize("max_retries", [0, 1, 3], ids=["no-retries", "one-retry", "three-retries"])
@pytest.mark.parametrize("step", RETRIED_STEPS, ids=RETRIED_IDS)
def test_persistent_failure_gives_up_after_max_retries(step: Step, max_retries: int) -> None:
    script = Script(step)
    error, stats = get_session_error(script, max_retries=max_retries)
    assert isinstance(error, RetriableError)
    assert len(script.requests) == max_retries + 1
    assert stats.requests == max_retries + 1
    assert stats.retries == max_retries


def test_transport_errors_are_counted_as_status_zero() -> None:
    error, stats = get_session_error(Script(fail_with(httpx.ConnectError)), max_retries=2)
    assert stats.by_status == {0: 3}
    assert isinstance(error.__cause__, httpx.ConnectError)
    assert "ConnectError" in str(error)


def test_malformed_json_error_names_the_problem_and_redacts_the_snippet() -> None:
    body = b"<html>see https://dash.example/login?session=abcdef123456 </html>"
    error, _ = get_session_error(Script(reply(200, content=body)), max_retries=1)
    assert "malformed JSON" in str(error)
    assert "abcdef123456" not in str(error)


def test_oversized_body_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloudflare, "MAX_BODY_BYTES", 256)
    big = [session(n) for n in range(20)]
    assert len(json.dumps(big)) > 256
    script = Script(reply(200, big))
    with pytest.raises(RetriableError, match="larger than 256 bytes"):
        list_all(script, max_retries=1)
    assert len(script.requests) == 2


def test_body_at_the_size_cap_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps([session(1)]).encode()
    monkeypatch.setattr(cloudflare, "MAX_BODY_BYTES", len(body))
    _, pages, _, _ = list_all(Script(reply(200, content=body)))
    assert pages == [[session(1)]]


# --- 429 and Retry-After -----------------------------------------------------------------------------------------


def test_429_is_counted_as_throttled_and_retried_after_retry_after() -> None:
    script = Script(reply(429, {}, headers={"Retry-After": "0.15"}), reply(200, session(1)))
    body, stats = get_session(script, sid(1), max_retry_wait=5.0)
    assert body == session(1)
    assert stats.throttled == 1
    assert stats.retries == 1
    assert stats.requests == 2
    assert stats.by_status == {429: 1, 200: 1}
    assert script.gaps()[0] >= 0.15
    assert stats.waited_seconds >= 0.1


def test_every_429_is_counted() -> None:
    script = Script(reply(429, {}, headers={"Retry-After": "0"}))
    error, stats = get_session_error(script, max_retries=2)
    assert isinstance(error, RetriableError)
    assert "HTTP 429" in str(error)
    assert stats.throttled == 3
    assert stats.retries == 2


def test_retry_after_zero_still_waits_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloudflare, "BACKOFF_BASE_SECONDS", 0.1)  # first backoff: 0.05 .. 0.1 s
    script = Script(reply(429, {}, headers={"Retry-After": "0"}), reply(200, session(1)))
    body, stats = get_session(script, sid(1), max_retry_wait=5.0)
    assert body == session(1)
    assert script.gaps()[0] >= 0.05


@pytest.mark.parametrize("retry_after", ["86400", "1e9", "inf"], ids=["a-day", "huge", "infinite"])
def test_huge_retry_after_is_capped_by_max_retry_wait(retry_after: str) -> None:
    script = Script(reply(429, {}, headers={"Retry-After": retry_after}), reply(200, session(1)))
    started = time.monotonic()
    body, stats = get_session(script, sid(1), max_retry_wait=0.05)
    assert body == session(1)
    assert 0.05 <= script.gaps()[0] < 2.0
    assert time.monotonic() - started < 3.0
    assert stats.throttled == 1


@pytest.mark.parametrize(
    "retry_after",
    ["Wed, 21 Oct 2015 07:28:00 GMT", "-5", "soon", "nan"],
    ids=["http-date", "negative", "garbage", "nan"],
)
def test_unusable_retry_after_falls_back_to_the_backoff(monkeypatch: pytest.MonkeyPatch, retry_after: str) -> None:
    monkeypatch.setattr(cloudflare, "BACKOFF_BASE_SECONDS", 0.06)  # first backoff: 0.03 .. 0.06 s
    script = Script(reply(429, {}, headers={"Retry-After": retry_after}), reply(200, session(1)))
    body, _ = get_session(script, sid(1), max_retry_wait=5.0)
    assert body == session(1)
    assert 0.03 <= script.gaps()[0] < 1.0


def test_server_errors_back_off_exponentially(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloudflare, "BACKOFF_BASE_SECONDS", 0.04)  # 0.02-0.04, 0.04-0.08, 0.08-0.16
    script = Script(reply(503, {}))
    error, stats = get_session_error(script, max_retries=3, max_retry_wait=5.0)
    assert isinstance(error, RetriableError)
    gaps = script.gaps()
    assert len(gaps) == 3
    assert gaps[0] >= 0.02
    assert gaps[1] >= 0.04
    assert gaps[2] >= 0.08
    assert stats.waited_seconds >= 0.14


def test_a_429_holds_back_other_callers_of_the_client() -> None:
    """Cloudflare blocks the whole token: a caller already waiting for its slot must not fire."""
    throttled_once = False
    times: dict[str, float] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal throttled_once
        session_id = request.url.path.rsplit("/", 1)[1]
        times.setdefault(session_id, time.monotonic())
        if session_id == sid(1) and not throttled_once:
            throttled_once = True
            return httpx.Response(429, json={}, headers={"Retry-After": "0.4"})
        return httpx.Response(200, json=session(int(session_id[-12:])))

    stats = RequestStats()

    async def go() -> list[Any]:
        # 10 requests per second: the second caller's slot is 0.1 s after the first.
        async with make_client(handler, rate_limit=10.0, max_retry_wait=5.0) as client:
            api = client.account(ACCOUNT, stats)
            return await asyncio.gather(api.get_session(sid(1)), api.get_session(sid(2)))

    started = time.monotonic()
    results = asyncio.run(go())
    assert results == [session(1), session(2)]
    assert times[sid(2)] - started >= 0.4
    assert stats.throttled == 1


# --- ids are checked before anything is sent -----------------------------------------------------------------------

BAD_ACCOUNTS = ["", "nothex", ACCOUNT.upper(), ACCOUNT[:-1], ACCOUNT + "0", f"{ACCOUNT[:-1]}/", "../" + ACCOUNT[3:]]


@pytest.mark.parametrize(
    "account_id",
    BAD_ACCOUNTS,
    ids=["empty", "not-hex", "upper-case", "too-short", "too-long", "slash", "path-traversal"],
)
def test_invalid_account_id_is_refused_before_any_request(account_id: str) -> None:
    script = Script(reply(200, []))
    client = make_client(script)
    try:
        with pytest.raises(FatalError, match="invalid account id"):
            client.account(account_id, RequestStats())
    finally:
        asyncio.run(client.aclose())
    assert script.requests == []


BAD_SESSION_IDS = ["", "not-a-uuid", "../../../user/tokens", SID + "/x", SID[:-1], SID.replace("-", ""), f"{SID}?x=1"]


@pytest.mark.parametrize(
    "session_id",
    BAD_SESSION_IDS,
    ids=["empty", "not-uuid", "path-traversal", "extra-segment", "too-short", "no-dashes", "query"],
)
def test_invalid_session_id_is_refused_before_any_request(session_id: str) -> None:
    script = Script(reply(200, session(1)))

    async def go() -> None:
        async with make_client(script) as client:
            await client.account(ACCOUNT, RequestStats()).get_session(session_id)

    with pytest.raises(FatalError, match="invalid session id"):
        asyncio.run(go())
    assert script.requests == []


@pytest.mark.parametrize("which", ["account", "session"], ids=["account", "session"])
def test_ids_with_a_trailing_newline_are_refused(which: str) -> None:
    script = Script(reply(200, session(1)))

    async def go() -> None:
        async with make_client(script) as client:
            account = ACCOUNT + "\n" if which == "account" else ACCOUNT
            session_id = SID + "\n" if which == "session" else SID
            await client.account(account, RequestStats()).get_session(session_id)

    with pytest.raises(FatalError):
        asyncio.run(go())
    assert script.requests == []


# --- the token never shows up in errors ------------------------------------------------------------------------------

SECRET_FREE_CASES = [
    reply(400, {"success": False, "errors": [{"code": 1, "message": "bad request"}]}),
    reply(401, AUTH_ERROR),
    reply(403, AUTH_ERROR),
    reply(429, {}, headers={"Retry-After": "0"}),
    reply(500, INTERNAL_ERROR),
    reply(200, content=b"<html>not json</html>"),
    fail_with(httpx.ConnectError),
]


@pytest.mark.parametrize(
    "step",
    SECRET_FREE_CASES,
    ids=["400", "401", "403", "429", "500", "malformed", "connect-error"],
)
@pytest.mark.parametrize(
    "credentials",
    [Credentials(token=SecretStr(TOKEN)), Credentials(email="ops@example.com", api_key=SecretStr(API_KEY))],
    ids=["token", "email-key"],
)
def test_error_messages_never_contain_the_credentials(step: Step, credentials: Credentials) -> None:
    stats = RequestStats()

    async def go() -> None:
        async with make_client(Script(step), credentials, max_retries=1) as client:
            await client.account(ACCOUNT, stats).get_session(SID)

    with pytest.raises(Exception) as info:
        asyncio.run(go())
    text = f"{info.value} {info.value!r}"
    assert TOKEN not in text
    assert API_KEY not in text


def test_echoed_token_is_masked_in_error_messages() -> None:
    echo = reply(400, {"success": False, "errors": [{"code": 6003, "message": f"Invalid header: Bearer {TOKEN}"}]})
    error, _ = get_session_error(Script(echo))
    assert TOKEN not in str(error)


def test_no_more_requests_in_flight_than_connections() -> None:
    in_flight, peak = 0, 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json=session(1))

    async def go() -> list[Any]:
        async with make_client(handler, max_connections=3) as client:  # type: ignore[arg-type]
            api = client.account(ACCOUNT, RequestStats())
            return await asyncio.gather(*(api.get_session(sid(n)) for n in range(20)))

    bodies = asyncio.run(go())
    assert bodies == [session(1)] * 20
    assert peak == 3
