"""The usage, coverage and incident commands, run as real subprocesses on the SQLite archive of
tests/usage_data.py; the incident's HTML opened in a headless browser."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests import usage_data
from tests.archive_data import sqlite_env
from tests.browser import chromium, dump_dom  # noqa: F401 - chromium is a fixture
from tests.test_cli import run
from tests.test_incident import SECTIONS, Frames
from tests.usage_data import C, D

SINCE, UNTIL = "2026-10-31", "2026-11-02"
Env = tuple[dict[str, str], Path]


@pytest.fixture(scope="module")
def usage_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return sqlite_env(tmp_path_factory.mktemp("usage-cli"), usage_data.build)


def formats(env: Env, args: list[str]) -> dict[str, str]:
    """The command's output in every format; each must succeed with nothing on stderr."""
    outputs = {}
    for fmt in ("table", "csv", "json", "jsonl"):
        done = run([*args, "--format", fmt], *env)
        assert done.returncode == 0 and done.stderr == "", (fmt, done.stderr)
        outputs[fmt] = done.stdout
    from_csv = list(csv.DictReader(io.StringIO(outputs["csv"])))
    from_json = json.loads(outputs["json"])
    assert from_json == [json.loads(line) for line in outputs["jsonl"].splitlines()]
    assert [list(row) for row in from_csv] == [list(row) for row in from_json]
    return outputs


def test_usage_in_every_format(usage_env: Env) -> None:
    outputs = formats(usage_env, ["report", "usage", "--since", SINCE, "--until", UNTIL])
    rows = {(r["account_id"], r["period"]): r for r in json.loads(outputs["json"])}
    assert set(rows) == {(C, "2026-10-31"), (C, "2026-11-01"), (D, "2026-10-31"), (D, "2026-11-01")}
    assert (rows[(C, "2026-11-01")]["sessions"], rows[(C, "2026-11-01")]["sessions_max"]) == (8, 9)
    assert rows[(C, "2026-11-01")]["period_start"] == "2026-11-01T00:00:00+00:00"
    table = outputs["table"].splitlines()
    assert table[0].split() == ["period", "account_id", "sessions", "browser_hours", "browser_hours_max",
                                "peak_concurrency", "peak_concurrency_max", "platform_hours", "idle_hours"]
    assert table[2].split() == ["2026-10-31", C, "9", "29.59", "29.76", "4", "4", "2.00", "0.03"]
    assert table[-1] == "The bill is estimated per month: --by month."


def test_usage_by_month_reads_the_pricing_settings(usage_env: Env) -> None:
    env, cwd = usage_env
    args = ["report", "usage", "--since", "2026-10-01", "--until", "2026-11-01", "--by", "month", "--account", C,
            "--format", "json"]
    default = json.loads(run(args, env, cwd).stdout)
    priced = json.loads(run(args, {**env, "ARCHIVER_PRICE_BROWSER_HOUR": "1", "ARCHIVER_INCLUDED_BROWSER_HOURS": "40"},
                            cwd).stdout)
    # 41 billed hours (tests/test_usage.py): (41 - 10) * 0.09 by default; (41 - 40) * 1 priced so.
    assert [(r["period"], r["billed_hours"], r["estimated_usd"]) for r in default] == [("2026-10", 41, 2.79)]
    assert [r["estimated_usd"] for r in priced] == [1.0]
    keepalive = json.loads(run(args, {**env, "ARCHIVER_IDLE_KEEPALIVE_SECONDS": "600"}, cwd).stdout)
    assert keepalive[0]["idle_hours"] == pytest.approx((600 + 30) / 3600, abs=1e-6)  # idle-code's 30 min hold 10


