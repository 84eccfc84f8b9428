"""The pool's pure side (``runtime.leases``, ``runtime.breakers``) and the
BackendPool actor's timers: S17-S22.

The lease table is driven directly with explicit times; the actor tests run
through ``runtime.start`` on a manual clock.
"""

from __future__ import annotations

from support import WAIT_SECONDS, RuntimeFactory, ScoreFactory, TimerClock, subscribed

import runtime
from runtime import events as ev
from runtime.breakers import BreakerState, CircuitBreaker
from runtime.leases import Grant, LeaseTable
from runtime.policy import BreakerPolicy
from runtime.testing import Fail, RateLimit, ScriptedBackend, Succeed

J = runtime.JobStatus
T0 = 1_000.0
BREAKER = BreakerPolicy(enabled=True, failure_threshold=2, recovery_timeout_seconds=100.0)


def taken(grants: list[Grant]) -> list[tuple[str, int]]:
    return [(grant.job_id, grant.sheet_num) for grant in grants]


# --- S22 limits and fairness -------------------------------------------------------------


def test_S22_global_ceiling_and_release() -> None:
    table = LeaseTable(max_running=2)
    for num in (1, 2, 3):
        assert table.request("a", num, "x")
    first = table.grant(T0)
    assert taken(first) == [("a", 1), ("a", 2)]
    assert table.grant(T0) == []
    grant, change = table.release(first[0].lease_id, True, BREAKER, T0)
    assert grant == first[0] and change is None
    assert table.release(first[0].lease_id, True, BREAKER, T0) == (None, None)
    assert taken(table.grant(T0)) == [("a", 3)]
    assert table.running == 2 and table.waiting() == 0


def test_S22_instrument_and_model_limits() -> None:
    table = LeaseTable(max_running=10, instrument_limits={"x": 3}, model_limits={("x", "m"): 1})
    for num in range(1, 4):
        table.request("a", num, "x", "m")
    for num in range(4, 8):
        table.request("a", num, "x")
    grants = table.grant(T0)
    on_model = [g.sheet_num for g in grants if g.model == "m"]
    assert on_model == [1] and len(grants) == 3


def test_S22_S18_a_sheet_naming_no_model_counts_and_waits_as_the_default_model() -> None:
    """It runs on the instrument's default model: it shares that model's limit
    and its rate-limit block with the sheets that name the model."""
    table = LeaseTable(10, {}, {("a", "m"): 1}, {"a": "m"})
    table.request("j", 1, "a", None)
    table.request("j", 2, "a", "m")
    (first,) = table.grant(0.0)
    assert (first.sheet_num, first.model) == (1, None)  # the grant keeps what was asked
    assert table.grant(0.0) == []  # sheet 2 would be a second attempt on m
    table.release(first.lease_id, True, BreakerPolicy(), 0.0)
    assert [grant.sheet_num for grant in table.grant(0.0)] == [2]

    blocked = LeaseTable(10, default_models={"a": "m"})
    blocked.block("a", "m", 100.0)
    blocked.request("j", 3, "a", None)
    blocked.request("j", 4, "a", "other")
    assert [grant.sheet_num for grant in blocked.grant(1.0)] == [4]
    assert blocked.jobs_on("a", "m") == ["j"]  # told when the block on m ends (S34)
    assert [grant.sheet_num for grant in blocked.grant(101.0)] == [3]


def test_S22_keys_take_turns_so_one_instrument_cannot_starve_another() -> None:
    table = LeaseTable(max_running=4)
    for num in range(1, 5):
        table.request("a", num, "x")
    for num in range(5, 9):
        table.request("a", num, "y")
    assert [g.instrument for g in table.grant(T0)] == ["x", "y", "x", "y"]


def test_S22_round_robin_between_jobs_fifo_within_each() -> None:
    table = LeaseTable(max_running=100)
    for num in (5, 3, 9):
        table.request("a", num, "x")
    for num in (1, 2):
        table.request("b", num, "x")
    table.request("c", 7, "x")
    assert taken(table.grant(T0)) == [("a", 5), ("b", 1), ("c", 7), ("a", 3), ("b", 2), ("a", 9)]


def test_S25_withdraw_drops_waiting_requests_only() -> None:
    table = LeaseTable(max_running=1)
    table.request("a", 1, "x")
    table.request("a", 2, "x")
    table.request("b", 1, "x")
    (running,) = table.grant(T0)
    assert table.withdraw("a") == 1
    assert table.holder(running.lease_id) == running
    table.release(running.lease_id, None, BREAKER, T0)
    assert taken(table.grant(T0)) == [("b", 1)]


