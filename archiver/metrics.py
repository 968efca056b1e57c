"""Prometheus metrics and the health check, served over HTTP on /metrics and /healthz."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from archiver.cloudflare import RequestStats
from archiver.sync import CycleResult

log = logging.getLogger(__name__)
SUCCESS = ("ok", "partial")  # the listing was stored: the archive is being kept


class Metrics:
    """The service's metrics, in a registry of their own (tests make as many as they like)."""

    def __init__(self, accounts: list[str], clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        self.started = clock()
        self.accounts = list(accounts)
        self.last_success: dict[str, float] = {}
        self.intervals: dict[str, float] = {}
        r = self.registry
        self.cycles = Counter("archiver_cycles", "Poll cycles by outcome.", ["account", "outcome"], registry=r)
        self.duration = Histogram(
            "archiver_cycle_duration_seconds", "Wall time of one poll cycle.", ["account"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.sessions = Gauge("archiver_sessions", "Archived sessions by status.", ["account", "status"], registry=r)
        self.requests = Counter("archiver_api_requests", "Cloudflare API requests by HTTP status (0: no answer).", ["status"], registry=r)
        self.retries = Counter("archiver_api_retries", "Cloudflare API requests retried.", registry=r)
        self.throttled = Counter("archiver_api_throttled", "HTTP 429 answers from Cloudflare.", registry=r)
        self.waited = Counter("archiver_rate_limit_wait_seconds", "Seconds spent waiting for the rate limiter and backoff.", registry=r)
        self.last_success_time = Gauge(
            "archiver_last_success_timestamp_seconds", "Unix time of the last cycle that stored a listing.", ["account"], registry=r
        )
        self.interval = Gauge("archiver_effective_interval_seconds", "Current poll interval.", ["account"], registry=r)

    def record_cycle(self, result: CycleResult, stats: RequestStats) -> None:
        self.cycles.labels(result.account_id, result.outcome).inc()
        self.duration.labels(result.account_id).observe(result.duration_seconds)
        for status, count in stats.by_status.items():
            self.requests.labels(str(status)).inc(count)
        self.retries.inc(stats.retries)
        self.throttled.inc(stats.throttled)
        self.waited.inc(stats.waited_seconds)
        if result.outcome in SUCCESS:
            now = self.clock()
            self.last_success[result.account_id] = now
            self.last_success_time.labels(result.account_id).set(now)

    def record_sessions(self, account_id: str, counts: Mapping[str, int]) -> None:
        for status, count in counts.items():
            self.sessions.labels(account_id, status).set(count)

    def record_interval(self, account_id: str, seconds: float) -> None:
        self.intervals[account_id] = seconds
        self.interval.labels(account_id).set(seconds)

    def health(self) -> tuple[bool, str]:
        """Healthy while every account had a successful cycle within three of its intervals."""
        now = self.clock()
        stale = []
        for account in self.accounts:
            limit = 3 * self.intervals.get(account, 0.0)
            # An account not yet polled counts from the service's start.
            since = now - self.last_success.get(account, self.started)
            if since > limit:
                stale.append(f"{account}: no successful cycle for {since:.0f}s (limit {limit:.0f}s)")
        return (not stale, "; ".join(stale) or "ok")

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """/metrics and /healthz on a background thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        handler = _handler_for(metrics)
        self.httpd = ThreadingHTTPServer((host, port), handler)
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
