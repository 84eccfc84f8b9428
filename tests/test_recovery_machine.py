"""S29 at the level of the decision core: ``runtime.machine.recover`` on saved sheets.

Each test builds the sheets a checkpoint would hold (through their record
form, exactly as they are stored), recovers a fresh job from them, and checks
the state and the effects as data: which sheets run again, which keep their
status, which timers and instrument blocks are re-armed, and that every
counter comes back exactly. No actors, no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from support import score_dict

from runtime import events as ev
from runtime import machine
from runtime.machine import PACING_TIMER, BlockOrder, Effects, TimerOrder
from runtime.outcomes import AttemptResult, OutcomeKind
from runtime.plan import build_plan
from runtime.policy import policy_from_plan
from runtime.score import score_from_mapping
from runtime.state import CHECKPOINTED_FIELDS, JobState, JobStatus, SheetState, SkipReason
from runtime.state import SheetStatus as S

NOW = 50_000.0
OK = AttemptResult(kind=OutcomeKind.SUCCESS, exit_code=0)


def saved(num: int, status: S, **fields: Any) -> SheetState:
    """A sheet as a checkpoint holds it: through its stored record and back."""
    sheet = SheetState(num=num, status=status, **fields)
    return SheetState.from_record(sheet.to_record())


def recover(
    saved_sheets: Iterable[SheetState],
    job_record: Mapping[str, Any] | None = None,
    *,
    now: float = NOW,
    escalation: bool = False,
    **score: Any,
) -> tuple[JobState, Effects]:
    """A fresh job for the score built from ``score`` (score_dict keys), recovered."""
    data = score_dict("/tmp/ensemble-recovery-tests", **score)
    loaded = score_from_mapping(data, base_dir=Path("/tmp"), source_name="<test>")
    state = machine.new_job(
        "job", build_plan(loaded), policy_from_plan(build_plan(loaded), escalation=escalation)
    )
    fx = Effects()
    record = {"status": "running", **(job_record or {})}
    machine.recover(state, list(saved_sheets), record, now, fx)
    return state, fx


def requested(fx: Effects) -> list[int]:
    return [request.sheet_num for request in fx.lease_requests]


def grant_all(state: JobState, fx: Effects, now: float = NOW) -> Effects:
    """Grant a lease to every requested sheet; the effects of the dispatch."""
    out = Effects()
    machine.on_leases_granted(state, [(num, object()) for num in requested(fx)], now, out)
    return out


def statuses(state: JobState) -> dict[int, S]:
    return {sheet.num: sheet.status for sheet in state.sheets}


def counters(sheet: SheetState) -> dict[str, Any]:
    """Everything checkpointed about a sheet except its status."""
    record = sheet.to_record()
    del record["status"]
    return record


def test_S29_a_record_carries_exactly_the_fields_recovery_restores() -> None:
    # A field added to SheetState.to_record but not to CHECKPOINTED_FIELDS
    # (or the other way round) would be written and silently not restored.
    record = SheetState(num=1).to_record()
    assert set(record) == {"num", "status", *CHECKPOINTED_FIELDS}
    assert set(SheetState.from_record(record).to_record()) == set(record)


# --- terminal sheets --------------------------------------------------------------------


def test_S29_terminal_sheets_keep_status_and_counters_and_never_run_again() -> None:
    completed = saved(
        1, S.COMPLETED, attempts=3, retries_used=2, cost=0.25, output_tail="done",
        validations=(("file_exists", True),),
    )  # fmt: skip
    failed = saved(2, S.FAILED, attempts=4, retries_used=3, cost=0.5, last_error="exit 1",
                   error_kind="failure")  # fmt: skip
    by_condition = saved(3, S.SKIPPED, skip_reason=SkipReason.CONDITION)
    by_user = saved(4, S.SKIPPED, skip_reason=SkipReason.USER, attempts=1, last_error="x")
    state, fx = recover([completed, failed, by_condition, by_user], sheets=4, independent=True)

    assert statuses(state) == {1: S.COMPLETED, 2: S.FAILED, 3: S.SKIPPED, 4: S.SKIPPED}
    for before in (completed, failed, by_condition, by_user):
        assert counters(state.sheet(before.num)) == counters(before)
    assert fx.lease_requests == [] and fx.attempts == [] and fx.timers == []
    # Every sheet is terminal: the job ends, failed because sheet 2 failed (S27).
    assert state.status is JobStatus.FAILED and fx.finished is JobStatus.FAILED


def test_S29_a_completed_sheet_is_not_requested_while_its_dependents_are() -> None:
    state, fx = recover(
        [saved(1, S.COMPLETED, attempts=1, cost=1.0)], sheets=3, dependencies={2: [1], 3: [2]}
    )
    assert statuses(state) == {1: S.COMPLETED, 2: S.READY, 3: S.PENDING}
    assert requested(fx) == [2]
    assert state.sheet(3).unmet_dependencies == 1
    assert state.status is JobStatus.RUNNING


# --- sheets that were in flight ---------------------------------------------------------


def test_S29_dispatched_sheet_is_ready_again_without_spending_a_retry() -> None:
    """The interrupted attempt counts as an attempt (S11), never as a retry (S9)."""
    before = saved(1, S.DISPATCHED, attempts=2, retries_used=1, cost=0.1, last_error="boom",
                   error_kind="failure")  # fmt: skip
    state, fx = recover([before], sheets=1)
    sheet = state.sheet(1)
    assert sheet.status is S.READY
    assert counters(sheet) == counters(before)
    assert requested(fx) == [1]

    dispatch = grant_all(state, fx)
    (order,) = dispatch.attempts
    assert (order.attempt, order.retry_number) == (3, 1)
    assert state.sheet(1).retries_used == 1


def test_S29_dispatched_completion_attempt_keeps_its_completion_note() -> None:
    """S8: a completion-mode attempt interrupted by the crash runs again in completion mode."""
    validations = (("a", True), ("b", False))
    before = saved(1, S.DISPATCHED, attempts=2, completion_attempts=1, completion_pending=True,
                   validations=validations)  # fmt: skip
    state, fx = recover([before], sheets=1)
    (order,) = grant_all(state, fx).attempts
    assert order.completion is True
    assert order.validations == validations
    assert state.sheet(1).completion_attempts == 1


def test_S29_pending_and_ready_sheets_become_ready_when_their_dependencies_are_met() -> None:
    """A journal cut inside a batch can leave a dependent 'pending' after its
    dependency completed: readiness is recomputed, not trusted."""
    state, fx = recover(
        [saved(1, S.COMPLETED, attempts=1), saved(2, S.PENDING), saved(3, S.READY)],
        sheets=4,
        dependencies={2: [1], 3: [], 4: [2]},
    )
    assert statuses(state) == {1: S.COMPLETED, 2: S.READY, 3: S.READY, 4: S.PENDING}
    assert requested(fx) == [2, 3]


def test_S29_sheet_on_a_fallback_instrument_stays_on_it() -> None:
    """S15: the instrument index is a checkpointed counter; the next attempt
    runs on the fallback with that fallback's budgets."""
    _state, fx = recover(
        [saved(1, S.DISPATCHED, attempts=5, instrument_index=1, retries_used=0)],
        sheets=1,
        instrument_fallbacks=["backup"],
    )
    (request,) = fx.lease_requests
    assert request.instrument == "backup"
    assert request.has_fallback is False


