"""A job's execution policy: the score's settings the decision core acts on.

Owns the plain, validated-elsewhere numbers for retries and backoff (S9, S10),
completion mode (S8), exhaustion (S15), rate limits (S17-S20), circuit
breakers (S21), pacing (S23) and cost limits (S24), with SCORE_FORMAT's
defaults, and reading them from a loaded score. It decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.plan import Plan


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 3
    base_delay_seconds: float = 10.0
    max_delay_seconds: float = 3600.0
    exponential_base: float = 2.0
    jitter: bool = True
    max_completion_attempts: int = 5
    completion_delay_seconds: float = 5.0
    completion_threshold_percent: float = 50.0

    def delay(self, retry_number: int, random_fraction: float) -> float:
        """S10: min(base * exponent^(n-1), cap), scaled by ``random_fraction`` with jitter."""
        try:
            delay = self.base_delay_seconds * self.exponential_base ** max(0, retry_number - 1)
        except OverflowError:  # a long retry budget: far past the cap (unless there is no delay)
            delay = self.max_delay_seconds if self.base_delay_seconds else 0.0
        delay = min(delay, self.max_delay_seconds)
        return delay * random_fraction if self.jitter else delay


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    wait_minutes: float = 60.0
    max_waits: int = 24


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    enabled: bool = True
    failure_threshold: int = 5
    recovery_timeout_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class CostPolicy:
    max_cost_per_sheet: float | None = None
    max_cost_per_job: float | None = None
    warn_at_percent: float = 80.0


@dataclass(frozen=True, slots=True)
class Policy:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limit: RateLimitPolicy = field(default_factory=RateLimitPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    cost: CostPolicy = field(default_factory=CostPolicy)
    pause_between_sheets_seconds: float = 0.0
    self_healing: bool = False
    escalation: bool = False


def policy_from_plan(plan: Plan, *, self_healing: bool = False, escalation: bool = False) -> Policy:
    """The policy of a planned score: its retry, rate_limit, circuit_breaker,
    cost_limits and pacing settings, plus the submit-time exhaustion options."""
    return Policy(
        retry=_section(RetryPolicy, plan.retry),
        rate_limit=_section(RateLimitPolicy, plan.rate_limit),
        breaker=_section(BreakerPolicy, plan.circuit_breaker),
        cost=_cost(plan.cost_limits),
        pause_between_sheets_seconds=plan.pause_between_sheets_seconds,
        self_healing=self_healing,
        escalation=escalation,
    )


def _section(kind: Any, config: Any) -> Any:
    if config is None:
        return kind()
    names = kind.__dataclass_fields__
    values = {
        name: getattr(config, name) for name in names if getattr(config, name, None) is not None
    }
    return kind(**values)


def _cost(config: Any) -> CostPolicy:
    if config is None or getattr(config, "enabled", True) is False:
        return CostPolicy()
    return _section(CostPolicy, config)  # type: ignore[no-any-return]
