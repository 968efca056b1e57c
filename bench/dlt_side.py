"""Side by side with dlt: the one-shot and steady-state workloads as a dlt `rest_api` source with a
merge write disposition into SQLite, against the same emulator, next to the archiver doing the same."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine

from archiver.api.cloudflare import RequestStats
from archiver.archive.sync import CycleOptions, run_cycle
from archiver.config import Settings
from bench import steady
from bench.harness import Options, Outcome, bench_settings, client, median, migrated_engine, sqlite_database
from bench.remote import Endpoint, RemoteEmulator

BIG_LISTING = 10_000


def dlt_run(endpoint: Endpoint, database_url: str, pipelines_dir: str) -> float:
    """One run of the dlt pipeline: list every page, merge on sessionId; its wall time."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    source = rest_api_source(
        {
            "client": {
                "base_url": f"{endpoint.base_url}/accounts/{endpoint.account_ids[0]}/browser-rendering/devtools/",
                "auth": {"type": "bearer", "token": endpoint.token},
                "paginator": {"type": "offset", "limit": 200, "offset_param": "offset", "limit_param": "limit", "total_path": None},
            },
            "resources": [
                {
                    "name": "sessions",
                    "endpoint": {"path": "session", "data_selector": "$"},
                    "primary_key": "sessionId",
                    "write_disposition": "merge",
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="cloudflare_sessions",
        destination=dlt.destinations.sqlalchemy(credentials=database_url),
        dataset_name="sessions",
        pipelines_dir=pipelines_dir,
    )
    started = time.perf_counter()
    pipeline.run(source)
    return time.perf_counter() - started


async def archiver_cycle(settings: Settings, engine: Engine) -> float:
    """One archiver cycle, like one dlt run; its wall time."""
    async with client(settings) as api_client:
        started = time.perf_counter()
        result = await run_cycle(api_client.account(settings.accounts()[0], RequestStats()), engine, CycleOptions.from_settings(settings))
        elapsed = time.perf_counter() - started
    if result.outcome != "ok":
        raise AssertionError(f"cycle failed: {result.error}")
    return elapsed


def one_shot(outcome: Outcome, pipelines_dir: str) -> None:
    remote = RemoteEmulator(accounts=1, initial_sessions=BIG_LISTING, seed=5, speed=0.0, spawn_per_minute=0.0, mean_lifetime_s=1e9)
    with remote:
        assert remote.endpoint is not None
        remote.call("prime", remote.endpoint.account_ids[0])  # the emulator's first encoding, paid by neither
        with sqlite_database() as url, migrated_engine(url) as engine:
            settings = bench_settings(remote.endpoint, url)
            ours = [asyncio.run(archiver_cycle(settings, engine)) for _ in ("cold", "warm")]
        with sqlite_database() as url:
            theirs = [dlt_run(remote.endpoint, url, pipelines_dir) for _ in ("cold", "warm")]
    for label, mine, dlt_s in zip(("cold", "warm"), ours, theirs, strict=True):
        case = f"{BIG_LISTING:,} listed sessions, {label}"
        outcome.add(case, "archiver wall time", mine, "s", decimals=2)
        outcome.add(case, "dlt wall time", dlt_s, "s", decimals=2)
        outcome.add(case, "dlt time / archiver time", dlt_s / mine, "x", decimals=1)


DLT_PROCESS = """
import json, sys, time
sys.path.insert(0, {bench_root!r})
from bench.dlt_side import dlt_run
from bench.remote import Endpoint
endpoint = Endpoint(**json.loads(sys.argv[1]))
dlt_run(endpoint, sys.argv[2], sys.argv[3])
"""


def timed_process(command: list[str], env: dict[str, str]) -> float:
    """The wall time of a whole process, imports and all; it must exit 0."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise AssertionError(f"{command[:3]} exited {done.returncode}: {done.stderr[-500:]}")
    return elapsed


def archiver_env(endpoint: Endpoint, database_url: str) -> dict[str, str]:
    """`archiver sync` as the in-process cycle runs it: the rate limits lifted, details for what changed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "ARCHIVER_"))}
    env.update({
        "CLOUDFLARE_API_TOKEN": endpoint.token, "CLOUDFLARE_ACCOUNT_ID": endpoint.account_ids[0],
        "CLOUDFLARE_BASE_URL": endpoint.base_url, "ARCHIVER_DATABASE_URL": database_url,
        "ARCHIVER_RATE_LIMIT": "100000", "ARCHIVER_RATE_BUDGET": "1", "ARCHIVER_UPSTREAM_LIMIT_REQUESTS": "1000000000",
        "ARCHIVER_DETAIL_POLICY": "changed", "ARCHIVER_LOG_LEVEL": "WARNING",
    })
    return env