# --- timers ------------------------------------------------------------------------------


def test_S29_S10_retry_scheduled_keeps_its_deadline_and_its_timer_is_rearmed() -> None:
    before = saved(1, S.RETRY_SCHEDULED, attempts=1, retries_used=1, retry_at=NOW + 300,
                   last_error="boom", error_kind="failure")  # fmt: skip
    state, fx = recover([before], sheets=1)
    sheet = state.sheet(1)
    assert sheet.status is S.RETRY_SCHEDULED
    assert counters(sheet) == counters(before)
    assert fx.timers == [TimerOrder(1, NOW + 300)]
    assert fx.lease_requests == []

    early = Effects()
    machine.on_timer(state, 1, NOW + 299, early)  # a timer cannot fire early, but if it did
    assert state.sheet(1).status is S.RETRY_SCHEDULED and early.lease_requests == []

    due = Effects()
    machine.on_timer(state, 1, NOW + 300, due)
    assert state.sheet(1).status is S.READY
    assert requested(due) == [1]
    (order,) = grant_all(state, due, NOW + 300).attempts
    assert (order.attempt, order.retry_number) == (2, 1)


def test_S29_S10_retry_deadline_that_passed_during_the_outage_fires_at_once() -> None:
    """The timer is re-armed with a due time in the past: the actor's clock
    fires it at once (a negative delay is clamped to zero)."""
    state, fx = recover([saved(1, S.RETRY_SCHEDULED, attempts=1, retries_used=1,
                               retry_at=NOW - 3600)], sheets=1)  # fmt: skip
    (timer,) = fx.timers
    assert timer.due - NOW < 0
    due = Effects()
    machine.on_timer(state, 1, NOW, due)
    assert requested(due) == [1]


