"""How fast the command line answers: `archiver --help` and `--version` as whole processes (what
a user, a script and shell completion wait for), median of several runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.harness import Options, Outcome, median

TARGET_S = 0.15


def run(options: Options) -> Outcome:
    outcome = Outcome("start-up")
    archiver = str(Path(sys.executable).with_name("archiver"))
    runs = options.pick(15, 5)
    for command in (["--help"], ["--version"], ["report", "--help"]):
        walls = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([archiver, *command], capture_output=True, check=True)
            walls.append(time.perf_counter() - started)
        outcome.add(f"archiver {' '.join(command)}", f"wall time, median of {runs}", median(walls), "s", decimals=3,
                    target=TARGET_S if command[0].startswith("--") else None)
    return outcome
