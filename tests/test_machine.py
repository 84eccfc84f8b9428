"""Unit tests of the decision core (runtime.machine) and the lease table (runtime.leases).

Pure: plans are built from score mappings with runtime.plan, the job state is
driven by calling machine functions directly, and effects are checked as data.
No actors, no clock, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support import score_dict

from runtime import events as ev
from runtime import machine
from runtime.leases import LeaseTable
from runtime.machine import Effects
from runtime.outcomes import AttemptResult, OutcomeKind
from runtime.plan import Plan, build_plan
from runtime.policy import BreakerPolicy, Policy, policy_from_plan
from runtime.score import score_from_mapping
from runtime.state import JobState, JobStatus, SheetState, SheetStatus, SkipReason

S = SheetStatus
OK = AttemptResult(kind=OutcomeKind.SUCCESS, exit_code=0)
FAIL = AttemptResult(kind=OutcomeKind.FAILURE, exit_code=1, error="boom")


def make_job(job_id: str = "job", **overrides: Any) -> tuple[Plan, Policy]:
    """The plan and policy of a score built by ``score_dict`` from ``overrides``."""
    data = score_dict("/tmp/ensemble-machine-tests", **overrides)
    score = score_from_mapping(data, base_dir=Path("/tmp"), source_name="<test>")
    return build_plan(score), policy_from_plan(build_plan(score))


def make_plan(**overrides: Any) -> Plan:
    return make_job(**overrides)[0]


class Sim:
    """Drives one JobState through the machine the way a JobActor would, minus actors.

    ``requested`` mirrors the lease requests the pool holds (FIFO), ``running``
    the attempts in flight (sheet -> attempt number).
    """

    def __init__(self, plan: Plan, policy: Policy, job_id: str = "job") -> None:
        self.state: JobState = machine.new_job(job_id, plan, policy, seed=1)
        self.now = 1_000.0
        self.requested: list[int] = []
        self.running: dict[int, int] = {}
        self.events: list[ev.Event] = []
        self.timers: list[machine.TimerOrder] = []
        self.finished: JobStatus | None = None
        self.granted: list[Any] = []
        self.released: list[Any] = []
        self._lease_ids = iter(range(1, 10**9))

    def _apply(self, fx: Effects) -> Effects:
        self.events.extend(fx.events)
        if fx.withdraw_lease_requests:
            self.requested.clear()
        self.requested.extend(request.sheet_num for request in fx.lease_requests)
        for order in fx.attempts:
            self.running[order.sheet_num] = order.attempt
        self.timers.extend(fx.timers)
        self.released.extend(lease for lease, _ in fx.released_leases)
        if fx.finished is not None:
            assert self.finished is None, "a job finishes once"
            self.finished = fx.finished
        self.check_invariants()
        return fx

    def check_invariants(self) -> None:
        state = self.state
        assert sum(state.counts.values()) == state.total_sheets
        assert state.running == state.counts.get(S.DISPATCHED, 0)
        # S22: a job never holds more requests plus running attempts than its limit.
        assert state.running + len(state.lease_requested) <= state.plan.max_parallel

    def status(self, num: int) -> SheetStatus:
        return self.state.sheet(num).status

    def start(self) -> Effects:
        fx = Effects()
        machine.start(self.state, self.now, fx)
        return self._apply(fx)

    def grant(self, *nums: int) -> Effects:
        """Grant leases for ``nums`` (default: every outstanding request)."""
        chosen = list(nums) if nums else list(self.requested)
        for num in chosen:
            self.requested.remove(num)
        grants = [(num, f"lease-{next(self._lease_ids)}") for num in chosen]
        self.granted.extend(lease for _, lease in grants)
        fx = Effects()
        machine.on_leases_granted(self.state, grants, self.now, fx)
        return self._apply(fx)

    def finish(self, num: int, result: AttemptResult = OK, attempt: int | None = None) -> Effects:
        if attempt is None:
            attempt = self.running.pop(num)
        fx = Effects()
        machine.on_attempt_finished(self.state, num, attempt, result, self.now, fx)
        return self._apply(fx)

    def fire_timers(self) -> Effects:
        fx = Effects()
        due, self.timers = self.timers, []
        for timer in due:
            self.now = max(self.now, timer.due)
            machine.on_timer(self.state, timer.sheet_num, self.now, fx)
        return self._apply(fx)

    def command(self, name: str) -> tuple[bool, Effects]:
        fx = Effects()
        changed = getattr(machine, name)(self.state, self.now, fx)
        return changed, self._apply(fx)

    def run_until_quiet(self, outcome: Mapping[int, AttemptResult] | None = None) -> None:
        """Grant and finish everything (retries included) until nothing moves."""
        outcome = outcome or {}
        for _ in range(10_000):
            if self.requested:
                self.grant()
            elif self.running:
                for num in list(self.running):
                    self.finish(num, outcome.get(num, OK))
            elif self.timers:
                self.fire_timers()
            else:
                return
        raise AssertionError("the job never settled")

    def names(self, sheet_num: int | None = None) -> list[str]:
        return [e.event for e in self.events if sheet_num is None or e.sheet_num == sheet_num]


def force_status(state: JobState, num: int, status: SheetStatus) -> None:
    """Put a sheet in a status as a recovered checkpoint would, counters kept right."""
    sheet = state.sheet(num)
    state.counts[sheet.status] -= 1
    state.counts[status] = state.counts.get(status, 0) + 1
    sheet.status = status


# --- S1 readiness -------------------------------------------------------------------


def test_S1_only_sheets_without_dependencies_are_ready_at_start() -> None:
    sim = Sim(*make_job(sheets=4, dependencies={3: [1, 2], 4: [3]}))
    fx = sim.start()
    assert [request.sheet_num for request in fx.lease_requests] == [1, 2]
    assert sim.status(3) is S.PENDING and sim.status(4) is S.PENDING
    assert sim.names()[0] == ev.JOB_STARTED


def test_S1_sheet_becomes_ready_only_when_every_dependency_completed() -> None:
    sim = Sim(*make_job(sheets=3, dependencies={3: [1, 2]}))
    sim.start()
    sim.grant()
    sim.finish(1)
    assert sim.status(3) is S.PENDING
    assert 3 not in sim.requested
    sim.finish(2)
    assert sim.status(3) is S.READY
    assert sim.requested == [3]


def test_S1_skipped_by_user_or_condition_satisfies_but_cascade_does_not() -> None:
    for reason, satisfies in (
        (SkipReason.USER, True),
        (SkipReason.CONDITION, True),
        (SkipReason.CASCADE, False),
    ):
        sheet = SheetState(num=1, status=S.SKIPPED, skip_reason=reason)
        assert sheet.satisfies_dependents is satisfies
    assert SheetState(num=1, status=S.COMPLETED).satisfies_dependents
    assert not SheetState(num=1, status=S.FAILED).satisfies_dependents


# --- S2 failure cascade ----------------------------------------------------------------


def test_S2_failure_skips_dependents_transitively_with_reason() -> None:
    sim = Sim(*make_job(sheets=5, max_retries=0, dependencies={2: [1], 3: [2], 4: [3], 5: []}))
    sim.start()
    sim.grant()
    sim.finish(1, FAIL)
    assert sim.status(1) is S.FAILED
    for num in (2, 3, 4):
        sheet = sim.state.sheet(num)
        assert sheet.status is S.SKIPPED
        assert sheet.skip_reason is SkipReason.CASCADE
        assert sheet.last_error == "blocked by failed dependency: sheet 1"
        assert ev.SHEET_SKIPPED in sim.names(num)
    assert sim.finished is None  # sheet 5 still running
    sim.finish(5)
    assert sim.status(5) is S.COMPLETED
    assert sim.finished is JobStatus.FAILED


def test_S2_fan_in_is_skipped_as_soon_as_one_dependency_fails() -> None:
    sim = Sim(*make_job(sheets=4, max_retries=0, dependencies={4: [1, 2, 3]}))
    sim.start()
    sim.grant()
    sim.finish(1, FAIL)
    # 2 and 3 are still running, yet the join can never run: skipped now.
    assert sim.status(4) is S.SKIPPED
    assert sim.status(2) is S.DISPATCHED and sim.status(3) is S.DISPATCHED
    sim.finish(2)
    sim.finish(3)
    assert sim.status(4) is S.SKIPPED
    assert sim.finished is JobStatus.FAILED


def test_S2_completed_sheets_are_never_touched_by_a_cascade() -> None:
    # 2 depends on 1 and was completed already (as after a restart); 3 depends on 2 only.
    sim = Sim(*make_job(sheets=4, max_retries=0, dependencies={2: [1], 3: [2], 4: [1]}))
    force_status(sim.state, 2, S.COMPLETED)
    sim.start()
    sim.grant()
    sim.finish(1, FAIL)
    assert sim.status(2) is S.COMPLETED
    assert sim.state.sheet(2).skip_reason is None
    assert sim.status(3) is not S.SKIPPED  # its only dependency completed
    assert sim.status(4) is S.SKIPPED


def test_S2_diamond_keeps_completed_branch() -> None:
    sim = Sim(*make_job(sheets=4, max_retries=0, dependencies={2: [1], 3: [1], 4: [2, 3]}))
    sim.start()
    sim.grant()
    sim.finish(1)
    sim.grant()
    sim.finish(2)
    sim.finish(3, FAIL)
    assert [sim.status(n) for n in (1, 2, 3, 4)] == [S.COMPLETED, S.COMPLETED, S.FAILED, S.SKIPPED]
    assert sim.finished is JobStatus.FAILED


# --- S3 dependency map ------------------------------------------------------------------


def test_S3_dependencies_are_by_sheet_number_and_missing_sheets_have_none() -> None:
    plan, policy = make_job(sheets=5, dependencies={3: [1], 4: [2, 3]})
    assert plan.dependencies.get(3) == (1,)
    assert plan.dependencies.get(4) == (2, 3)
    for num in (1, 2, 5):
        assert plan.dependencies.get(num, ()) == ()
    assert plan.dependents.get(1) == (3,)
    assert plan.dependents.get(3) == (4,)
    sim = Sim(plan, policy)
    fx = sim.start()
    assert [request.sheet_num for request in fx.lease_requests] == [1, 2, 5]


def test_S3_without_a_dependency_map_stages_form_a_chain() -> None:
    plan = make_plan(sheets=3)
    assert plan.dependencies.get(1, ()) == ()
    assert plan.dependencies.get(2) == (1,)
    assert plan.dependencies.get(3) == (2,)


# --- S7, S9, S12 attempts ---------------------------------------------------------------


def test_S7_success_at_full_pass_rate_completes() -> None:
    sim = Sim(*make_job(sheets=1))
    sim.start()
    sim.grant()
    all_passed = AttemptResult(kind=OutcomeKind.SUCCESS, validations_passed=2, validations_total=2)
    sim.finish(1, all_passed)
    sheet = sim.state.sheet(1)
    assert sheet.status is S.COMPLETED
    assert sheet.attempts == 1 and sheet.retries_used == 0
    assert sim.names(1) == [ev.SHEET_DISPATCHED, ev.SHEET_COMPLETED]
    assert sim.finished is JobStatus.COMPLETED


def test_S6_S9_success_with_failed_validations_consumes_a_retry() -> None:
    sim = Sim(*make_job(sheets=1, max_retries=1, retry_delay=5))
    sim.start()
    sim.grant()
    none_passed = AttemptResult(kind=OutcomeKind.SUCCESS, validations_passed=0, validations_total=2)
    sim.finish(1, none_passed)
    assert sim.status(1) is S.RETRY_SCHEDULED
    assert sim.state.sheet(1).retries_used == 1


def test_S9_max_retries_3_allows_4_attempts() -> None:
    sim = Sim(*make_job(sheets=1, max_retries=3))
    sim.start()
    sim.run_until_quiet({1: FAIL})
    sheet = sim.state.sheet(1)
    assert sheet.status is S.FAILED
    assert sheet.attempts == 4
    assert sheet.retries_used == 3
    assert sheet.last_error == "boom" and sheet.error_kind == "failure"
    assert sim.names(1).count(ev.SHEET_DISPATCHED) == 4
    assert sim.names(1).count(ev.SHEET_RETRY_SCHEDULED) == 3
    assert sim.names(1)[-1] == ev.SHEET_FAILED
    assert sim.finished is JobStatus.FAILED


def test_S9_max_retries_0_allows_one_attempt() -> None:
    sim = Sim(*make_job(sheets=1, max_retries=0))
    sim.start()
    sim.run_until_quiet({1: FAIL})
    assert sim.state.sheet(1).attempts == 1
    assert sim.status(1) is S.FAILED


@pytest.mark.parametrize("kind", [OutcomeKind.TIMEOUT, OutcomeKind.CRASHED, OutcomeKind.FAILURE])
def test_S9_timeout_crash_and_failure_each_consume_one_retry(kind: OutcomeKind) -> None:
    sim = Sim(*make_job(sheets=1, max_retries=2, retry_delay=5))
    sim.start()
    sim.grant()
    sim.finish(1, AttemptResult(kind=kind))
    sheet = sim.state.sheet(1)
    assert sheet.status is S.RETRY_SCHEDULED
    assert sheet.retries_used == 1
    assert sheet.error_kind == kind.value


def test_S10_retry_scheduled_until_its_timer_fires() -> None:
    sim = Sim(*make_job(sheets=1, max_retries=1, retry_delay=30))
    sim.start()
    sim.grant()
    fx = sim.finish(1, FAIL)
    assert [(t.sheet_num, t.due) for t in fx.timers] == [(1, sim.now + 30)]
    early = Effects()
    machine.on_timer(sim.state, 1, sim.now + 29, early)  # early: armed again
    assert sim.status(1) is S.RETRY_SCHEDULED
    assert [(t.sheet_num, t.due) for t in early.timers] == [(1, sim.now + 30)]
    assert not early.lease_requests
    sim.fire_timers()
    assert sim.status(1) is S.READY
    assert sim.requested == [1]
    sim.grant()
    sim.finish(1)
    assert sim.status(1) is S.COMPLETED
    assert sim.state.sheet(1).attempts == 2


def test_S12_auth_failure_is_not_retried() -> None:
    sim = Sim(*make_job(sheets=2, max_retries=3, dependencies={2: [1]}))
    sim.start()
    sim.grant()
    fx = sim.finish(1, AttemptResult(kind=OutcomeKind.AUTH_FAILED, error="bad key"))
    sheet = sim.state.sheet(1)
    assert sheet.status is S.FAILED
    assert sheet.attempts == 1 and sheet.retries_used == 0
    assert sheet.error_kind == "auth_failed"
    assert fx.timers == []
    assert sim.status(2) is S.SKIPPED


# --- S25 pause / resume ----------------------------------------------------------------


def test_S25_pause_withdraws_lease_requests_and_running_attempts_still_apply() -> None:
    sim = Sim(*make_job(sheets=4, independent=True, max_concurrent=2))
    sim.start()
    sim.grant(1)
    assert sim.requested == [2]
    changed, fx = sim.command("pause")
    assert changed
    assert fx.withdraw_lease_requests
    assert not sim.state.lease_requested
    assert sim.state.status is JobStatus.PAUSED
    assert ev.JOB_PAUSED in [e.event for e in fx.events]
    # The running attempt finishes and applies; nothing new is requested.
    fx = sim.finish(1)
    assert sim.status(1) is S.COMPLETED
    assert fx.lease_requests == []
    assert sim.requested == []


def test_S25_a_grant_arriving_after_pause_is_given_back() -> None:
    sim = Sim(*make_job(sheets=2, independent=True, max_concurrent=2))
    sim.start()
    sim.command("pause")
    fx = Effects()
    machine.on_leases_granted(sim.state, [(1, "late-lease")], sim.now, fx)
    assert [lease for lease, _ in fx.released_leases] == ["late-lease"]
    assert fx.attempts == []
    assert sim.status(1) is S.READY


def test_S25_resume_requests_leases_again_in_order_and_job_completes() -> None:
    sim = Sim(*make_job(sheets=3, independent=True, max_concurrent=2))
    sim.start()
    sim.command("pause")
    assert sim.command("pause")[0] is False  # already paused
    changed, fx = sim.command("resume")
    assert changed
    assert [r.sheet_num for r in fx.lease_requests] == [1, 2]
    assert ev.JOB_RESUMED in [e.event for e in fx.events]
    assert sim.state.status is JobStatus.RUNNING
    assert sim.command("resume")[0] is False  # not paused
    sim.run_until_quiet()
    assert sim.finished is JobStatus.COMPLETED


# --- S26 cancel ----------------------------------------------------------------------


def test_S26_cancel_orders_running_attempts_cancelled_and_ends_the_rest_at_once() -> None:
    sim = Sim(*make_job(sheets=6, dependencies={4: [2]}, max_concurrent=3))
    sim.start()
    sim.grant(1)
    sim.finish(1)  # completed before the cancel
    sim.grant(2, 3)
    assert sim.requested == [5]  # 5 waits for a lease, 6 is ready, 4 pending
    changed, fx = sim.command("cancel")
    assert changed
    assert fx.withdraw_lease_requests
    assert sorted(fx.cancel_attempts) == [2, 3]
    assert [sim.status(n) for n in (4, 5, 6)] == [S.CANCELLED] * 3
    assert sim.status(1) is S.COMPLETED
    assert sim.finished is None
    sim.finish(2, AttemptResult(kind=OutcomeKind.CANCELLED))
    assert sim.status(2) is S.CANCELLED
    assert sim.finished is None
    fx = sim.finish(3, FAIL)  # a result of any kind after cancel ends the sheet cancelled
    assert sim.status(3) is S.CANCELLED
    assert fx.timers == []
    assert sim.status(1) is S.COMPLETED
    assert sim.finished is JobStatus.CANCELLED
    assert sim.state.status is JobStatus.CANCELLED
    assert sim.names(0)[-1] == ev.JOB_CANCELLED
    assert sim.command("cancel")[0] is False


def test_S26_cancel_withdraws_requests_and_stops_retry_timers() -> None:
    sim = Sim(*make_job(sheets=2, independent=True, max_concurrent=1, max_retries=2, retry_delay=5))
    sim.start()
    sim.grant()
    sim.finish(1, FAIL)
    assert sim.status(1) is S.RETRY_SCHEDULED
    _, fx = sim.command("cancel")
    assert fx.withdraw_lease_requests
    assert sim.status(1) is S.CANCELLED and sim.status(2) is S.CANCELLED
    assert sim.finished is JobStatus.CANCELLED
    late = Effects()
    machine.on_timer(sim.state, 1, sim.now + 100, late)
    assert sim.status(1) is S.CANCELLED and late.empty


# --- S27, S28 final statuses ----------------------------------------------------------


def test_S22_every_granted_lease_is_given_back_exactly_once() -> None:
    sim = Sim(*make_job(sheets=6, max_retries=1, dependencies={3: [1], 6: [3]}, max_concurrent=2))
    sim.start()
    sim.run_until_quiet({1: FAIL, 4: AttemptResult(kind=OutcomeKind.CRASHED)})
    assert sim.finished is JobStatus.FAILED
    assert sorted(sim.released) == sorted(sim.granted)
    assert len(set(sim.released)) == len(sim.released)


@pytest.mark.parametrize(
    ("outcomes", "expected", "event"),
    [
        ({}, JobStatus.COMPLETED, ev.JOB_COMPLETED),
        ({2: FAIL}, JobStatus.FAILED, ev.JOB_FAILED),
        ({1: FAIL}, JobStatus.FAILED, ev.JOB_FAILED),
    ],
)
def test_S27_final_status(
    outcomes: dict[int, AttemptResult], expected: JobStatus, event: str
) -> None:
    sim = Sim(*make_job(sheets=3, max_retries=0, dependencies={3: [1]}))
    sim.start()
    sim.run_until_quiet(outcomes)
    assert sim.finished is expected
    assert sim.state.status is expected
    assert sim.names(0)[-1] == event
    result = machine.job_result(sim.state)
    assert result.status is expected
    assert set(result.sheets) == {1, 2, 3}


def test_S28_a_job_with_no_sheets_completes_at_once() -> None:
    sim = Sim(*make_job(sheets=0))
    assert sim.state.total_sheets == 0
    fx = sim.start()
    assert fx.finished is JobStatus.COMPLETED
    assert sim.names() == [ev.JOB_STARTED, ev.JOB_COMPLETED]


# --- terminal statuses are absorbing --------------------------------------------------


def test_terminal_statuses_absorb_late_and_stale_results() -> None:
    sim = Sim(*make_job(sheets=2, independent=True, max_retries=1))
    sim.start()
    sim.grant()
    sim.finish(1, FAIL)  # attempt 1 failed, retry scheduled
    sim.fire_timers()
    sim.grant(1)
    # A stale report for attempt 1 while attempt 2 runs is ignored.
    stale = Effects()
    assert not machine.on_attempt_finished(sim.state, 1, 1, OK, sim.now, stale)
    assert stale.empty and sim.status(1) is S.DISPATCHED
    sim.finish(1)
    sim.finish(2, FAIL)
    sim.fire_timers()
    sim.grant()
    sim.finish(2, FAIL)
    assert (sim.status(1), sim.status(2)) == (S.COMPLETED, S.FAILED)
    before = [sheet.to_record() for sheet in sim.state.sheets]
    late = Effects()
    for num, result in ((1, FAIL), (2, OK), (1, OK), (99, OK)):
        assert not machine.on_attempt_finished(sim.state, num, 2, result, sim.now, late)
        machine.on_timer(sim.state, num, sim.now + 1e6, late)
    machine.on_attempt_lost(sim.state, 1, "gone", sim.now, late)
    machine.on_leases_granted(sim.state, [(1, "stray")], sim.now, late)
    assert [lease for lease, _ in late.released_leases] == ["stray"]
    late.released_leases.clear()
    assert late.empty
    assert [sheet.to_record() for sheet in sim.state.sheets] == before
    assert sim.state.status is JobStatus.FAILED
    for command in ("pause", "resume", "cancel"):
        assert sim.command(command)[0] is False
    assert sim.state.status is JobStatus.FAILED


# --- S22 job-level parallel limit ----------------------------------------------------------


@pytest.mark.parametrize("limit", [None, 1, 3, 7])
def test_S22_requests_plus_running_never_exceed_the_job_limit(limit: int | None) -> None:
    plan, policy = make_job(
        sheets=40,
        dependencies={n: [n - 10] for n in range(11, 41)},
        max_concurrent=limit,
        max_retries=2,
    )
    expected_limit = 1 if limit is None else limit  # parallel disabled means 1
    assert plan.max_parallel == expected_limit
    rng = random.Random(limit or 0)
    sim = Sim(plan, policy)
    fx = sim.start()
    assert len(fx.lease_requests) == expected_limit
    peak = 0
    for _ in range(5_000):
        if sim.finished is not None:
            break
        choice = rng.random()
        if sim.requested and choice < 0.4:
            sim.grant(*rng.sample(sim.requested, rng.randint(1, len(sim.requested))))
        elif sim.running and choice < 0.8:
            num = rng.choice(list(sim.running))
            sim.finish(num, FAIL if rng.random() < 0.2 else OK)
        elif sim.timers:
            sim.fire_timers()
        peak = max(peak, sim.state.running)
    assert sim.finished is not None
    assert peak == expected_limit


def test_S22_parallel_disabled_requests_one_lease_at_a_time() -> None:
    sim = Sim(*make_job(sheets=5, independent=True, max_concurrent=None))
    fx = sim.start()
    assert [r.sheet_num for r in fx.lease_requests] == [1]
    sim.grant()
    assert sim.requested == []
    fx = sim.finish(1)
    assert [r.sheet_num for r in fx.lease_requests] == [2]


# --- rule 5: no scans ------------------------------------------------------------------


class CountingList(list[SheetState]):
    """A list that counts how many sheets were read through it."""

    reads = 0

    def __getitem__(self, index: Any) -> Any:
        type(self).reads += 1
        return super().__getitem__(index)

    def __iter__(self) -> Iterator[SheetState]:
        for sheet in super().__iter__():
            type(self).reads += 1
            yield sheet


def test_readiness_needs_no_scans_a_10000_sheet_chain_runs_in_linear_steps() -> None:
    count = 10_000
    sim = Sim(*make_job(sheets=count, dependencies={n: [n - 1] for n in range(2, count + 1)}))
    CountingList.reads = 0
    sim.state.sheets = CountingList(sim.state.sheets)
    sim.start()
    steps = 0
    while sim.finished is None:
        (num,) = sim.requested
        sim.grant(num)
        sim.finish(num)
        steps += 1
    assert steps == count
    assert sim.finished is JobStatus.COMPLETED
    assert sim.state.counts[S.COMPLETED] == count
    # A constant number of sheet reads per step; a scan per step would be ~count²/2.
    assert CountingList.reads <= 20 * count, CountingList.reads


# --- runtime.leases ---------------------------------------------------------------------


def release(table: LeaseTable, lease_id: int) -> None:
    grant, _ = table.release(lease_id, True, BreakerPolicy(), 0.0)
    assert grant is not None


def granted(grants: Iterable[Any]) -> list[tuple[str, int]]:
    return [(grant.job_id, grant.sheet_num) for grant in grants]


def test_S22_lease_table_global_ceiling() -> None:
    table = LeaseTable(max_running=2)
    for num in range(1, 6):
        table.request("a", num, "mock")
    first = table.grant(0.0)
    assert granted(first) == [("a", 1), ("a", 2)]
    assert table.grant(0.0) == []
    assert table.running == 2 and table.waiting() == 3
    released, _ = table.release(first[0].lease_id, True, BreakerPolicy(), 0.0)
    assert released is not None and released.sheet_num == 1
    assert granted(table.grant(0.0)) == [("a", 3)]
    assert table.release(first[0].lease_id, True, BreakerPolicy(), 0.0) == (None, None)
    assert table.running == 2


def test_S22_lease_table_per_instrument_limit() -> None:
    table = LeaseTable(max_running=10, instrument_limits={"slow": 1})
    for num in range(1, 4):
        table.request("a", num, "slow")
    for num in range(4, 7):
        table.request("a", num, "fast")
    grants = table.grant(0.0)
    by_instrument = {
        name: [g.sheet_num for g in grants if g.instrument == name] for name in ("slow", "fast")
    }
    assert by_instrument == {"slow": [1], "fast": [4, 5, 6]}
    assert table.grant(0.0) == []
    release(table, next(g.lease_id for g in grants if g.instrument == "slow"))
    assert [(g.instrument, g.sheet_num) for g in table.grant(0.0)] == [("slow", 2)]


def test_S22_lease_table_round_robin_between_jobs_fifo_within_a_job() -> None:
    table = LeaseTable(max_running=100)
    for num in (5, 3, 9):
        table.request("a", num, "mock")
    for num in (1, 2, 3):
        table.request("b", num, "mock")
    table.request("c", 7, "mock")
    assert granted(table.grant(0.0)) == [
        ("a", 5),
        ("b", 1),
        ("c", 7),
        ("a", 3),
        ("b", 2),
        ("a", 9),
        ("b", 3),
    ]


def test_S22_lease_table_round_robin_under_a_ceiling() -> None:
    table = LeaseTable(max_running=1)
    for job in ("a", "b"):
        for num in range(1, 4):
            table.request(job, num, "mock")
    order = []
    for _ in range(6):
        (grant,) = table.grant(0.0)
        order.append((grant.job_id, grant.sheet_num))
        release(table, grant.lease_id)
    assert order == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]


def test_lease_table_withdraw_drops_only_that_jobs_waiting_requests() -> None:
    table = LeaseTable(max_running=1)
    table.request("a", 1, "mock")
    table.request("a", 2, "mock")
    table.request("a", 3, "other")
    table.request("b", 1, "mock")
    (running,) = table.grant(0.0)
    assert (running.job_id, running.sheet_num) == ("a", 1)
    assert table.withdraw("a") == 2
    assert table.withdraw("a") == 0
    assert table.withdraw("nobody") == 0
    assert table.holder(running.lease_id) == running  # a granted lease stays granted
    release(table, running.lease_id)
    assert granted(table.grant(0.0)) == [("b", 1)]
    assert table.waiting() == 0


@pytest.mark.parametrize(
    ("kind", "ours", "health"),
    [
        (OutcomeKind.SUCCESS, False, True),
        (OutcomeKind.FAILURE, False, False),
        (OutcomeKind.TIMEOUT, False, False),
        (OutcomeKind.CRASHED, False, False),
        (OutcomeKind.RATE_LIMITED, False, None),
        (OutcomeKind.AUTH_FAILED, False, None),
        (OutcomeKind.CANCELLED, False, None),
        (OutcomeKind.FAILURE, True, None),
    ],
)
def test_S21_what_an_attempt_says_of_its_instruments_health(
    kind: OutcomeKind, ours: bool, health: bool | None
) -> None:
    result = AttemptResult(kind=kind, not_the_instruments_fault=ours)
    assert result.instrument_health is health