def test_S29_S23_pacing_deadline_is_rearmed_and_holds_dispatch_until_then() -> None:
    state, fx = recover(
        [saved(1, S.COMPLETED, attempts=1)],
        {"paced_until": NOW + 60},
        sheets=2,
        dependencies={2: [1]},
        pause_between_sheets_seconds=60,
    )
    assert TimerOrder(PACING_TIMER, NOW + 60) in fx.timers
    assert state.sheet(2).status is S.READY
    assert fx.lease_requests == []  # paced: nothing is dispatched before the deadline

    over = Effects()
    machine.on_timer(state, PACING_TIMER, NOW + 60, over)
    assert requested(over) == [2]
    assert state.paced_until is None


def test_S29_S23_pacing_deadline_already_over_does_not_hold_dispatch() -> None:
    _state, fx = recover(
        [saved(1, S.COMPLETED, attempts=1)],
        {"paced_until": NOW - 1},
        sheets=2,
        dependencies={2: [1]},
        pause_between_sheets_seconds=60,
    )
    assert requested(fx) == [2]


def test_S29_S17_waiting_sheet_reblocks_its_instrument_until_the_stored_deadline() -> None:
    """No retry was spent on the rate limit, and none is spent by the recovery."""
    before = saved(1, S.WAITING, attempts=2, rate_limit_waits=2, retry_at=NOW + 900,
                   last_error="rate limit reached", error_kind="rate_limited")  # fmt: skip
    state, fx = recover([before], sheets=1)
    assert fx.blocks == [BlockOrder("mock", None, NOW + 900)]
    sheet = state.sheet(1)
    # Still waiting, deadline kept: the checkpoint holds it for another crash.
    assert sheet.status is S.WAITING and sheet.retry_at == NOW + 900
    assert (sheet.rate_limit_waits, sheet.retries_used, sheet.attempts) == (2, 0, 2)
    # The pool holds the request until the block ends (S18).
    assert requested(fx) == [1]
    # The block is sent before the request, in the same committed batch.
    (order,) = grant_all(state, fx).attempts
    assert (order.attempt, order.retry_number) == (3, 0)


def test_S29_S17_waiting_sheet_whose_wait_is_over_runs_at_once() -> None:
    state, fx = recover([saved(1, S.WAITING, attempts=1, rate_limit_waits=1,
                               retry_at=NOW - 5)], sheets=1)  # fmt: skip
    assert fx.blocks == []
    assert requested(fx) == [1]
    assert state.sheet(1).rate_limit_waits == 1


