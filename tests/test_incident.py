"""The incident review against tests/usage_data.py: its figures on every backend, and its Markdown
and HTML (escaped, self-contained). The command, and its HTML in a browser: tests/test_cli_usage.py.

The incident: 2026-11-01 00:10 UTC, thirty minutes either side. Open then: long, evicted and
month-end surely, vanished maybe (last listed 23:50, gone from the listing at 00:20). Ended in the
window: evicted (SessionEvicted, 00:30) and vanished (end unknown, counted at 00:20). On the days
before, in the same window: old-code ("1000") one day before, prev-crash ("Chromium crashed")
two, prev-normal (NormalClosure) three.
"""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import Engine

from archiver.errors import InputError
from archiver.reports import document
from archiver.reports.incident import Incident, incident, slice_edges
from archiver.reports.timeline import build_timeline
from archiver.reports.window import Window
from tests import archive_data
from tests.usage_data import INCIDENT_AT, NAMES, NOW, C, D, h

HALF_HOUR = timedelta(minutes=30)
MINUTE = 1 / 60
SECTIONS = [
    "Sessions open at 2026-11-01 00:10:00 UTC, and how each ended",
    "Closes by reason, against the same window on the days before",
    "Concurrency around the moment",
    "Concurrency in the window, slice by slice",
    "What the archive can say about this window",
]


def review(engine: Engine, **options: object) -> Incident:
    with engine.connect() as conn:
        return incident(conn, INCIDENT_AT, HALF_HOUR, HALF_HOUR, NOW, **options)  # type: ignore[arg-type]


def test_incident_figures(usage_archive: Engine) -> None:
    answer = review(usage_archive)
    assert answer.window == Window(h(23 + 40 * MINUTE), h(24 + 40 * MINUTE))
    assert [s.title for s in answer.sections] == SECTIONS
    opened, closes, busy, slices, covered = (s.table for s in answer.sections)
    assert opened is not None and closes is not None and busy is not None and slices is not None
    assert covered is not None
    assert {NAMES[r["session_id"]]: (r["open"], r["close_reason"]) for r in opened.dicts()} == {
        "long": ("yes", "NormalClosure"), "evicted": ("yes", "SessionEvicted"), "month-end": ("yes", "NormalClosure"),
        "vanished": ("maybe", None)}
    assert [(row[0], row[1], *row[2:5], row[-2], row[-1]) for row in closes.rows] == [
        ("(end unknown: vanished)", 1, 0, 0, 0, 0, "yes"),
        ("SessionEvicted", 1, 0, 0, 0, 0, "yes"),
        ("1000", 0, 1, 0, 0, 1, ""),
        ("ChromiumCrashed", 0, 0, 1, 0, 1, ""),
        ("NormalClosure", 0, 0, 0, 1, 1, ""),
    ]
    # Open at 00:10: 3 (4 with vanished). Window's peak: 4 from 23:40 to 23:50 (long, evicted,
    # month-end, vanished). Seven days before it: the same four from 23:30 to 23:40.
    assert busy.rows == [(C, 3, 4, 4, 4, 4, 4), (D, 0, 0, 0, 0, 0, 0)]
    # Five-minute slices: vanished is surely open until 23:50 and at most until 00:20; evicted ends at 00:30.
    assert [(row[0], row[2], row[3]) for row in slices.rows] == [
        (h(23 + m * MINUTE), sure, most) for m, sure, most in
        [(40, 4, 4), (45, 4, 4), (50, 3, 4), (55, 3, 4), (60, 3, 4), (65, 3, 4), (70, 3, 4), (75, 3, 4), (80, 3, 3),
         (85, 3, 3), (90, 2, 2), (95, 2, 2)]]
    assert {row[1] for row in slices.rows} == {C}  # D ran nothing: no slices
    assert [(r["account_id"], r["largest_gap_seconds"], r["incomplete_listings"], r["throttled_seconds"],
             r["worst_backlog"], r["unknown_end_sessions"]) for r in covered.dicts()] == [
        (C, 1800.0, 2, 45.0, 12, 1), (D, 1200.0, 0, 0.0, 0, 0)]
    assert answer.summary[:2] == [
        "3 open, 1 maybe open (end unknown) at 2026-11-01 00:10:00 UTC",
        "2 session(s) ended in the window: (end unknown: vanished) 1, SessionEvicted 1. More than on any of the 7 "
        "days before: (end unknown: vanished), SessionEvicted.",
    ]
    assert (f"Account {C}: 3 open at the moment (4 at most); the window's peak was 4 (4 at most), within the range "
            "of the highest of the 7 days before it, 4 (4 at most).") in answer.summary
    assert (f"Account {C}: the longest stretch without a complete listing was 30 min 00 s (2026-10-31 23:40:00 to "
            "2026-11-01 00:10:00); 2 incomplete listing(s) in 5 cycle(s); Cloudflare's 429s held requests back for "
            "45 s; at worst 12 detail fetch(es) owed; 1 session(s) whose end is unknown.") in answer.summary


