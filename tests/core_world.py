"""A world for testing the pure core: ``runtime.machine`` for every job, a
``runtime.leases.LeaseTable`` standing in for the BackendPool, and a fake clock.

``World`` carries out a batch of effects in the JobActor's order (withdraw,
releases, blocks, requests), grants after every pool message as the
BackendPool does, keeps grants and refusals in flight until a test (or
hypothesis) delivers them, and checks after every step what SEMANTICS promises:
S1 at every dispatch, the S22 limits, the budgets of S8, S9, S15 and S20, S11's
attempt counter, absorbing terminal statuses, and the pause state of S16, S24,
S25. Shared by the property-based tests and the rule-by-rule core tests.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime import events as ev
from runtime import machine
from runtime.breakers import BreakerState
from runtime.events import Event
from runtime.leases import Grant, LeaseTable
from runtime.machine import Effects
from runtime.outcomes import AttemptResult, OutcomeKind
from runtime.plan import Plan, SheetPlan, reverse_dependencies
from runtime.policy import BreakerPolicy, Policy
from runtime.state import TERMINAL_STATUSES, JobState, JobStatus, SheetState, SheetStatus

S = SheetStatus
START = 1_000.0
# S34 plus the two events the runtime added (cost.warning, sheet.cancelled).
KNOWN_EVENTS = {
    ev.JOB_STARTED, ev.JOB_RESUMED, ev.JOB_PAUSED, ev.JOB_COMPLETED, ev.JOB_FAILED,
    ev.JOB_CANCELLED, ev.SHEET_DISPATCHED, ev.SHEET_COMPLETED, ev.SHEET_PARTIAL,
    ev.SHEET_FAILED, ev.SHEET_RETRY_SCHEDULED, ev.SHEET_SKIPPED, ev.SHEET_FERMATA,
    ev.RATE_LIMIT_ACTIVE, ev.INSTRUMENT_FALLBACK, ev.COST_EXCEEDED, ev.COST_WARNING,
    ev.SHEET_CANCELLED,
}  # fmt: skip
# What an outcome says about the instrument's health, as actors/pool.py reads it (S21).
OK = AttemptResult(kind=OutcomeKind.SUCCESS, exit_code=0)
FAIL = AttemptResult(kind=OutcomeKind.FAILURE, exit_code=1, error="boom")
AUTH = AttemptResult(kind=OutcomeKind.AUTH_FAILED, exit_code=1, error="bad key")
TIMEOUT = AttemptResult(kind=OutcomeKind.TIMEOUT, error="timed out after 60 s")
CRASH = AttemptResult(kind=OutcomeKind.CRASHED, error="backend crashed")


def partial(passed: int, total: int, cost: float = 0.0) -> AttemptResult:
    """A successful exit with ``passed`` of ``total`` validations passing."""
    return AttemptResult(
        kind=OutcomeKind.SUCCESS, exit_code=0, cost=cost,
        validations_passed=passed, validations_total=total,
        validations=tuple((f"check {i}", i <= passed) for i in range(1, total + 1)),
    )  # fmt: skip


def rate_limited(wait_seconds: float | None = None) -> AttemptResult:
    return AttemptResult(kind=OutcomeKind.RATE_LIMITED, wait_seconds=wait_seconds, error="429")


def paid(cost: float, result: AttemptResult = OK) -> AttemptResult:
    return AttemptResult(
        kind=result.kind, exit_code=result.exit_code, error=result.error, cost=cost,
        validations_passed=result.validations_passed, validations_total=result.validations_total,
    )  # fmt: skip


def make_plan(
    count: int,
    *,
    dependencies: Mapping[int, Sequence[int]] | None = None,
    instrument: str = "a",
    instruments: Mapping[int, str] | None = None,
    fallbacks: Sequence[str] = (),
    per_sheet_fallbacks: Mapping[int, Sequence[str]] | None = None,
    model: str | None = None,
    max_parallel: int = 10,
    name: str = "job",
) -> Plan:
    """A plan built directly, without a score: sheet n on ``instruments[n]`` or ``instrument``."""
    deps = {num: tuple(values) for num, values in (dependencies or {}).items() if values}
    sheets = tuple(
        SheetPlan(
            num=num, start_item=num, end_item=num,
            instrument=(instruments or {}).get(num, instrument), timeout_seconds=60.0,
            stage=num, model=model,
            fallbacks=tuple((per_sheet_fallbacks or {}).get(num, fallbacks)),
        )
        for num in range(1, count + 1)
    )  # fmt: skip
    return Plan(
        name=name,
        sheets=sheets,
        dependencies=deps,
        dependents=reverse_dependencies(deps),
        max_parallel=max_parallel,
        instruments=frozenset(sheet.instrument for sheet in sheets),
    )


@dataclass(frozen=True)
class JobSpec:
    plan: Plan
    policy: Policy


@dataclass(frozen=True)
class PoolLimits:
    max_running: int = 10
    instruments: Mapping[str, int] = field(default_factory=dict)
    models: Mapping[tuple[str, str | None], int] = field(default_factory=dict)

    def table(self) -> LeaseTable:
        return LeaseTable(self.max_running, dict(self.instruments), dict(self.models))


@dataclass
class Attempt:
    job_id: str
    sheet_num: int
    attempt: int
    grant: Grant
    cancel_requested: bool = False


@dataclass
class World:
    specs: list[JobSpec]
    table: LeaseTable
    now: float = START
    jobs: dict[str, JobState] = field(default_factory=dict)
    outbox: list[tuple[str, str, tuple[Any, ...]]] = field(default_factory=list)
    running: dict[tuple[str, int], Attempt] = field(default_factory=dict)
    timers: list[tuple[float, int, str, int]] = field(default_factory=list)  # due, seq, job, sheet
    wake_at: float | None = None
    seq: int = 0
    terminal: dict[tuple[str, int], SheetStatus] = field(default_factory=dict)
    final: dict[str, JobStatus] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    # Attempts per sheet that spend a budget (every kind but rate limits and external
    # cancellations), since the sheet's last fermata "retry".
    budget_attempts: Counter[tuple[str, int]] = field(default_factory=Counter)
    rate_limits_in_a_row: Counter[tuple[str, int]] = field(default_factory=Counter)
    dispatches: Counter[tuple[str, int]] = field(default_factory=Counter)
    policies: dict[str, BreakerPolicy] = field(default_factory=dict)

    def start(self) -> None:
        for index, spec in enumerate(self.specs):
            job_id = f"job{index}"
            state = machine.new_job(job_id, spec.plan, spec.policy, seed=index)
            self.jobs[job_id] = state
            self.policies[job_id] = spec.policy.breaker
            fx = Effects()
            machine.start(state, self.now, fx)
            self.apply(job_id, fx)

    # --- carrying out effects, as the JobActor and the BackendPool do -------------------

    def apply(self, job_id: str, fx: Effects) -> None:
        state = self.jobs[job_id]
        for event in fx.events:
            assert event.job_id == job_id
            assert event.event in KNOWN_EVENTS, event.event
            assert 0 <= event.sheet_num <= state.total_sheets
            assert event.timestamp == self.now
            assert isinstance(event.data, dict)
            if event.sheet_num == 0:
                assert event.event.startswith(("job.", "cost.")), event
            assert job_id not in self.final, f"{event} after the job was final"
            if event.event == ev.INSTRUMENT_FALLBACK:
                # A new instrument: rate limits in a row count from zero again (S20).
                self.rate_limits_in_a_row[(job_id, event.sheet_num)] = 0
        self.events.extend(fx.events)
        if fx.withdraw_lease_requests:
            self.table.withdraw(job_id)
            self.pool_grant()
        # In JobActor's order: a rate limit's block reaches the pool before the
        # lease it came with is given back, so that slot is not granted again
        # on the blocked instrument.
        for block in fx.blocks:
            if self.table.block(block.instrument, block.model, block.until):
                self.arm_wake()
            self.pool_grant()
        if fx.released_leases:
            for lease, health in fx.released_leases:
                self.pool_release(lease, health)
            self.pool_grant()
        if fx.lease_requests:
            refused = [
                (request.sheet_num, request.instrument, "breaker open")
                for request in fx.lease_requests
                if not self.table.request(
                    job_id, request.sheet_num, request.instrument, request.model,
                    has_fallback=request.has_fallback, now=self.now,
                )
            ]  # fmt: skip
            if refused:
                self.outbox.append((job_id, "refused", tuple(refused)))
            self.pool_grant()
        for order in fx.attempts:
            self.started(job_id, state, order)
        for timer in fx.timers:
            self.arm(timer.due, job_id, timer.sheet_num)
        for sheet_num in fx.cancel_attempts:
            self.running[(job_id, sheet_num)].cancel_requested = True
        if fx.finished is not None:
            assert job_id not in self.final, "a job finishes once"
            assert fx.finished is state.status
            assert state.terminal_count == state.total_sheets
            assert not any(key[0] == job_id for key in self.running)
            self.final[job_id] = fx.finished

    def started(self, job_id: str, state: JobState, order: machine.AttemptOrder) -> None:
        num = order.sheet_num
        # S1: every dependency completed or skipped by the user or a condition.
        for dependency in state.plan.dependencies.get(num, ()):
            assert state.sheet(dependency).satisfies_dependents, (num, dependency)
        grant: Grant = order.lease
        assert (grant.job_id, grant.sheet_num) == (job_id, num)
        # The attempt runs on the instrument (and model) the sheet is on now.
        assert (grant.instrument, grant.model) == (order.instrument, order.model), (order, grant)
        assert (job_id, num) not in self.running
        self.running[(job_id, num)] = Attempt(job_id, num, order.attempt, grant)
        self.dispatches[(job_id, num)] += 1
        assert order.attempt == state.sheet(num).attempts

    def pool_release(self, lease: Grant, succeeded: bool | None) -> None:
        holder = self.table.holder(lease.lease_id)
        assert holder is not None, f"lease {lease.lease_id} released twice"
        policy = self.policies[holder.job_id]
        _, change = self.table.release(lease.lease_id, succeeded, policy, self.now)
        if change is BreakerState.OPEN:
            by_job: dict[str, list[tuple[int, str, str]]] = {}
            for job_id, sheet_num in self.table.refuse_fallback_requests(lease.instrument):
                by_job.setdefault(job_id, []).append((sheet_num, lease.instrument, "breaker open"))
            for job_id, refusals in by_job.items():
                self.outbox.append((job_id, "refused", tuple(refusals)))
            self.arm_wake()

    def pool_grant(self) -> None:
        by_job: dict[str, list[tuple[int, Grant]]] = {}
        for grant in self.table.grant(self.now):
            self.check_table_limits()
            by_job.setdefault(grant.job_id, []).append((grant.sheet_num, grant))
        for job_id, grants in by_job.items():
            self.outbox.append((job_id, "granted", tuple(grants)))

    def arm_wake(self) -> None:
        deadline = self.table.next_deadline(self.now)
        if deadline is None or (self.wake_at is not None and self.wake_at <= deadline):
            return
        self.wake_at = deadline
        self.arm(deadline, "", 0)

    def arm(self, due: float, job_id: str, sheet_num: int) -> None:
        self.seq += 1
        heapq.heappush(self.timers, (due, self.seq, job_id, sheet_num))

    # --- steps ------------------------------------------------------------------------

    def deliver(self, index: int) -> None:
        job_id, kind, items = self.outbox.pop(index % len(self.outbox))
        state, fx = self.jobs[job_id], Effects()
        if kind == "granted":
            if job_id in self.final:
                # The job actor has stopped: the pool takes the leases back.
                for _, grant in items:
                    self.table.release(grant.lease_id, None, BreakerPolicy(), self.now)
                self.pool_grant()
                return
            machine.on_leases_granted(state, items, self.now, fx)
        else:
            machine.on_leases_refused(state, items, self.now, fx)
        self.apply(job_id, fx)

    def finish(self, index: int, result: AttemptResult) -> None:
        key = sorted(self.running)[index % len(self.running)]
        attempt = self.running.pop(key)
        state, fx = self.jobs[key[0]], Effects()
        self.count_attempt(key, state, result.kind, attempt.cancel_requested)
        applied = machine.on_attempt_finished(state, key[1], attempt.attempt, result, self.now, fx)
        assert applied
        self.apply(key[0], fx)

    def lose(self, index: int) -> None:
        """S14: the sheet actor died without reporting."""
        key = sorted(self.running)[index % len(self.running)]
        attempt = self.running.pop(key)
        state, fx = self.jobs[key[0]], Effects()
        kind = OutcomeKind.CANCELLED if attempt.cancel_requested else OutcomeKind.CRASHED
        self.count_attempt(key, state, kind, attempt.cancel_requested)
        machine.on_attempt_lost(state, key[1], "sheet actor crashed", self.now, fx)
        assert state.sheet(key[1]).status is not S.DISPATCHED, "S14: never left dispatched"
        self.apply(key[0], fx)

    def count_attempt(
        self, key: tuple[str, int], state: JobState, kind: OutcomeKind, cancelled: bool
    ) -> None:
        """Book an attempt's end the way the rules count it (S9, S20, S26)."""
        if cancelled:
            # The job cancelled it: whatever it reports, the sheet ends cancelled.
            self.budget_attempts[key] += 1
            return
        if kind is OutcomeKind.RATE_LIMITED:
            self.rate_limits_in_a_row[key] += 1
            return
        self.rate_limits_in_a_row[key] = 0
        if kind is OutcomeKind.CANCELLED:
            self.dispatches[key] -= 1  # the runtime stopped it: no attempt spent
            return
        self.budget_attempts[key] += 1

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while self.timers and self.timers[0][0] <= target:
            due, _, job_id, sheet_num = heapq.heappop(self.timers)
            self.now = max(self.now, due)
            if job_id:
                state, fx = self.jobs[job_id], Effects()
                machine.on_timer(state, sheet_num, self.now, fx)
                self.apply(job_id, fx)
            else:
                self.wake_at = None
                self.table.expire_blocks(self.now)
                self.arm_wake()
                self.pool_grant()
            self.check()
        self.now = target

    def host(self, job_index: int, command: str) -> None:
        job_id = sorted(self.jobs)[job_index % len(self.jobs)]
        fx = Effects()
        getattr(machine, command)(self.jobs[job_id], self.now, fx)
        self.apply(job_id, fx)

    def resolve(self, pick: int, decision: str) -> bool:
        open_fermatas = [
            (job_id, sheet.num)
            for job_id, state in sorted(self.jobs.items())
            for sheet in state.sheets
            if sheet.status is S.FERMATA
        ]
        if not open_fermatas:
            return False
        job_id, num = open_fermatas[pick % len(open_fermatas)]
        fx = Effects()
        assert machine.resolve_fermata(self.jobs[job_id], num, decision, self.now, fx)
        if decision == "retry":
            self.budget_attempts[(job_id, num)] = 0
        self.apply(job_id, fx)
        return True

    def clear_rate_limit(self, instrument: str | None = None) -> int:
        """S19, as the pool does it: end blocks at once, grant what may run now."""
        cleared = self.table.clear_blocks(instrument)
        self.pool_grant()
        return len(cleared)

    def describe(self) -> str:
        """The story so far, for a failing example."""
        lines = [
            f"{e.timestamp - 1000:8.1f} {e.job_id}/{e.sheet_num} {e.event} {e.data}"
            for e in self.events
        ]
        lines.append(f"blocks={self.table.blocks} breakers={self.table.breakers}")
        lines.append(f"waiting={self.table.waiting()} leases={self.table.running}")
        return "\n".join(lines)

    # --- invariants --------------------------------------------------------------------

    def check_table_limits(self) -> None:
        table = self.table
        assert table.running <= table.max_running

    def check(self) -> None:
        table = self.table
        by_instrument: Counter[str] = Counter()
        by_key: Counter[tuple[str, str | None]] = Counter()
        for attempt in self.running.values():
            by_instrument[attempt.grant.instrument] += 1
            by_key[(attempt.grant.instrument, attempt.grant.model)] += 1
        # S22: running attempts never exceed the runtime's, an instrument's or a model's limit.
        assert len(self.running) <= table.max_running
        for instrument, count in by_instrument.items():
            assert count <= table.instrument_limits.get(instrument, count)
        for key, count in by_key.items():
            assert count <= table.model_limits.get(key, count)
        for job_id, state in self.jobs.items():
            self.check_job(job_id, state)

    def check_job(self, job_id: str, state: JobState) -> None:
        policy = state.policy
        running = sum(1 for key in self.running if key[0] == job_id)
        assert sum(state.counts.values()) == state.total_sheets
        assert state.running == state.counts.get(S.DISPATCHED, 0) == running
        # S22: the job's own limit, requests in flight included.
        assert state.running + len(state.lease_requested) <= state.plan.max_parallel
        if job_id in self.final:
            assert state.status is self.final[job_id], "a final job status never changes"
        elif not state.cancelling:
            paused = bool(state.paused_by_user or state.paused_for_cost or state.open_fermatas)
            assert (state.status is JobStatus.PAUSED) == paused, (state.status, paused)
            assert state.open_fermatas == state.counts.get(S.FERMATA, 0)
            if paused:
                assert not state.lease_requested, "a paused job asks for no lease (S25)"
        for sheet in state.sheets:
            key = (job_id, sheet.num)
            if key in self.terminal:
                assert sheet.status is self.terminal[key], "terminal statuses are absorbing"
            elif sheet.status in TERMINAL_STATUSES:
                self.terminal[key] = sheet.status
            if sheet.num in state.lease_requested:
                assert sheet.status in (S.READY, S.WAITING)
            chain = machine.instrument_chain(state, sheet.num)
            assert 0 <= sheet.instrument_index < len(chain)
            assert sheet.retries_used <= policy.retry.max_retries
            assert sheet.completion_attempts <= policy.retry.max_completion_attempts
            # S20: at most max_waits rate limits in a row; one more fails the sheet.
            assert self.rate_limits_in_a_row[key] <= policy.rate_limit.max_waits + 1
            if self.rate_limits_in_a_row[key] > policy.rate_limit.max_waits:
                assert sheet.status is S.FAILED, self.describe()
            # S8, S9, S15: per instrument the first attempt, max_retries retries and
            # max_completion_attempts completion attempts; one self-healing attempt.
            per_instrument = policy.retry.max_retries + 1 + policy.retry.max_completion_attempts
            bound = per_instrument * len(chain) + (1 if policy.self_healing else 0)
            assert self.budget_attempts[key] <= bound, (key, self.budget_attempts[key], bound)
            # S11: the attempt counter counts every attempt the sheet made.
            assert sheet.attempts == self.dispatches[key]
            if sheet.status is S.WAITING or sheet.status is S.RETRY_SCHEDULED:
                assert sheet.retry_at is not None

    # --- driving it -------------------------------------------------------------------------

    # --- conveniences for rule-by-rule tests ----------------------------------------------

    @classmethod
    def of(cls, *specs: tuple[Plan, Policy] | Plan, pool: PoolLimits | None = None) -> World:
        """Start a world with jobs ``job0``, ``job1``, ...; a bare plan gets default policy."""
        job_specs = [
            JobSpec(spec, Policy()) if isinstance(spec, Plan) else JobSpec(*spec) for spec in specs
        ]
        world = cls(job_specs, (pool or PoolLimits()).table())
        world.start()
        world.check()
        return world

    def state(self, job_id: str = "job0") -> JobState:
        return self.jobs[job_id]

    def sheet(self, num: int, job_id: str = "job0") -> SheetState:
        return self.jobs[job_id].sheet(num)

    def status(self, num: int, job_id: str = "job0") -> SheetStatus:
        return self.sheet(num, job_id).status

    def deliver_all(self) -> None:
        while self.outbox:
            self.deliver(0)
            self.check()

    def running_sheets(self, job_id: str = "job0") -> list[int]:
        return sorted(num for job, num in self.running if job == job_id)

    def end(self, num: int, result: AttemptResult = OK, job_id: str = "job0") -> None:
        """Deliver what is in flight, then end the sheet's running attempt with ``result``."""
        self.deliver_all()
        keys = sorted(self.running)
        self.finish(keys.index((job_id, num)), result)
        self.check()
        self.deliver_all()

    def settle(
        self,
        script: Callable[[str, int, int], AttemptResult] | Mapping[int, Any] | None = None,
        *,
        timers: bool = False,
    ) -> None:
        """Deliver, end attempts by ``script`` (job, sheet, attempt -> result; or
        sheet -> result or list of results by attempt), and with ``timers`` let
        the clock run to each next timer, until nothing moves."""
        play = _script(script)
        for _ in range(100_000):
            if self.outbox:
                self.deliver(0)
            elif self.running:
                job_id, num = min(self.running)
                attempt = self.running[(job_id, num)].attempt
                self.finish(0, play(job_id, num, attempt))
            elif timers and self.timers:
                self.advance(max(0.0, self.timers[0][0] - self.now))
            else:
                return
            self.check()
        raise AssertionError("the world never settled")

    def command(self, name: str, job_id: str = "job0") -> bool:
        fx = Effects()
        changed = bool(getattr(machine, name)(self.jobs[job_id], self.now, fx))
        self.apply(job_id, fx)
        self.check()
        return changed

    def decide(self, num: int, decision: str, job_id: str = "job0") -> bool:
        """S16: resolve the sheet's fermata."""
        fx = Effects()
        changed = machine.resolve_fermata(self.jobs[job_id], num, decision, self.now, fx)
        if changed and decision == "retry":
            self.budget_attempts[(job_id, num)] = 0
        self.apply(job_id, fx)
        self.check()
        return changed

    def names(self, num: int | None = None, job_id: str = "job0") -> list[str]:
        return [
            e.event
            for e in self.events
            if e.job_id == job_id and (num is None or e.sheet_num == num)
        ]

    def named(self, name: str, job_id: str = "job0") -> list[Event]:
        return [e for e in self.events if e.job_id == job_id and e.event == name]


def _script(
    script: Callable[[str, int, int], AttemptResult] | Mapping[int, Any] | None,
) -> Callable[[str, int, int], AttemptResult]:
    if script is None:
        return lambda _job, _num, _attempt: OK
    if callable(script):
        return script
    table = dict(script)

    def play(_job: str, num: int, attempt: int) -> AttemptResult:
        chosen = table.get(num, OK)
        if isinstance(chosen, AttemptResult):
            return chosen
        outcomes: list[AttemptResult] = list(chosen)
        return outcomes[min(attempt, len(outcomes)) - 1]

    return play