def test_S29_S17_rate_limit_deadline_survives_a_second_crash() -> None:
    state, _ = recover([saved(1, S.WAITING, attempts=1, rate_limit_waits=1,
                              retry_at=NOW + 900)], sheets=1)  # fmt: skip
    # What the first recovery leaves in the checkpoint for the next one.
    again = [SheetState.from_record(sheet.to_record()) for sheet in state.sheets]
    _, fx = recover(again, now=NOW + 10, sheets=1)
    assert fx.blocks == [BlockOrder("mock", None, NOW + 900)]


# --- fermata and skips --------------------------------------------------------------------


def test_S29_S16_fermata_stays_a_fermata_and_the_job_stays_paused() -> None:
    state, fx = recover(
        [saved(1, S.FERMATA, attempts=4, retries_used=3, last_error="boom"), saved(2, S.PENDING)],
        sheets=2,
        dependencies={2: [1]},
        escalation=True,
    )
    assert statuses(state) == {1: S.FERMATA, 2: S.PENDING}
    assert state.open_fermatas == 1
    assert state.status is JobStatus.PAUSED
    paused = [e for e in fx.events if e.event == ev.JOB_PAUSED]
    assert [e.data["reason"] for e in paused] == ["fermata"]
    assert fx.lease_requests == []

    decided = Effects()
    assert machine.resolve_fermata(state, 1, "accept", NOW, decided)
    assert machine.job_progress(state).status is JobStatus.RUNNING
    assert requested(decided) == [2]


def test_S29_S24_a_cost_over_the_limit_is_checked_again_on_recovery() -> None:
    """The job record was torn off the batch whose sheet records carry the
    cost: recovery takes the cost from the sheets, and so must its limit."""
    state, fx = recover(
        [saved(1, S.COMPLETED, attempts=1, cost=5.0), saved(2, S.PENDING)],
        {"cost": 0.0, "paused_for_cost": False},
        sheets=2,
        independent=True,
        cost_limits={"enabled": True, "max_cost_per_job": 1.0},
    )
    assert state.cost == 5.0
    assert state.paused_for_cost and state.status is JobStatus.PAUSED
    assert [e.data["scope"] for e in fx.events if e.event == ev.COST_EXCEEDED] == ["job"]
    assert [e.data["reason"] for e in fx.events if e.event == ev.JOB_PAUSED] == ["cost"]
    assert fx.lease_requests == []


@pytest.mark.parametrize("paused_by_user", [True, False], ids=["user-too", "fermata-only"])
def test_S29_S16_S25_a_job_held_for_two_reasons_names_one_in_its_event_and_progress(
    paused_by_user: bool,
) -> None:
    """Recovered paused by the user with a fermata open: the job.paused event
    and progress both name the fermata, the decision the job waits for."""
    state, fx = recover(
        [saved(1, S.FERMATA, attempts=4, retries_used=3, last_error="boom"), saved(2, S.PENDING)],
        {"paused_by_user": paused_by_user},
        sheets=2,
        dependencies={2: [1]},
        escalation=True,
    )
    assert state.paused_by_user is paused_by_user and state.open_fermatas == 1
    paused = [e.data["reason"] for e in fx.events if e.event == ev.JOB_PAUSED]
    assert paused == ["fermata"]
    assert machine.job_progress(state).pause_reason == "fermata"
    decided = Effects()
    assert machine.resolve_fermata(state, 1, "accept", NOW, decided)
    expected = "user" if paused_by_user else None
    assert machine.job_progress(state).pause_reason == expected


@pytest.mark.parametrize("reason", [SkipReason.CONDITION, SkipReason.USER])
def test_S29_S1_sheet_skipped_by_condition_or_user_still_satisfies_its_dependents(
    reason: SkipReason,
) -> None:
    state, fx = recover([saved(1, S.SKIPPED, skip_reason=reason)], sheets=2, dependencies={2: [1]})
    assert state.sheet(1).skip_reason is reason
    assert state.sheet(2).status is S.READY
    assert requested(fx) == [2]


