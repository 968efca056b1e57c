"""The review of an incident: what was open at the moment and how each ended, what closed sessions
around it against the same hour on the days before, how busy the account was against its recent
peak, and what the archive itself can and cannot say about that stretch of time.

Built from the other reports' queries (``open_at``, ``stats``, ``spans``, ``coverage``);
:mod:`archiver.document` writes it as Markdown or HTML.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection

from archiver.archive.models import CLOSED
from archiver.errors import InputError
from archiver.render import cell
from archiver.reports import coverage, open_at, stats
from archiver.reports.periods import until_now
from archiver.reports.result import Result, result
from archiver.reports.spans import Spans, load_spans, ms
from archiver.reports.window import Window

DAYS_BEFORE = 7
# Slices of the window for the concurrency table: the shortest giving at most MAX_SLICES rows.
SLICE_MINUTES = (1, 5, 15, 60, 6 * 60, 24 * 60)
MAX_SLICES = 24
OPEN_COLUMNS = ("open", "session_id", "account_id", "status", "start_time", "end_time", "close_reason",
                "close_reason_text", "note")
OPEN_NOTE = ("\"maybe\": the session's end is unknown; it was last listed before the moment and had left the "
             "listing by the time the note gives.")
CLOSES_NOTE = ("Sessions that ended in the window, counted under the documented reason; a session whose end is "
               "unknown counts when it left the listing. \"above_every_day_before\" marks a reason more frequent "
               "now than in the same window on any of the days before: a likely factor.")
SLICES_NOTE = ("Each figure is a lower bound and its _max an upper bound: sessions whose end is unknown count until "
               "last listed in the first and until they left the listing in the second.")
COVERAGE_NOTE = ("A session that started and ended inside a stretch without a complete listing may be missing from "
                 "the archive; one whose end is unknown ended between its last listing and the first complete "
                 "listing without it. Throttled time is time Cloudflare's 429s held the archiver's requests back.")


@dataclass(frozen=True)
class Section:
    """A titled part of the document: sentences, then a table."""

    title: str
    lines: list[str]
    table: Result | None = None


@dataclass(frozen=True)
class Incident:
    """The whole review: a title, the key figures, and the sections."""

    title: str
    window: Window
    account: str | None
    generated: datetime
    summary: list[str]
    sections: list[Section]


def incident(conn: Connection, at: datetime, before: timedelta, after: timedelta, now: datetime, *,
             account: str | None = None) -> Incident:
    """Everything the archive can tell about the window [at - before, at + after), cut at now."""
    if at > now:
        raise InputError(f"--at ({cell(at)} UTC) is after now: the archive has nothing to say about it yet")
    window = until_now(Window(at - before, at + after), now)
    opened = open_at.open_at(conn, at, account=account)
    closes = closes_by_reason(conn, window, account)
    covered = coverage.coverage(conn, window, now, account=account)
    busy, slices = concurrency_around(conn, at, window, now, set(covered.column("account_id")), account)
    sections = [
        Section(f"Sessions open at {cell(at)} UTC, and how each ended", [*opened.notes, OPEN_NOTE],
                _narrowed(opened, OPEN_COLUMNS)),
        Section("Closes by reason, against the same window on the days before", [CLOSES_NOTE], closes),
        Section("Concurrency around the moment", [*_busy_lines(busy), SLICES_NOTE], busy),
        Section("Concurrency in the window, slice by slice", [], slices),
        Section("What the archive can say about this window", [*_coverage_lines(covered), COVERAGE_NOTE], covered),
    ]
    summary = [*opened.notes, _closes_summary(closes), *_busy_lines(busy), *_coverage_lines(covered)]
    title = f"Incident review: {cell(at)} UTC" + (f", account {account}" if account else "")
    return Incident(title, window, account, now, summary, sections)


def _narrowed(answer: Result, columns: tuple[str, ...]) -> Result:
    return Result(answer.columns, answer.rows, brief=columns).narrowed()


def shifted(window: Window, days: int) -> Window:
    return Window(window.since - timedelta(days=days), window.until - timedelta(days=days))


def closes_by_reason(conn: Connection, window: Window, account: str | None) -> Result:
    """Per reason: closes in the window and in the same window on each of the days before."""
    counts: list[Counter[str]] = []
    for days in range(DAYS_BEFORE + 1):
        counted: Counter[str] = Counter()
        for status, name, _text, sessions, _stored in stats.close_reasons(conn, shifted(window, days),
                                                                           account=account).rows:
            counted[_reason_label(status, name)] += sessions
        counts.append(counted)
    now, before = counts[0], counts[1:]
    labels = sorted(set().union(*counts), key=lambda label: (-now[label], -sum(c[label] for c in before), label))
    rows = []
    for label in labels:
        most = max(c[label] for c in before)
        rows.append((label, now[label], *(c[label] for c in before), most, "yes" if now[label] > most else ""))
    columns = ["reason", "in_window", *(f"{d}_day{'s' if d > 1 else ''}_before" for d in range(1, DAYS_BEFORE + 1)),
               "most_before", "above_every_day_before"]
    return result(columns, rows)


def _reason_label(status: str, name: str | None) -> str:
    if status != CLOSED:
        return f"(end unknown: {status})"
    return name if name is not None else "(no reason given)"


def slice_edges(window: Window) -> list[datetime]:
    """The window cut into equal slices of a round length, the last one cut at the window's end."""
    span = window.until - window.since
    minutes = next((m for m in SLICE_MINUTES if span <= timedelta(minutes=m * MAX_SLICES)), SLICE_MINUTES[-1])
    step = timedelta(minutes=minutes)
    cuts = [window.since]
    while cuts[-1] + step < window.until:
        cuts.append(cuts[-1] + step)
    return [*cuts, window.until]


