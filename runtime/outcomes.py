"""What one attempt of a sheet produced, as the decision core sees it.

Owns the outcome kinds and the result records passed from backends to sheet
actors and from sheet actors to jobs. Classification of a raw process result
into a kind happens in the backend; deciding what to do about it happens in
``runtime.machine``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OutcomeKind(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    AUTH_FAILED = "auth_failed"
    CRASHED = "crashed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """What a backend reports for one request."""

    kind: OutcomeKind
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    cost: float = 0.0
    duration_seconds: float = 0.0
    wait_seconds: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What a sheet actor reports to its job after one attempt.

    ``validations_passed`` / ``validations_total`` give the pass rate (S6);
    a sheet with no validations reports 0 / 0, which counts as 100 %.
    """

    kind: OutcomeKind
    exit_code: int | None = None
    error: str | None = None
    cost: float = 0.0
    output_tail: str = ""
    duration_seconds: float = 0.0
    wait_seconds: float | None = None
    validations_passed: int = 0
    validations_total: int = 0
    validations: tuple[tuple[str, bool], ...] = ()  # (description, passed) per validation
    # True when the failure was ours (the prompt or the validation tooling), so
    # the attempt says nothing about the instrument's health (S21 breakers).
    not_the_instruments_fault: bool = False

    @property
    def instrument_health(self) -> bool | None:
        """S21: what the attempt says of its instrument, for the circuit breaker:
        True (it worked), False (it failed, timed out or crashed), None (nothing:
        a rate limit, an auth failure, a cancel, or a failure that was ours)."""
        if self.not_the_instruments_fault:
            return None
        if self.kind is OutcomeKind.SUCCESS:
            return True
        if self.kind in (OutcomeKind.FAILURE, OutcomeKind.TIMEOUT, OutcomeKind.CRASHED):
            return False
        return None

    @property
    def pass_rate(self) -> float:
        if self.validations_total == 0:
            return 100.0
        return 100.0 * self.validations_passed / self.validations_total