def test_release_job_frees_leases_and_requests_of_a_dead_job() -> None:
    table = LeaseTable(max_running=2)
    for num in (1, 2, 3):
        table.request("a", num, "x")
    table.request("b", 1, "x")
    table.request("b", 2, "x")
    assert taken(table.grant(T0)) == [("a", 1), ("b", 1)]
    assert table.release_job("a") == 3  # one lease held, two requests waiting
    assert table.running == 1
    assert taken(table.grant(T0)) == [("b", 2)]


# --- S17-S19 rate-limit blocks -----------------------------------------------------------------


def test_S17_S18_a_block_stops_grants_for_its_key_until_it_ends_or_grows() -> None:
    table = LeaseTable(max_running=10)
    assert table.block("x", None, T0 + 60)
    table.request("a", 1, "x")
    table.request("a", 2, "x", "m")  # a model of a blocked instrument is blocked too
    table.request("a", 3, "y")
    assert taken(table.grant(T0)) == [("a", 3)]
    assert not table.block("x", None, T0 + 30)  # a shorter wait does not shorten it
    assert table.block("x", None, T0 + 90)  # a longer one extends it
    assert table.next_deadline(T0) == T0 + 90
    assert table.expire_blocks(T0 + 60) == []
    assert table.grant(T0 + 60) == []
    assert table.expire_blocks(T0 + 90) == [("x", None)]
    assert sorted(taken(table.grant(T0 + 90))) == [("a", 1), ("a", 2)]


def test_S17_a_model_block_leaves_other_models_running() -> None:
    table = LeaseTable(max_running=10)
    table.block("x", "m", T0 + 60)
    table.request("a", 1, "x", "m")
    table.request("a", 2, "x", "n")
    table.request("a", 3, "x")
    assert sorted(taken(table.grant(T0))) == [("a", 2), ("a", 3)]


def test_S19_clear_blocks_of_one_instrument_or_all() -> None:
    table = LeaseTable(max_running=10)
    table.block("x", None, T0 + 60)
    table.block("x", "m", T0 + 60)
    table.block("y", None, T0 + 60)
    assert set(table.clear_blocks("x")) == {("x", None), ("x", "m")}
    assert table.clear_blocks("x") == []
    assert table.clear_blocks() == [("y", None)]
    assert table.next_deadline(T0) is None


def test_S17_jobs_on_names_the_jobs_waiting_for_or_running_on_an_instrument() -> None:
    table = LeaseTable(max_running=1)
    table.request("a", 1, "x")
    table.request("b", 1, "x", "m")
    table.request("c", 1, "y")
    table.grant(T0)  # a runs on x
    assert table.jobs_on("x") == ["a", "b"]
    assert table.jobs_on("x", "m") == ["b"]
    assert table.jobs_on("z") == []


# --- S21 circuit breakers ------------------------------------------------------------------


def fail_on(table: LeaseTable, instrument: str, now: float) -> BreakerState | None:
    table.request("job", 99, instrument)
    (grant,) = table.grant(now)
    return table.release(grant.lease_id, False, BREAKER, now)[1]


def test_S21_threshold_consecutive_failures_open_the_breaker() -> None:
    table = LeaseTable(max_running=10)
    assert fail_on(table, "x", T0) is None
    assert fail_on(table, "x", T0) is BreakerState.OPEN
    breaker = table.breakers["x"]
    assert breaker.open_until == T0 + 100
    assert table.next_deadline(T0) == T0 + 100
    # Open: requests with a fallback are refused at once, others wait.
    assert not table.request("j", 1, "x", has_fallback=True, now=T0)
    assert table.request("j", 2, "x", now=T0)
    assert table.grant(T0 + 99) == []


def test_S21_a_success_in_between_resets_the_count() -> None:
    table = LeaseTable(max_running=10)
    fail_on(table, "x", T0)
    table.request("job", 1, "x")
    (grant,) = table.grant(T0)
    table.release(grant.lease_id, True, BREAKER, T0)
    assert fail_on(table, "x", T0) is None
    assert table.breakers["x"].state is BreakerState.CLOSED


def test_S21_half_open_grants_one_trial_its_success_closes() -> None:
    table = LeaseTable(max_running=10)
    fail_on(table, "x", T0)
    fail_on(table, "x", T0)
    for num in (1, 2, 3):
        table.request("j", num, "x")
    (trial,) = table.grant(T0 + 100)
    assert table.breakers["x"].state is BreakerState.HALF_OPEN
    assert table.grant(T0 + 100) == []
    assert table.release(trial.lease_id, True, BREAKER, T0 + 101)[1] is BreakerState.CLOSED
    assert len(table.grant(T0 + 101)) == 2


