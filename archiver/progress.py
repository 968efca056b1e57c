"""How far long work has got: a status line rewritten in place on a terminal; elsewhere (a pipe, a
journal) a log line now and then, so that a long sync, export or prune is never silent and a short
one adds nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

log = logging.getLogger("archiver.progress")
T = TypeVar("T")

# A terminal line is rewritten at most this often (seconds); a log line is written at most this
# often, and the first only once the work has run this long.
TERMINAL_EVERY = 0.2
LOG_EVERY = 10.0
# How often an iteration looks at the clock (rows): cheap enough for a million-row export.
ROWS_BETWEEN_LOOKS = 500


class Progress:
    """Shows ``text`` (with its ``facts``, for JSON logs) as often as the work calls :meth:`show`,
    but at most every ``every`` seconds: on ``terminal`` as one line rewritten in place, else as
    an INFO log line. :meth:`finish` clears the terminal line."""

    def __init__(self, terminal: TextIO | None, *, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.terminal = terminal
        self.every = every if every is not None else (TERMINAL_EVERY if terminal is not None else LOG_EVERY)
        self.clock = clock
        # On a terminal the first line goes at once; a log waits a period, so short work logs nothing.
        self.next_at = clock() + (0.0 if terminal is not None else self.every)
        self.shown = False
        self.last = ""

    @classmethod
    def on_stderr(cls, *, terminal: bool | None = None) -> Progress:
        """Progress on stderr: a status line if it is a terminal (or ``terminal``), else log lines."""
        interactive = sys.stderr.isatty() if terminal is None else terminal
        return cls(sys.stderr if interactive else None)

    def due(self) -> bool:
        return self.clock() >= self.next_at

    def show(self, text: str, facts: dict[str, Any] | None = None) -> None:
        if not self.due():
            return
        self.next_at = self.clock() + self.every
        if self.terminal is None:
            log.info("%s", text, extra={"facts": facts or {}})
            return
        if text == self.last and self.shown:
            return
        width = self._width()
        self.terminal.write("\r\x1b[2K" + (text if len(text) < width else text[: width - 2] + "…"))
        self.terminal.flush()
        self.shown, self.last = True, text

    def _width(self) -> int:
        """The terminal's width: a line longer than that would wrap, and "\r" would not go back
        to its start."""
        assert self.terminal is not None
        try:
            columns = os.get_terminal_size(self.terminal.fileno()).columns
        except (AttributeError, OSError, ValueError):  # not a terminal (a test's buffer): no limit
            return sys.maxsize
        return columns if columns > 0 else sys.maxsize  # a terminal that does not say its size

    def finish(self) -> None:
        if self.terminal is not None and self.shown:
            self.terminal.write("\r\x1b[2K")
            self.terminal.flush()
            self.shown = False


def counted(rows: Iterable[T], progress: Progress | None, describe: Callable[[int], str]) -> Iterator[T]:
    """``rows`` as they are, showing ``describe(rows so far)`` on ``progress`` as they go."""
    if progress is None:
        yield from rows
        return
    for done, row in enumerate(rows, start=1):
        yield row
        if done % ROWS_BETWEEN_LOOKS == 0 and progress.due():
            progress.show(describe(done), {"rows": done})


def duration(seconds: float) -> str:
    """A rough span for a person: "40 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
