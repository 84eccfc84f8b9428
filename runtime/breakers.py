"""Circuit breakers per instrument (SEMANTICS S21).

Owns one breaker's states — closed, open until a deadline, half-open with one
trial attempt — and its transitions on execution outcomes. Pure: the pool's
lease table asks it whether a lease may be granted and tells it outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runtime.policy import BreakerPolicy


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    instrument: str
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    open_until: float = 0.0
    trial_running: bool = False

    def allows(self, now: float) -> bool:
        """May a lease be granted now? An open breaker past its timeout turns half-open."""
        if self.state is BreakerState.OPEN and now >= self.open_until:
            self.state = BreakerState.HALF_OPEN
            self.trial_running = False
        if self.state is BreakerState.CLOSED:
            return True
        return self.state is BreakerState.HALF_OPEN and not self.trial_running

    def is_open(self, now: float) -> bool:
        return self.state is BreakerState.OPEN and now < self.open_until

    def granted(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.trial_running = True

    def record(self, succeeded: bool, policy: BreakerPolicy, now: float) -> BreakerState | None:
        """Apply one execution outcome; returns the new state when it changed to
        open or closed. Outcomes of attempts that ran while it was open are ignored."""
        if self.state is BreakerState.OPEN:
            return None
        if self.state is BreakerState.HALF_OPEN:
            self.trial_running = False
            if succeeded:
                self.state = BreakerState.CLOSED
                self.consecutive_failures = 0
                return BreakerState.CLOSED
            return self._open(policy, now)
        if succeeded:
            self.consecutive_failures = 0
            return None
        self.consecutive_failures += 1
        if policy.enabled and self.consecutive_failures >= policy.failure_threshold:
            return self._open(policy, now)
        return None

    def _open(self, policy: BreakerPolicy, now: float) -> BreakerState:
        self.state = BreakerState.OPEN
        self.open_until = now + policy.recovery_timeout_seconds
        self.trial_running = False
        return BreakerState.OPEN
