"""The incident review written out: Markdown for a ticket or a wiki, or one self-contained HTML file
with the timeline picture of the window embedded.

Text from the archive (close reasons, their texts) may hold anything: it is escaped for the format,
so that it reads as text and never as markup. The HTML needs no network: its styles are inline,
and the timeline page sits in a sandboxed frame of its own (``srcdoc``), scripts allowed, nothing else.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path

from archiver.errors import InputError
from archiver.render import cell
from archiver.reports.incident import Incident, Section
from archiver.reports.result import Result

FORMATS = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}
STYLE = """
  body { margin: 24px auto; max-width: 1180px; padding: 0 20px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
         Roboto, sans-serif; color: #1d2330; }
  h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #e3e6ec; }
  .meta { color: #5d6678; }
  .table { overflow-x: auto; }
  table { border-collapse: collapse; margin: 8px 0 4px; font-size: 12.5px; }
  th, td { border: 1px solid #e3e6ec; padding: 3px 7px; text-align: left; vertical-align: top; }
  th { background: #f6f7f9; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
  iframe { width: 100%; height: 760px; border: 1px solid #e3e6ec; }
"""
# Styles and the framed timeline's own inline script; nothing may be fetched.
POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def format_of(path: Path) -> str:
    """"markdown" or "html", from the output file's suffix."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise InputError(f"cannot tell the format of {path.name}: name it FILE.md or FILE.html") from None


# -- Markdown ----------------------------------------------------------------------------------------


def markdown(review: Incident) -> str:
    """The review as Markdown: headings, paragraphs and pipe tables."""
    parts = [f"# {_md_text(review.title)}", _meta(review), "## Key figures",
             "\n".join(f"- {_md_text(line)}" for line in review.summary)]
    for section in review.sections:
        parts.append(_md_section(section))
    return "\n\n".join(parts) + "\n"


def _md_section(section: Section) -> str:
    parts = [f"## {_md_text(section.title)}", *(_md_text(line) for line in section.lines)]
    if section.table is not None:
        parts.append(_md_table(section.table))
    return "\n\n".join(parts)


def _md_table(table: Result) -> str:
    if not table.rows:
        return "_(none)_"
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_md_text(cell(value)) for value in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _md_text(text: str) -> str:
    # Markdown renders inline HTML: entities keep archive text as text; pipes would split a cell.
    escaped = html.escape(text, quote=False).replace("|", "\\|")
    return " ".join(escaped.split())


def _meta(review: Incident) -> str:
    scope = f"account {review.account}" if review.account else "every account"
    return (f"Window {cell(review.window.since)} to {cell(review.window.until)} UTC, {scope}. "
            f"Written {cell(review.generated)} UTC from the archive.")


# -- HTML --------------------------------------------------------------------------------------------


def html_page(review: Incident, timeline_page: str | None) -> str:
    """The review as one HTML file; ``timeline_page`` (a whole HTML page) is embedded after the sections."""
    body = [f"<h1>{_h(review.title)}</h1>", f'<p class="meta">{_h(_meta(review))}</p>', "<h2>Key figures</h2>",
            "<ul>" + "".join(f"<li>{_h(line)}</li>" for line in review.summary) + "</ul>"]
    for section in review.sections:
        body.append(f"<h2>{_h(section.title)}</h2>")
        body += [f"<p>{_h(line)}</p>" for line in section.lines]
        if section.table is not None:
            body.append(_html_table(section.table))
    if timeline_page is not None:
        body += ["<h2>Timeline of the window</h2>",
                 f'<iframe title="Timeline of the window" sandbox="allow-scripts" srcdoc="{_h(timeline_page)}"></iframe>']
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        f"<title>{_h(review.title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>", *body, "</body>", "</html>", "",
    ])


def _html_table(table: Result) -> str:
    if not table.rows:
        return "<p><em>(none)</em></p>"
    head = "".join(f"<th>{_h(name)}</th>" for name in table.columns)
    rows = "".join(_html_rows(table.rows))
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _html_rows(rows: Iterable[tuple[object, ...]]) -> Iterable[str]:
    for row in rows:
        cells = "".join(
            f'<td class="n">{_h(cell(v))}</td>' if isinstance(v, int | float) and not isinstance(v, bool)
            else f"<td>{_h(cell(v))}</td>"
            for v in row
        )
        yield f"<tr>{cells}</tr>"


def _h(text: str) -> str:
    return html.escape(text, quote=True)
