"""Lease bookkeeping for the backend pool: who may run an attempt next.

Owns the queues of lease requests per (instrument, model), the running counts
overall, per instrument and per model (S22), instrument-wide rate-limit blocks
(S17-S19), the circuit breakers (S21), and the grant order: round-robin between
jobs, FIFO within a job, keys in turn. Pure data and functions; the
BackendPool actor calls it and carries out its answers. Kept apart from
``runtime.machine`` because it decides across jobs, while the machine decides
within one.

Cost per call is proportional to the requests it grants or drops and to the
number of (instrument, model) keys, never to the number of sheets waiting.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.breakers import BreakerState, CircuitBreaker
from runtime.policy import BreakerPolicy

Key = tuple[str, str | None]  # (instrument, model); model None: the instrument's default


@dataclass(frozen=True, slots=True)
class Grant:
    lease_id: int
    job_id: str
    sheet_num: int
    instrument: str
    model: str | None


@dataclass(frozen=True, slots=True)
class _Request:
    sheet_num: int
    has_fallback: bool


@dataclass(slots=True)
class _KeyQueue:
    """Waiting requests for one key, one FIFO per job, jobs in turn."""

    jobs: deque[str] = field(default_factory=deque)
    per_job: dict[str, deque[_Request]] = field(default_factory=dict)

    def push(self, job_id: str, request: _Request) -> None:
        waiting = self.per_job.get(job_id)
        if waiting is None:
            waiting = self.per_job[job_id] = deque()
            self.jobs.append(job_id)
        waiting.append(request)

    def pop(self) -> tuple[str, _Request]:
        job_id = self.jobs.popleft()
        waiting = self.per_job[job_id]
        request = waiting.popleft()
        if waiting:
            self.jobs.append(job_id)
        else:
            del self.per_job[job_id]
        return job_id, request

    def drop_job(self, job_id: str) -> int:
        waiting = self.per_job.pop(job_id, None)
        if waiting is None:
            return 0
        self.jobs.remove(job_id)
        return len(waiting)

    def take_with_fallback(self) -> list[tuple[str, int]]:
        """Remove and return every request whose sheet has a fallback to move to."""
        taken: list[tuple[str, int]] = []
        for job_id in list(self.per_job):
            kept = deque(request for request in self.per_job[job_id] if not request.has_fallback)
            taken.extend(
                (job_id, request.sheet_num)
                for request in self.per_job[job_id]
                if request.has_fallback
            )
            if kept:
                self.per_job[job_id] = kept
            else:
                del self.per_job[job_id]
                self.jobs.remove(job_id)
        return taken


@dataclass(slots=True)
class LeaseTable:
    """All leases of one runtime: ``max_running`` overall, optional limits per
    instrument and per (instrument, model)."""

    max_running: int
    instrument_limits: dict[str, int] = field(default_factory=dict)
    model_limits: dict[Key, int] = field(default_factory=dict)
    # An instrument's default model: a sheet that names no model runs on it, so
    # it counts against that model's limit and waits out that model's blocks.
    default_models: dict[str, str] = field(default_factory=dict)
    running: int = 0
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    blocks: dict[Key, float] = field(default_factory=dict)
    _running_by_instrument: Counter[str] = field(default_factory=Counter)
    _running_by_key: Counter[Key] = field(default_factory=Counter)
    _next_id: int = 1
    _queues: dict[Key, _KeyQueue] = field(default_factory=dict)
    _leases: dict[int, Grant] = field(default_factory=dict)
    _turn: deque[Key] = field(default_factory=deque)

    # --- requests --------------------------------------------------------------

    def request(
        self,
        job_id: str,
        sheet_num: int,
        instrument: str,
        model: str | None = None,
        *,
        has_fallback: bool = False,
        now: float = 0.0,
    ) -> bool:
        """Queue a request; False if it is refused at once (its instrument's
        breaker is open and the sheet has a fallback to move to)."""
        if has_fallback and self._breaker(instrument).is_open(now):
            return False
        self._queue((instrument, model)).push(job_id, _Request(sheet_num, has_fallback))
        return True

    def withdraw(self, job_id: str) -> int:
        """Drop every waiting request of a job; returns how many were dropped."""
        return sum(queue.drop_job(job_id) for queue in self._queues.values())

    def waiting(self) -> int:
        return sum(
            len(waiting) for queue in self._queues.values() for waiting in queue.per_job.values()
        )

    # --- leases ---------------------------------------------------------------

    def grant(self, now: float) -> list[Grant]:
        """Grant as many leases as the limits, blocks and breakers allow, fairly."""
        grants: list[Grant] = []
        idle_rounds = 0
        # Keys take turns too, so one busy instrument cannot starve another.
        while self.running < self.max_running and self._turn and idle_rounds < len(self._turn):
            key = self._turn[0]
            self._turn.rotate(-1)
            queue = self._queues[key]
            if not queue.jobs or not self._may_run(key, now):
                idle_rounds += 1
                continue
            idle_rounds = 0
            job_id, request = queue.pop()
            instrument, model = key
            grant = Grant(self._next_id, job_id, request.sheet_num, instrument, model)
            self._next_id += 1
            self._leases[grant.lease_id] = grant
            self._running_by_instrument[instrument] += 1
            self._running_by_key[self._model_key(key)] += 1
            self.running += 1
            self._breaker(instrument).granted(grant.lease_id)
            grants.append(grant)
        return grants

    def release(
        self, lease_id: int, succeeded: bool | None, policy: BreakerPolicy, now: float
    ) -> tuple[Grant | None, BreakerState | None]:
        """Give a lease back. ``succeeded`` is the execution outcome for the
        instrument's breaker (None when the attempt says nothing about it)."""
        grant = self._leases.pop(lease_id, None)
        if grant is None:
            return None, None
        self.running -= 1
        self._running_by_instrument[grant.instrument] -= 1
        self._running_by_key[self._model_key((grant.instrument, grant.model))] -= 1
        return grant, self._breaker(grant.instrument).record(lease_id, succeeded, policy, now)

    def release_job(self, job_id: str) -> int:
        """Forget a job whose actor died: drop its requests, free its leases."""
        dropped = self.withdraw(job_id)
        held = [lease_id for lease_id, grant in self._leases.items() if grant.job_id == job_id]
        for lease_id in held:
            self.release(lease_id, None, BreakerPolicy(), 0.0)
        return dropped + len(held)

    def jobs_on(self, instrument: str, model: str | None = None) -> list[str]:
        """Jobs with requests waiting for, or leases held on, an instrument (only
        its ``model`` if given), for instrument-wide events."""

        def matches(key: Key) -> bool:
            # A request naming no model is on its default model's key too.
            return key[0] == instrument and (model is None or self._model_key(key)[1] == model)

        jobs = {job for key, queue in self._queues.items() if matches(key) for job in queue.per_job}
        jobs.update(
            grant.job_id
            for grant in self._leases.values()
            if matches((grant.instrument, grant.model))
        )
        return sorted(jobs)

    def breaker_records(self) -> dict[str, dict[str, Any]]:
        return {name: breaker.to_record() for name, breaker in self.breakers.items()}

    def restore_breakers(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        for name, record in records.items():
            self.breakers[name] = CircuitBreaker.from_record(name, record)

    def holder(self, lease_id: int) -> Grant | None:
        return self._leases.get(lease_id)

    def refuse_fallback_requests(self, instrument: str) -> list[tuple[str, int]]:
        """After a breaker opened: take out the waiting requests that can move on."""
        taken: list[tuple[str, int]] = []
        for (key_instrument, _), queue in self._queues.items():
            if key_instrument == instrument:
                taken.extend(queue.take_with_fallback())
        return taken

    # --- rate limits --------------------------------------------------------------

    def block(self, instrument: str, model: str | None, until: float) -> bool:
        """S17, S18: block a key until ``until``; a later block extends it.
        Returns True if the block is new or longer."""
        key = (instrument, model)
        if self.blocks.get(key, 0.0) >= until:
            return False
        self.blocks[key] = until
        return True

    def expire_blocks(self, now: float) -> list[Key]:
        ended = [key for key, until in self.blocks.items() if until <= now]
        for key in ended:
            del self.blocks[key]
        return ended

    def clear_blocks(self, instrument: str | None = None) -> list[Key]:
        """S19: end blocks at once (all, or one instrument's); returns the keys cleared."""
        cleared = [key for key in self.blocks if instrument is None or key[0] == instrument]
        for key in cleared:
            del self.blocks[key]
        return cleared

    def next_deadline(self, now: float) -> float | None:
        """When a block ends or an open breaker may try again, whichever is first."""
        deadlines = [until for until in self.blocks.values() if until > now]
        deadlines += [
            breaker.open_until
            for breaker in self.breakers.values()
            if breaker.state is BreakerState.OPEN and breaker.open_until > now
        ]
        return min(deadlines, default=None)

    # --- internals ------------------------------------------------------------------

    def _may_run(self, key: Key, now: float) -> bool:
        instrument = key[0]
        limit = self.instrument_limits.get(instrument)
        if limit is not None and self._running_by_instrument[instrument] >= limit:
            return False
        model_key = self._model_key(key)
        model_limit = self.model_limits.get(model_key)
        if model_limit is not None and self._running_by_key[model_key] >= model_limit:
            return False
        # (instrument, None) is an instrument-wide block; the model's own block
        # also holds the sheets that name no model but run on it by default.
        if self.blocks.get((instrument, None), 0.0) > now or self.blocks.get(model_key, 0.0) > now:
            return False
        return self._breaker(instrument).allows(now)

    def _model_key(self, key: Key) -> Key:
        """The model a request or lease really uses: named, or the default."""
        instrument, model = key
        if model is None and instrument in self.default_models:
            return instrument, self.default_models[instrument]
        return key

    def _breaker(self, instrument: str) -> CircuitBreaker:
        breaker = self.breakers.get(instrument)
        if breaker is None:
            breaker = self.breakers[instrument] = CircuitBreaker(instrument)
        return breaker

    def _queue(self, key: Key) -> _KeyQueue:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _KeyQueue()
            self._turn.append(key)
        return queue
