"""Rules S6-S28 on the pure core: ``runtime.machine`` with a lease table for a pool.

Each test builds a plan and a policy directly, drives ``core_world.World`` (which
checks S1, the S22 limits, the budgets and absorbing terminal statuses after
every step) and asserts on statuses, counters, timers and events. Time is the
world's fake clock; nothing sleeps. End-to-end versions through ``runtime.start``
live in ``test_resilience_runtime.py``.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from core_world import (
    AUTH,
    CRASH,
    FAIL,
    OK,
    START,
    TIMEOUT,
    PoolLimits,
    World,
    make_plan,
    paid,
    partial,
    rate_limited,
)

from runtime import events as ev
from runtime import machine
from runtime.breakers import BreakerState
from runtime.machine import Effects
from runtime.outcomes import AttemptResult, OutcomeKind
from runtime.policy import (
    BreakerPolicy,
    CostPolicy,
    Policy,
    RateLimitPolicy,
    RetryPolicy,
    policy_from_plan,
)
from runtime.score import CrossSheetConfig
from runtime.state import JobStatus, SheetStatus, SkipReason

S = SheetStatus
J = JobStatus


def policy(
    *,
    max_retries: int = 3,
    base_delay: float = 0.0,
    max_delay: float = 3600.0,
    exponential_base: float = 2.0,
    jitter: bool = False,
    max_completion: int = 5,
    completion_delay: float = 0.0,
    threshold: float = 50.0,
    wait_minutes: float = 60.0,
    max_waits: int = 24,
    breaker: BreakerPolicy | None = None,
    cost: CostPolicy | None = None,
    pacing: float = 0.0,
    self_healing: bool = False,
    escalation: bool = False,
) -> Policy:
    return Policy(
        retry=RetryPolicy(
            max_retries=max_retries, base_delay_seconds=base_delay, max_delay_seconds=max_delay,
            exponential_base=exponential_base, jitter=jitter,
            max_completion_attempts=max_completion, completion_delay_seconds=completion_delay,
            completion_threshold_percent=threshold,
        ),
        rate_limit=RateLimitPolicy(wait_minutes=wait_minutes, max_waits=max_waits),
        breaker=breaker or BreakerPolicy(enabled=False),
        cost=cost or CostPolicy(),
        pause_between_sheets_seconds=pacing,
        self_healing=self_healing,
        escalation=escalation,
    )  # fmt: skip


def one_sheet(pol: Policy, **plan: object) -> World:
    return World.of((make_plan(1, **plan), pol))  # type: ignore[arg-type]


# --- S6, S7 ---------------------------------------------------------------------------


def test_S6_a_sheet_without_validations_passes_at_100_percent() -> None:
    assert OK.pass_rate == 100.0
    assert partial(1, 4).pass_rate == 25.0
    world = one_sheet(policy())
    world.settle()
    assert world.status(1) is S.COMPLETED


def test_S6_S9_an_instrument_failure_is_a_failure_whatever_the_validations() -> None:
    world = one_sheet(policy(max_retries=1))
    world.end(1, AttemptResult(kind=OutcomeKind.FAILURE, exit_code=2, validations_total=0))
    assert world.sheet(1).retries_used == 1
    assert world.named(ev.SHEET_RETRY_SCHEDULED)[0].data["error"] == "instrument exited with code 2"


def test_S7_success_at_100_percent_completes_and_releases_dependents() -> None:
    world = World.of((make_plan(3, dependencies={2: [1], 3: [2]}), policy()))
    world.deliver_all()
    assert world.running_sheets() == [1]
    world.end(1, partial(3, 3))
    assert world.status(1) is S.COMPLETED
    assert world.running_sheets() == [2]
    world.settle()
    assert world.final["job0"] is J.COMPLETED
    completed = world.named(ev.SHEET_COMPLETED)
    assert [e.sheet_num for e in completed] == [1, 2, 3]
    assert completed[0].data["attempt"] == 1


# --- S8 completion mode ------------------------------------------------------------------


def test_S8_partial_at_the_threshold_enters_completion_mode_on_its_own_budget() -> None:
    world = one_sheet(policy(threshold=50.0, completion_delay=30.0, max_retries=3))
    world.end(1, partial(2, 4))  # 50 %: at the threshold counts
    sheet = world.sheet(1)
    assert sheet.status is S.RETRY_SCHEDULED
    assert (sheet.retries_used, sheet.completion_attempts) == (0, 1)
    assert sheet.retry_at == START + 30.0  # completion_delay_seconds
    (event,) = world.named(ev.SHEET_PARTIAL)
    assert event.data["pass_rate"] == 50.0 and event.data["completion_attempt"] == 1
    world.advance(29.0)
    world.deliver_all()
    assert world.running_sheets() == []
    world.advance(1.0)
    world.deliver_all()
    assert world.running_sheets() == [1]
    # The next attempt carries the completion note: which validations passed.
    dispatched = world.named(ev.SHEET_DISPATCHED)[-1]
    assert dispatched.data["completion"] is True
    assert world.sheet(1).validations == (
        ("check 1", True), ("check 2", True), ("check 3", False), ("check 4", False),
    )  # fmt: skip


def test_S8_S17_a_completion_attempt_that_is_rate_limited_is_still_the_completion() -> None:
    """The rate limit taught nothing about the sheet: after the wait the same
    completion attempt runs again, on the same completion budget, no retry spent."""
    world = one_sheet(policy(max_completion=2, wait_minutes=1.0))
    world.end(1, partial(1, 2))
    assert world.named(ev.SHEET_DISPATCHED)[-1].data["completion"] is True
    world.end(1, rate_limited(60))
    world.advance(61)
    world.deliver_all()
    assert world.named(ev.SHEET_DISPATCHED)[-1].data["completion"] is True
    sheet = world.sheet(1)
    assert (sheet.completion_attempts, sheet.retries_used) == (1, 0)
    world.end(1)
    assert world.status(1) is S.COMPLETED


def test_S8_the_completion_attempt_order_lists_passed_and_failed_validations() -> None:
    state = machine.new_job("j", make_plan(1), policy(completion_delay=0.0))
    fx = Effects()
    machine.start(state, START, fx)
    machine.on_leases_granted(state, [(1, "lease-1")], START, fx)
    fx = Effects()
    machine.on_attempt_finished(state, 1, 1, partial(1, 2), START, fx)
    fx = Effects()
    machine.on_leases_granted(state, [(1, "lease-2")], START, fx)
    (order,) = fx.attempts
    assert order.completion is True
    assert order.retry_number == 0  # a completion attempt is not a retry (S11)
    assert order.validations == (("check 1", True), ("check 2", False))


def test_S8_below_the_threshold_a_partial_result_is_a_failure_that_spends_a_retry() -> None:
    world = one_sheet(policy(threshold=60.0))
    world.end(1, partial(1, 2))  # 50 % < 60 %
    sheet = world.sheet(1)
    assert (sheet.retries_used, sheet.completion_attempts) == (1, 0)
    assert world.named(ev.SHEET_PARTIAL) == []
    assert world.named(ev.SHEET_RETRY_SCHEDULED)[0].data["error_kind"] == "failure"


def test_S8_S9_zero_validations_passed_is_a_failure() -> None:
    world = one_sheet(policy(threshold=1.0))
    world.end(1, partial(0, 3))
    assert world.sheet(1).retries_used == 1
    assert world.sheet(1).completion_attempts == 0


def test_S8_a_spent_completion_budget_falls_back_to_the_retry_budget() -> None:
    """Completion attempts are their own budget; once spent, a partial result is
    a failure spending retries, and only then is the sheet exhausted (S15)."""
    world = one_sheet(policy(max_completion=2, max_retries=1))
    world.settle({1: partial(1, 2)})
    sheet = world.sheet(1)
    # 1 first attempt + 2 completion attempts + 1 retry.
    assert sheet.attempts == 4
    assert (sheet.completion_attempts, sheet.retries_used) == (2, 1)
    assert sheet.status is S.FAILED
    assert sheet.last_error is not None and "validations passed 1 of 2" in sheet.last_error


def test_S8_max_completion_attempts_0_retries_partial_results_normally() -> None:
    world = one_sheet(policy(max_completion=0, max_retries=2))
    world.settle({1: [partial(1, 2), partial(1, 2), OK]})
    assert world.status(1) is S.COMPLETED
    assert world.sheet(1).retries_used == 2
    assert world.named(ev.SHEET_PARTIAL) == []


def test_S8_completion_then_full_pass_completes() -> None:
    world = one_sheet(policy())
    world.settle({1: [partial(2, 3), partial(2, 3), OK]})
    assert world.status(1) is S.COMPLETED
    assert world.sheet(1).completion_attempts == 2
    assert world.sheet(1).retries_used == 0


# --- S9 retries ------------------------------------------------------------------------


@pytest.mark.parametrize("result", [FAIL, TIMEOUT, CRASH], ids=["failure", "timeout", "crash"])
def test_S9_each_failure_kind_spends_one_retry(result: AttemptResult) -> None:
    world = one_sheet(policy(max_retries=2))
    world.end(1, result)
    assert world.sheet(1).retries_used == 1
    assert world.sheet(1).error_kind == result.kind.value
    world.settle({1: OK})
    assert world.status(1) is S.COMPLETED


# --- S10 backoff ------------------------------------------------------------------------


def test_S31_later_sheets_see_the_last_successful_attempts_output_only() -> None:
    """A failed attempt's output never stands in for the successful one's, even
    when the success printed nothing."""
    plan = dataclasses.replace(
        make_plan(2, dependencies={2: [1]}),
        cross_sheet=CrossSheetConfig.model_validate({"auto_capture_stdout": True}),
    )
    world = World.of((plan, policy(max_retries=1)))
    failed = AttemptResult(kind=OutcomeKind.FAILURE, exit_code=1, output_tail="half a draft")
    world.end(1, failed)
    world.deliver_all()
    world.end(1, AttemptResult(kind=OutcomeKind.SUCCESS, exit_code=0, output_tail=""))
    assert world.status(1) is S.COMPLETED
    assert machine.prior_outputs(world.state(), 2)[1].text == ""


def test_S10_delay_is_base_times_exponent_capped_without_jitter() -> None:
    retry = RetryPolicy(
        base_delay_seconds=10.0, exponential_base=3.0, max_delay_seconds=200.0, jitter=False
    )
    assert [retry.delay(n, 0.5) for n in (1, 2, 3, 4, 5)] == [10.0, 30.0, 90.0, 200.0, 200.0]


def test_S10_full_jitter_draws_between_zero_and_the_capped_delay() -> None:
    retry = RetryPolicy(base_delay_seconds=10.0, exponential_base=2.0, max_delay_seconds=25.0)
    assert retry.jitter
    assert retry.delay(3, 0.0) == 0.0
    assert retry.delay(3, 0.5) == 12.5  # half of min(40, 25)
    assert retry.delay(1, 0.999) == pytest.approx(9.99)


def test_S10_retries_wait_on_the_clock_with_exponential_delays() -> None:
    world = one_sheet(policy(max_retries=3, base_delay=10.0, exponential_base=2.0, max_delay=25.0))
    delays = []
    for _ in range(3):
        world.end(1, FAIL)
        sheet = world.sheet(1)
        assert sheet.status is S.RETRY_SCHEDULED
        delays.append(sheet.retry_at - world.now)  # type: ignore[operator]
        world.advance(delays[-1] - 0.5)
        world.deliver_all()
        assert world.status(1) is S.RETRY_SCHEDULED, "S10: retry_scheduled until the timer"
        world.advance(0.5)
        world.deliver_all()
        assert world.running_sheets() == [1]
    assert delays == [10.0, 20.0, 25.0]
    events = world.named(ev.SHEET_RETRY_SCHEDULED)
    assert [e.data["delay_seconds"] for e in events] == [10.0, 20.0, 25.0]
    assert [e.data["retry"] for e in events] == [1, 2, 3]


def test_S10_jittered_delays_are_seeded_per_job_and_stay_in_bounds() -> None:
    def delays(seed: int) -> list[float]:
        state = machine.new_job(
            "j", make_plan(1), policy(max_retries=5, base_delay=8.0, jitter=True), seed=seed
        )
        fx = Effects()
        machine.start(state, START, fx)
        found = []
        for attempt in range(1, 6):
            fx = Effects()
            machine.on_leases_granted(state, [(1, f"lease-{attempt}")], START, fx)
            fx = Effects()
            machine.on_attempt_finished(state, 1, attempt, FAIL, START, fx)
            (timer,) = fx.timers
            found.append(timer.due - START)
            fx = Effects()
            machine.on_timer(state, 1, timer.due, fx)
        return found

    first = delays(7)
    assert first == delays(7)
    assert first != delays(8)
    for retry, delay in enumerate(first, start=1):
        assert 0.0 <= delay < min(8.0 * 2 ** (retry - 1), 3600.0)


# --- S11 attempt numbers ------------------------------------------------------------------


def test_S11_attempt_counts_every_attempt_and_retry_number_counts_retries() -> None:
    state = machine.new_job("j", make_plan(1), policy(max_retries=3))
    fx = Effects()
    machine.start(state, START, fx)
    orders = []
    results = [FAIL, rate_limited(0.0), partial(1, 2), FAIL, OK]
    for index, result in enumerate(results, start=1):
        fx = Effects()
        machine.on_leases_granted(state, [(1, f"lease-{index}")], START, fx)
        orders.extend(fx.attempts)
        fx = Effects()
        machine.on_attempt_finished(state, 1, index, result, START, fx)
    assert [order.attempt for order in orders] == [1, 2, 3, 4, 5]
    # retry #1 after the failure; a rate limit spends none; a completion attempt is
    # not a retry; the next failure makes retry #2.
    assert [order.retry_number for order in orders] == [0, 1, 1, 0, 2]
    assert state.sheet(1).status is S.COMPLETED


# --- S12 authentication -----------------------------------------------------------------


def test_S12_auth_failure_moves_to_the_fallback_with_fresh_budgets() -> None:
    world = one_sheet(policy(max_retries=3), fallbacks=("b",))
    world.end(1, FAIL)
    assert world.sheet(1).retries_used == 1
    world.settle({1: [FAIL, AUTH, OK]})
    sheet = world.sheet(1)
    assert sheet.status is S.COMPLETED
    assert sheet.attempts == 3 and sheet.instrument_index == 1 and sheet.retries_used == 0
    (fallback,) = world.named(ev.INSTRUMENT_FALLBACK)
    assert fallback.data == {
        "from_instrument": "a", "to_instrument": "b", "reason": "authentication failed",
    }  # fmt: skip
    assert world.named(ev.SHEET_DISPATCHED)[-1].data["instrument"] == "b"


def test_S12_auth_failure_without_fallback_fails_at_once_even_with_escalation() -> None:
    world = one_sheet(policy(max_retries=3, self_healing=True, escalation=True))
    world.settle({1: AUTH})
    sheet = world.sheet(1)
    assert sheet.status is S.FAILED and sheet.attempts == 1
    assert sheet.error_kind == "auth_failed" and sheet.last_error == "bad key"
    assert world.final["job0"] is J.FAILED


# --- S13, S14 ----------------------------------------------------------------------------


def test_S13_a_timeout_is_a_failed_attempt_classified_as_timeout() -> None:
    world = one_sheet(policy(max_retries=0))
    world.settle({1: AttemptResult(kind=OutcomeKind.TIMEOUT)})
    sheet = world.sheet(1)
    assert sheet.status is S.FAILED
    assert (sheet.error_kind, sheet.last_error) == ("timeout", "attempt timed out")


def test_S14_a_sheet_actor_lost_without_report_is_a_crashed_attempt() -> None:
    world = one_sheet(policy(max_retries=1))
    world.deliver_all()
    world.lose(0)
    sheet = world.sheet(1)
    assert sheet.status is S.READY, "S14: never left dispatched"
    assert (sheet.error_kind, sheet.retries_used) == ("crashed", 1)
    assert sheet.last_error == "sheet actor crashed"
    # A second report for the same attempt is stale and ignored.
    fx = Effects()
    machine.on_attempt_lost(world.state(), 1, "again", world.now, fx)
    assert fx.empty


# --- S15 exhaustion --------------------------------------------------------------------------


def test_S15_exhaustion_moves_through_the_fallback_chain_with_fresh_budgets() -> None:
    world = one_sheet(policy(max_retries=1), fallbacks=("b", "c"))
    world.settle({1: FAIL})
    sheet = world.sheet(1)
    assert sheet.attempts == 6  # two per instrument
    assert sheet.status is S.FAILED
    hops = [(e.data["from_instrument"], e.data["to_instrument"]) for e in world.named(
        ev.INSTRUMENT_FALLBACK)]  # fmt: skip
    assert hops == [("a", "b"), ("b", "c")]
    instruments = [e.data["instrument"] for e in world.named(ev.SHEET_DISPATCHED)]
    assert instruments == ["a", "a", "b", "b", "c", "c"]


def test_S15_self_healing_gives_one_extra_attempt_after_the_last_fallback() -> None:
    world = one_sheet(policy(max_retries=1, self_healing=True), fallbacks=("b",))
    world.settle({1: FAIL})
    assert world.sheet(1).attempts == 5  # 2 on a, 2 on b, 1 self-healing
    assert world.status(1) is S.FAILED
    healing = [e for e in world.named(ev.SHEET_RETRY_SCHEDULED) if e.data.get("self_healing")]
    assert len(healing) == 1


def test_S15_self_healing_that_succeeds_completes_the_sheet() -> None:
    world = one_sheet(policy(max_retries=0, self_healing=True))
    world.settle({1: [FAIL, OK]})
    assert world.status(1) is S.COMPLETED


def test_S15_escalation_opens_a_fermata_that_pauses_the_job_and_holds_dependents() -> None:
    plan = make_plan(3, dependencies={2: [1]})
    world = World.of((plan, policy(max_retries=0, escalation=True, self_healing=True)))
    world.settle({1: FAIL, 3: OK})
    assert world.status(1) is S.FERMATA
    assert world.sheet(1).attempts == 2  # self-healing comes before the fermata
    assert world.status(2) is S.PENDING
    assert world.state().status is J.PAUSED
    assert world.named(ev.SHEET_FERMATA)[0].data["error"] == "boom"
    assert world.named(ev.JOB_PAUSED)[-1].data["reason"] == "fermata"
    assert "job0" not in world.final


def test_S15_without_fallback_healing_or_escalation_the_sheet_fails_and_cascades() -> None:
    world = World.of((make_plan(3, dependencies={2: [1], 3: [2]}), policy(max_retries=0)))
    world.settle({1: FAIL})
    assert [world.status(n) for n in (1, 2, 3)] == [S.FAILED, S.SKIPPED, S.SKIPPED]
    assert world.sheet(1).last_error == "boom"
    assert world.sheet(3).skip_reason is SkipReason.CASCADE
    assert world.final["job0"] is J.FAILED


# --- S16 fermata decisions -----------------------------------------------------------------


def fermata_world() -> World:
    plan = make_plan(2, dependencies={2: [1]})
    world = World.of((plan, policy(max_retries=1, escalation=True)))
    world.settle({1: FAIL})
    assert world.status(1) is S.FERMATA
    return world


def test_S16_retry_gives_fresh_budgets_and_the_job_resumes() -> None:
    world = fermata_world()
    assert world.decide(1, "retry")
    assert world.state().status is J.RUNNING
    assert world.names(0)[-1] == ev.JOB_RESUMED
    world.deliver_all()
    assert world.running_sheets() == [1]
    assert world.sheet(1).retries_used == 0
    world.settle({1: [FAIL, FAIL, FAIL, OK]})
    assert world.sheet(1).attempts == 4
    assert world.final["job0"] is J.COMPLETED


def test_S16_skip_satisfies_dependents() -> None:
    world = fermata_world()
    assert world.decide(1, "skip")
    assert world.sheet(1).skip_reason is SkipReason.USER
    world.settle()
    assert world.status(2) is S.COMPLETED
    assert world.final["job0"] is J.COMPLETED


def test_S16_accept_completes_the_sheet() -> None:
    world = fermata_world()
    assert world.decide(1, "accept")
    assert world.status(1) is S.COMPLETED
    world.settle()
    assert world.final["job0"] is J.COMPLETED


def test_S16_fail_fails_the_sheet_and_cascades() -> None:
    world = fermata_world()
    assert world.decide(1, "fail")
    assert (world.status(1), world.status(2)) == (S.FAILED, S.SKIPPED)
    assert world.final["job0"] is J.FAILED


def test_S16_decisions_only_apply_to_open_fermatas() -> None:
    world = fermata_world()
    assert not world.decide(2, "accept")
    with pytest.raises(ValueError, match="unknown fermata decision 'maybe'"):
        world.decide(1, "maybe")
    assert world.decide(1, "accept")
    assert not world.decide(1, "accept")


def test_S16_the_job_stays_paused_while_a_fermata_or_a_user_pause_remains() -> None:
    plan = make_plan(3, dependencies={3: [1]})
    world = World.of((plan, policy(max_retries=0, escalation=True)))
    world.settle({1: FAIL, 2: FAIL})
    assert world.state().open_fermatas == 2
    assert world.command("pause")
    assert world.decide(1, "accept")
    assert world.state().status is J.PAUSED  # one fermata left
    assert world.decide(2, "accept")
    assert world.state().status is J.PAUSED  # the user's pause stays
    world.settle()
    assert world.status(3) is S.READY and world.running_sheets() == []
    assert world.command("resume")
    assert world.names(0)[-1] == ev.JOB_RESUMED
    world.settle()
    assert world.final["job0"] is J.COMPLETED


def test_S16_resume_does_not_lift_a_fermata() -> None:
    world = fermata_world()
    assert not world.command("resume")
    assert world.state().status is J.PAUSED


# --- S17-S20 rate limits ----------------------------------------------------------------------


def test_S17_a_rate_limit_spends_no_retry_and_blocks_the_instrument_across_jobs() -> None:
    pol = policy(max_retries=0)
    plan_a = make_plan(2, instruments={1: "a", 2: "b"})
    plan_b = make_plan(1)
    world = World.of((plan_a, pol), (plan_b, pol), pool=PoolLimits(max_running=1))
    world.deliver_all()
    assert world.running_sheets() == [1]
    world.end(1, rate_limited(120.0))
    sheet = world.sheet(1)
    assert sheet.status is S.WAITING
    assert (sheet.retries_used, sheet.rate_limit_waits, sheet.error_kind) == (0, 1, "rate_limited")
    assert world.table.blocks == {("a", None): START + 120.0}
    (event,) = world.named(ev.RATE_LIMIT_ACTIVE)
    assert event.data == {"instrument": "a", "model": None, "wait_seconds": 120.0, "waits": 1}
    # Instrument b keeps running; job1's sheet on a waits like job0's.
    world.settle()
    assert world.status(2) is S.COMPLETED
    assert world.status(1) is S.WAITING and world.status(1, "job1") is S.READY
    world.advance(119.0)
    world.settle()
    assert world.status(1) is S.WAITING
    world.advance(1.0)
    world.settle()
    assert world.final == {"job0": J.COMPLETED, "job1": J.COMPLETED}
    assert world.sheet(1).retries_used == 0 and world.sheet(1).attempts == 2


def test_S17_the_default_wait_is_rate_limit_wait_minutes() -> None:
    world = one_sheet(policy(wait_minutes=2.5))
    world.end(1, rate_limited(None))
    assert world.table.blocks == {("a", None): START + 150.0}


def test_S17_a_model_rate_limit_blocks_only_that_model() -> None:
    pol = policy()
    world = World.of(
        (make_plan(1, model="fast"), pol),
        (make_plan(1, model="slow"), pol),
        (make_plan(1), pol),
        pool=PoolLimits(max_running=1),
    )
    world.end(1, rate_limited(60.0))
    assert world.table.blocks == {("a", "fast"): START + 60.0}
    world.settle()
    assert world.final == {"job1": J.COMPLETED, "job2": J.COMPLETED}
    assert world.status(1) is S.WAITING


def test_S18_running_attempts_finish_and_apply_while_blocked() -> None:
    world = World.of((make_plan(3), policy()))
    world.deliver_all()
    assert world.running_sheets() == [1, 2, 3]
    world.end(1, rate_limited(60.0))
    world.end(2, OK)
    world.end(3, FAIL)
    assert world.status(2) is S.COMPLETED
    assert world.status(3) is S.READY and world.sheet(3).retries_used == 1
    assert world.running_sheets() == []  # no lease while blocked
    world.advance(60.0)
    world.deliver_all()
    assert world.running_sheets() == [1, 3]


def test_S18_a_second_rate_limit_extends_the_block() -> None:
    world = World.of((make_plan(2), policy()))
    world.deliver_all()
    world.end(1, rate_limited(60.0))
    world.advance(30.0)
    world.end(2, rate_limited(60.0))
    assert world.table.blocks == {("a", None): START + 90.0}
    world.advance(30.0)
    world.deliver_all()
    assert world.running_sheets() == []
    world.advance(30.0)
    world.deliver_all()
    assert world.running_sheets() == [1, 2]
    assert [world.sheet(n).retries_used for n in (1, 2)] == [0, 0]


def test_S18_a_shorter_rate_limit_does_not_shorten_the_block() -> None:
    world = World.of((make_plan(2), policy()))
    world.deliver_all()
    world.end(1, rate_limited(600.0))
    world.end(2, rate_limited(10.0))
    assert world.table.blocks == {("a", None): START + 600.0}


def test_S19_clear_rate_limit_ends_blocks_at_once_and_counts_them() -> None:
    pol = policy()
    world = World.of(
        (make_plan(1), pol), (make_plan(1, instrument="b"), pol), (make_plan(1), pol),
        pool=PoolLimits(max_running=10),
    )  # fmt: skip
    world.deliver_all()
    world.end(1, rate_limited(3600.0))
    world.end(1, rate_limited(3600.0), job_id="job1")
    assert world.clear_rate_limit("a") == 1
    world.deliver_all()
    assert world.running_sheets() == [1]
    assert world.status(1, "job1") is S.WAITING
    assert world.clear_rate_limit() == 1
    assert world.clear_rate_limit() == 0
    world.settle()
    assert set(world.final.values()) == {J.COMPLETED}


def test_S20_more_than_max_waits_rate_limits_in_a_row_fail_the_sheet() -> None:
    world = one_sheet(policy(max_waits=2, max_retries=5))
    world.settle({1: rate_limited(0.0)}, timers=True)
    sheet = world.sheet(1)
    assert sheet.status is S.FAILED
    assert sheet.attempts == 3 and sheet.retries_used == 0
    assert sheet.error_kind == "rate_limited"
    assert "rate limited 3 times in a row" in (sheet.last_error or "")
    assert "rate_limit.max_waits" in (sheet.last_error or "")


def test_S20_the_count_restarts_after_any_other_outcome() -> None:
    world = one_sheet(policy(max_waits=1, max_retries=5))
    outcomes = [rate_limited(0.0), FAIL, rate_limited(0.0), FAIL, rate_limited(0.0), OK]
    world.settle({1: outcomes}, timers=True)
    assert world.status(1) is S.COMPLETED
    assert world.sheet(1).attempts == 6


def breaker_state(world: World, instrument: str = "a") -> BreakerState:
    return world.table.breakers[instrument].state


# --- S21 circuit breakers ---------------------------------------------------------------------


def test_S15_S21_a_stale_breaker_refusal_does_not_skip_a_fallback() -> None:
    """The breaker of a opens and refuses sheet 2's queued request; before that
    refusal arrives a pause and a resume ask for a again, and the pool refuses
    that too. The first refusal moves the sheet to b; the second is about a,
    which the sheet no longer uses, and must not move it on to c untried."""
    pol = policy(breaker=BreakerPolicy(enabled=True, failure_threshold=1))
    plan = make_plan(2, instrument="a", per_sheet_fallbacks={2: ["b", "c"]}, max_parallel=2)
    world = World.of((plan, pol), pool=PoolLimits(instruments={"a": 1}))
    world.deliver_all()
    assert world.running_sheets() == [1] and 2 in world.state().lease_requested
    world.finish(0, FAIL)  # a's breaker opens: sheet 2's request is refused (in flight)
    world.command("pause")
    world.command("resume")  # asks for a again: refused again
    world.deliver_all()
    moves = [
        (e.data["from_instrument"], e.data["to_instrument"])
        for e in world.named(ev.INSTRUMENT_FALLBACK)
    ]
    assert moves == [("a", "b")]
    assert world.sheet(2).instrument_index == 1


def test_S21_consecutive_failures_open_the_breaker_then_a_trial_closes_it() -> None:
    breaker = BreakerPolicy(failure_threshold=2, recovery_timeout_seconds=300.0)
    world = World.of((make_plan(3), policy(breaker=breaker, max_retries=5, base_delay=10.0)))
    world.deliver_all()
    world.end(1, FAIL)
    assert breaker_state(world) is BreakerState.CLOSED
    world.end(2, TIMEOUT)
    assert breaker_state(world) is BreakerState.OPEN
    world.end(3, OK)  # started before it opened: finishes and applies
    assert world.status(3) is S.COMPLETED
    world.deliver_all()
    assert world.running_sheets() == [], "no lease while the breaker is open"
    world.advance(299.0)  # the retries of 1 and 2 are due, and queued
    world.deliver_all()
    assert world.running_sheets() == []
    assert world.status(1) is S.READY and world.status(2) is S.READY
    world.advance(1.0)
    world.deliver_all()
    assert len(world.running_sheets()) == 1, "half-open: exactly one trial"
    trial = world.running_sheets()[0]
    world.end(trial, OK)
    assert breaker_state(world) is BreakerState.CLOSED
    world.settle()
    assert world.final["job0"] is J.COMPLETED


def test_S21_a_failed_trial_reopens_the_breaker() -> None:
    breaker = BreakerPolicy(failure_threshold=1, recovery_timeout_seconds=60.0)
    world = World.of((make_plan(2), policy(breaker=breaker, max_retries=5)))
    world.deliver_all()
    world.end(1, CRASH)
    world.end(2, FAIL)  # ran before the breaker opened: ignored by it
    assert world.table.breakers["a"].open_until == START + 60.0
    world.advance(60.0)
    world.deliver_all()
    (trial,) = world.running_sheets()
    world.end(trial, FAIL)
    assert breaker_state(world) is BreakerState.OPEN
    assert world.table.breakers["a"].open_until == START + 120.0


def test_S21_a_trial_that_tells_nothing_lets_another_trial_run() -> None:
    """A rate-limited (or unused) trial must not hold the breaker half-open for ever."""
    breaker = BreakerPolicy(failure_threshold=1, recovery_timeout_seconds=60.0)
    world = World.of((make_plan(1), policy(breaker=breaker, max_retries=5)))
    world.end(1, FAIL)
    world.advance(60.0)
    world.end(1, rate_limited(10.0))
    assert breaker_state(world) is BreakerState.HALF_OPEN
    world.advance(10.0)
    world.deliver_all()
    assert world.running_sheets() == [1]
    world.end(1, OK)
    assert breaker_state(world) is BreakerState.CLOSED
    assert world.final["job0"] is J.COMPLETED


def test_S21_sheets_with_a_fallback_move_on_while_others_wait() -> None:
    breaker = BreakerPolicy(failure_threshold=1, recovery_timeout_seconds=600.0)
    plan = make_plan(3, per_sheet_fallbacks={2: ("b",)})
    world = World.of((plan, policy(breaker=breaker, max_retries=5)), pool=PoolLimits(1))
    world.deliver_all()
    world.end(1, FAIL)  # opens a's breaker; 2 and 3 are queued for a
    world.deliver_all()
    assert world.status(2) is S.DISPATCHED and world.sheet(2).instrument_index == 1
    (fallback,) = world.named(ev.INSTRUMENT_FALLBACK)
    assert fallback.data["to_instrument"] == "b"
    world.end(2, OK)
    assert world.status(3) is S.READY and world.status(1) is S.READY
    world.advance(600.0)
    world.settle()
    assert world.final["job0"] is J.COMPLETED


def test_S21_a_disabled_breaker_never_opens() -> None:
    world = one_sheet(policy(breaker=BreakerPolicy(enabled=False, failure_threshold=1)))
    world.settle({1: [FAIL, FAIL, OK]})
    assert breaker_state(world) is BreakerState.CLOSED
    assert world.status(1) is S.COMPLETED


def test_S21_breaker_settings_come_from_the_score() -> None:
    from support import score_dict

    from runtime.plan import build_plan
    from runtime.score import score_from_mapping

    data = score_dict(
        "/tmp/ensemble-resilience",
        circuit_breaker={"failure_threshold": 7, "recovery_timeout_seconds": 42},
        retry={"max_delay_seconds": 99, "exponential_base": 3, "jitter": False,
               "max_completion_attempts": 2, "completion_delay_seconds": 1,
               "completion_threshold_percent": 70},
        rate_limit={"wait_minutes": 2, "max_waits": 4},
        cost_limits={"max_cost_per_job": 3.5, "warn_at_percent": 60},
        pause_between_sheets_seconds=4,
    )  # fmt: skip
    score = score_from_mapping(data, base_dir=Path("/tmp"), source_name="<test>")
    pol = policy_from_plan(build_plan(score), self_healing=True)
    assert pol.breaker == BreakerPolicy(True, 7, 42.0)
    assert pol.retry.max_delay_seconds == 99 and pol.retry.exponential_base == 3
    assert not pol.retry.jitter and pol.retry.completion_threshold_percent == 70
    assert pol.rate_limit == RateLimitPolicy(2.0, 4)
    assert pol.cost == CostPolicy(None, 3.5, 60.0)
    assert pol.pause_between_sheets_seconds == 4 and pol.self_healing
    # A job built from the plan alone takes the same settings.
    assert machine.new_job("j", build_plan(score)).policy == policy_from_plan(build_plan(score))


# --- S22 concurrency -------------------------------------------------------------------------


def test_S22_the_job_limit_counts_running_attempts_and_requests() -> None:
    world = World.of((make_plan(6, max_parallel=2), policy()))
    assert len(world.state().lease_requested) == 2
    world.deliver_all()
    assert world.running_sheets() == [1, 2]
    world.end(1)
    assert world.running_sheets() == [2, 3]


def test_S22_instrument_and_model_limits_hold_across_jobs() -> None:
    pol = policy()
    pool = PoolLimits(max_running=10, instruments={"a": 2}, models={("b", "x"): 1})
    world = World.of(
        (make_plan(4), pol), (make_plan(4), pol), (make_plan(3, instrument="b", model="x"), pol),
        pool=pool,
    )  # fmt: skip
    world.deliver_all()
    on_a = [key for key, attempt in world.running.items() if attempt.grant.instrument == "a"]
    on_b = [key for key, attempt in world.running.items() if attempt.grant.instrument == "b"]
    assert len(on_a) == 2 and len(on_b) == 1
    world.settle()  # World.check asserts the limits after every step
    assert set(world.final.values()) == {J.COMPLETED}


def test_S22_round_robin_between_jobs_fifo_within_a_job() -> None:
    pol = policy()
    world = World.of(
        (make_plan(4, max_parallel=4), pol),
        (make_plan(4, max_parallel=4), pol),
        pool=PoolLimits(max_running=1),
    )
    order = []
    for _ in range(8):
        world.deliver_all()
        ((job_id, num),) = world.running
        order.append((job_id, num))
        world.end(num, OK, job_id)
    # job0's first request was granted before job1 asked; job1 then queued behind
    # job0's next turn. From there the jobs alternate, each in its own order.
    assert order == [
        ("job0", 1), ("job0", 2), ("job1", 1), ("job0", 3),
        ("job1", 2), ("job0", 4), ("job1", 3), ("job1", 4),
    ]  # fmt: skip


def test_S22_a_stale_grant_for_an_instrument_the_sheet_left_is_given_back() -> None:
    """A pause withdrew a request whose grant was already on its way; the sheet
    then moved to its fallback. The old grant must not run it on the old
    instrument (it would bypass that instrument's breaker)."""
    state = machine.new_job("j", make_plan(1, fallbacks=("b",)), policy(max_retries=0))
    fx = Effects()
    machine.start(state, START, fx)
    from runtime.leases import Grant

    stale = Grant(1, "j", 1, "a", None)
    fx = Effects()
    machine.on_leases_refused(state, [(1, "a", "circuit breaker of a is open")], START, fx)
    assert [(r.instrument, r.sheet_num) for r in fx.lease_requests] == [("b", 1)]
    fx = Effects()
    machine.on_leases_granted(state, [(1, stale)], START, fx)
    assert fx.attempts == [] and fx.released_leases == [(stale, None)]
    assert 1 in state.lease_requested  # still waiting for the lease on b
    fx = Effects()
    machine.on_leases_granted(state, [(1, Grant(2, "j", 1, "b", None))], START, fx)
    assert [order.instrument for order in fx.attempts] == ["b"]


def test_S22_grants_given_back_keep_their_fifo_order() -> None:
    state = machine.new_job("j", make_plan(3, max_parallel=3), policy())
    fx = Effects()
    machine.start(state, START, fx)
    fx = Effects()
    machine.pause(state, START, fx)
    machine.resume(state, START, fx)
    assert [r.sheet_num for r in fx.lease_requests] == [1, 2, 3]
    state.paced_until = START + 10  # grants arrive while the job may not dispatch
    fx = Effects()
    machine.on_leases_granted(state, [(1, "l1"), (2, "l2"), (3, "l3")], START, fx)
    assert fx.attempts == [] and len(fx.released_leases) == 3
    fx = Effects()
    machine.on_timer(state, machine.PACING_TIMER, START + 10, fx)
    assert [r.sheet_num for r in fx.lease_requests] == [1, 2, 3]


# --- S23 pacing ---------------------------------------------------------------------------


def test_S23_after_a_completion_with_nothing_running_the_job_waits() -> None:
    world = World.of((make_plan(3, max_parallel=1), policy(pacing=20.0)))
    world.end(1)
    assert world.state().paced_until == START + 20.0
    world.deliver_all()
    assert world.running_sheets() == []
    world.advance(19.0)
    world.deliver_all()
    assert world.running_sheets() == []
    world.advance(1.0)
    world.deliver_all()
    assert world.running_sheets() == [2]


def test_S23_no_pacing_while_another_sheet_of_the_job_runs() -> None:
    world = World.of((make_plan(3, max_parallel=2), policy(pacing=20.0)))
    world.deliver_all()
    world.end(1)
    assert world.state().paced_until is None
    assert world.running_sheets() == [2, 3]
    world.end(2)
    assert world.state().paced_until is None
    world.end(3)
    assert world.final["job0"] is J.COMPLETED


# --- S24 cost ---------------------------------------------------------------------------------


def test_S24_a_job_over_its_limit_pauses_running_attempts_finish_resume_pauses_again() -> None:
    cost = CostPolicy(max_cost_per_job=1.0, warn_at_percent=50.0)
    world = World.of((make_plan(4, max_parallel=1), policy(cost=cost)))
    world.end(1, paid(0.6))
    assert [e.event for e in world.events if e.event.startswith("cost.")] == [ev.COST_WARNING]
    world.end(2, paid(0.6))
    state = world.state()
    assert state.status is J.PAUSED and state.paused_for_cost
    (exceeded,) = world.named(ev.COST_EXCEEDED)
    assert exceeded.data == {"scope": "job", "cost": pytest.approx(1.2), "limit": 1.0}
    assert world.named(ev.JOB_PAUSED)[-1].data["reason"] == "cost"
    world.deliver_all()
    assert world.running_sheets() == [] and not state.lease_requested
    world.command("resume")
    assert state.status is J.PAUSED and state.paused_for_cost
    assert len(world.named(ev.COST_EXCEEDED)) == 2
    assert len(world.named(ev.COST_WARNING)) == 1  # warned once
    assert world.command("cancel")
    assert world.final["job0"] is J.CANCELLED


def test_S24_running_attempts_apply_after_the_job_paused_for_cost() -> None:
    world = World.of((make_plan(2, max_parallel=2), policy(cost=CostPolicy(max_cost_per_job=1.0))))
    world.deliver_all()
    world.end(1, paid(2.0))
    assert world.state().status is J.PAUSED
    world.end(2, paid(0.5))
    assert world.status(2) is S.COMPLETED
    assert world.state().cost == pytest.approx(2.5)
    assert world.final["job0"] is J.COMPLETED  # nothing was left to run


def test_S24_a_sheet_over_its_own_limit_fails() -> None:
    world = World.of((make_plan(2, dependencies={2: [1]}), policy(cost=CostPolicy(
        max_cost_per_sheet=1.0))))  # fmt: skip
    world.settle({1: [paid(0.7, FAIL), paid(0.7)]})
    sheet = world.sheet(1)
    assert sheet.status is S.FAILED and sheet.error_kind == "cost"
    assert sheet.cost == pytest.approx(1.4)
    assert "max_cost_per_sheet" in (sheet.last_error or "")
    assert world.status(2) is S.SKIPPED
    (exceeded,) = world.named(ev.COST_EXCEEDED)
    assert exceeded.sheet_num == 1
    assert exceeded.data == {"scope": "sheet", "cost": pytest.approx(1.4), "limit": 1.0}
    assert world.state().status is J.FAILED  # a sheet's limit does not pause the job


def test_S24_costs_are_in_the_checkpoint_records() -> None:
    state = machine.new_job("j", make_plan(1), policy())
    fx = Effects()
    machine.start(state, START, fx)
    machine.on_leases_granted(state, [(1, "l")], START, fx)
    fx = Effects()
    machine.on_attempt_finished(state, 1, 1, paid(0.25), START, fx)
    records = machine.checkpoint_records(state, fx)
    assert records[-1]["kind"] == "job" and records[-1]["cost"] == 0.25
    assert next(r for r in records if r["kind"] == "sheet")["cost"] == 0.25


# --- S25-S28 job control and final status ---------------------------------------------------


def test_S25_pause_stops_dispatch_and_running_attempts_still_apply() -> None:
    world = World.of((make_plan(4, max_parallel=2), policy()))
    world.deliver_all()
    assert world.command("pause")
    assert not world.command("pause")
    world.end(1)
    world.end(2, FAIL)
    assert world.status(1) is S.COMPLETED and world.sheet(2).retries_used == 1
    world.settle()
    assert world.running_sheets() == [] and world.status(3) is S.READY
    assert world.command("resume")
    world.settle()
    assert world.final["job0"] is J.COMPLETED


def test_S25_a_grant_that_arrives_after_pause_is_given_back() -> None:
    world = World.of((make_plan(2), policy()))
    assert [kind for _, kind, _ in world.outbox] == ["granted"]
    world.command("pause")
    world.deliver_all()
    assert world.running_sheets() == [] and world.table.running == 0
    world.command("resume")
    world.settle()
    assert world.final["job0"] is J.COMPLETED


def test_S26_cancel_terminates_running_attempts_and_keeps_completed_sheets() -> None:
    world = World.of((make_plan(4, max_parallel=2), policy(escalation=True, max_retries=0)))
    world.deliver_all()
    world.end(1)
    world.deliver_all()
    assert world.running_sheets() == [2, 3]
    world.end(2, FAIL)  # a fermata
    assert world.command("cancel")
    assert not world.command("cancel")
    assert world.status(1) is S.COMPLETED
    assert [world.status(n) for n in (2, 4)] == [S.CANCELLED, S.CANCELLED]
    assert world.running[("job0", 3)].cancel_requested
    assert "job0" not in world.final  # waits for the running attempt
    world.end(3, AttemptResult(kind=OutcomeKind.CANCELLED, error="cancelled"))
    assert world.status(3) is S.CANCELLED
    assert world.final["job0"] is J.CANCELLED
    assert world.names(3)[-1] == ev.SHEET_CANCELLED


def test_S26_an_attempt_that_finishes_despite_the_cancel_is_still_cancelled() -> None:
    world = World.of((make_plan(1), policy()))
    world.deliver_all()
    world.command("cancel")
    world.end(1, OK)
    assert world.status(1) is S.CANCELLED
    assert world.final["job0"] is J.CANCELLED


def test_S27_a_sheet_skipped_by_the_user_still_lets_the_job_complete() -> None:
    world = fermata_world()
    world.decide(1, "skip")
    world.settle()
    assert world.final["job0"] is J.COMPLETED


# --- the pure core keeps the ordering guarantees --------------------------------------------


def test_S10_S23_an_early_timer_is_armed_again_and_a_stale_one_does_nothing() -> None:
    """Timers run on a monotonic clock, ``now`` is wall time: after the wall
    clock steps back a timer arrives early. It must be armed again for the
    rest of the wait, or nothing would ever wake the sheet or the paced job."""
    world = one_sheet(policy(base_delay=10.0))
    world.end(1, FAIL)
    retry_at = world.sheet(1).retry_at
    assert retry_at is not None
    fx = Effects()
    machine.on_timer(world.state(), 1, retry_at - 0.5, fx)
    assert world.status(1) is S.RETRY_SCHEDULED
    assert fx.timers == [machine.TimerOrder(1, retry_at)] and not fx.lease_requests
    fx = Effects()
    machine.on_timer(world.state(), machine.PACING_TIMER, world.now, fx)  # no pacing
    assert fx.empty
    paced = World.of((make_plan(2, max_parallel=1), policy(pacing=30.0)))
    paced.end(1)
    paced_until = paced.state().paced_until
    assert paced_until is not None
    fx = Effects()
    machine.on_timer(paced.state(), machine.PACING_TIMER, paced_until - 1.0, fx)
    assert fx.timers == [machine.TimerOrder(machine.PACING_TIMER, paced_until)]
    assert paced.state().paced_until == paced_until


def test_S10_a_retry_budget_past_float_range_waits_the_capped_delay() -> None:
    retry = RetryPolicy(base_delay_seconds=10.0, exponential_base=2.0, max_delay_seconds=600.0)
    assert retry.delay(2000, 1.0) == 600.0
    no_delay = RetryPolicy(base_delay_seconds=0.0, max_delay_seconds=600.0, jitter=False)
    assert no_delay.delay(2000, 1.0) == 0.0


FAILURES = (FAIL, partial(1, 2), TIMEOUT, CRASH)


def test_S9_S15_randomised_failure_mixes_end_within_budgets() -> None:
    """S9, S15: whatever fails, attempts never exceed the budget bound."""
    rng = random.Random(4)
    for _ in range(50):
        pol = policy(
            max_retries=rng.randint(0, 3), max_completion=rng.randint(0, 3),
            self_healing=rng.random() < 0.5,
        )  # fmt: skip
        chain = rng.choice([(), ("b",), ("b", "c")])
        world = one_sheet(pol, fallbacks=chain)
        world.settle(lambda _job, _num, _attempt: rng.choice(FAILURES))
        per_instrument = pol.retry.max_retries + 1 + pol.retry.max_completion_attempts
        bound = per_instrument * (len(chain) + 1) + (1 if pol.self_healing else 0)
        assert world.sheet(1).attempts <= bound
        assert world.status(1) is S.FAILED