def test_S29_S2_cascade_is_recomputed_when_the_journal_stopped_inside_the_batch() -> None:
    """Sheet 1 failed but the cascade's records were cut off: its dependents
    are skipped again on recovery, with the reason naming the failed sheet."""
    state, fx = recover(
        [saved(1, S.FAILED, attempts=1, last_error="boom"), saved(2, S.PENDING)],
        sheets=4,
        dependencies={2: [1], 3: [2], 4: []},
    )
    assert statuses(state) == {1: S.FAILED, 2: S.SKIPPED, 3: S.SKIPPED, 4: S.READY}
    assert state.sheet(3).skip_reason is SkipReason.CASCADE
    assert state.sheet(3).last_error == "blocked by failed dependency: sheet 1"
    assert requested(fx) == [4]


def test_S29_S2_sheet_skipped_by_a_cascade_does_not_satisfy_its_dependents() -> None:
    state, _ = recover(
        [
            saved(1, S.FAILED, attempts=1),
            saved(2, S.SKIPPED, skip_reason=SkipReason.CASCADE),
            saved(3, S.PENDING),
        ],
        sheets=3,
        dependencies={2: [1], 3: [2]},
    )
    assert statuses(state) == {1: S.FAILED, 2: S.SKIPPED, 3: S.SKIPPED}
    assert state.status is JobStatus.FAILED


def test_S29_S26_job_cancelled_mid_way_ends_cancelled_after_recovery() -> None:
    # The job runs sheets 1-3; sheet 1 completes; the user cancels while 2 and 3
    # run (they stay dispatched until their attempts end)... and the runtime dies.
    state, fx = recover([], sheets=4, dependencies={4: [3], 1: [], 2: [], 3: []})
    dispatch = grant_all(state, fx)
    assert [order.sheet_num for order in dispatch.attempts] == [1, 2, 3]
    machine.on_attempt_finished(state, 1, 1, OK, NOW, Effects())
    assert machine.cancel(state, NOW, Effects())
    assert statuses(state) == {1: S.COMPLETED, 2: S.DISPATCHED, 3: S.DISPATCHED, 4: S.CANCELLED}
    # Everything above was committed: the checkpoint holds exactly this.
    stored_sheets = [SheetState.from_record(sheet.to_record()) for sheet in state.sheets]

    recovered, after = recover(stored_sheets, state.job_record(), sheets=4,
                               dependencies={4: [3], 1: [], 2: [], 3: []})  # fmt: skip
    assert after.lease_requests == []
    assert recovered.status is JobStatus.CANCELLED and after.finished is JobStatus.CANCELLED
    assert statuses(recovered) == {1: S.COMPLETED, 2: S.CANCELLED, 3: S.CANCELLED,
                                   4: S.CANCELLED}  # fmt: skip
    assert recovered.sheet(1).attempts == 1


def test_S29_a_cancelled_sheet_keeps_its_status() -> None:
    state, _ = recover([saved(1, S.CANCELLED, attempts=1), saved(2, S.COMPLETED, attempts=1)],
                       sheets=2, independent=True)  # fmt: skip
    assert statuses(state) == {1: S.CANCELLED, 2: S.COMPLETED}


# --- job-level state ----------------------------------------------------------------------


def test_S29_S25_a_job_paused_by_the_user_stays_paused() -> None:
    state, fx = recover([saved(1, S.PENDING)], {"paused_by_user": True}, sheets=1)
    assert state.status is JobStatus.PAUSED
    assert fx.lease_requests == []
    resumed = Effects()
    assert machine.resume(state, NOW, resumed)
    assert requested(resumed) == [1]


