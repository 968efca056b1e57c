"""The benchmark runner: every workload against the emulator on loopback, a table on stdout, and
bench/RESULTS.md with the figures, the machine, the command and which targets are met.

    python -m bench                     # everything (make bench)
    python -m bench --quick             # shorter runs and smaller sizes: indicative figures only
    python -m bench --only steady       # one workload (repeatable); --output FILE to keep its figures
"""

from __future__ import annotations

import argparse
import gc
import logging
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import accounts, dlt_side, fidelity, growth, listing, machine, startup, steady, throughput
from bench.harness import Figure, Options, Outcome

HERE = Path(__file__).parent
RESULTS = HERE / "RESULTS.md"
NOTES = HERE / "NOTES.md"
REPORTS_BENCH = HERE / "reports_bench.py"


def reports(options: Options) -> Outcome:
    """The reporting benchmark, which keeps its own results file, if this checkout has it."""
    outcome = Outcome("reports")
    if not REPORTS_BENCH.exists():
        outcome.error = "bench/reports_bench.py is not in this checkout"
        return outcome
    done = subprocess.run([sys.executable, "-m", "bench.reports_bench"], check=False)
    if done.returncode:
        outcome.error = f"bench.reports_bench exited with {done.returncode}"
    outcome.notes.append("bench/reports_bench.py ran; its figures are in its own results file.")
    return outcome


WORKLOADS: dict[str, Callable[[Options], Outcome]] = {
    "steady": steady.run,
    "listing": listing.run,
    "growth": growth.run,
    "accounts": accounts.run,
    "throughput": throughput.run,
    "fidelity": fidelity.run,
    "dlt": dlt_side.run,
    "startup": startup.run,
    "reports": reports,
}
DEFAULT = [name for name in WORKLOADS if name != "reports"]  # that one has its own command and results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmarks of the archiver against the emulator.")
    parser.add_argument("--only", action="append", choices=list(WORKLOADS), help="run only this workload (repeatable)")
    parser.add_argument("--quick", action="store_true", help="shorter runs and smaller sizes: indicative figures only")
    parser.add_argument("--profile", action="store_true", help="print a pyinstrument profile of measured sections")
    parser.add_argument("--output", type=Path, help="results file (default: bench/RESULTS.md for a full run, none for --only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = Options(quick=args.quick, profile=args.profile)
    names = args.only or DEFAULT
    output = args.output or (RESULTS if not args.only else None)
    command = "python -m bench" + "".join(f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    facts = machine.describe()
    started = datetime.now(UTC)
    outcomes = [_run_one(name, options) for name in names]
    facts["load average (1, 5, 15 min) at end"] = machine.load()
    facts["reference loop at end (lower is faster)"] = machine.python_speed()
    if output is not None:
        output.write_text(render(outcomes, facts, command, started, options))
        print(f"\nwrote {output}")
    return 1 if any(o.error for o in outcomes) else 0


def _run_one(name: str, options: Options) -> Outcome:
    print(f"\n== {name} (load {machine.load()})", flush=True)
    started = time.perf_counter()
    gc.freeze()  # as `archiver sync` and `archiver run` do once started (and dlt, once imported, is large)
    try:
        outcome = WORKLOADS[name](options)
    except Exception as exc:  # one broken workload must not lose the others' figures
        traceback.print_exc()
        outcome = Outcome(name, error=f"{type(exc).__name__}: {exc}")
    outcome.seconds = time.perf_counter() - started
    print(text_table(outcome.figures) if outcome.figures else "", flush=True)
    if outcome.error:
        print(f"ERROR: {outcome.error}", flush=True)
    print(f"({outcome.seconds:.0f} s)", flush=True)
    return outcome


def _met_text(figure: Figure) -> str:
    return {True: "yes", False: "NO", None: ""}[figure.met]


def text_table(figures: list[Figure]) -> str:
    rows = [("case", "metric", "value", "target", "met")]
    rows += [(f.case, f.metric, f.value_text, f.target_text, _met_text(f)) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render(outcomes: list[Outcome], facts: dict[str, str], command: str, started: datetime, options: Options) -> str:
    targeted = [f for o in outcomes for f in o.figures if f.met is not None]
    parts = [
        "# Benchmark results",
        "",
        f"Produced by `{command}` (`make bench` runs `python -m bench` in the project's virtualenv) on "
        f"{started:%Y-%m-%d %H:%M} UTC; {'a shortened run (--quick): indicative figures only' if options.quick else 'a full run'}. "
        "Re-run it on a quiet machine for figures to compare: this file is rewritten.",
        "",
        "## Machine",
        "",
        markdown_table(["", ""], [[k, v] for k, v in facts.items()]),
        "",
        "The load averages say how busy the machine was with other work: on 2 cores, a load near 2 means the "
        "figures (wall times above all) are pessimistic. The reference loop says how fast one core was: on a "
        "shared virtual machine it drifts by a third or more within the hour with no load showing, and every "
        "figure below drifts with it.",
        "",
        "## Targets",
        "",
        markdown_table(
            ["workload", "case", "metric", "value", "target", "met"],
            [[f.workload, f.case, f.metric, f.value_text, f.target_text, _met_text(f)] for f in targeted],
        ),
    ]
    for outcome in outcomes:
        parts += ["", f"## {outcome.name.capitalize()}", ""]
        if outcome.error:
            parts += [f"Not measured: {outcome.error}", ""]
        if outcome.figures:
            parts.append(
                markdown_table(
                    ["case", "metric", "value", "target", "met"],
                    [[f.case, f.metric, f.value_text, f.target_text, _met_text(f)] for f in outcome.figures],
                )
            )
            parts.append("")
        for note in outcome.notes:
            parts += [note, ""]
        parts.append(f"({outcome.seconds:.0f} s to run.)")
    if NOTES.exists():
        parts += ["", NOTES.read_text().strip()]
    return "\n".join(parts).rstrip() + "\n"
