"""One poll cycle in a process of its own, as `archiver sync` runs it: the figures (peak RSS above
all) are then the archiver's alone. Prints one JSON object.

    python -m bench.oneshot BASE_URL TOKEN ACCOUNT_ID DATABASE_URL
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
import time
from typing import Any

from archiver.api.cloudflare import RequestStats, client_from_settings
from archiver.archive.store import make_engine
from archiver.archive.sync import CycleOptions, run_cycle
from archiver.config import settings_from

LIFTED_RATE_LIMIT = 100_000.0  # as bench.harness lifts them: a local emulator is not Cloudflare
LIFTED_UPSTREAM_LIMIT = 1_000_000_000


def peak_rss_mb() -> float:
    """This process's peak resident set size. On Linux, VmHWM: ru_maxrss would also count the
    parent's memory at the moment it started this process (the exec keeps the old high-water mark)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


async def one_cycle(base_url: str, token: str, account_id: str, database_url: str) -> dict[str, Any]:
    settings = settings_from(
        {
            "api_token": token, "account_ids": [account_id], "base_url": base_url, "database_url": database_url,
            "rate_limit": LIFTED_RATE_LIMIT, "rate_budget": 1.0, "upstream_limit_requests": LIFTED_UPSTREAM_LIMIT,
            "detail_policy": "changed",
        }
    )
    engine = make_engine(database_url)
    gc.freeze()  # as `archiver sync` does before its cycles
    rss_before = peak_rss_mb()
    stats = RequestStats()
    async with client_from_settings(settings) as client:
        wall, cpu = time.perf_counter(), time.process_time()
        result = await run_cycle(client.account(account_id, stats), engine, CycleOptions.from_settings(settings))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    engine.dispose()
    return {
        "outcome": result.outcome,
        "error": result.error,
        "counts": result.counts,
        "requests": stats.requests,
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str]) -> int:
    print(json.dumps(asyncio.run(one_cycle(*argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
