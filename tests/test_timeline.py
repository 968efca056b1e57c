"""The timeline page, checked structurally: the embedded data is the archive's, nothing is fetched
from the network, and no text from the archive can break out of the data's script element."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from sqlalchemy import Engine, select

from archiver.archive.models import sessions_table
from archiver.reports import Window
from archiver.reports.timeline import build_timeline, load_spans, script_json
from tests import archive_data as data
from tests.archive_data import A, m

WIDE = Window(m(-180), m(180))


class Page(HTMLParser):
    """The page's elements, attributes and the text of its script elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._in_script: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = None

    def handle_data(self, text: str) -> None:
        if self._in_script is not None:
            attrs, body = self.scripts[-1]
            self.scripts[-1] = (attrs, body + text)


def parse(html: str) -> tuple[Page, dict[str, Any]]:
    page = Page()
    page.feed(html)
    (document,) = [json.loads(body) for attrs, body in page.scripts if attrs.get("type") == "application/json"]
    return page, document


def ms(value: Any) -> int | None:
    return None if value is None else round(value.timestamp() * 1000)


def test_embedded_data_matches_the_database(archive: Engine) -> None:
    with archive.connect() as conn:
        html, count = build_timeline(conn, WIDE)
        stored = {r["session_id"]: r for r in conn.execute(select(sessions_table)).mappings()}
    _page, doc = parse(html)
    assert count == len(doc["id"]) == 12  # every session overlaps the five hours around the window
    assert (doc["since"], doc["until"]) == (ms(WIDE.since), ms(WIDE.until))
    for i, session_id in enumerate(doc["id"]):
        row = stored[session_id]
        assert doc["start"][i] == ms(row["start_time"] or row["first_seen_at"])
        assert doc["end"][i] == ms(row["end_time"])
        assert doc["lastSeen"][i] == ms(row["last_seen_at"])
        assert doc["vanished"][i] == ms(row["vanished_at"] or row["gone_at"])
        assert doc["statuses"][doc["status"][i]] == row["status"]
        reason = doc["reasons"][doc["reason"][i]]
        expected = row["close_reason"] or ("(still open)" if row["status"] == "active"
                                           else "(end unknown)" if row["end_time"] is None else "(no reason)")
        assert reason == expected
        assert doc["accounts"][doc["account"][i]] == row["account_id"]
    assert doc["start"] == sorted(doc["start"])  # bars in start order


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (22, 24, {"inside", "spanning", "vanished"}),  # gone vanished at 21: surely over
        (20.5, 20.75, {"inside", "spanning", "vanished", "gone"}),  # gone maybe still open
        (500, 600, {"active"}),
    ],
    ids=["after-vanish", "between-last-seen-and-vanished", "only-the-listed-one"],
)
def test_sessions_shown_are_those_open_in_the_window(archive: Engine, since: float, until: float, expected: set[str]) -> None:
    with archive.connect() as conn:
        spans = load_spans(conn, Window(m(since), m(until)))
    assert {data.NAMES[span.session_id] for span in spans} == expected


def test_odd_close_reason_text_cannot_end_the_script(archive: Engine) -> None:
    with archive.connect() as conn:
        html, _count = build_timeline(conn, WIDE)
    assert html.count("</script>") == 2  # the data element's and the code's own, nothing from the archive
    assert "<script>alert" not in html and "\u2028" not in html
    _page, doc = parse(html)
    assert data.ODD_TEXT in doc["reasonTexts"]


def test_page_needs_no_network(archive: Engine) -> None:
    with archive.connect() as conn:
        html, _count = build_timeline(conn, WIDE, account=A)
    page, doc = parse(html)
    assert not re.search(r"(?i)https?:|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", html)
    for tag, attrs in page.tags:
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
        assert tag not in ("link", "img", "iframe", "object", "embed")
    assert [attrs.get("type") for attrs, _body in page.scripts] == ["application/json", None]
    csp = next(attrs["content"] for tag, attrs in page.tags if tag == "meta" and attrs.get("http-equiv"))
    assert csp is not None and "default-src 'none'" in csp
    assert set(doc["accounts"]) == {A} and "account " + A in doc["title"]


def test_empty_window_gives_an_empty_page(any_engine: Engine) -> None:
    with any_engine.connect() as conn:
        html, count = build_timeline(conn, WIDE)
    _page, doc = parse(html)
    assert count == 0 and doc["id"] == [] and doc["reasons"] == []


@pytest.mark.parametrize("text", ["</script>", "<!--", "a&b", "\u2028\u2029", "]]>", '"quoted"'])
def test_script_json_round_trips_without_markup(text: str) -> None:
    encoded = script_json({"t": text})
    assert not set("<>&\u2028\u2029") & set(encoded)
    assert json.loads(encoded) == {"t": text}


def test_an_end_recorded_before_the_start_is_drawn_as_unknown(usage_archive: Engine) -> None:
    from tests import usage_data

    with usage_archive.connect() as conn:
        spans = {span.session_id: span for span in load_spans(conn, Window(usage_data.h(30), usage_data.h(33)))}
    impossible = spans[data.sid("impossible")]
    # From its first listing; its end unknown: surely until last listed, at most until it left the listing.
    assert (impossible.start, impossible.end) == (ms(usage_data.h(32)), None)
    assert (impossible.last_seen, impossible.vanished) == (ms(usage_data.h(32.5)), ms(usage_data.h(32 + 40 / 60)))
    assert impossible.reason == "NormalClosure"  # stored as "1"
