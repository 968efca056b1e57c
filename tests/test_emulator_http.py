"""The emulator over a real loopback socket: the API's shapes, errors, auth, lifecycle and faults."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from archiver.emulator import Emulator


@pytest.fixture
def emu() -> Emulator:
    return Emulator(accounts=2, initial_sessions=7, seed=3, speed=0.0, spawn_per_minute=0, retention_s=60, close_reason_style="string")


@pytest.fixture
def http(emu: Emulator) -> Iterator[httpx.Client]:
    with emu.serve(port=0) as server, httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {emu.token}"}) as client:
        yield client


def sessions_path(emu: Emulator, account: int = 0) -> str:
    return f"/accounts/{emu.account_ids[account]}/browser-rendering/devtools/session"


def test_listing_is_a_bare_array_paged_by_limit_and_offset(emu: Emulator, http: httpx.Client) -> None:
    everything = http.get(sessions_path(emu)).json()
    assert isinstance(everything, list) and len(everything) == 7
    pages = [http.get(sessions_path(emu), params={"limit": 3, "offset": o}).json() for o in (0, 3, 6)]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [s["sessionId"] for p in pages for s in p] == [s["sessionId"] for s in everything]
    assert sorted(s["startTime"] for s in everything) == [s["startTime"] for s in everything]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 201}, {"limit": "abc"}, {"limit": 1.5}, {"offset": -1}], ids=str)
def test_bad_paging_is_a_400_envelope(emu: Emulator, http: httpx.Client, params: dict[str, Any]) -> None:
    response = http.get(sessions_path(emu), params=params)
    body = response.json()
    assert response.status_code == 400
    assert body["success"] is False and body["result"] is None and body["errors"][0]["message"]


@pytest.mark.parametrize(
    ("headers", "path_account", "status"),
    [
        ({}, 0, 401),
        ({"Authorization": "Bearer nope"}, 0, 401),
        ("email", 0, 200),
        ("token", "unknown", 403),
    ],
    ids=["none", "wrong-token", "email-and-key", "unknown-account"],
)
def test_auth(emu: Emulator, http: httpx.Client, headers: Any, path_account: Any, status: int) -> None:
    if headers == "email":
        headers = {"X-Auth-Email": emu.email, "X-Auth-Key": emu.api_key}
    elif headers == "token":
        headers = {"Authorization": f"Bearer {emu.token}"}
    path = sessions_path(emu) if path_account == 0 else "/accounts/ffffffffffffffffffffffffffffffff/browser-rendering/devtools/session"
    response = httpx.get(f"{str(http.base_url).rstrip('/')}{path}", headers=headers)
    assert response.status_code == status
    if status != 200:
        assert response.json()["errors"][0]["code"] == 10000


def test_lifecycle_close_reason_and_retention(emu: Emulator, http: httpx.Client) -> None:
    world = emu.world(emu.account_ids[0])
    sid = world.start_session()
    detail = http.get(f"{sessions_path(emu)}/{sid}").json()
    assert detail["connectionStartTime"] is None and detail["endTime"] is None
    emu.clock.advance(1)
    world.connect(sid)
    connected = http.get(f"{sessions_path(emu)}/{sid}").json()
    assert connected["connectionId"] and connected["lastUpdated"] > detail["lastUpdated"]
    assert http.get(f"{sessions_path(emu)}/{sid}").json()["lastUpdated"] == connected["lastUpdated"]
    emu.clock.advance(1)
    world.close(sid, reason="BrowserIdle")
    closed = http.get(f"{sessions_path(emu)}/{sid}").json()
    assert (closed["closeReason"], closed["closeReasonText"]) == ("BrowserIdle", "Browser idle")
    assert closed["endTime"] == closed["connectionEndTime"] == closed["lastUpdated"]
    assert sid not in {s["sessionId"] for s in http.get(sessions_path(emu)).json()}
    emu.clock.advance(61)
    gone = http.get(f"{sessions_path(emu)}/{sid}")
    assert gone.status_code == 404 and gone.json()["errors"][0]["message"] == "Session not found"
    truth = {t["sessionId"]: t for t in emu.truth(emu.account_ids[0])}[sid]
    assert truth["closedAtMs"] == closed["endTime"] and truth["forgottenAtMs"] is not None and not truth["active"]
    assert http.get(f"{sessions_path(emu)}/not-a-uuid").status_code == 400


def test_numeric_close_reasons(http: httpx.Client) -> None:
    emu = Emulator(accounts=1, initial_sessions=0, seed=4, speed=0.0, spawn_per_minute=0, close_reason_style="number")
    world = emu.world(emu.account_ids[0])
    sid = world.start_session()
    world.close(sid, reason="NormalClosure")
    with emu.serve(port=0) as server:
        body = httpx.get(f"{server.base_url}{sessions_path(emu)}/{sid}", headers={"Authorization": f"Bearer {emu.token}"}).json()
    assert body["closeReason"] == 1


def test_the_world_moves_with_the_clock_and_a_seed_repeats_it() -> None:
    def world_after(seconds: float) -> list[tuple[str, Any, Any]]:
        emu = Emulator(accounts=1, initial_sessions=5, seed=9, speed=0.0, spawn_per_minute=30, mean_lifetime_s=20, start_ms=1.8e12)
        emu.clock.advance(seconds)
        return [(t["sessionId"], t["endTime"], t["closeReason"]) for t in emu.truth()]

    later = world_after(120)
    assert later == world_after(120)
    assert len(later) > 5 and any(end is not None for _sid, end, _reason in later)


def test_ground_truth_and_controls_over_http(emu: Emulator, http: httpx.Client) -> None:
    base = str(http.base_url).rstrip("/").removesuffix("/client/v4")
    assert len(httpx.get(f"{base}/__emulator/truth").json()) == 14
    assert len(httpx.get(f"{base}/__emulator/truth/{emu.account_ids[1]}").json()) == 7
    now = httpx.post(f"{base}/__emulator/advance", json={"seconds": 5}).json()["nowMs"]
    assert now == pytest.approx(emu.clock.now_ms())
    assert httpx.post(f"{base}/__emulator/faults", json={"envelope": True}).json()["envelope"] is True
    assert httpx.post(f"{base}/__emulator/faults", json={"bogus": 1}).status_code == 400
    enveloped = http.get(sessions_path(emu)).json()
    assert enveloped["success"] is True
    assert len(enveloped["result"]) == sum(t["active"] for t in emu.truth(emu.account_ids[0]))
    httpx.post(f"{base}/__emulator/inject", json={"kind": 503, "endpoint": "list"})
    assert http.get(sessions_path(emu)).status_code == 503
    assert httpx.get(f"{base}/__emulator/stats").json()["status:503"] == 1


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        (429, lambda r: r.status_code == 429 and r.headers["Retry-After"] == "3" and r.json()["errors"][0]["code"] == 971),
        (500, lambda r: r.status_code == 500 and r.json()["errors"][0]["code"] == 2000),
        (503, lambda r: r.status_code == 503 and r.json()["errors"][0]["message"] == "No browser available"),
        ("malformed", lambda r: r.status_code == 200 and not _is_json(r.text)),
        ("null", lambda r: r.status_code == 200 and r.json() is None),
    ],
    ids=["429", "500", "503", "malformed", "null"],
)
def test_injected_faults_hit_only_their_endpoint_and_count(emu: Emulator, http: httpx.Client, kind: Any, check: Any) -> None:
    sid = emu.truth()[0]["sessionId"]
    emu.inject(kind, times=2, endpoint="get", retry_after=3)
    assert http.get(sessions_path(emu)).status_code == 200  # the listing is not hit
    assert check(http.get(f"{sessions_path(emu)}/{sid}")) and check(http.get(f"{sessions_path(emu)}/{sid}"))
    assert http.get(f"{sessions_path(emu)}/{sid}").status_code == 200


def test_reset_and_timeout(emu: Emulator, http: httpx.Client) -> None:
    emu.inject("reset", endpoint="list")
    with pytest.raises(httpx.TransportError):
        http.get(sessions_path(emu))
    emu.set_faults(timeout_s=0.5)
    emu.inject("timeout", endpoint="list")
    with pytest.raises(httpx.TimeoutException):
        http.get(sessions_path(emu), timeout=0.2)


def test_random_faults_odd_fields_and_drift(emu: Emulator, http: httpx.Client) -> None:
    emu.set_faults(odd_fields_rate=1.0)
    odd = http.get(sessions_path(emu)).json()
    assert any(set(i) != set(odd[0]) or isinstance(i.get("startTime"), str) or "unexpectedField" in i for i in odd)
    emu.set_faults(odd_fields_rate=0.0, error_rate=1.0, error_statuses=(503,))
    assert http.get(sessions_path(emu)).status_code == 503
    emu.set_faults(error_rate=0.0, drift=True)
    first = http.get(sessions_path(emu), params={"limit": 4, "offset": 0}).json()
    second = http.get(sessions_path(emu), params={"limit": 4, "offset": 4}).json()
    assert len(first) + len(second) == 6  # one session on the first page closed in between


def test_rate_limit_enforcement_blocks_for_the_window(emu: Emulator, http: httpx.Client) -> None:
    emu.set_faults(enforce_rate_limit=True, rate_limit_requests=5, rate_limit_window_s=2)
    statuses = [http.get(sessions_path(emu)).status_code for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2
    assert int(http.get(sessions_path(emu)).headers["Retry-After"]) >= 1
    emu.clock.advance(1.9)  # the window runs on the simulated clock
    assert http.get(sessions_path(emu)).status_code == 429
    emu.clock.advance(0.2)
    assert http.get(sessions_path(emu)).status_code == 200


def test_a_large_listing_pages_quickly() -> None:
    started = time.perf_counter()
    emu = Emulator(accounts=1, initial_sessions=100_000, seed=5, speed=0.0, spawn_per_minute=0, mean_lifetime_s=1e6)
    built = time.perf_counter() - started
    with emu.serve(port=0) as server, httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {emu.token}"}) as client:
        client.get(sessions_path(emu), params={"offset": 50_000})  # builds the ordered snapshot once
        started = time.perf_counter()
        for offset in range(0, 20 * 200, 200):
            assert len(client.get(sessions_path(emu), params={"offset": offset}).json()) == 200
        per_page = (time.perf_counter() - started) / 20
    # generous bounds: a regression to O(active sessions) per request would cost ~100x more
    assert built < 15 and per_page < 0.1


def _is_json(text: str) -> bool:
    import json

    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# --- fault modes added for chaos testing -------------------------------------------------------------------


def _base(http: httpx.Client) -> str:
    return str(http.base_url).rstrip("/").removesuffix("/client/v4")


@pytest.mark.parametrize("endpoint", ["list", "get"])
def test_wrong_top_level_type(emu: Emulator, http: httpx.Client, endpoint: str) -> None:
    sid = emu.truth()[0]["sessionId"]
    path = sessions_path(emu) if endpoint == "list" else f"{sessions_path(emu)}/{sid}"
    emu.inject("wrong_type", times=20, endpoint=endpoint)
    bodies = [http.get(path) for _ in range(20)]
    assert all(r.status_code == 200 for r in bodies)
    wrong = list if endpoint == "list" else dict
    assert not any(isinstance(r.json(), wrong) for r in bodies)
    assert len({r.text for r in bodies}) > 1  # several wrong types, not one


def test_oversized_body_is_the_real_answer_padded_past_the_cap(emu: Emulator, http: httpx.Client) -> None:
    from archiver.emulator.faults import CAP_BYTES

    clean = http.get(sessions_path(emu)).json()
    emu.inject("oversized", endpoint="list")
    response = http.get(sessions_path(emu))
    assert len(response.content) > CAP_BYTES
    assert response.json() == clean  # read whole, it is still the right answer


def test_timed_out_answer_is_the_real_one_late(emu: Emulator, http: httpx.Client) -> None:
    emu.set_faults(timeout_s=0.4)
    emu.inject("timeout", endpoint="list")
    started = time.monotonic()
    late = http.get(sessions_path(emu), timeout=5)
    assert time.monotonic() - started >= 0.4
    assert late.json() == http.get(sessions_path(emu)).json()


def test_invalid_session_ids_in_a_listing_and_a_detail(emu: Emulator, http: httpx.Client) -> None:
    from archiver.emulator.faults import BAD_SESSION_IDS

    clean = http.get(sessions_path(emu)).json()
    emu.inject("bad_id", times=30, endpoint="list")
    spoiled_ids = set()
    for _ in range(30):
        page = http.get(sessions_path(emu)).json()
        assert len(page) == len(clean)
        spoiled = [i for i, c in zip(page, clean, strict=True) if i.get("sessionId", None) != c["sessionId"]]
        assert len(spoiled) == 1 and spoiled[0].get("sessionId") in BAD_SESSION_IDS
        spoiled_ids.add(json.dumps(spoiled[0].get("sessionId")))
    assert len(spoiled_ids) >= 4
    emu.inject("bad_id", endpoint="get")
    detail = http.get(f"{sessions_path(emu)}/{clean[0]['sessionId']}").json()
    assert detail.get("sessionId") in BAD_SESSION_IDS and detail["startTime"] == clean[0]["startTime"]


def test_drift_can_close_several_sessions_and_repeat_items(emu: Emulator, http: httpx.Client) -> None:
    emu.set_faults(drift=True, drift_closes=2, drift_repeats=0)
    first = http.get(sessions_path(emu), params={"limit": 4, "offset": 0}).json()
    second = http.get(sessions_path(emu), params={"limit": 4, "offset": 4}).json()
    assert len(first) + len(second) == 5  # two sessions of the first page closed in between
    emu.set_faults(drift_closes=0, drift_repeats=2)
    first = http.get(sessions_path(emu), params={"limit": 3, "offset": 0}).json()
    second = http.get(sessions_path(emu), params={"limit": 3, "offset": 3}).json()
    assert [s["sessionId"] for s in second[:2]] == [s["sessionId"] for s in first[1:]]  # repeated


def test_chaos_spoils_about_the_share_asked_and_every_kind(emu: Emulator, http: httpx.Client) -> None:
    # (oversized bodies kept small here: only the share of faults is counted)
    emu.set_faults(**_chaos_json(0.2), timeout_s=0.05, retry_after_s=0, oversized_bytes=10_000)
    sid = emu.truth()[0]["sessionId"]
    for n in range(500):
        path = sessions_path(emu) if n % 2 else f"{sessions_path(emu)}/{sid}"
        with contextlib.suppress(httpx.TransportError):
            http.get(path, timeout=0.02)
    stats = emu.stats()
    faults = {k.removeprefix("fault:"): v for k, v in stats.items() if k.startswith("fault:")}
    assert 0.16 <= sum(faults.values()) / stats["requests"] <= 0.24
    assert set(faults) >= {"429", "500", "503", "timeout", "reset", "malformed", "wrong_type", "oversized", "bad_id", "null"}


def test_new_faults_are_switchable_over_http(emu: Emulator, http: httpx.Client) -> None:
    base = _base(http)
    chaos = _chaos_json(0.2)
    settings = httpx.post(f"{base}/__emulator/faults", json=chaos).json()
    assert {k: settings[k] for k in chaos} == chaos
    httpx.post(f"{base}/__emulator/faults", json={k: 0 for k in chaos if k.endswith("_rate")})
    for kind in ("wrong_type", "bad_id", "oversized"):
        assert httpx.post(f"{base}/__emulator/inject", json={"kind": kind, "endpoint": "list"}).status_code == 200
    assert not isinstance(http.get(sessions_path(emu)).json(), list)
    items = http.get(sessions_path(emu)).json()
    assert any("sessionId" not in i or not isinstance(i["sessionId"], str) or len(i["sessionId"]) != 36 for i in items)
    assert len(http.get(sessions_path(emu)).content) > 16 * 1024 * 1024
    assert httpx.get(f"{base}/__emulator/stats").json()["fault:oversized"] == 1


def test_served_pages_log_what_each_listing_request_delivered() -> None:
    emu = Emulator(accounts=1, initial_sessions=5, seed=3, speed=0.0, spawn_per_minute=0, keep_served_pages=True)
    with emu.serve(port=0) as server, httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {emu.token}"}) as http:
        http.get(sessions_path(emu), params={"limit": 3, "offset": 2})
        emu.inject(503, endpoint="list")
        http.get(sessions_path(emu))
        emu.inject("bad_id", endpoint="list")
        http.get(sessions_path(emu))
    assert emu.served_pages is not None
    clean, failed, spoiled = emu.served_pages
    listing = [t["sessionId"] for t in emu.truth()]
    assert (clean.offset, clean.fault, clean.ids, clean.delivered) == (2, None, tuple(listing[2:5]), True)
    assert (failed.fault, failed.ids, failed.delivered) == (503, (), False)
    assert spoiled.fault == "bad_id" and spoiled.delivered and len(spoiled.ids) == 4
    assert Emulator(accounts=1).served_pages is None  # off unless asked for


def _chaos_json(share: float) -> dict[str, Any]:
    from archiver.emulator import Faults

    data = Faults.chaos(share).to_json()
    return {k: v for k, v in data.items() if v != Faults().to_json()[k]}


def test_pages_are_the_listing_encoded_and_follow_its_changes(emu: Emulator, http: httpx.Client) -> None:
    world = emu.world(emu.account_ids[0])
    for offset, limit in ((0, 200), (2, 3), (6, 5), (7, 1)):
        expected = json.dumps(world.listing()[offset : offset + limit], separators=(",", ":")).encode()
        assert world.page_json(offset, limit) == expected
        assert http.get(sessions_path(emu), params={"offset": offset, "limit": limit}).content == expected
    world.page_json(0, 200)  # every item encoded
    closing = world.listing()[0]["sessionId"]
    world.close(closing)
    listed = http.get(sessions_path(emu)).json()
    assert closing not in {s["sessionId"] for s in listed} and listed == world.listing()
    emu.set_faults(envelope=True)
    assert http.get(sessions_path(emu)).json()["result"] == listed


def test_many_connections_at_once_are_all_accepted_promptly() -> None:
    import socket

    emu = Emulator(accounts=1, initial_sessions=1, seed=2, speed=0.0, spawn_per_minute=0)
    with emu.serve(port=0) as server:
        # Dozens of connections at once, faster than the server accepts them: none may wait for a
        # SYN retry (a whole second) because the listen backlog overflowed.
        sockets, slowest = [], 0.0
        for _ in range(64):
            started = time.perf_counter()
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            slowest = max(slowest, time.perf_counter() - started)
        request = f"GET /client/v4{sessions_path(emu)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {emu.token}\r\n\r\n"
        for sock in sockets:
            sock.sendall(request.encode())
        answers = [sock.recv(64) for sock in sockets]
        for sock in sockets:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    assert slowest < 0.9


def test_an_eviction_closes_every_open_session_with_its_reason() -> None:
    emu = Emulator(accounts=1, initial_sessions=6, seed=5, speed=0.0, spawn_per_minute=0, mean_lifetime_s=1e6)
    world = emu.world(emu.account_ids[0])
    evicted = world.evict()
    assert len(evicted) == 6 and world.listing() == []
    closed = {t["sessionId"]: t for t in emu.truth()}
    assert {closed[sid]["closeReason"] for sid in evicted} == {"SessionEvicted"}
    assert {closed[sid]["closeReasonText"] for sid in evicted} == {"Session evicted"}
