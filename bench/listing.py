"""One big listing: one-shot cold sync (empty archive) and warm re-sync, wall time and peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.harness import Options, Outcome, migrated_engine, sqlite_database
from bench.remote import RemoteEmulator

COLD_TARGET_S = {10_000: 1.0}
WARM_TARGET_S = {10_000: 0.5}
RSS_TARGET_MB = {100_000: 100.0}


def one_shot(endpoint: Any, database_url: str) -> dict[str, Any]:
    """One cycle in a fresh process (python -m bench.oneshot), like `archiver sync`."""
    command = [sys.executable, "-m", "bench.oneshot", endpoint.base_url, endpoint.token, endpoint.account_ids[0], database_url]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"bench.oneshot failed: {done.stderr.strip()[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout)
    if figures["outcome"] != "ok":
        raise AssertionError(f"cycle {figures['outcome']}: {figures['error']}")
    return figures


def run(options: Options) -> Outcome:
    outcome = Outcome("big listing")
    for size in options.pick([10_000, 100_000], [10_000]):
        remote = RemoteEmulator(accounts=1, initial_sessions=size, seed=5, speed=0.0, spawn_per_minute=0.0, mean_lifetime_s=1e9)
        with remote, sqlite_database() as url:
            with migrated_engine(url):
                pass
            remote.call("prime", remote.endpoint.account_ids[0])
            for label in ("cold", "warm"):
                figures = one_shot(remote.endpoint, url)
                if figures["counts"]["listed"] != size:
                    raise AssertionError(f"listed {figures['counts']['listed']} of {size} sessions")
                case = f"SQLite, {size:,} listed sessions, {label}"
                target = (COLD_TARGET_S if label == "cold" else WARM_TARGET_S).get(size)
                outcome.add(case, "wall time in-process", figures["wall_s"], "s", target=target, decimals=2)
                outcome.add(case, "CPU time", figures["cpu_s"], "s", decimals=2)
                outcome.add(case, "peak RSS of the process", figures["peak_rss_mb"], "MB", target=RSS_TARGET_MB.get(size), decimals=0)
                outcome.add(case, "API requests", figures["requests"], "", decimals=0)
                outcome.notes.append(
                    f"{size:,} {label}: peak RSS {figures['peak_rss_mb']:.0f} MB, of which "
                    f"{figures['rss_before_mb']:.0f} MB before the cycle (interpreter and imports)."
                )
    outcome.notes.insert(
        0,
        "Each sync is one poll cycle in a fresh process (`python -m bench.oneshot`, as `archiver sync` runs), "
        "against an emulator in another process with that many open sessions, which has built and encoded "
        "its listing beforehand (its own one-time cost, not the archiver's); `cold` starts from an empty "
        "archive, `warm` runs again over it. Default settings but the detail policy `changed` (budget 100: "
        "every cycle also fetches 100 owed details), client-side rate limit and budget lifted. Wall and CPU time of the cycle "
        "in-process (time.perf_counter, time.process_time); peak RSS is the process's high-water mark (VmHWM).",
    )
    return outcome
