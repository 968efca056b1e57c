"""What every workload shares: options, figures, throwaway databases, the archiver's client."""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from archiver.api.cloudflare import CloudflareClient, client_from_settings
from archiver.archive import migrate
from archiver.archive.store import make_engine
from archiver.config import Settings, settings_from
from bench.remote import Endpoint

POSTGRES_URL = os.environ.get("ARCHIVER_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# A local emulator is not Cloudflare: where a workload measures the archiver's own cost, the
# client-side rate limit and the rate budget are lifted so that they do not dominate the figure.
LIFTED_RATE_LIMIT = 100_000.0
LIFTED_UPSTREAM_LIMIT = 1_000_000_000


@dataclass(frozen=True)
class Options:
    quick: bool = False
    profile: bool = False

    def pick(self, full: Any, quick: Any) -> Any:
        """``quick`` in a shortened run, else ``full``."""
        return quick if self.quick else full


@dataclass
class Figure:
    """One measured figure, with its target if it has one."""

    workload: str
    case: str
    metric: str
    value: float
    unit: str
    target: float | None = None  # the figure must be at most this...
    target_min: float | None = None  # ...or at least this
    decimals: int = 1

    @property
    def met(self) -> bool | None:
        if self.target is not None:
            return self.value <= self.target
        if self.target_min is not None:
            return self.value >= self.target_min
        return None

    @property
    def target_text(self) -> str:
        if self.target is not None:
            return f"<= {self.target:g} {self.unit}".rstrip()
        if self.target_min is not None:
            return f">= {self.target_min:g} {self.unit}".rstrip()
        return ""

    @property
    def value_text(self) -> str:
        return f"{self.value:,.{self.decimals}f} {self.unit}".rstrip()


@dataclass
class Outcome:
    """What one workload measured, and what a reader needs to know to interpret it."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def add(self, case: str, metric: str, value: float, unit: str, **kwargs: Any) -> Figure:
        figure = Figure(self.name, case, metric, value, unit, **kwargs)
        self.figures.append(figure)
        return figure


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def bench_settings(endpoint: Endpoint, database_url: str, **values: Any) -> Settings:
    """The archiver's default settings, pointed at the emulator, with the rate limit and budget
    lifted. The detail policy is ``changed``: a workload that measures a cycle's cost measures the
    costliest, which fetches every detail the listing calls for."""
    return settings_from(
        {
            "api_token": endpoint.token,
            "account_ids": list(endpoint.account_ids),
            "base_url": endpoint.base_url,
            "database_url": database_url,
            "rate_limit": LIFTED_RATE_LIMIT,
            "rate_budget": 1.0,
            "upstream_limit_requests": LIFTED_UPSTREAM_LIMIT,
            "detail_policy": "changed",
            **values,
        }
    )


def client(settings: Settings, **overrides: Any) -> CloudflareClient:
    return client_from_settings(settings, **overrides)


@contextmanager
def sqlite_database() -> Iterator[str]:
    """The URL of a fresh SQLite file, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="archiver-bench-") as directory:
        yield f"sqlite:///{Path(directory) / 'archive.db'}"


@contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a throwaway PostgreSQL schema, dropped afterwards."""
    schema = f"archiver_bench_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def database(backend: str) -> Iterator[str]:
    with sqlite_database() if backend == "sqlite" else postgres_database() as url:
        yield url


@contextmanager
def migrated_engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        yield engine
    finally:
        engine.dispose()


@contextmanager
def profiled(options: Options, label: str) -> Iterator[None]:
    """With ``--profile``, a pyinstrument profile of the block, printed when it ends."""
    if not options.profile:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="enabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        print(f"--- profile: {label} ---")
        print(profiler.output_text(unicode=False, color=False, show_all=False))