def test_S21_a_failed_trial_reopens_for_another_recovery_timeout() -> None:
    table = LeaseTable(max_running=10)
    fail_on(table, "x", T0)
    fail_on(table, "x", T0)
    table.request("j", 1, "x")
    (trial,) = table.grant(T0 + 100)
    assert table.release(trial.lease_id, False, BREAKER, T0 + 150)[1] is BreakerState.OPEN
    assert table.breakers["x"].open_until == T0 + 250


def test_S21_a_trial_that_tells_nothing_lets_the_next_trial_run() -> None:
    """A rate-limited, authentication-failed or unused trial lease used to leave
    the breaker half-open with its trial "running" for ever: no lease again."""
    table = LeaseTable(max_running=10)
    fail_on(table, "x", T0)
    fail_on(table, "x", T0)
    table.request("j", 1, "x")
    table.request("j", 2, "x")
    (trial,) = table.grant(T0 + 100)
    assert table.release(trial.lease_id, None, BREAKER, T0 + 100)[1] is None
    (second_trial,) = table.grant(T0 + 100)
    assert second_trial.sheet_num == 2


def test_S21_while_half_open_only_the_trial_speaks() -> None:
    table = LeaseTable(max_running=10)
    table.request("j", 1, "x")
    (old,) = table.grant(T0)  # started while closed
    fail_on(table, "x", T0)
    fail_on(table, "x", T0)
    table.request("j", 2, "x")
    (trial,) = table.grant(T0 + 100)
    # The attempt from before the breaker opened ends now: it does not decide.
    assert table.release(old.lease_id, False, BREAKER, T0 + 100)[1] is None
    assert table.breakers["x"].state is BreakerState.HALF_OPEN
    assert table.release(trial.lease_id, True, BREAKER, T0 + 100)[1] is BreakerState.CLOSED


def test_S21_refuse_fallback_requests_takes_only_those_that_can_move() -> None:
    table = LeaseTable(max_running=0)
    table.request("a", 1, "x", has_fallback=True)
    table.request("a", 2, "x")
    table.request("b", 3, "x", "m", has_fallback=True)
    table.request("b", 4, "y", has_fallback=True)
    assert sorted(table.refuse_fallback_requests("x")) == [("a", 1), ("b", 3)]
    assert table.waiting() == 2


def test_S21_a_disabled_breaker_counts_but_never_opens() -> None:
    breaker = CircuitBreaker("x")
    disabled = BreakerPolicy(enabled=False, failure_threshold=1)
    for lease_id in range(5):
        assert breaker.record(lease_id, False, disabled, T0) is None
    assert breaker.allows(T0) and breaker.state is BreakerState.CLOSED


# --- the pool actor's timers ---------------------------------------------------------------


def test_S18_the_pool_rearms_its_timer_when_a_block_is_extended(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend({1: [RateLimit(60), Succeed()], 2: [RateLimit(120), Succeed()]})
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=2, independent=True))
    log.wait_for_count(ev.RATE_LIMIT_ACTIVE, 2)
    clock.wait_for_pending(1)
    assert backend.calls() == 2
    clock.advance(60)  # the first deadline: the block runs on to 120
    progress = handle.status()
    assert progress.counts == {"waiting": 2}
    clock.wait_for_pending(1)  # re-armed for the extended end
    assert clock.advance(59) == 0
    clock.advance(1)
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    assert backend.calls() == 4
    cleared = log.named(ev.RATE_LIMIT_CLEARED)
    assert len(cleared) == 1 and cleared[0].data["instrument"] == "mock"


def test_S21_breaker_events_are_instrument_wide_and_name_the_jobs(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend({1: [Fail(), Succeed()]})
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(
        make_score(
            sheets=1, retry_delay=1, retry={"jitter": False},
            circuit_breaker={"failure_threshold": 1, "recovery_timeout_seconds": 30},
        ),
        job_id="tripped",
    )  # fmt: skip
    log.wait_for_count(ev.CIRCUIT_OPENED, 1)
    clock.wait_for_pending(2)  # the retry and the breaker's recovery
    assert clock.advance(29) == 1  # the retry is due, the breaker still open
    assert handle.status().counts == {"ready": 1}
    clock.advance(1)
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    events = log.wait_for_count(ev.CIRCUIT_CLOSED, 1)
    opened, closed = (e for e in events if e.event.startswith("circuit."))
    for event in (opened, closed):
        assert (event.job_id, event.sheet_num) == ("", 0)
        assert event.data["instrument"] == "mock" and event.data["jobs"] == ["tripped"]