def test_S29_S24_costs_are_restored_and_a_job_over_its_limit_stays_paused() -> None:
    state, fx = recover(
        [saved(1, S.COMPLETED, attempts=1, cost=3.0), saved(2, S.DISPATCHED, attempts=1, cost=0.5)],
        {"paused_for_cost": True, "cost": 3.5, "cost_warned": True},
        sheets=2,
        independent=True,
        cost_limits={"enabled": True, "max_cost_per_job": 3.0},
    )
    assert state.cost == 3.5
    assert (state.sheet(1).cost, state.sheet(2).cost) == (3.0, 0.5)
    assert state.status is JobStatus.PAUSED
    assert fx.lease_requests == []
    assert not [e for e in fx.events if e.event == ev.COST_WARNING]  # warned once, before


def test_S29_S24_job_cost_is_preserved_to_the_last_bit() -> None:
    # The sheets completed in the order 3, 2, 1, and the job added their costs so.
    stored = 0.0
    for cost in (0.3, 0.2, 0.1):
        stored += cost
    state, _ = recover(
        [saved(1, S.COMPLETED, cost=0.1), saved(2, S.COMPLETED, cost=0.2),
         saved(3, S.DISPATCHED, cost=0.3)],
        {"cost": stored},
        sheets=3,
        independent=True,
    )  # fmt: skip
    assert state.cost == stored


def test_S29_every_counter_of_every_status_survives_two_recoveries_in_a_row() -> None:
    """Recovering what a recovery journaled changes nothing more (idempotent)."""
    before = [
        saved(1, S.COMPLETED, attempts=2, retries_used=1, cost=0.75, output_tail="out"),
        saved(2, S.DISPATCHED, attempts=3, retries_used=2, completion_attempts=1, cost=0.5,
              healing_used=True, last_error="e", error_kind="failure"),
        saved(3, S.RETRY_SCHEDULED, attempts=1, retries_used=1, retry_at=NOW + 100),
        saved(4, S.SKIPPED, skip_reason=SkipReason.USER),
        saved(5, S.PENDING),
    ]  # fmt: skip
    score: dict[str, Any] = {"sheets": 5, "dependencies": {5: [1, 4], 1: [], 2: [], 3: [], 4: []}}
    first, _ = recover(before, **score)
    again = [SheetState.from_record(sheet.to_record()) for sheet in first.sheets]
    second, fx = recover(again, now=NOW + 1, **score)
    for sheet, original in zip(second.sheets, before, strict=True):
        assert counters(sheet) == counters(original)
    assert statuses(second) == {1: S.COMPLETED, 2: S.READY, 3: S.RETRY_SCHEDULED,
                                4: S.SKIPPED, 5: S.READY}  # fmt: skip
    assert TimerOrder(3, NOW + 100) in fx.timers
    assert requested(fx) == [2, 5]
    assert [e.data for e in fx.events if e.event == ev.JOB_RESUMED] == [{"recovered": True}]


def test_S29_recovered_job_runs_to_completion_with_exact_attempt_counts() -> None:
    """Drive the recovered job through the machine: only unfinished sheets run,
    and their attempt numbers continue from the stored counters."""
    state, fx = recover(
        [saved(1, S.COMPLETED, attempts=1), saved(2, S.DISPATCHED, attempts=2, retries_used=1),
         saved(3, S.PENDING)],
        sheets=3, dependencies={2: [1], 3: [2]},
    )  # fmt: skip
    ran: list[tuple[int, int]] = []
    now = NOW
    while state.status not in (JobStatus.COMPLETED, JobStatus.FAILED):
        dispatch = grant_all(state, fx, now)
        assert dispatch.attempts, "the job stalled"
        fx = Effects()
        for order in dispatch.attempts:
            ran.append((order.sheet_num, order.attempt))
            machine.on_attempt_finished(state, order.sheet_num, order.attempt, OK, now, fx)
        now += 1
    assert ran == [(2, 3), (3, 1)]
    assert state.status is JobStatus.COMPLETED
