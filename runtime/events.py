"""Observer events (SEMANTICS S34).

Owns the event record and the names of every event kind. Events describe what
already happened; nothing in the runtime reacts to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JOB_STARTED = "job.started"
JOB_RESUMED = "job.resumed"
JOB_PAUSED = "job.paused"
JOB_COMPLETED = "job.completed"
JOB_FAILED = "job.failed"
JOB_CANCELLED = "job.cancelled"
SHEET_DISPATCHED = "sheet.dispatched"
SHEET_COMPLETED = "sheet.completed"
SHEET_PARTIAL = "sheet.partial"
SHEET_FAILED = "sheet.failed"
SHEET_RETRY_SCHEDULED = "sheet.retry_scheduled"
SHEET_SKIPPED = "sheet.skipped"
SHEET_SKIP_CHECKED = "sheet.skip_checked"
SHEET_CANCELLED = "sheet.cancelled"
SHEET_FERMATA = "sheet.fermata"
RATE_LIMIT_ACTIVE = "rate_limit.active"
RATE_LIMIT_CLEARED = "rate_limit.cleared"
INSTRUMENT_FALLBACK = "instrument.fallback"
CIRCUIT_OPENED = "circuit.opened"
CIRCUIT_CLOSED = "circuit.closed"
COST_EXCEEDED = "cost.exceeded"
COST_WARNING = "cost.warning"
CONCERT_NEXT = "concert.next"
RUNTIME_ERROR = "runtime.error"


@dataclass(frozen=True, slots=True)
class Event:
    """One observer event. ``sheet_num`` is 0 for job-level events."""

    job_id: str
    sheet_num: int
    event: str
    timestamp: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "sheet_num": self.sheet_num,
            "event": self.event,
            "data": self.data,
            "timestamp": self.timestamp,
        }
