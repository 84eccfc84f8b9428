"""Sheet and job state, and their checkpoint form.

Owns the statuses of SEMANTICS.md, the mutable per-job state the decision core
works on, and the conversion of that state to and from the plain dicts stored in
the journal and the snapshot. It decides nothing: transitions live in
``runtime.machine``.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from runtime.plan import Plan
from runtime.policy import Policy


class SheetStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    DISPATCHED = "dispatched"
    WAITING = "waiting"
    RETRY_SCHEDULED = "retry_scheduled"
    FERMATA = "fermata"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {SheetStatus.COMPLETED, SheetStatus.FAILED, SheetStatus.SKIPPED, SheetStatus.CANCELLED}
)


class JobStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class SkipReason(StrEnum):
    """Why a sheet was skipped; only a cascade leaves dependents unsatisfied (S1)."""

    CONDITION = "condition"
    USER = "user"
    CASCADE = "cascade"


# What a sheet's record carries besides its number and status: everything a
# restart restores exactly (S29). to_record, from_record and machine.recover
# go by this list; a test keeps the record's keys equal to it.
CHECKPOINTED_FIELDS = (
    "attempts",
    "retries_used",
    "completion_attempts",
    "completion_pending",
    "instrument_index",
    "healing_used",
    "rate_limit_waits",
    "cost",
    "last_error",
    "error_kind",
    "skip_reason",
    "output_tail",
    "retry_at",
    "validations",
)


@dataclass(slots=True)
class SheetState:
    """One sheet's progress. Fields up to ``validations`` are checkpointed.

    ``attempts`` counts every attempt (S11); ``retries_used`` and
    ``completion_attempts`` are the budgets of the current instrument (S8, S9),
    refreshed on a fallback; ``instrument_index`` is 0 for the sheet's own
    instrument and k for its k-th fallback (S15). ``retry_at`` is the deadline of
    a scheduled retry or of the rate-limit wait the sheet is in.
    """

    num: int
    status: SheetStatus = SheetStatus.PENDING
    attempts: int = 0
    retries_used: int = 0
    completion_attempts: int = 0
    completion_pending: bool = False
    instrument_index: int = 0
    healing_used: bool = False
    rate_limit_waits: int = 0
    cost: float = 0.0
    last_error: str | None = None
    error_kind: str | None = None
    skip_reason: SkipReason | None = None
    output_tail: str = ""
    retry_at: float | None = None
    validations: tuple[tuple[str, bool], ...] = ()
    # Runtime-only bookkeeping, rebuilt on recovery.
    unmet_dependencies: int = 0
    lease: Any = None
    cancel_requested: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def satisfies_dependents(self) -> bool:
        """S1: completed, or skipped by the user or a condition (not a cascade)."""
        if self.status is SheetStatus.COMPLETED:
            return True
        return self.status is SheetStatus.SKIPPED and self.skip_reason is not SkipReason.CASCADE

    def to_record(self) -> dict[str, Any]:
        """``num``, ``status`` and ``CHECKPOINTED_FIELDS``, as stored in the
        journal and the snapshot."""
        return {
            "num": self.num,
            "status": self.status.value,
            "attempts": self.attempts,
            "retries_used": self.retries_used,
            "completion_attempts": self.completion_attempts,
            "completion_pending": self.completion_pending,
            "instrument_index": self.instrument_index,
            "healing_used": self.healing_used,
            "rate_limit_waits": self.rate_limit_waits,
            "cost": self.cost,
            "last_error": self.last_error,
            "error_kind": self.error_kind,
            "skip_reason": self.skip_reason.value if self.skip_reason else None,
            "output_tail": self.output_tail,
            "retry_at": self.retry_at,
            "validations": [list(item) for item in self.validations],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SheetState:
        skip = record.get("skip_reason")
        return cls(
            num=int(record["num"]),
            status=SheetStatus(record["status"]),
            attempts=int(record.get("attempts", 0)),
            retries_used=int(record.get("retries_used", 0)),
            completion_attempts=int(record.get("completion_attempts", 0)),
            completion_pending=bool(record.get("completion_pending", False)),
            instrument_index=int(record.get("instrument_index", 0)),
            healing_used=bool(record.get("healing_used", False)),
            rate_limit_waits=int(record.get("rate_limit_waits", 0)),
            cost=float(record.get("cost", 0.0)),
            last_error=record.get("last_error"),
            error_kind=record.get("error_kind"),
            skip_reason=SkipReason(skip) if skip else None,
            output_tail=record.get("output_tail", ""),
            retry_at=record.get("retry_at"),
            validations=tuple(
                (str(name), bool(passed)) for name, passed in record.get("validations", ())
            ),
        )


@dataclass(slots=True)
class JobState:
    """One job: its plan, its sheets and the counters kept up to date on every change.

    ``counts`` and ``running`` are maintained incrementally so that no decision
    walks all sheets (DESIGN rule 5).
    """

    job_id: str
    plan: Plan
    sheets: list[SheetState]
    policy: Policy = field(default_factory=Policy)
    status: JobStatus = JobStatus.RUNNING
    paused_by_user: bool = False
    paused_for_cost: bool = False
    open_fermatas: int = 0
    storage_error: str | None = None
    paced_until: float | None = None
    cost_warned: bool = False
    cancelling: bool = False
    cost: float = 0.0
    counts: dict[SheetStatus, int] = field(default_factory=dict)
    ready_queue: deque[int] = field(default_factory=deque)
    lease_requested: set[int] = field(default_factory=set)
    running: int = 0
    started: bool = False
    rng: random.Random = field(default_factory=random.Random)
    variables: dict[str, Any] = field(default_factory=dict)  # the score's prompt.variables

    @property
    def total_sheets(self) -> int:
        return len(self.sheets)

    def sheet(self, num: int) -> SheetState:
        return self.sheets[num - 1]

    def has_sheet(self, num: int) -> bool:
        return 1 <= num <= len(self.sheets)

    @property
    def terminal_count(self) -> int:
        counts = self.counts
        return sum(counts.get(status, 0) for status in TERMINAL_STATUSES)

    def job_record(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "paused_by_user": self.paused_by_user,
            "paused_for_cost": self.paused_for_cost,
            "paced_until": self.paced_until,
            "cost_warned": self.cost_warned,
            "cancelling": self.cancelling,
            "cost": self.cost,
        }


@dataclass(frozen=True, slots=True)
class SheetResult:
    num: int
    status: SheetStatus
    attempts: int
    cost: float
    error: str | None
    error_kind: str | None

    @classmethod
    def of(cls, sheet: SheetState) -> SheetResult:
        return cls(
            sheet.num, sheet.status, sheet.attempts, sheet.cost, sheet.last_error, sheet.error_kind
        )


@dataclass(frozen=True, slots=True)
class JobResult:
    """What ``JobHandle.wait()`` returns: the final status and every sheet's fate."""

    job_id: str
    status: JobStatus
    cost: float
    sheets: dict[int, SheetResult]
    error: str | None = None
    name: str = ""

    def count(self, status: SheetStatus) -> int:
        return sum(1 for sheet in self.sheets.values() if sheet.status is status)


@dataclass(frozen=True, slots=True)
class JobProgress:
    """A cheap snapshot of a job for status displays: counts only."""

    job_id: str
    name: str
    status: JobStatus
    total_sheets: int
    counts: dict[str, int]
    cost: float
    # Why a paused job is paused: "user", "cost", "fermata" or "storage: <error>".
    pause_reason: str | None = None

    @property
    def done(self) -> int:
        return self.counts.get("completed", 0) + self.counts.get("skipped", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def running(self) -> int:
        return self.counts.get("dispatched", 0)
