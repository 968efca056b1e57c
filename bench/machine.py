"""The facts about the machine that a figure depends on."""

from __future__ import annotations

import os
import platform
import sqlite3
import time
from importlib import metadata
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.harness import POSTGRES_URL


def describe() -> dict[str, str]:
    """CPU, cores, memory, load, and the versions of everything in the measured path."""
    facts = {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory(),
        "load average (1, 5, 15 min) at start": load(),
        "reference loop at start (lower is faster)": python_speed(),
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "PostgreSQL": _postgres_version(),
    }
    for package in ("sqlalchemy", "httpx", "httpcore", "psycopg", "dlt"):
        try:
            facts[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            facts[package] = "not installed"
    return facts


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def python_speed() -> str:
    """The CPU time of a fixed pure-Python loop (fastest of five): on a shared virtual machine, the
    speed of one core drifts by a third or more within an hour without any load showing, so runs
    are only comparable next to this figure."""
    times = []
    for _ in range(5):
        started = time.process_time()
        total = 0
        for number in range(2_000_000):
            total += number * number % 7
        times.append(time.process_time() - started)
    return f"{min(times) * 1000:.0f} ms"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _postgres_version() -> str:
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar())
    except Exception as exc:  # a figure for the record only: say why it is missing
        return f"unreachable ({type(exc).__name__})"
    finally:
        engine.dispose()
