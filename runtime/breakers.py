"""Circuit breakers per instrument (SEMANTICS S21).

Owns one breaker's states — closed, open until a deadline, half-open with one
trial attempt — and its transitions on execution outcomes. Pure: the pool's
lease table asks it whether a lease may be granted and tells it outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from runtime.policy import BreakerPolicy


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """``trial_lease`` is the lease of the one trial attempt while half-open."""

    instrument: str
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    open_until: float = 0.0
    trial_lease: int | None = None

    def to_record(self) -> dict[str, Any]:
        """What survives a restart (S29): the state and its deadline. A half-open
        breaker is stored as open and due, so its trial is simply run again."""
        if self.state is BreakerState.CLOSED:
            return {"state": "closed", "consecutive_failures": self.consecutive_failures}
        return {
            "state": "open",
            "open_until": self.open_until if self.state is BreakerState.OPEN else 0.0,
        }

    @classmethod
    def from_record(cls, instrument: str, record: Mapping[str, Any]) -> CircuitBreaker:
        if record.get("state") == "open":
            until = float(record.get("open_until", 0.0))
            return cls(instrument, BreakerState.OPEN, open_until=until)
        return cls(instrument, consecutive_failures=int(record.get("consecutive_failures", 0)))

    def allows(self, now: float) -> bool:
        """May a lease be granted now? An open breaker past its timeout turns half-open."""
        if self.state is BreakerState.OPEN and now >= self.open_until:
            self.state = BreakerState.HALF_OPEN
            self.trial_lease = None
        if self.state is BreakerState.CLOSED:
            return True
        return self.state is BreakerState.HALF_OPEN and self.trial_lease is None

    def is_open(self, now: float) -> bool:
        return self.state is BreakerState.OPEN and now < self.open_until

    def granted(self, lease_id: int) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.trial_lease = lease_id

    def record(
        self, lease_id: int, succeeded: bool | None, policy: BreakerPolicy, now: float
    ) -> BreakerState | None:
        """Apply the outcome of the attempt that held ``lease_id``: True or False
        for an execution that succeeded or failed, None when it says nothing about
        the instrument (a rate limit, an authentication failure, a lease given
        back unused). Returns the new state when it changed to open or closed.

        While half-open only the trial speaks: outcomes of attempts started
        before the breaker opened are ignored, and a trial that said nothing
        makes room for another trial instead of holding the breaker half-open
        for ever. Outcomes that arrive while it is open are ignored too."""
        if self.state is BreakerState.HALF_OPEN:
            if lease_id != self.trial_lease:
                return None
            self.trial_lease = None
            if succeeded is None:
                return None
            if succeeded:
                self.state = BreakerState.CLOSED
                self.consecutive_failures = 0
                return BreakerState.CLOSED
            return self._open(policy, now)
        if succeeded is None or self.state is BreakerState.OPEN:
            return None
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
        self.trial_lease = None
        return BreakerState.OPEN