def one_shot_processes(outcome: Outcome, pipelines_dir: str) -> None:
    """The one-shot sync as a user runs it: `archiver sync` and a dlt pipeline each a whole
    process, cold (an empty database) and warm (nothing changed since)."""
    archiver = str(Path(sys.executable).with_name("archiver"))
    remote = RemoteEmulator(accounts=1, initial_sessions=BIG_LISTING, seed=5, speed=0.0, spawn_per_minute=0.0, mean_lifetime_s=1e9)
    with remote:
        assert remote.endpoint is not None
        remote.call("prime", remote.endpoint.account_ids[0])
        endpoint = json.dumps({"base_url": remote.endpoint.base_url, "token": remote.endpoint.token,
                               "account_ids": list(remote.endpoint.account_ids)})
        with sqlite_database() as url:
            env = archiver_env(remote.endpoint, url)
            subprocess.run([archiver, "db", "upgrade"], env=env, capture_output=True, check=True)  # a deployment step, untimed
            ours = [timed_process([archiver, "sync"], env) for _ in ("cold", "warm")]
        dlt_script = DLT_PROCESS.format(bench_root=str(Path(__file__).parent.parent))
        with sqlite_database() as url:
            theirs = [timed_process([sys.executable, "-c", dlt_script, endpoint, url, pipelines_dir], dict(os.environ))
                      for _ in ("cold", "warm")]
    for label, mine, dlt_s in zip(("cold", "warm"), ours, theirs, strict=True):
        case = f"{BIG_LISTING:,} listed sessions, {label}, whole processes"
        outcome.add(case, "`archiver sync` wall time", mine, "s", decimals=2)
        outcome.add(case, "dlt process wall time", dlt_s, "s", decimals=2)
        outcome.add(case, "dlt time / archiver time", dlt_s / mine, "x", decimals=1, target_min=2.0 if label == "cold" else 10.0)


def steady_state(outcome: Outcome, pipelines_dir: str, options: Options) -> None:
    cycles = options.pick(20, 5)
    with steady.emulator() as remote:
        assert remote.endpoint is not None
        with sqlite_database() as url, migrated_engine(url) as engine:
            settings = bench_settings(remote.endpoint, url)
            ours = asyncio.run(steady.measure(remote, settings, engine, cycles, Options(), "steady"))
        account = remote.endpoint.account_ids[0]
        with sqlite_database() as url:
            dlt_run(remote.endpoint, url, pipelines_dir)  # the first load, like the archiver's warm-up
            theirs = []
            for _ in range(cycles):
                remote.call("churn", account, **steady.CHURN)
                theirs.append(dlt_run(remote.endpoint, url, pipelines_dir))
    mine_ms, dlt_ms = ours.wall_median, median(theirs) * 1000
    case = f"{steady.SESSIONS} sessions, 5% change, {cycles} runs"
    outcome.add(case, "archiver wall time per cycle, median", mine_ms, "ms", decimals=1)
    outcome.add(case, "dlt wall time per run, median", dlt_ms, "ms", decimals=1)
    outcome.add(case, "dlt time / archiver time", dlt_ms / mine_ms, "x", decimals=0)


def run(options: Options) -> Outcome:
    outcome = Outcome("side by side with dlt")
    try:
        import dlt
    except ImportError:
        outcome.error = "dlt is not installed: pip install '.[bench]'"
        return outcome
    # dlt would otherwise send anonymous usage telemetry: nothing may leave this machine.
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "ERROR")
    with tempfile.TemporaryDirectory(prefix="archiver-bench-dlt-") as pipelines_dir:
        one_shot(outcome, str(Path(pipelines_dir) / "one-shot"))
        one_shot_processes(outcome, str(Path(pipelines_dir) / "one-shot-processes"))
        steady_state(outcome, str(Path(pipelines_dir) / "steady"), options)
    outcome.notes.append(
        f"dlt {dlt.__version__}: a `rest_api` source (offset paginator, limit 200, stopping at an empty page) with "
        "`write_disposition=merge` on `sessionId`, loaded through dlt's `sqlalchemy` destination into a SQLite "
        "file; one `pipeline.run()` per cycle, timed as a whole (extract, normalize, load), in the same process "
        "and against the same emulator as the archiver's figures beside it. The dlt pipeline lists only: it "
        "fetches no details, so it never learns a close reason (closed sessions leave the list), and keeps no "
        "history or ledger; the archiver does all of that in its time."
    )
    return outcome
