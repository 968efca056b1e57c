"""Benchmark: every report, the timeline and the export over an archive of a million sessions.

    python -m bench.reports_bench                     # 1,000,000 sessions on SQLite and PostgreSQL
    python -m bench.reports_bench --sessions 100000 --backends sqlite

Builds the archive once as files (bench/synthetic_archive.py), bulk-loads it into a fresh SQLite
file and a throwaway PostgreSQL schema (dropped afterwards), times each report (the first run and
the median of the next ones) and exports through the real command in a subprocess, whose peak
memory is measured. Writes the figures to bench/RESULTS-reports.md. Targets: every report within
1 s, but a month of usage (a third of the archive's sessions) within 2 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from archiver.archive import migrate
from archiver.archive.store import make_engine
from archiver.reports import Window, coverage, document, incident, ledger, open_at, stats, story, usage
from archiver.reports.timeline import build_timeline
from archiver.reports.window import sessions_in
from bench.synthetic_archive import Shape, generate, load

END = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
DAY = Window(END - timedelta(days=1), END)
HALF_HOUR = timedelta(minutes=30)
TARGET_SECONDS = 1.0
USAGE_TARGET_SECONDS = 2.0
MONTH = Window(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
RESULTS = Path(__file__).with_name("RESULTS-reports.md")
DEFAULT_POSTGRES = os.environ.get("ARCHIVER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass
class Timing:
    name: str
    first: float
    median: float
    rows: int
    target: float | None = TARGET_SECONDS  # None: a view, timed for information

    @property
    def met(self) -> bool:
        return self.target is None or max(self.first, self.median) <= self.target


@dataclass
class BackendResult:
    backend: str
    load_seconds: float
    timings: list[Timing] = field(default_factory=list)
    exports: list[tuple[str, int, float, float]] = field(default_factory=list)  # (window, rows, seconds, peak MiB)


def reports(days: float, middle_session: str) -> list[tuple[str, Callable[[Connection], Any], float | None]]:
    """The reports to time: (what a person would type, the call, the target in seconds or None)."""
    middle = END - timedelta(days=days / 2)
    month = Window(END - timedelta(days=30), END)
    hour_ago = END - timedelta(hours=1)
    timed: list[tuple[str, Callable[[Connection], Any]]] = [
        ("report active-at (1 hour ago)", lambda c: open_at.open_at(c, END - timedelta(hours=1))),
        (f"report active-at ({days / 2:g} days ago)", lambda c: open_at.open_at(c, middle)),
        ("report sessions --since 24h", lambda c: sessions_in(c, DAY)),
        ("report sessions --since 24h --reason BrowserIdle", lambda c: sessions_in(c, DAY, reason="BrowserIdle")),
        ("report reasons --since 24h", lambda c: stats.close_reasons(c, DAY)),
        ("report reasons --since 24h --by hour", lambda c: stats.close_reasons(c, DAY, by="hour")),
        ("report durations --since 24h", lambda c: stats.durations(c, DAY)),
        ("report session ID", lambda c: story.session_story(c, middle_session)),
        ("report runs --since 24h", lambda c: ledger.runs_summary(c, DAY.since)),
        ("report runs --since 24h --each", lambda c: ledger.runs(c, DAY.since)),
        ("report coverage --since 24h --by hour", lambda c: coverage.coverage(c, DAY, END, by="hour")),
        ("report coverage --since 30d", lambda c: coverage.coverage(c, month, END)),
        ("report incident --at 1h (Markdown)",
         lambda c: document.markdown(incident.incident(c, hour_ago, HALF_HOUR, HALF_HOUR, END))),
        ("report incident --at 1h (HTML, with the timeline)",
         lambda c: document.html_page(incident.incident(c, hour_ago, HALF_HOUR, HALF_HOUR, END),
                                      build_timeline(c, Window(hour_ago - HALF_HOUR, hour_ago + HALF_HOUR))[0])),
        ("timeline --since 24h", lambda c: build_timeline(c, DAY)),
    ]
    monthly: list[tuple[str, Callable[[Connection], Any]]] = [
        ("report usage --since 30d (by day)", lambda c: usage.usage(c, month, END)),
        ("report usage, October (--by month)", lambda c: usage.usage(c, MONTH, END, by="month")),
    ]
    views: list[tuple[str, Callable[[Connection], Any]]] = [
        ("view concurrent_sessions_per_minute (all 7 days)",
         lambda c: c.execute(text("SELECT * FROM concurrent_sessions_per_minute")).all()),
        ("view close_reasons_hourly (all 90 days)", lambda c: c.execute(text("SELECT * FROM close_reasons_hourly")).all()),
        ("view browser_usage_daily (all 90 days)", lambda c: c.execute(text("SELECT * FROM browser_usage_daily")).all()),
    ]
    return ([(name, call, TARGET_SECONDS) for name, call in timed]
            + [(name, call, USAGE_TARGET_SECONDS) for name, call in monthly]
            + [(name, call, None) for name, call in views])


def rows_of(answer: Any) -> int:
    if isinstance(answer, str):
        return answer.count("<tr>") or answer.count("\n| ")  # a document: its table rows
    if isinstance(answer, tuple):
        return answer[1]  # the timeline: (html, sessions)
    if isinstance(answer, list) and answer and isinstance(answer[0], story.Story):
        return sum(len(s.events.rows) for s in answer)
    return len(answer) if isinstance(answer, list) else len(answer.rows)


def time_reports(engine: Engine, days: float, repeat: int) -> list[Timing]:
    with engine.connect() as conn:
        middle_session = conn.scalar(text(
            "SELECT session_id FROM browser_sessions WHERE start_time >= :t ORDER BY start_time LIMIT 1"),
            {"t": (END - timedelta(days=days / 2)).strftime("%Y-%m-%d %H:%M:%S")
             + ("+00" if engine.dialect.name == "postgresql" else "")})
        timings = []
        for name, call, target in reports(days, middle_session):
            runs = []
            for _ in range(repeat + 1):
                started = time.perf_counter()
                answer = call(conn)
                runs.append(time.perf_counter() - started)
            timings.append(Timing(name, runs[0], statistics.median(runs[1:]), rows_of(answer), target))
            print(f"  {name:50} first {runs[0]:.3f}s  median {timings[-1].median:.3f}s  rows {timings[-1].rows}", flush=True)
    return timings


# Runs the archiver and says, at exit, the peak RSS of the interpreter it is: VmHWM, which starts
# afresh at exec. (The ru_maxrss that wait4 gives would also count this process's own pages, which
# the child holds between fork and exec: the bigger the benchmark has grown, the bigger the figure.)
PEAK_PROBE = """import atexit, runpy, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("peak-kib", line.split()[1], file=sys.stderr)
atexit.register(peak)
runpy.run_module("archiver", run_name="__main__", alter_sys=True)
"""


def time_export(url: str, window: Window, label: str) -> tuple[str, int, float, float]:
    """Run `archiver export` in a subprocess to /dev/null; its rows, seconds and peak RSS (MiB)."""
    env = {**os.environ, "ARCHIVER_DATABASE_URL": url, "ARCHIVER_LOG_LEVEL": "WARNING"}
    args = [sys.executable, "-c", PEAK_PROBE, "export", "--since", window.since.isoformat(), "--until",
            window.until.isoformat(), "--format", "csv", "-o", os.devnull]
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"export failed: {done.stderr}")
    said = dict(line.split(maxsplit=1) for line in done.stderr.splitlines())
    rows = int(said["exported"].split()[0])  # "exported N sessions rows"
    peak_mib = int(said["peak-kib"]) / 1024
    print(f"  export {label:42} {rows} rows in {seconds:.1f}s, peak RSS {peak_mib:.0f} MiB", flush=True)
    return label, rows, seconds, peak_mib


@contextmanager
def sqlite_archive(folder: Path) -> Iterator[str]:
    yield f"sqlite:///{folder / 'bench.db'}"


@contextmanager
def postgres_archive(base_url: str) -> Iterator[str]:
    """A throwaway schema, dropped afterwards."""
    schema = f"archiver_bench_{secrets.token_hex(4)}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def run_backend(backend: str, url: str, data: Path, days: float, repeat: int) -> BackendResult:
    print(f"{backend}: loading", flush=True)
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        result = BackendResult(backend, load(engine, data))
        print(f"{backend}: loaded in {result.load_seconds:.1f}s", flush=True)
        result.timings = time_reports(engine, days, repeat)
    finally:
        engine.dispose()
    everything = Window(END - timedelta(days=days + 1), END + timedelta(days=1))
    result.exports = [time_export(url, Window(END - timedelta(days=days / 10), END), f"sessions, last {days / 10:g} days"),
                      time_export(url, everything, "sessions, whole archive")]
    return result


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    return (f"{cpu}, {os.cpu_count()} cores, {memory} GiB; Linux {platform.release()}; Python "
            f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}")


def write_results(results: list[BackendResult], counts: dict[str, int], generate_seconds: float, command: str,
                  postgres_version: str | None) -> None:
    names = [t.name for t in results[0].timings]
    header = "| report | " + " | ".join(f"{r.backend} first | {r.backend} median" for r in results) + " | within target |"
    lines = [
        "# Reports benchmark",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}" + (f"; {postgres_version}" if postgres_version else "") + ".",
        "",
        f"Command: `{command}`",
        "",
        f"Archive: {counts['browser_sessions']:,} sessions over the 90 days up to {END:%Y-%m-%d %H:%M} UTC, "
        f"{counts['browser_session_versions']:,} versions, {counts['sync_runs']:,} ledger rows (two accounts, one "
        f"cycle each every 30 s). Generated in {generate_seconds:.0f} s; loaded in "
        + ", ".join(f"{r.load_seconds:.0f} s ({r.backend})" for r in results) + ".",
        "",
        "Each report ran once cold (first) and then several times (median), in-process over one connection; "
        "times include fetching every row and building the answer. \"24h\" is the last day of the archive.",
        "",
        header,
        "|" + "---|" * (2 + 2 * len(results)),
    ]
    for i, name in enumerate(names):
        cells = " | ".join(f"{r.timings[i].first:.3f} s | {r.timings[i].median:.3f} s" for r in results)
        met = all(r.timings[i].met for r in results)
        target = results[0].timings[i].target
        if target is None:
            slow = any(max(r.timings[i].first, r.timings[i].median) > TARGET_SECONDS for r in results)
            verdict = f"{'no' if slow else 'yes'} (a view: no target)"
        else:
            verdict = f"yes ({target:g} s)" if met else f"**no** ({target:g} s)"
        lines.append(f"| `{name}` ({results[0].timings[i].rows:,} rows) | {cells} | {verdict} |")
    lines += ["", "Export (`archiver export --format csv -o /dev/null`, a subprocess; peak RSS of that process):", "",
              "| backend | window | rows | seconds | rows/s | peak RSS |", "|---|---|---|---|---|---|"]
    for r in results:
        for label, rows, seconds, peak in r.exports:
            lines.append(f"| {r.backend} | {label} | {rows:,} | {seconds:.1f} | {rows / seconds:,.0f} | {peak:.0f} MiB |")
    all_met = all(t.met for r in results for t in r.timings)
    lines += ["", f"Targets (every report within 1 s, a month of usage within 2 s, on each backend): "
              f"{'met' if all_met else 'NOT met'}. The views "
              "are timed for information: a BI tool usually filters them further.", ""]
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=90.0)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--repeat", type=int, default=5, help="Warm runs per report (the median is reported).")
    parser.add_argument("--no-write", action="store_true", help="Print the figures; leave RESULTS-reports.md alone.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="archiver-bench-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        counts = generate(Shape(args.sessions, END, args.days), folder)
        generate_seconds = time.perf_counter() - started
        print(f"generated {counts} in {generate_seconds:.1f}s", flush=True)
        results, postgres_version = [], None
        for backend in args.backends.split(","):
            if backend == "sqlite":
                with sqlite_archive(folder) as url:
                    results.append(run_backend("SQLite", url, folder, args.days, args.repeat))
            elif backend == "postgresql":
                with postgres_archive(args.postgres_url) as url:
                    engine = create_engine(url)
                    with engine.connect() as conn:
                        postgres_version = str(conn.scalar(text("SHOW server_version"))).split()[0]
                        postgres_version = f"PostgreSQL {postgres_version}"
                    engine.dispose()
                    results.append(run_backend("PostgreSQL", url, folder, args.days, args.repeat))
            else:
                raise SystemExit(f"unknown backend {backend!r}: use sqlite and/or postgresql")
    if not args.no_write:
        command = "python -m bench.reports_bench " + " ".join(sys.argv[1:])
        write_results(results, counts, generate_seconds, command.strip(), postgres_version)


if __name__ == "__main__":
    main()