def concurrency_around(conn: Connection, at: datetime, window: Window, now: datetime, polled: set[str],
                       account: str | None) -> tuple[Result, Result]:
    """Per account (those with sessions, and ``polled``): sessions open at the moment, the window's
    peak, and the peak of the days before it; and the peak of each slice of the window."""
    history = Window(window.since - timedelta(days=DAYS_BEFORE), window.until)
    spans = load_spans(conn, history, now, account=account)
    days = [ms(window.since - timedelta(days=d)) for d in range(DAYS_BEFORE, -1, -1)]
    cuts = slice_edges(window)
    edges = [ms(cut) for cut in cuts]
    busy, slices = [], []
    for account_id in sorted(set(spans) | polled):
        own = spans.get(account_id, Spans())
        surely, at_most = own.bounds()
        sure_slices, max_slices = surely.peaks(edges), at_most.peaks(edges)
        busy.append((account_id, surely.level_at(ms(at)), at_most.level_at(ms(at)), max(sure_slices),
                     max(max_slices), max(surely.peaks(days)), max(at_most.peaks(days))))
        if account_id in spans:
            slices += [(cut, account_id, sure, most) for cut, sure, most in zip(cuts[:-1], sure_slices, max_slices, strict=True)]
    busy_columns = ("account_id", "open_at_moment", "open_at_moment_max", "peak_in_window", "peak_in_window_max",
                    f"peak_{DAYS_BEFORE}_days_before", f"peak_{DAYS_BEFORE}_days_before_max")
    return result(busy_columns, busy), result(("slice_start", "account_id", "peak", "peak_max"), slices)


def _busy_lines(busy: Result) -> list[str]:
    lines = []
    for account_id, open_now, open_max, peak, peak_max, recent, recent_max in busy.rows:
        line = (f"Account {account_id}: {open_now} open at the moment ({open_max} at most); the window's peak was "
                f"{peak} ({peak_max} at most)")
        if not recent_max:
            lines.append(f"{line}; the archive holds no session in the {DAYS_BEFORE} days before it to compare with.")
            continue
        verdict = "above" if peak > recent_max else "below" if peak_max < recent else "within the range of"
        lines.append(f"{line}, {verdict} the highest of the {DAYS_BEFORE} days before it, {recent} ({recent_max} at most).")
    return lines


def _closes_summary(closes: Result) -> str:
    total = sum(row[1] for row in closes.rows)
    by_reason = ", ".join(f"{row[0]} {row[1]}" for row in closes.rows if row[1])
    standing = [row[0] for row in closes.rows if row[-1]]
    line = f"{total} session(s) ended in the window" + (f": {by_reason}." if by_reason else ".")
    if not any(row[-2] for row in closes.rows):
        line += f" The archive holds no close in the same window on the {DAYS_BEFORE} days before to compare with."
    elif standing:
        line += f" More than on any of the {DAYS_BEFORE} days before: {', '.join(standing)}."
    return line


def _coverage_lines(covered: Result) -> list[str]:
    lines = []
    for row in covered.dicts():
        lines.append(
            f"Account {row['account_id']}: the longest stretch without a complete listing was "
            f"{_duration(row['largest_gap_seconds'])} ({cell(row['gap_from'])} to {cell(row['gap_until'])}); "
            f"{row['incomplete_listings']} incomplete listing(s) in {row['cycles']} cycle(s); Cloudflare's 429s held requests back "
            f"for {_duration(row['throttled_seconds'])}; at worst {row['worst_backlog'] or 0} detail fetch(es) owed; "
            f"{row['unknown_end_sessions']} session(s) whose end is unknown."
        )
    return lines


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
