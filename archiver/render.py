"""Output formats in one place: plain-text tables for the terminal (no colour, stable columns, easy
to paste into a ticket), and CSV, JSON and JSON Lines for programs, written row by row."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.2f}"
    return printable(str(value))


def printable(text: str) -> str:
    """Text for the terminal: every character that is not printable (escape sequences and other
    controls, line breaks, bidirectional overrides, lone surrogates) as a Python escape, so that
    upstream text can neither drive the terminal nor break a table's lines."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii") for ch in text)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows under headers, columns padded to their widest cell."""
    text_rows = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in text_rows)
    return "\n".join(lines)


FORMATS = ("table", "csv", "json", "jsonl")
STREAM_FORMATS = ("csv", "jsonl")


def json_value(value: Any) -> Any:
    """A value JSON can hold: ISO-8601 for times, floats for decimals, the rest as it is."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def csv_value(value: Any) -> Any:
    """A CSV cell: ISO-8601 for times, JSON for documents, empty for NULL."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


def write_rows(out: TextIO, fmt: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write rows in one of FORMATS as they come (all at once only for ``table``); return how many."""
    if fmt == "table":
        materialised = list(rows)
        out.write(table(columns, materialised) + "\n")
        return len(materialised)
    if fmt == "csv":
        return _write_csv(out, columns, rows)
    if fmt in ("json", "jsonl"):
        return _write_json(out, columns, rows, lines=fmt == "jsonl")
    raise ValueError(f"unknown output format {fmt!r}")


def _write_csv(out: TextIO, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([csv_value(v) for v in row])
        count += 1
    return count


def _write_json(out: TextIO, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, lines: bool) -> int:
    count = 0
    if not lines:
        out.write("[")
    for row in rows:
        document = json.dumps(
            {name: json_value(v) for name, v in zip(columns, row, strict=True)}, ensure_ascii=False, default=str
        )
        # Valid JSON may hold raw line and paragraph separators, but line-based tools split on them.
        document = document.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        if lines:
            out.write(document + "\n")
        else:
            out.write(("\n" if count == 0 else ",\n") + document)
        count += 1
    if not lines:
        out.write("\n]\n" if count else "]\n")
    return count


def write_document(out: TextIO, document: Any) -> None:
    """One JSON document, times as ISO-8601."""
    out.write(json.dumps(document, ensure_ascii=False, indent=2, default=json_value) + "\n")
