"""The emulator's simulated clock: real time scaled by a speed, plus manual jumps."""

from __future__ import annotations

import threading
import time


class Clock:
    """Milliseconds since the Unix epoch on a simulated timeline.

    ``speed`` simulated seconds pass per real second (0 freezes the clock, so tests move it
    themselves with :meth:`advance` and every run sees the same world).
    """

    def __init__(self, speed: float = 1.0, start_ms: float | None = None) -> None:
        self.speed = speed
        self._start_ms = time.time() * 1000 if start_ms is None else start_ms
        self._real_start = time.monotonic()
        self._offset_ms = 0.0
        self._lock = threading.Lock()

    def now_ms(self) -> float:
        with self._lock:
            return self._start_ms + (time.monotonic() - self._real_start) * self.speed * 1000 + self._offset_ms

    def advance(self, seconds: float) -> None:
        """Jump the simulated time forward."""
        with self._lock:
            self._offset_ms += seconds * 1000
