"""Fault injection for the emulator: random faults at given rates, and scripted one-shot faults."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

# Faults that replace the answer, and faults that spoil a real answer (see Emulator._api).
# "empty": a listing of no sessions at all (a glitch), whatever the account has.
FAULT_KINDS = ("malformed", "reset", "timeout", "null", "wrong_type", "oversized", "bad_id", "empty")
# Session ids a broken upstream might send: not UUIDs, not strings, or aimed at other URL paths.
BAD_SESSION_IDS: tuple[Any, ...] = (
    "not-a-uuid",
    "../../../accounts",
    "0f0e0d0c-0b0a-4909-8807-06050403020",
    "0f0e0d0c-0b0a-4909-8807-060504030201/../x",
    "",
    12345,
    None,
    ["0f0e0d0c-0b0a-4909-8807-060504030201"],
)
# Top-level JSON values of the wrong type, for either endpoint.
WRONG_TYPES: tuple[Any, ...] = ({"sessions": []}, "sessions", 42, True, [[]])
CAP_BYTES = 16 * 1024 * 1024  # what the archiver's client reads at most


@dataclass
class Faults:
    """What goes wrong, and how often. All off by default.

    Rates are shares of requests (``odd_fields_rate``: of items). A timed-out or oversized
    answer is the real one, delayed past the client's timeout or padded past its size cap, so
    that a client which waited or read on would get correct data.
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (429, 500, 503)
    retry_after_s: float = 1.0
    timeout_rate: float = 0.0
    timeout_s: float = 30.0
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    wrong_type_rate: float = 0.0
    oversized_rate: float = 0.0
    oversized_bytes: int = CAP_BYTES + 1024 * 1024
    bad_id_rate: float = 0.0
    odd_fields_rate: float = 0.0
    null_detail_rate: float = 0.0
    envelope: bool = False
    # Page drift: between two page requests, ``drift_closes`` sessions on earlier pages close
    # (the list shifts left), and each later page starts ``drift_repeats`` items early (as if
    # that many sessions had been inserted before it: items repeat).
    drift: bool = False
    drift_closes: int = 1
    drift_repeats: int = 0
    enforce_rate_limit: bool = False
    rate_limit_requests: int = 1200
    rate_limit_window_s: float = 300.0  # on the emulator's simulated clock
    # Fields the listing leaves out of every item (details still carry them).
    listing_omits: tuple[str, ...] = ()

    @classmethod
    def chaos(cls, share: float, **overrides: Any) -> Faults:
        """About ``share`` of all requests fail or come back spoiled, spread over every kind.

        Statuses (429 storms, 500, 503) take the largest part, as they do upstream; the rest is
        shared by timeouts, resets, truncated JSON, wrong types, oversized bodies, invalid
        session ids and null details. A few listed items also carry odd fields.
        """
        part = share / 10
        values: dict[str, Any] = {
            "error_rate": 4 * part,
            "timeout_rate": part / 2,
            "reset_rate": part,
            "malformed_rate": part,
            "wrong_type_rate": part,
            "oversized_rate": part / 2,
            "bad_id_rate": 2 * part,
            "null_detail_rate": part,  # details only
            "odd_fields_rate": part / 5,
        }
        values.update(overrides)
        return cls().updated(values)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_statuses"] = list(self.error_statuses)
        data["listing_omits"] = list(self.listing_omits)
        return data

    def updated(self, values: dict[str, Any]) -> Faults:
        """A copy with the given fields changed; unknown names are an error."""
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        data = {**asdict(self), **values}
        data["error_statuses"] = tuple(data["error_statuses"])
        data["listing_omits"] = tuple(data["listing_omits"])
        return Faults(**data)


@dataclass
class Injection:
    kind: int | str  # an HTTP status, or one of FAULT_KINDS
    remaining: int
    endpoint: str  # list | get | any
    retry_after: float | None
    after: int = 0  # matching requests to let through first


class FaultPlan:
    """The current faults plus a queue of scripted ones; draws from its own seeded RNG."""

    def __init__(self, faults: Faults | None, seed: int) -> None:
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.injections: list[Injection] = []
        self.lock = threading.Lock()

    def inject(self, kind: int | str, times: int = 1, endpoint: str = "any", retry_after: float | None = None,
               after: int = 0) -> None:
        if not isinstance(kind, int) and kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if endpoint not in ("list", "get", "any"):
            raise ValueError("endpoint must be list, get or any")
        with self.lock:
            self.injections.append(Injection(kind, times, endpoint, retry_after, after))

    def clear(self) -> None:
        with self.lock:
            self.injections.clear()

    def next_injection(self, endpoint: str) -> Injection | None:
        """The scripted fault for this request, if one is queued for its endpoint."""
        with self.lock:
            for injection in self.injections:
                if injection.endpoint in (endpoint, "any") and injection.after > 0:
                    injection.after -= 1
                    return None
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

    def kind_for(self, endpoint: str) -> int | str | None:
        """A random fault for one request at the configured rates: a status, a kind, or None."""
        faults = self.faults
        if self.draw(faults.error_rate):
            return int(self.choice(faults.error_statuses))
        rates = [
            ("timeout", faults.timeout_rate),
            ("reset", faults.reset_rate),
            ("malformed", faults.malformed_rate),
            ("wrong_type", faults.wrong_type_rate),
            ("oversized", faults.oversized_rate),
            ("bad_id", faults.bad_id_rate),
        ]
        if endpoint == "get":
            rates.append(("null", faults.null_detail_rate))
        for kind, rate in rates:
            if self.draw(rate):
                return kind
        return None

    def bad_id(self, item: dict[str, Any]) -> dict[str, Any]:
        """The item with an invalid sessionId (or none at all)."""
        spoiled = dict(item)
        value = self.choice(BAD_SESSION_IDS)
        if value is None:
            spoiled.pop("sessionId", None)
        else:
            spoiled["sessionId"] = value
        return spoiled

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
