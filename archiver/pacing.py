"""How often to poll: as often as the rate budget allows, never faster than the floor, and slower
after Cloudflare throttles us. Pure arithmetic over what the cycles report."""

from __future__ import annotations

from dataclasses import dataclass, field

# Poll at most this close to the budget: cycles vary in cost, and other tools share the token.
HEADROOM = 1.25
# Requests per cycle are smoothed so one busy cycle does not whipsaw the interval.
SMOOTHING = 0.3
MAX_PENALTY = 8.0


@dataclass
class Pacer:
    """The effective poll interval of the accounts sharing one token (and so one budget)."""

    interval: float  # the configured interval
    floor: float  # never poll faster than this
    budget_rate: float  # average requests per second the budget allows for the whole token
    accounts: int
    requests_per_cycle: dict[str, float] = field(default_factory=dict)
    penalty: float = 1.0

    def after_cycle(self, account_id: str, requests: int, throttled: int) -> float:
        """Record one cycle's cost and return the interval every account should now use."""
        previous = self.requests_per_cycle.get(account_id, float(requests))
        self.requests_per_cycle[account_id] = previous + SMOOTHING * (requests - previous)
        if throttled:
            self.penalty = min(MAX_PENALTY, self.penalty * 2)
        else:
            self.penalty = max(1.0, self.penalty * 0.75)
        return self.effective()

    def effective(self) -> float:
        """The interval at which a round over all accounts stays inside the budget."""
        known = self.requests_per_cycle.values()
        mean_cost = sum(known) / len(known) if known else 1.0
        sustainable = self.accounts * mean_cost / self.budget_rate * HEADROOM
        # Shorter than configured only while the budget has room; longer when it has not.
        return max(self.floor, sustainable) * self.penalty
