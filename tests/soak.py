"""The chaos soak: `archiver run` in a subprocess against the emulator, with faults, SIGKILLs and a
database outage, then a comparison of the archive with the emulator's ground truth.

Used by tests/test_soak.py (a short soak in every test run) and `make soak` (a long one, sized by
ARCHIVER_SOAK_* environment variables).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from archiver.archive.models import metadata, runs_table, sessions_table, versions_table
from archiver.archive.records import ms_to_datetime
from archiver.archive.store import make_engine
from archiver.emulator import Emulator, Faults
from archiver.emulator.app import ServedPage

OK_OUTCOMES = ("ok", "partial")


@dataclass(frozen=True)
class SoakPlan:
    """How long and how hard to shake the archiver."""

    cycles: int = 50  # successful cycles (polls of one account), at least: shared by the accounts
    accounts: int = 2
    sessions: int = 200  # open per account: more than one 200-item page (with the overlap), so drift matters
    interval_s: float = 0.3
    speed: float = 10.0  # simulated seconds per real second
    mean_lifetime_s: float = 1800.0  # simulated
    # Simulated: closed sessions answer 404 after this. Longer than the worst run of scripted
    # disruptions (the outage, a SIGKILL just after it and the restart: about 5 s of real time,
    # 50 simulated seconds), so that a close the archive could not yet write when they struck
    # is still there to be asked for once it is back: a shorter retention turns that
    # coincidence into a lost close no archiver could have kept.
    retention_s: float = 120.0
    fault_share: float = 0.2
    kills: int = 3
    outage_s: float = 3.0
    seed: int = 1
    deadline_s: float = 0.0  # 0: allow 60 s plus 2 s per planned cycle

    @classmethod
    def from_env(cls, **defaults: Any) -> SoakPlan:
        """The plan, with ARCHIVER_SOAK_<FIELD> environment variables overriding the defaults."""
        values = dict(defaults)
        for name, kind in (("cycles", int), ("accounts", int), ("sessions", int), ("interval_s", float),
                           ("speed", float), ("fault_share", float), ("kills", int), ("outage_s", float),
                           ("seed", int), ("deadline_s", float)):
            raw = os.environ.get(f"ARCHIVER_SOAK_{name.removesuffix('_s').upper()}")
            if raw:
                values[name] = kind(raw)
        plan = cls(**values)
        return plan if plan.deadline_s else replace(plan, deadline_s=60 + 2.0 * plan.cycles)

    def emulator(self) -> Emulator:
        emulator = Emulator(
            accounts=self.accounts,
            initial_sessions=self.sessions,
            seed=self.seed,
            speed=self.speed,
            spawn_per_minute=self.sessions / self.mean_lifetime_s * 60,  # keeps the count steady
            mean_lifetime_s=self.mean_lifetime_s,
            retention_s=self.retention_s,
            keep_served_pages=True,
        )
        emulator.set_faults(
            **Faults.chaos(
                self.fault_share,
                # 429s are a seventh of the failed statuses, and storms come scripted: enough to
                # throttle, not so many that the service's back-off stretches every interval.
                error_statuses=(429, 500, 503, 500, 503, 500, 503),
                retry_after_s=0.3,
                timeout_s=1.0,  # past the client's 0.5 s timeout
                drift=True,
                drift_closes=2,
                drift_repeats=3,
            ).to_json()
        )
        return emulator

    def service_env(self, emulator: Emulator, base_url: str, database_url: str, log_format: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "ARCHIVER_"))}
        env.update(
            {
                "CLOUDFLARE_ACCOUNT_ID": ",".join(emulator.account_ids),
                "CLOUDFLARE_BASE_URL": base_url,
                "ARCHIVER_DATABASE_URL": database_url,
                "ARCHIVER_INTERVAL_SECONDS": str(self.interval_s),
                "ARCHIVER_MIN_INTERVAL_SECONDS": str(self.interval_s),
                "ARCHIVER_RATE_LIMIT": "200",
                "ARCHIVER_RATE_BUDGET": "1",
                "ARCHIVER_UPSTREAM_LIMIT_REQUESTS": "1000000",
                "ARCHIVER_HTTP_TIMEOUT_SECONDS": "0.5",
                "ARCHIVER_MAX_RETRY_WAIT_SECONDS": "0.3",
                "ARCHIVER_DETAIL_BUDGET": "250",
                "ARCHIVER_DETAIL_CONCURRENCY": "16",
                "ARCHIVER_SHUTDOWN_GRACE_SECONDS": "10",
                "ARCHIVER_LOG_FORMAT": log_format,
                "ARCHIVER_LOG_LEVEL": "DEBUG",
            }
        )
        return env


class Supervisor:
    """Keeps one `archiver run` process alive, as systemd's Restart= would; kills it on demand."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_at = 0.0
        self.kills = 0
        self.exit_codes: list[int] = []

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "archiver", "run", "--auto-migrate"],
                env=self.env, stdout=log, stderr=log,
            )
        self.starts += 1
        self.started_at = time.time()

    def keep_alive(self) -> None:
        """Restart the service if it exited on its own (say, it started while the database was down)."""
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            self.exit_codes.append(code)
            time.sleep(0.3)
            self.start()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills += 1
        self.start()

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def abandon(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class TcpProxy:
    """A loopback TCP proxy to a database server that can cut every connection and refuse new
    ones for a while: the server itself (shared with others) is never touched."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.refusing = False
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, name="db-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink, self.forwarding), daemon=True).start()

    @contextmanager
    def outage(self) -> Iterator[None]:
        """Cut every connection and refuse new ones inside the block."""
        self.refusing = True
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                _close(sock)
        try:
            yield
        finally:
            self.refusing = False

    @contextmanager
    def stalled(self) -> Iterator[None]:
        """Keep every connection open but forward nothing inside the block: a peer gone silent."""
        self.forwarding.clear()
        try:
            yield
        finally:
            self.forwarding.set()

    def close(self) -> None:
        self.forwarding.set()
        self.listener.close()
        with self.lock:
            for pair in self.pairs:
                for sock in pair:
                    _close(sock)


def _pump(source: socket.socket, sink: socket.socket, forwarding: threading.Event) -> None:
    try:
        while data := source.recv(65536):
            forwarding.wait()
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@contextmanager
def sqlite_locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite archive: every writer waits, then fails, until released."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@dataclass
class SoakRun:
    """What happened during a soak: the events, in wall-clock seconds."""

    plan: SoakPlan
    emulator: Emulator
    wall0: float  # a wall-clock instant ...
    sim0_ms: float  # ... and the emulator's simulated time at that instant
    kills: list[float] = field(default_factory=list)
    outage: tuple[float, float] | None = None
    storm_at: float | None = None
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    stop_code: int | None = None
    duration_s: float = 0.0

    def sim_ms(self, wall: float) -> float:
        return self.sim0_ms + (wall - self.wall0) * 1000 * self.plan.speed


@contextmanager
def archive_engine(url: str) -> Iterator[Engine]:
    """An engine on the soak's archive, disposed however the soak ends."""
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def drive(plan: SoakPlan, emulator: Emulator, supervisor: Supervisor, engine: Engine,
          outage: Callable[[], Any]) -> SoakRun:
    """Run the soak: start the service, kill it and take the database away at random moments,
    until the accounts have had ``plan.cycles`` successful cycles (each its share); then stop it
    with SIGTERM."""
    rng = random.Random(plan.seed)
    run = SoakRun(plan, emulator, time.time(), emulator.clock.now_ms())
    # Events at fractions of the way: kills spread out, the outage and a 429 storm in between.
    marks = sorted([(i + 1) / (plan.kills + 2) + rng.uniform(-0.05, 0.05) for i in range(plan.kills)])
    events = [(m, "kill") for m in marks] + [(0.45, "outage"), (0.3, "storm"), (0.7, "shift")]
    events.sort()
    started = time.monotonic()
    supervisor.start()
    for mark, event in events:
        # every event hits a service that is up and polling, not one still starting
        def ready(mark: float = mark) -> bool:
            return _progress(engine, emulator, plan, since=supervisor.started_at) >= mark

        _wait_for(ready, supervisor, started, plan.deadline_s)
        time.sleep(rng.uniform(0, 2 * plan.interval_s))  # a random moment, often mid-cycle
        if event == "kill":
            supervisor.kill()
            run.kills.append(time.time())
        elif event == "outage":
            began = time.time()
            with outage():
                _sleep_supervised(plan.outage_s, supervisor)
            run.outage = (began, time.time())
        elif event == "storm":
            emulator.inject(429, times=8, retry_after=1)  # more than one request's retries
            run.storm_at = time.time()
        else:
            # more sessions close between two page requests than the pages overlap by, until a
            # listing has met it (a cycle failing on something else meanwhile would not)
            shifted_at = time.time()
            emulator.set_faults(drift_closes=12)
            _wait_for(lambda at=shifted_at: _flagged_incomplete_since(engine, at), supervisor, started, plan.deadline_s)
            emulator.set_faults(drift_closes=2)
    _wait_for(lambda: _progress(engine, emulator, plan) >= 1.0, supervisor, started, plan.deadline_s)
    run.stop_code = supervisor.stop()
    run.starts, run.exit_codes = supervisor.starts, supervisor.exit_codes
    run.duration_s = time.monotonic() - started
    return run


def _progress(engine: Engine, emulator: Emulator, plan: SoakPlan, since: float = 0.0) -> float:
    """The share of the planned successful cycles done, at the slowest account's pace; 0 until every
    account has had one that started after ``since`` (Unix time)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(runs_table.c.account_id, runs_table.c.outcome, runs_table.c.started_at)).all()
    except Exception:  # the schema may not exist yet, or the database is away
        return 0.0
    ok = [(account, started) for account, outcome, started in rows if outcome in OK_OUTCOMES]
    if {account for account, started in ok if started.timestamp() > since} != set(emulator.account_ids):
        return 0.0
    done = Counter(account for account, _ in ok)
    return min(done[a] for a in emulator.account_ids) * len(emulator.account_ids) / plan.cycles


def _flagged_incomplete_since(engine: Engine, since: float) -> bool:
    """Whether a cycle that started after ``since`` (Unix time) stored an incomplete listing."""
    r = runs_table.c
    try:
        with engine.connect() as conn:
            starts = conn.scalars(select(r.started_at).where(r.outcome == "partial", r.listing_complete.is_(False)))
            return any(started.timestamp() > since for started in starts)
    except Exception:  # the database may be away
        return False


def _wait_for(condition: Callable[[], bool], supervisor: Supervisor, started: float, deadline_s: float) -> None:
    while not condition():
        assert time.monotonic() - started < deadline_s, "the soak ran out of time: the archiver is not making progress"
        _sleep_supervised(0.2, supervisor)


def _sleep_supervised(seconds: float, supervisor: Supervisor) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        supervisor.keep_alive()
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))


# -- the comparison with the ground truth ---------------------------------------------------------


@dataclass
class SoakFigures:
    """The soak's outcome: what the archive should hold, and what went missing."""

    cycles: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    faulty_requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    sessions_in_truth: int = 0
    sessions_listed: int = 0
    sessions_lost: list[str] = field(default_factory=list)
    close_reasons_expected: int = 0
    close_reasons_lost: list[str] = field(default_factory=list)
    duplicate_rows: list[str] = field(default_factory=list)
    incomplete_listings: int = 0
    incomplete_unflagged: list[str] = field(default_factory=list)
    flagged_though_complete: int = 0
    live_marked_vanished: list[str] = field(default_factory=list)
    stray_requests: int = 0

    def lines(self, run: SoakRun) -> list[str]:
        outage = f"{run.outage[1] - run.outage[0]:.1f}s" if run.outage else "none"
        return [
            f"duration {run.duration_s:.1f}s, {run.plan.accounts} accounts, interval {run.plan.interval_s}s, "
            f"emulator speed x{run.plan.speed:g}",
            f"cycles: {sum(self.cycles.values())} ({', '.join(f'{k} {v}' for k, v in sorted(self.cycles.items()))})",
            f"requests: {self.requests}, faulty {self.faulty_requests} ({self.faulty_requests / max(1, self.requests):.0%}): "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            f"SIGKILLs: {len(run.kills)}, starts: {run.starts}, exits on their own: {len(run.exit_codes)}, "
            f"database outage: {outage}, final SIGTERM exit code: {run.stop_code}",
            f"sessions: {self.sessions_in_truth} in the emulator, {self.sessions_listed} listed during a successful poll, "
            f"lost {len(self.sessions_lost)}",
            f"close reasons: {self.close_reasons_expected} retrievable for two successful polls after closing, "
            f"lost {len(self.close_reasons_lost)}",
            *(f"  lost close: {lost}" for lost in self.close_reasons_lost),
            f"duplicate rows: {len(self.duplicate_rows)}",
            f"incomplete listings: {self.incomplete_listings}, unflagged {len(self.incomplete_unflagged)} "
            f"(flagged conservatively though complete: {self.flagged_though_complete})",
            f"live sessions marked vanished: {len(self.live_marked_vanished)}",
            f"requests outside the API's two paths: {self.stray_requests}",
        ]


def compare(run: SoakRun, engine: Engine) -> SoakFigures:
    """Check the archive against the emulator's ground truth and its log of served pages."""
    figures = SoakFigures()
    with engine.connect() as conn:
        runs = [dict(r) for r in conn.execute(select(runs_table).order_by(runs_table.c.id)).mappings()]
        rows = {(r["account_id"], r["session_id"]): dict(r) for r in conn.execute(select(sessions_table)).mappings()}
        versions = [dict(r) for r in conn.execute(select(versions_table).order_by(versions_table.c.id)).mappings()]
    truth = {(t["accountId"], t["sessionId"]): t for t in run.emulator.truth()}
    pages = pages_by_account(run.emulator.served_pages or [])
    stats = run.emulator.stats()
    figures.cycles = Counter(r["outcome"] for r in runs)
    figures.requests = stats["requests"]
    figures.faults = Counter({k.removeprefix("fault:"): v for k, v in stats.items() if k.startswith("fault:")})
    figures.faulty_requests = sum(figures.faults.values())
    figures.stray_requests = stats.get("route:unknown", 0) + stats.get("status:400", 0)
    figures.sessions_in_truth = len(truth)
    _check_listed(figures, run, runs, rows, truth, pages)
    _check_close_reasons(figures, run, runs, rows, truth, versions)
    _check_duplicates(figures, rows, versions)
    _check_listings(figures, run, runs, truth, pages)
    _check_vanished(figures, run, versions, truth)
    return figures


def pages_by_account(pages: list[ServedPage]) -> dict[str, tuple[list[float], list[ServedPage]]]:
    by_account: dict[str, list[ServedPage]] = {}
    for page in sorted(pages, key=lambda p: p.at):
        by_account.setdefault(page.account_id, []).append(page)
    return {a: ([p.at for p in ps], ps) for a, ps in by_account.items()}


def listing_end(run: dict[str, Any]) -> Any:
    """When a run's listing was over: its details may have gone on beside the next run's listing."""
    return run["listed_at"] or run["finished_at"]


def _pages_within(pages: dict[str, tuple[list[float], list[ServedPage]]], run: dict[str, Any]) -> list[ServedPage]:
    times, served = pages.get(run["account_id"], ([], []))
    end = listing_end(run).timestamp() if listing_end(run) else float("inf")
    return served[bisect.bisect_left(times, run["started_at"].timestamp()) : bisect.bisect_right(times, end)]


def pages_consumed(pages: dict[str, tuple[list[float], list[ServedPage]]], run: dict[str, Any]) -> list[ServedPage]:
    """The pages of a run's listing its cycle went on with: of the offsets it asked for, the first
    ``pages`` (the ledger's count of pages received; the listing asks for them in ascending order),
    each as its last attempt answered, if that one delivered.

    A page the server answered is not always one the client got: an answer slower than the
    client's timeout is asked again (and the list may have moved meanwhile), and a listing left
    early drops the page it had requested ahead.
    """
    last_attempt: dict[int, ServedPage] = {}
    for page in _pages_within(pages, run):
        last_attempt[page.offset] = page
    kept = [last_attempt[offset] for offset in sorted(last_attempt)[: run["pages"]]]
    return [page for page in kept if page.delivered]


def _check_listed(figures: SoakFigures, run: SoakRun, runs: list[dict[str, Any]], rows: dict[Any, Any],
                  truth: dict[Any, dict[str, Any]], pages: dict[str, tuple[list[float], list[ServedPage]]]) -> None:
    listed: dict[tuple[str, str], list[str]] = {}
    for r in runs:
        if r["outcome"] not in OK_OUTCOMES:
            continue
        for page in pages_consumed(pages, r):
            for sid in page.ids:
                listed.setdefault((r["account_id"], sid), []).append(_served_in(run, page, r))
    figures.sessions_listed = len(listed)
    figures.sessions_lost = sorted(
        f"{a}/{s}: {_lifetime(run, truth[a, s])}; {'; '.join(listed[a, s])}" for a, s in listed.keys() - rows.keys()
    )


def _lifetime(run: SoakRun, item: dict[str, Any]) -> str:
    """When a session lived upstream, in seconds since the soak began."""
    def since(sim_ms: float | None) -> str:
        return "-" if sim_ms is None else f"{(sim_ms - run.sim0_ms) / 1000 / run.plan.speed:.3f}s"
    return f"open {since(item['startTime'])}..{since(item['closedAtMs'])}"


def _served_in(run: SoakRun, page: ServedPage, r: dict[str, Any]) -> str:
    """Where a page was served, for a report: seconds since the soak began, and the run's window."""
    def since(t: float) -> str:
        return f"{t - run.wall0:.3f}s"
    finished = since(r["finished_at"].timestamp()) if r["finished_at"] else "-"
    return (f"offset {page.offset} served at {since(page.at)} in run {r['id']} ({r['outcome']}, "
            f"{since(r['started_at'].timestamp())}..{finished}, {r['pages']} page(s), listing complete: {r['listing_complete']})")


def _check_close_reasons(figures: SoakFigures, run: SoakRun, runs: list[dict[str, Any]], rows: dict[Any, Any],
                         truth: dict[Any, dict[str, Any]], versions: list[dict[str, Any]]) -> None:
    complete: dict[str, list[tuple[float, float, int]]] = {}
    for r in runs:
        if r["outcome"] in OK_OUTCOMES and r["listing_complete"]:
            complete.setdefault(r["account_id"], []).append(
                (run.sim_ms(r["started_at"].timestamp()), run.sim_ms(listing_end(r).timestamp()), r["id"])
            )
    for key, row in rows.items():
        item = truth.get(key)
        if item is None or item["closedAtMs"] is None:
            continue
        forgotten = item["forgottenAtMs"] or float("inf")
        polls_after = [w for w in complete.get(key[0], []) if w[0] > item["closedAtMs"] and w[1] < forgotten]
        if len(polls_after) < 2:
            continue
        figures.close_reasons_expected += 1
        expected = (ms_to_datetime(item["endTime"]), str(item["closeReason"]), item["closeReasonText"])
        got = (row["end_time"], row["close_reason"], row["close_reason_text"])
        if row["status"] != "closed" or got != expected:
            figures.close_reasons_lost.append(f"{key[1]}: archived {row['status']} {got}, upstream {expected}; "
                                              + _close_story(run, item, polls_after, versions, runs))


def _close_story(run: SoakRun, item: dict[str, Any], polls: list[tuple[float, float, int]],
                 versions: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """How a lost close came about, in seconds since the soak began: when it closed and was
    forgotten upstream, the complete listings between, and the versions the archive wrote."""
    def since(sim_ms: float) -> str:
        return f"{(sim_ms - run.sim0_ms) / 1000 / run.plan.speed:.3f}s"
    started = {r["id"]: r["started_at"].timestamp() - run.wall0 for r in runs}
    written = [f"{v['status']} by {v['source']} in run {v['run_id']} (started {started.get(v['run_id'], float('nan')):.3f}s) "
               f"at {v['observed_at'].timestamp() - run.wall0:.3f}s"
               for v in versions if v["session_id"] == item["sessionId"]]
    forgotten = since(item["forgottenAtMs"]) if item["forgottenAtMs"] else "-"
    return (f"closed at {since(item['closedAtMs'])}, forgotten at {forgotten}; complete listings between: "
            + ", ".join(f"run {n} {since(a)}..{since(b)}" for a, b, n in polls)
            + "; versions: " + "; ".join(written))


def _check_duplicates(figures: SoakFigures, rows: dict[Any, Any], versions: list[dict[str, Any]]) -> None:
    keys = Counter((a, s.lower()) for a, s in rows)
    figures.duplicate_rows += [f"session {a}/{s} stored {n} times" for (a, s), n in keys.items() if n > 1]
    last: dict[tuple[str, str], tuple[Any, ...]] = {}
    for v in versions:
        key = (v["account_id"], v["session_id"])
        state = tuple(v[c] for c in ("status", "start_time", "end_time", "connection_start_time",
                                     "connection_end_time", "last_updated", "connection_id", "close_reason",
                                     "close_reason_text"))
        if last.get(key) == state:
            figures.duplicate_rows.append(f"version {v['id']} of {key[1]} repeats the one before")
        last[key] = state


def _check_listings(figures: SoakFigures, run: SoakRun, runs: list[dict[str, Any]],
                    truth: dict[Any, dict[str, Any]], pages: dict[str, tuple[list[float], list[ServedPage]]]) -> None:
    margin_ms = 200 * run.plan.speed  # wall-clock to simulated-time slack
    by_account: dict[str, list[dict[str, Any]]] = {}
    for item in truth.values():
        by_account.setdefault(item["accountId"], []).append(item)
    for r in runs:
        if r["finished_at"] is None or r["outcome"] == "aborted":
            continue  # a killed cycle's listing is incomplete and flagged by its outcome
        start, end = run.sim_ms(r["started_at"].timestamp()), run.sim_ms(listing_end(r).timestamp())
        if not _pages_within(pages, r):
            continue  # it failed before listing (the database was away)
        consumed = pages_consumed(pages, r)
        shown = {sid for page in consumed for sid in page.ids}
        missed = [
            t["sessionId"] for t in by_account.get(r["account_id"], [])
            if t["startTime"] < start - margin_ms and (t["closedAtMs"] is None or t["closedAtMs"] > end + margin_ms)
            and t["sessionId"] not in shown
        ]
        spoiled = any(page.fault == "bad_id" for page in consumed)
        if missed or spoiled:
            figures.incomplete_listings += 1
            if r["listing_complete"]:
                figures.incomplete_unflagged.append(f"run {r['id']}: missed {missed[:3]}, spoiled ids: {spoiled}")
        elif not r["listing_complete"]:
            figures.flagged_though_complete += 1


def _check_vanished(figures: SoakFigures, run: SoakRun, versions: list[dict[str, Any]],
                    truth: dict[Any, dict[str, Any]]) -> None:
    margin_ms = 200 * run.plan.speed
    for v in versions:
        if v["status"] != "vanished" or v["source"] != "archiver":
            continue
        item = truth[(v["account_id"], v["session_id"])]
        at = run.sim_ms(v["observed_at"].timestamp())
        if item["closedAtMs"] is None or item["closedAtMs"] > at + margin_ms:
            figures.live_marked_vanished.append(f"{v['session_id']} marked vanished while open")


def text_of_every_column(engine: Engine) -> str:
    """Every value of every archiver table, as text, for secret scans."""
    parts: list[str] = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                parts.extend(str(value) for value in row)
    return "\n".join(parts)


def devtools_url_tokens(emulator: Emulator) -> set[str]:
    """The access tokens inside every DevTools URL the emulator ever handed out."""
    return {t["webSocketDebuggerUrl"].rpartition("jwt=")[2] for t in emulator.truth()}

