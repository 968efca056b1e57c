"""Fault injection for the emulator: random faults at given rates, and scripted one-shot faults."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

FAULT_KINDS = ("malformed", "reset", "timeout", "null")


@dataclass
class Faults:
    """What goes wrong, and how often. All off by default."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (429, 500, 503)
    retry_after_s: float = 1.0
    timeout_rate: float = 0.0
    timeout_s: float = 30.0
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    odd_fields_rate: float = 0.0
    null_detail_rate: float = 0.0
    envelope: bool = False
    drift: bool = False
    enforce_rate_limit: bool = False
    rate_limit_requests: int = 1200
    rate_limit_window_s: float = 300.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_statuses"] = list(self.error_statuses)
        return data

    def updated(self, values: dict[str, Any]) -> Faults:
        """A copy with the given fields changed; unknown names are an error."""
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        data = {**asdict(self), **values}
        data["error_statuses"] = tuple(data["error_statuses"])
        return Faults(**data)


@dataclass
class Injection:
    kind: int | str  # an HTTP status, or one of FAULT_KINDS
    remaining: int
    endpoint: str  # list | get | any
    retry_after: float | None


class FaultPlan:
    """The current faults plus a queue of scripted ones; draws from its own seeded RNG."""

    def __init__(self, faults: Faults | None, seed: int) -> None:
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.injections: list[Injection] = []
        self.lock = threading.Lock()

    def inject(self, kind: int | str, times: int = 1, endpoint: str = "any", retry_after: float | None = None) -> None:
        if not isinstance(kind, int) and kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if endpoint not in ("list", "get", "any"):
            raise ValueError("endpoint must be list, get or any")
        with self.lock:
            self.injections.append(Injection(kind, times, endpoint, retry_after))

    def next_injection(self, endpoint: str) -> Injection | None:
        """The scripted fault for this request, if one is queued for its endpoint."""
        with self.lock:
            for injection in self.injections:
                if injection.endpoint in (endpoint, "any") and injection.remaining > 0:
                    injection.remaining -= 1
                    if injection.remaining == 0:
                        self.injections.remove(injection)
                    return injection
            return None

    def draw(self, rate: float) -> bool:
        with self.lock:
            return rate > 0 and self.rng.random() < rate

    def choice(self, options: Any) -> Any:
        with self.lock:
            return self.rng.choice(list(options))

    def odd_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """The item with a field missing, an unknown field added, or a field of the wrong type."""
        odd = dict(item)
        mutation = self.choice(["missing", "extra", "wrong-type"])
        if mutation == "missing":
            odd.pop(self.choice([k for k in odd if k != "sessionId"]), None)
        elif mutation == "extra":
            odd["unexpectedField"] = {"nested": [1, 2, 3]}
        else:
            odd["startTime"] = str(odd["startTime"])
        return odd
