"""Prometheus metrics and the health check, served over HTTP on /metrics and /healthz."""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from archiver import __version__
from archiver.api.cloudflare import RequestStats
from archiver.archive.plan import CLOSED_PREFIX
from archiver.archive.sync import CycleResult
from archiver.errors import ConfigError
from archiver.vocabulary import OPEN_STATUSES

log = logging.getLogger(__name__)
# The `_created` series of every counter and histogram only say when the process started, once per
# label set: noise in every scrape and in the time series database.
disable_created_metrics()  # type: ignore[no-untyped-call]


# A listing older than this many gaps makes a healthy service say it is slow.
SLOW_GAPS = 1.5


class Metrics:
    """The service's metrics, in a registry of their own (tests make as many as they like)."""

    def __init__(self, accounts: list[str], clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        self.started = clock()
        self.accounts = list(accounts)
        self.last_success: dict[str, float] = {}
        self.last_complete: dict[str, float] = {}  # when each account's last complete listing was stored
        self.last_listing: dict[str, float] = {}
        self.intervals: dict[str, float] = {}
        self.stuck: dict[str, float] = {}  # accounts whose cycle ran past its deadline, for how long
        r = self.registry
        self.cycles = Counter("archiver_cycles", "Poll cycles by outcome.", ["account", "outcome"], registry=r)
        self.duration = Histogram(
            "archiver_cycle_duration_seconds", "Wall time of one poll cycle.", ["account"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.open_sessions = Gauge(
            "archiver_open_sessions", "Sessions of the account not yet ended, by status (active, vanished).", ["account", "status"],
            registry=r,
        )
        self.requests = Counter("archiver_api_requests", "Cloudflare API requests by HTTP status (0: no answer).", ["status"], registry=r)
        self.retries = Counter("archiver_api_retries", "Cloudflare API requests retried.", registry=r)
        self.throttled = Counter("archiver_api_throttled", "HTTP 429 answers from Cloudflare.", registry=r)
        self.waited = Counter("archiver_rate_limit_wait_seconds", "Seconds spent waiting for the rate limiter and backoff.", registry=r)
        self.last_success_time = Gauge(
            "archiver_last_success_timestamp_seconds", "Unix time of the account's last stored listing.", ["account"], registry=r
        )
        self.interval = Gauge(
            "archiver_effective_interval_seconds", "The planned gap between two listings of the account.", ["account"], registry=r
        )
        self.listing_gap = Gauge(
            "archiver_listing_gap_seconds", "The achieved gap between the account's last two listings.", ["account"], registry=r
        )
        self.backlog = Gauge(
            "archiver_detail_backlog", "Detail fetches still owed after the account's last cycle.", ["account"], registry=r
        )
        self.closed = Counter(
            "archiver_sessions_closed", "Closes the archive learned, by the reason's documented name.", ["account", "reason"],
            registry=r,
        )
        self.gone = Counter(
            "archiver_sessions_gone", "Sessions Cloudflare forgot before the archive learned their end.", ["account"], registry=r
        )
        r.register(_ListingAge(self))
        # The standard process (CPU, memory, open files, start time) and Python metrics, and
        # which build is running.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("archiver_build", "The running archiver.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )

    def record_cycle(self, result: CycleResult, stats: RequestStats) -> None:
        self.cycles.labels(result.account_id, result.outcome).inc()
        self.duration.labels(result.account_id).observe(result.duration_seconds)
        for status, count in stats.by_status.items():
            self.requests.labels(str(status)).inc(count)
        self.retries.inc(stats.retries)
        self.throttled.inc(stats.throttled)
        self.waited.inc(stats.waited_seconds)
        self.backlog.labels(result.account_id).set(result.counts.get("details_carried", 0))
        self.gone.labels(result.account_id).inc(result.counts.get("gone", 0))
        for key, count in result.counts.items():
            if key.startswith(CLOSED_PREFIX):
                self.closed.labels(result.account_id, key.removeprefix(CLOSED_PREFIX)).inc(count)

    def record_listing(self, account: str, pages: int, complete: bool) -> None:
        """An account's listing is stored (``pages`` > 0, ``complete`` if it saw every page) or
        failed (no pages). A stored listing is what keeps the archive, and the health, going."""
        if not pages:
            return
        now = self.clock()
        if account in self.last_listing:
            self.listing_gap.labels(account).set(now - self.last_listing[account])
        self.last_listing[account] = now
        if complete:
            self.last_complete[account] = now
        self.last_success[account] = now
        self.last_success_time.labels(account).set(now)

    def count_open(self, account_id: str, counts: Mapping[str, int]) -> None:
        """The account's open sessions, by status."""
        for status, count in counts.items():
            self.open_sessions.labels(account_id, status).set(count)

    def forget_open(self, account_id: str) -> None:
        """Another worker polls the account: its figures are that worker's to give."""
        for status in OPEN_STATUSES:
            with suppress(KeyError):
                self.open_sessions.remove(account_id, status)

    def record_interval(self, account_id: str, seconds: float) -> None:
        self.intervals[account_id] = seconds
        self.interval.labels(account_id).set(seconds)

    def record_stuck(self, stuck: Mapping[str, float]) -> None:
        self.stuck = dict(stuck)

    def health(self) -> tuple[bool, str]:
        """Healthy while every account had a listing stored within three of its intervals and no
        cycle is stuck (run past its deadline: a hung database). A service that is only slow
        (listings late, but coming) is healthy, and says so."""
        now = self.clock()
        sick, slow = [], []
        for account in self.accounts:
            if account in self.stuck:
                sick.append(f"{account}: stuck, a cycle has run {self.stuck[account]:.0f}s, past its deadline")
                continue
            gap = self.intervals.get(account, 0.0)
            # An account not yet polled counts from the service's start.
            since = now - self.last_success.get(account, self.started)
            if since > 3 * gap:
                sick.append(f"{account}: no listing stored for {since:.0f}s (limit {3 * gap:.0f}s)")
            elif since > SLOW_GAPS * gap:
                slow.append(f"{account}: slow, last listing stored {since:.0f}s ago (gap {gap:.0f}s)")
        if sick:
            return False, "; ".join(sick + slow)
        return True, "; ".join(["ok", *slow])

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _ListingAge(Collector):
    """Seconds since each account's last complete listing, as of the scrape: how long the
    archive has been blind to sessions that start and end in between."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "archiver_listing_age_seconds",
            "Seconds since the account's last complete listing (since the start, if none yet).",
            labels=["account"],
        )
        now = self.metrics.clock()
        for account in self.metrics.accounts:
            family.add_metric([account], now - self.metrics.last_complete.get(account, self.metrics.started))
        yield family


class MetricsServer:
    """/metrics and /healthz on a background thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        handler = _handler_for(metrics)
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:  # the port is taken, or the address is not this host's
            raise ConfigError(f"ARCHIVER_METRICS_PORT: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self.thread.start()
        log.info("metrics on http://%s:%d/metrics and /healthz", self.httpd.server_address[0], self.port)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler_for(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            """Scrapes are not worth a log line each."""

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                healthy, reason = metrics.health()
                self._send(200 if healthy else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