def test_incident_of_an_account_that_ran_nothing(usage_archive: Engine) -> None:
    answer = review(usage_archive, account=D)
    opened, closes, busy, slices, covered = (s.table for s in answer.sections)
    assert opened is not None and closes is not None and busy is not None and slices is not None
    assert covered is not None
    assert (opened.rows, closes.rows, slices.rows) == ([], [], [])
    assert busy.rows == [(D, 0, 0, 0, 0, 0, 0)] and covered.column("account_id") == [D]
    assert answer.title == f"Incident review: 2026-11-01 00:10:00 UTC, account {D}"
    assert answer.summary[1:3] == [
        "0 session(s) ended in the window. The archive holds no close in the same window on the 7 days before to "
        "compare with.",
        f"Account {D}: 0 open at the moment (0 at most); the window's peak was 0 (0 at most); the archive holds no "
        "session in the 7 days before it to compare with.",
    ]
    assert "## Closes by reason" in document.markdown(answer) and "_(none)_" in document.markdown(answer)


def test_incident_window_is_cut_at_now_and_a_future_moment_is_refused(usage_archive: Engine) -> None:
    with usage_archive.connect() as conn:
        answer = incident(conn, INCIDENT_AT, HALF_HOUR, HALF_HOUR, INCIDENT_AT + timedelta(minutes=5))
        with pytest.raises(InputError, match="is after now"):
            incident(conn, NOW + timedelta(seconds=1), HALF_HOUR, HALF_HOUR, NOW)
    assert answer.window.until == INCIDENT_AT + timedelta(minutes=5)


@pytest.mark.parametrize(
    ("minutes", "slice_minutes", "count"),
    [(60, 5, 12), (120, 5, 24), (121, 15, 9), (10, 1, 10), (24 * 60, 60, 24), (30 * 24 * 60, 24 * 60, 30)],
    ids=["hour", "two-hours", "just-over", "ten-minutes", "day", "month"],
)
def test_slices(minutes: int, slice_minutes: int, count: int) -> None:
    window = Window(h(0), h(minutes / 60))
    cuts = slice_edges(window)
    assert len(cuts) - 1 == count and cuts[1] - cuts[0] == timedelta(minutes=slice_minutes)
    assert cuts[-1] == window.until


# -- the document ------------------------------------------------------------------------------------


def test_markdown_has_every_section_in_order(usage_archive: Engine) -> None:
    text = document.markdown(review(usage_archive))
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == ["# Incident review: 2026-11-01 00:10:00 UTC", "## Key figures", *(f"## {s}" for s in SECTIONS)]
    assert "| (end unknown: vanished) | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | yes |" in text
    assert f"| {C} | 3 | 4 | 4 | 4 | 4 | 4 |" in text


class Frames(HTMLParser):
    """The tags of a page, and the srcdoc of its frames (unescaped, as the browser reads it)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.frames: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "iframe":
            self.frames.append(dict(attrs))


def test_archive_text_is_escaped_in_both_formats(archive: Engine) -> None:
    window_account = archive_data.B  # its one session closed with a text made to break out of markup
    with archive.connect() as conn:
        answer = incident(conn, archive_data.m(5.5), HALF_HOUR, HALF_HOUR, archive_data.m(600), account=window_account)
        timeline, count = build_timeline(conn, answer.window, account=window_account)
    text = document.markdown(answer)
    # markup as text, and the line separator shown as its escape (as every table shows it)
    assert "&lt;/script&gt;&lt;script&gt;alert(\"x\")&lt;/script&gt; &amp; \\u2028 &lt;!--" in text
    assert "</script>" not in text and "<!--" not in text
    page = document.html_page(answer, timeline)
    assert "<script" not in page and "</script" not in page  # the timeline's own script sits in the escaped srcdoc
    frames = Frames()
    frames.feed(page)
    assert frames.tags.count("iframe") == 1 and "script" not in frames.tags
    (frame,) = frames.frames
    assert frame["srcdoc"] == timeline and frame["sandbox"] == "allow-scripts" and count == 1


def test_unknown_output_suffix_is_an_input_error() -> None:
    assert document.format_of(Path("review.MD")) == "markdown" and document.format_of(Path("r.html")) == "html"
    with pytest.raises(InputError, match="name it FILE.md or FILE.html"):
        document.format_of(Path("review.pdf"))
