"""Lease bookkeeping for the backend pool: who may run an attempt next (S22).

Owns the queues of lease requests per instrument, the running count per
instrument and overall, and the grant order: round-robin between jobs, FIFO
within a job. Pure data and functions; the BackendPool actor calls it and sends
the grants. Kept apart from ``runtime.machine`` because it decides across jobs,
while the machine decides within one.

Cost per call is proportional to the requests it grants or drops and to the
number of instruments, never to the number of sheets waiting.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Grant:
    lease_id: int
    job_id: str
    sheet_num: int
    instrument: str


@dataclass(slots=True)
class _InstrumentQueue:
    """Waiting requests for one instrument, one FIFO per job, jobs in turn."""

    limit: int | None
    running: int = 0
    jobs: deque[str] = field(default_factory=deque)
    per_job: dict[str, deque[int]] = field(default_factory=dict)

    def has_room(self) -> bool:
        return self.limit is None or self.running < self.limit


@dataclass(slots=True)
class LeaseTable:
    """All leases of one runtime: ``max_running`` overall, optional limits per instrument."""

    max_running: int
    instrument_limits: dict[str, int] = field(default_factory=dict)
    running: int = 0
    _next_id: int = 1
    _queues: dict[str, _InstrumentQueue] = field(default_factory=dict)
    _leases: dict[int, Grant] = field(default_factory=dict)
    _turn: deque[str] = field(default_factory=deque)

    def request(self, job_id: str, sheet_num: int, instrument: str) -> None:
        queue = self._queue(instrument)
        waiting = queue.per_job.get(job_id)
        if waiting is None:
            waiting = queue.per_job[job_id] = deque()
            queue.jobs.append(job_id)
        waiting.append(sheet_num)

    def withdraw(self, job_id: str) -> int:
        """Drop every waiting request of a job; returns how many were dropped."""
        dropped = 0
        for queue in self._queues.values():
            waiting = queue.per_job.pop(job_id, None)
            if waiting is not None:
                dropped += len(waiting)
                queue.jobs.remove(job_id)
        return dropped

    def release(self, lease_id: int) -> Grant | None:
        grant = self._leases.pop(lease_id, None)
        if grant is None:
            return None
        self.running -= 1
        self._queues[grant.instrument].running -= 1
        return grant

    def lease(self, lease_id: int) -> Grant | None:
        return self._leases.get(lease_id)

    def waiting(self) -> int:
        return sum(
            len(waiting) for queue in self._queues.values() for waiting in queue.per_job.values()
        )

    def grant(self) -> list[Grant]:
        """Grant as many leases as the limits allow, fairly, and return them."""
        grants: list[Grant] = []
        idle_rounds = 0
        # Instruments take turns too, so one busy instrument cannot starve another.
        while self.running < self.max_running and self._turn and idle_rounds < len(self._turn):
            instrument = self._turn[0]
            self._turn.rotate(-1)
            queue = self._queues[instrument]
            if not queue.jobs or not queue.has_room():
                idle_rounds += 1
                continue
            idle_rounds = 0
            job_id = queue.jobs.popleft()
            waiting = queue.per_job[job_id]
            sheet_num = waiting.popleft()
            if waiting:
                queue.jobs.append(job_id)
            else:
                del queue.per_job[job_id]
            grant = Grant(self._next_id, job_id, sheet_num, instrument)
            self._next_id += 1
            self._leases[grant.lease_id] = grant
            queue.running += 1
            self.running += 1
            grants.append(grant)
        return grants

    def _queue(self, instrument: str) -> _InstrumentQueue:
        queue = self._queues.get(instrument)
        if queue is None:
            queue = _InstrumentQueue(limit=self.instrument_limits.get(instrument))
            self._queues[instrument] = queue
            self._turn.append(instrument)
        return queue