def test_coverage_in_every_format(usage_env: Env) -> None:
    outputs = formats(usage_env, ["report", "coverage", "--since", "2026-10-31T23:00Z", "--until", "2026-11-01T01:00Z",
                                  "--by", "hour", "--account", C])
    rows = json.loads(outputs["json"])
    assert [(r["period_start"], r["largest_gap_seconds"], r["gap_from"], r["worst_backlog"]) for r in rows] == [
        ("2026-10-31T23:00:00+00:00", 1200.0, "2026-10-31T23:40:00+00:00", 7),
        ("2026-11-01T00:00:00+00:00", 2400.0, "2026-11-01T00:20:00+00:00", 12),
    ]
    assert outputs["table"].splitlines()[-1].startswith("largest_gap_seconds: the longest stretch without a complete")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "usage", "--since", "2099-01-01", "--until", "2099-01-02"], "error: the window begins after now"),
        (["report", "coverage", "--since", "2099-01-01", "--until", "2099-01-02"], "error: the window begins after now"),
        (["report", "usage", "--since", "1d", "--until", "2d"], "error: the window is empty"),
        (["report", "usage", "--since", "1d", "--by", "week"], "Error: Invalid value for '--by'"),
    ],
    ids=["usage-future", "coverage-future", "empty", "bad-period"],
)
def test_bad_usage_input_exits_2_with_one_line(usage_env: Env, args: list[str], message: str) -> None:
    done = run(args, *usage_env)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    # Our own errors are one line; click's usage errors end with theirs.
    assert lines[-1].startswith(message) and (len(lines) == 1 or message.startswith("Error")), done.stderr




def test_incident_html_opens_in_a_headless_browser(usage_env: Env, chromium: str,  # noqa: F811
                                               tmp_path: Path) -> None:
    env, cwd = usage_env
    out = tmp_path / "review.html"
    done = run(["report", "incident", "--at", "2026-11-01T00:10Z", "-o", str(out)], env, cwd)
    assert done.returncode == 0 and done.stdout.strip() == f"wrote {out}", done.stderr
    dom, log = dump_dom(chromium, out, tmp_path / "profile")
    for heading in ["Key figures", *SECTIONS, "Timeline of the window"]:
        assert f"<h2>{heading}</h2>" in dom
    assert "<td>SessionEvicted</td>" in dom and '<td class="n">1800.00</td>' in dom
    frames = Frames()
    frames.feed(out.read_text())
    inner = tmp_path / "timeline.html"
    inner.write_text(str(frames.frames[0]["srcdoc"]))
    inner_dom, inner_log = dump_dom(chromium, inner, tmp_path / "profile")
    # The timeline's script ran: it wrote the summary and the legend from the embedded data.
    assert "4 sessions · 1 with an unknown end" in inner_dom
    assert "<span>SessionEvicted – Session evicted</span>" in inner_dom
    assert "Uncaught" not in log + inner_log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--at", "2026-11-01T00:10Z", "-o", "review.txt"], "error: cannot tell the format of review.txt"),
        (["--at", "2026-11-01T00:10Z", "--before", "soon", "-o", "r.md"], "error: --before: 'soon' is not an age"),
        (["--at", "2099-01-01", "-o", "r.md"], "error: --at (2099-01-01 00:00:00 UTC) is after now"),
        (["--at", "yesterday", "-o", "r.md"], "error: --at: 'yesterday' is not a time"),
    ],
    ids=["suffix", "bad-age", "future", "bad-time"],
)
def test_bad_incident_input_exits_2_with_one_line(usage_env: Env, args: list[str], message: str) -> None:
    env, cwd = usage_env
    done = run(["report", "incident", *args], env, cwd)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert not (cwd / "r.md").exists() and not (cwd / "review.txt").exists()


def test_incident_markdown(usage_env: Env, tmp_path: Path) -> None:
    env, cwd = usage_env
    out = tmp_path / "review.md"
    done = run(["report", "incident", "--at", "2026-11-01T00:10Z", "--before", "1h", "--after", "10m",
                "--account", C, "-o", str(out)], env, cwd)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text.startswith(f"# Incident review: 2026-11-01 00:10:00 UTC, account {C}\n")
    assert f"Window 2026-10-31 23:10:00 to 2026-11-01 00:20:00 UTC, account {C}." in text
