"""Property-based tests of the pure core: ``runtime.machine`` for every job, a
``runtime.leases.LeaseTable`` standing in for the BackendPool, a fake clock.

Hypothesis draws random dependency graphs (S1-S3), instruments with fallback
chains and models, limits (S22), policies (S8-S10, S15, S17-S21, S23, S24) and a
random sequence of steps: messages delivered in any order (lease grants and
refusals are in flight, as between actors), attempts ending with any outcome
(success, partial pass rates, failure, rate limit with or without a wait,
authentication failure, crash, timeout, external cancellation, a lost sheet
actor), host calls (pause, resume, cancel, resolve a fermata, clear rate
limits) and clock advances. After every step it checks the invariants the
rules promise, and at the end it lets the clock run on with the fermatas
resolved and the pauses lifted, and checks that every job reaches a final
status (S27).

The world (``core_world.World``) carries out effects in the JobActor's order
and grants after every pool message, as the BackendPool does.
"""

from __future__ import annotations

import os
import random

from core_world import JobSpec, PoolLimits, World
from hypothesis import HealthCheck, given, settings
from hypothesis import event as statistic
from hypothesis import strategies as st

from runtime import machine
from runtime.outcomes import AttemptResult, OutcomeKind
from runtime.plan import Plan, SheetPlan, reverse_dependencies
from runtime.policy import BreakerPolicy, CostPolicy, Policy, RateLimitPolicy, RetryPolicy
from runtime.state import FINAL_JOB_STATUSES, JobStatus, SheetStatus

S = SheetStatus
INSTRUMENTS = ("a", "b", "c")
DELAYS = (0.5, 3.0, 20.0, 61.0, 400.0, 4000.0)


# --- what hypothesis draws ---------------------------------------------------------------


@st.composite
def plans(draw: st.DrawFn, job: int) -> Plan:
    count = draw(st.integers(0, 7))
    dependencies: dict[int, tuple[int, ...]] = {}
    sheets = []
    for num in range(1, count + 1):
        earlier = list(range(1, num))
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        if deps:
            dependencies[num] = tuple(sorted(deps))
        instrument = draw(st.sampled_from(INSTRUMENTS))
        others = [name for name in INSTRUMENTS if name != instrument]
        fallbacks = tuple(draw(st.lists(st.sampled_from(others), unique=True, max_size=2)))
        model = draw(st.sampled_from((None, None, "m")))
        sheets.append(
            SheetPlan(
                num=num, start_item=num, end_item=num, instrument=instrument,
                timeout_seconds=60.0, stage=num, model=model, fallbacks=fallbacks,
            )
        )  # fmt: skip
    return Plan(
        name=f"job{job}",
        sheets=tuple(sheets),
        dependencies=dependencies,
        dependents=reverse_dependencies(dependencies),
        max_parallel=draw(st.integers(1, 3)),
        instruments=frozenset(sheet.instrument for sheet in sheets),
    )


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    retry = RetryPolicy(
        max_retries=draw(st.integers(0, 2)),
        base_delay_seconds=draw(st.sampled_from((0.0, 2.0, 30.0))),
        max_delay_seconds=draw(st.sampled_from((5.0, 100.0))),
        exponential_base=draw(st.sampled_from((1.0, 2.0, 3.0))),
        jitter=draw(st.booleans()),
        max_completion_attempts=draw(st.integers(0, 2)),
        completion_delay_seconds=draw(st.sampled_from((0.0, 5.0))),
        completion_threshold_percent=draw(st.sampled_from((30.0, 50.0, 100.0))),
    )
    return Policy(
        retry=retry,
        rate_limit=RateLimitPolicy(
            wait_minutes=draw(st.sampled_from((0.5, 1.0, 60.0))), max_waits=draw(st.integers(1, 3))
        ),
        breaker=BreakerPolicy(
            enabled=draw(st.booleans()),
            failure_threshold=draw(st.integers(1, 3)),
            recovery_timeout_seconds=draw(st.sampled_from((10.0, 300.0))),
        ),
        cost=draw(
            st.sampled_from(
                (
                    CostPolicy(),
                    CostPolicy(max_cost_per_job=2.0, warn_at_percent=50.0),
                    CostPolicy(max_cost_per_sheet=1.0),
                )
            )
        ),
        pause_between_sheets_seconds=draw(st.sampled_from((0.0, 0.0, 5.0))),
        self_healing=draw(st.booleans()),
        escalation=draw(st.booleans()),
    )


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[JobSpec], PoolLimits]:
    specs = [JobSpec(draw(plans(job)), draw(policies())) for job in range(draw(st.integers(1, 2)))]
    limits = draw(st.dictionaries(st.sampled_from(INSTRUMENTS), st.integers(1, 2), max_size=2))
    model_limits: dict[tuple[str, str | None], int] = {("a", "m"): 1} if draw(st.booleans()) else {}
    return specs, PoolLimits(draw(st.integers(1, 4)), limits, model_limits)


# One integer per step: the low four bits choose the action, the rest its parameter.
STEPS = st.lists(st.integers(0, 2**24 - 1), min_size=10, max_size=100)


# --- driving it -------------------------------------------------------------------------


