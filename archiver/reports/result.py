"""What a report returns: named columns and rows, ready for any output format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Result:
    """A report's answer: rows of values under column names, and notes for a person reading it."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    notes: list[str] = field(default_factory=list)
    # The columns worth a terminal's width; the machine formats always carry every column.
    brief: tuple[str, ...] = ()

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]

    def narrowed(self) -> Result:
        """Only the brief columns (all of them when none are named)."""
        if not self.brief:
            return self
        indexes = [self.columns.index(name) for name in self.brief]
        return Result(self.brief, [tuple(row[i] for i in indexes) for row in self.rows], self.notes)


def result(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = (), brief: Sequence[str] = ()
) -> Result:
    return Result(tuple(columns), [tuple(row) for row in rows], list(notes), tuple(brief))
