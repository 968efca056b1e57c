"""The timeline picture: a self-contained HTML page with one bar per session and the concurrency
beneath, drawn on a canvas so that tens of thousands of sessions stay fast.

The page needs no network: its script and styles are inline and the data is embedded as compact
JSON, escaped so that no text from the archive (a close reason, say) can end the script element.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any

from sqlalchemy import Connection

from archiver.archive import reasons
from archiver.archive.models import ACTIVE, sessions_table
from archiver.errors import InputError
from archiver.reports.window import Window, open_during
from archiver.vocabulary import STATUSES

s = sessions_table.c
MAX_SESSIONS = 200_000
# Characters that could end a <script> element or an HTML comment, or break a JavaScript string.
JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
PLACEHOLDER = "/*TIMELINE_DATA*/"
NO_REASON = "(no reason)"  # closed, but Cloudflare gave no reason
STILL_OPEN = "(still open)"
END_UNKNOWN = "(end unknown)"


@dataclass(frozen=True)
class Span:
    """One session as the timeline draws it; times in milliseconds since the Unix epoch."""

    session_id: str
    account_id: str
    status: str
    start: int
    end: int | None  # known end
    last_seen: int
    vanished: int | None  # with an unknown end: it ended between last_seen and this
    reason: str
    reason_text: str | None


def load_spans(conn: Connection, window: Window, *, account: str | None = None) -> list[Span]:
    """Every session open at some moment of the window, by start time."""
    columns = (s.session_id, s.account_id, s.status, s.start_time, s.end_time, s.first_seen_at, s.last_seen_at,
               s.vanished_at, s.gone_at, s.close_reason, s.close_reason_text)
    stmt = open_during(window, *columns, account=account)
    rows = conn.execute(stmt.limit(MAX_SESSIONS + 1)).mappings().all()
    if len(rows) > MAX_SESSIONS:
        raise InputError(f"more than {MAX_SESSIONS} sessions in the window: choose a shorter one (or one --account)")
    spans = [_span(row) for row in rows]
    spans.sort(key=lambda span: (span.start, span.account_id, span.session_id))
    return spans


def _ms(when: datetime | None) -> int | None:
    return None if when is None else round(when.timestamp() * 1000)


def _span(row: Any) -> Span:
    start, end = row["start_time"], row["end_time"]
    if start is not None and end is not None and end < start:
        # An impossible pair, kept as observed: drawn as a session whose start and end are unknown.
        start = end = None
    return Span(
        session_id=row["session_id"], account_id=row["account_id"], status=row["status"],
        start=_ms(start or row["first_seen_at"]) or 0, end=_ms(end), last_seen=_ms(row["last_seen_at"]) or 0,
        vanished=_ms(row["vanished_at"] or row["gone_at"]),
        reason=_reason(row), reason_text=row["close_reason_text"],
    )


def _reason(row: Any) -> str:
    if row["close_reason"] is not None:
        return str(reasons.name(row["close_reason"]))
    if row["end_time"] is not None and not (row["start_time"] and row["end_time"] < row["start_time"]):
        return NO_REASON
    return STILL_OPEN if row["status"] == ACTIVE else END_UNKNOWN


def timeline_data(spans: list[Span], window: Window, title: str) -> dict[str, Any]:
    """The compact, column-wise document the page draws from."""
    counts = Counter(span.reason for span in spans)
    reasons = sorted(counts, key=lambda reason: (-counts[reason], reason))
    reason_index = {reason: i for i, reason in enumerate(reasons)}
    texts: dict[str, str] = {}
    for span in spans:
        if span.reason_text and span.reason not in texts:
            texts[span.reason] = span.reason_text
    accounts = sorted({span.account_id for span in spans})
    return {
        "title": title,
        "since": _ms(window.since),
        "until": _ms(window.until),
        "reasons": reasons,
        "reasonTexts": [texts.get(r) for r in reasons],
        "statuses": list(STATUSES),
        "accounts": accounts,
        "id": [span.session_id for span in spans],
        "account": [accounts.index(span.account_id) for span in spans] if len(accounts) > 1 else [],
        "status": [STATUSES.index(span.status) for span in spans],
        "start": [span.start for span in spans],
        "end": [span.end for span in spans],
        "lastSeen": [span.last_seen for span in spans],
        "vanished": [span.vanished for span in spans],
        "reason": [reason_index[span.reason] for span in spans],
    }


def script_json(document: Any) -> str:
    """JSON that is safe inside a <script> element: no '<', '>', '&' or line separators left raw."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return "".join(JSON_ESCAPES.get(ch, ch) for ch in text)


def render_html(document: dict[str, Any]) -> str:
    """The page, with the document embedded."""
    template = files("archiver.reports").joinpath("timeline.html").read_text(encoding="utf-8")
    return template.replace(PLACEHOLDER, script_json(document))


def build_timeline(conn: Connection, window: Window, *, account: str | None = None) -> tuple[str, int]:
    """The HTML page for the window, and how many sessions it shows."""
    spans = load_spans(conn, window, account=account)
    title = f"Browser sessions {window.since:%Y-%m-%d %H:%M} to {window.until:%Y-%m-%d %H:%M} UTC"
    if account:
        title += f", account {account}"
    return render_html(timeline_data(spans, window, title)), len(spans)