def outcome(param: int) -> AttemptResult:
    rng = random.Random(param)
    cost = rng.choice((0.0, 0.0, 0.4, 1.5))
    kind = rng.randrange(10)
    if kind <= 2:
        return AttemptResult(kind=OutcomeKind.SUCCESS, exit_code=0, cost=cost)
    if kind == 3:
        total = rng.randint(1, 4)
        passed = rng.randint(0, total)
        validations = tuple((f"v{i}", i < passed) for i in range(total))
        return AttemptResult(
            kind=OutcomeKind.SUCCESS, exit_code=0, cost=cost, validations_passed=passed,
            validations_total=total, validations=validations,
        )  # fmt: skip
    if kind == 4:
        return AttemptResult(kind=OutcomeKind.FAILURE, exit_code=1, error="boom", cost=cost)
    if kind == 5:
        wait = rng.choice((None, 0.0, 30.0, 120.0))
        return AttemptResult(kind=OutcomeKind.RATE_LIMITED, wait_seconds=wait, error="429")
    if kind == 6:
        return AttemptResult(kind=OutcomeKind.AUTH_FAILED, error="bad key")
    if kind == 7:
        return AttemptResult(kind=OutcomeKind.CRASHED, error="crash")
    if kind == 8:
        return AttemptResult(kind=OutcomeKind.TIMEOUT, error="timed out")
    return AttemptResult(kind=OutcomeKind.CANCELLED, error="runtime stopping")


def step(world: World, action: int, param: int) -> None:
    if action <= 3 and world.outbox:
        world.deliver(param)
    elif action <= 7 and world.running:
        result = outcome(param)
        key = sorted(world.running)[param % len(world.running)]
        if world.running[key].cancel_requested and param % 3:
            # S26: a cancelled attempt usually ends cancelled; sometimes it won the race.
            result = AttemptResult(kind=OutcomeKind.CANCELLED, error="cancelled")
        world.finish(param, result)
    elif action == 8 and world.running:
        world.lose(param)
    elif action == 9:
        world.advance(DELAYS[param % len(DELAYS)])
    elif action == 10:
        world.host(param, "pause")
    elif action == 11:
        world.host(param, "resume")
    elif action == 12 and param % 4 == 0:
        world.host(param, "cancel")
    elif action == 13:
        world.resolve(param, machine.FERMATA_DECISIONS[param % 4])
    elif action == 14:
        world.clear_rate_limit((None, *INSTRUMENTS)[param % 4])
    else:
        world.advance(DELAYS[param % 3])


def run_on(world: World, rng: random.Random) -> None:
    """The clock runs on, no fermata stays open, no pause stays: every job ends (S27)."""
    for _ in range(20_000):
        if len(world.final) == len(world.jobs):
            return
        acted = False
        for job_id, state in sorted(world.jobs.items()):
            if job_id in world.final or state.cancelling:
                continue
            if state.paused_by_user:
                world.host(int(job_id[3:]), "resume")
                acted = True
            elif state.paused_for_cost:
                world.host(int(job_id[3:]), "cancel")  # S24: over budget it stays paused
                acted = True
        while world.resolve(rng.randrange(100), rng.choice(("skip", "accept", "fail", "retry"))):
            acted = True
        if acted:
            world.check()
        elif world.outbox:
            world.deliver(rng.randrange(len(world.outbox)))
        elif world.running:
            world.finish(rng.randrange(len(world.running)), outcome(rng.randrange(2**20)))
        elif world.timers:
            world.advance(max(0.0, world.timers[0][0] - world.now))
        elif len(world.final) < len(world.jobs):
            stuck = {
                job_id: (state.status, dict(state.counts), sorted(state.ready_queue))
                for job_id, state in world.jobs.items()
                if job_id not in world.final
            }
            raise AssertionError(
                f"nothing left to happen, yet jobs are not final: {stuck}\n{world.describe()}"
            )
        world.check()
    raise AssertionError("the jobs never settled")


@settings(
    # ENSEMBLE_PROPERTY_EXAMPLES=20000 searches longer; 500 is the suite's default.
    max_examples=int(os.environ.get("ENSEMBLE_PROPERTY_EXAMPLES", "500")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(worlds(), STEPS, st.integers(0, 2**32))
def test_S1_S2_S8_to_S28_core_invariants_hold_under_random_steps(
    world_parts: tuple[list[JobSpec], PoolLimits],
    steps: list[int],
    seed: int,
) -> None:
    """Terminal statuses never change (S2, S26), no sheet is dispatched before its
    dependencies are satisfied (S1), running attempts never exceed any limit (S22),
    attempt counters stay within their budgets (S8, S9, S15, S20), a paused job asks
    for nothing (S16, S24, S25), and every job reaches a final status once the clock
    runs on and no fermata is open (S27, S28)."""
    specs, limits = world_parts
    world = World(specs, limits.table())
    world.start()
    world.check()
    for value in steps:
        step(world, value & 15, value >> 4)
        world.check()
    for name in sorted({e.event for e in world.events}):
        statistic("random phase: " + name)
    run_on(world, random.Random(seed))
    for name in sorted({e.event for e in world.events}):
        statistic("whole run: " + name)
    while world.outbox:
        world.deliver(0)
    for job_id, state in world.jobs.items():
        assert state.status in FINAL_JOB_STATUSES
        assert world.final[job_id] is state.status
        assert all(sheet.is_terminal for sheet in state.sheets)
        if state.status is JobStatus.COMPLETED:
            assert all(sheet.status in (S.COMPLETED, S.SKIPPED) for sheet in state.sheets), (
                "S27: completed only if every sheet completed or was skipped"
            )
        if state.status is JobStatus.FAILED:
            assert state.counts.get(S.FAILED, 0) > 0
    # Every lease went back to the pool.
    assert world.table.running == 0
