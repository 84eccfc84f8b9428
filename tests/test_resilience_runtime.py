"""Rules S8-S27 end to end: ``runtime.start`` with scripted backends on a manual clock.

Every wait is on an event, a result or the scripted backend's counters, with a
timeout; time moves only through ``ManualClock.advance`` (``support.TimerClock``
tells a test when the timers it is about to fire have been armed). Absence is
checked only across an ``advance`` that fired no timer, so nothing can have
happened meanwhile.
"""

from __future__ import annotations

from typing import Any

import pytest
from support import WAIT_SECONDS, RuntimeFactory, ScoreFactory, TimerClock, subscribed

import runtime
from runtime import events as ev
from runtime.errors import ConfigError
from runtime.journal import load_checkpoint
from runtime.messages import ExecutionRequest
from runtime.testing import (
    AuthFailure,
    Fail,
    Hang,
    Outcome,
    RateLimit,
    ScriptedBackend,
    Succeed,
)

S = runtime.SheetStatus
J = runtime.JobStatus


# --- S8, S11 completion mode and retry prompts ---------------------------------------------


def test_S8_completion_mode_end_to_end_with_note_and_delay(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend({
        1: [Succeed(files={"a.txt": "a"}), Succeed(files={"a.txt": "a", "b.txt": "b"})],
    })  # fmt: skip
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    score = make_score(
        sheets=1,
        retry={"completion_delay_seconds": 30, "completion_threshold_percent": 50},
        validations=[
            {"type": "file_exists", "path": "{workspace}/a.txt", "description": "a exists"},
            {"type": "file_exists", "path": "{workspace}/b.txt", "description": "b exists"},
        ],
    )
    handle = rt.submit(score)
    partial = log.wait_for_event(ev.SHEET_PARTIAL)
    assert partial.data["pass_rate"] == 50.0
    clock.wait_for_pending(1)
    assert clock.advance(29) == 0
    assert backend.calls() == 1
    clock.advance(1)
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    first, second = backend.requests
    assert "Completing the previous attempt" not in first.prompt
    assert "Completing the previous attempt" in second.prompt
    note = second.prompt.split("Completing the previous attempt", 1)[1]
    assert note.index("a exists") < note.index("Still failing:") < note.index("b exists")
    assert second.attempt == 2
    result = handle.result()
    assert result.sheets[1].attempts == 2


def test_S11_a_retry_prompt_says_retry_k_and_the_attempt_counts_every_attempt(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend({1: [Fail(), Fail(), Succeed()]})
    rt = rt_factory({"mock": backend})
    handle = rt.submit(make_score(sheets=1, max_retries=2))
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    requests = backend.requests
    assert [r.attempt for r in requests] == [1, 2, 3]
    assert "retry #" not in requests[0].prompt
    assert "This is retry #1 of sheet 1" in requests[1].prompt
    assert "This is retry #2 of sheet 1" in requests[2].prompt


# --- S12, S15 fallbacks, self-healing, fermata ---------------------------------------------


def test_S12_S15_auth_failure_falls_back_to_the_next_instrument(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    primary = ScriptedBackend(default=AuthFailure())
    backup = ScriptedBackend()
    rt = rt_factory({"mock": primary, "backup": backup})
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=1, instrument_fallbacks=["backup"]))
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert (primary.calls(), backup.calls()) == (1, 1)
    (fallback,) = log.named(ev.INSTRUMENT_FALLBACK)
    assert fallback.sheet_num == 1 and fallback.job_id == handle.job_id
    assert fallback.data["to_instrument"] == "backup"
    dispatched = log.named(ev.SHEET_DISPATCHED)
    assert [e.data["instrument"] for e in dispatched] == ["mock", "backup"]


def test_S15_the_fallback_backend_is_told_its_own_instrument(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backup = ScriptedBackend()
    rt = rt_factory({"mock": ScriptedBackend(default=AuthFailure()), "backup": backup})
    handle = rt.submit(
        make_score(sheets=1, instrument_fallbacks=["backup"], instrument_config={"model": "big"})
    )
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    (request,) = backup.requests
    assert (request.instrument, request.model) == ("backup", None)


def test_S15_self_healing_from_the_runtime_gives_one_extra_attempt(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend(default=Fail())
    rt = rt_factory({"mock": backend}, self_healing=True)
    handle = rt.submit(make_score(sheets=1, max_retries=1))
    assert handle.wait(WAIT_SECONDS).status is J.FAILED
    assert backend.calls() == 3
    plain = rt.submit(make_score(sheets=1, max_retries=1), self_healing=False)
    assert plain.wait(WAIT_SECONDS).status is J.FAILED
    assert backend.calls(job_id=plain.job_id) == 2


def test_S15_S16_fermata_pauses_the_job_until_a_human_decides(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend({1: [Fail(), Succeed()]})
    rt = rt_factory({"mock": backend})
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=2, max_retries=0, dependencies={2: [1]}), escalation=True)
    log.wait_for_count(ev.SHEET_FERMATA, 1)
    log.wait_for(lambda events: any(e.event == ev.JOB_PAUSED for e in events))
    progress = handle.status()
    assert progress.status is J.PAUSED
    assert progress.counts == {"fermata": 1, "pending": 1}
    assert handle.resume() is False  # a fermata is not a user pause
    assert rt.resolve_fermata(handle.job_id, 2, "accept") is False  # not in fermata
    with pytest.raises(ConfigError, match="unknown fermata decision"):
        rt.resolve_fermata(handle.job_id, 1, "later")
    assert rt.resolve_fermata(handle.job_id, 1, "retry") is True
    result = handle.wait(WAIT_SECONDS)
    # Refused the same way once the job is finished (it was a silent False).
    with pytest.raises(ConfigError, match="unknown fermata decision"):
        rt.resolve_fermata(handle.job_id, 1, "later")
    assert result.status is J.COMPLETED
    assert result.sheets[1].attempts == 2
    assert ev.JOB_RESUMED in log.names(handle.job_id, 0)


@pytest.mark.parametrize(
    ("decision", "final", "sheet_1", "sheet_2"),
    [
        ("skip", J.COMPLETED, S.SKIPPED, S.COMPLETED),
        ("accept", J.COMPLETED, S.COMPLETED, S.COMPLETED),
        ("fail", J.FAILED, S.FAILED, S.SKIPPED),
    ],
)
def test_S16_fermata_decisions_end_to_end(
    rt_factory: RuntimeFactory,
    make_score: ScoreFactory,
    decision: str,
    final: runtime.JobStatus,
    sheet_1: runtime.SheetStatus,
    sheet_2: runtime.SheetStatus,
) -> None:
    rt = rt_factory({"mock": ScriptedBackend({1: Fail()})}, escalation=True)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=2, max_retries=0, dependencies={2: [1]}))
    log.wait_for_count(ev.SHEET_FERMATA, 1)
    assert rt.resolve_fermata(handle.job_id, 1, decision) is True
    result = handle.wait(WAIT_SECONDS)
    assert (result.status, result.sheets[1].status, result.sheets[2].status) == (
        final, sheet_1, sheet_2,
    )  # fmt: skip


# --- S13, S14 timeouts and crashes -----------------------------------------------------------


def test_S13_the_backend_gets_the_sheets_timeout_and_a_timeout_is_a_failed_attempt(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend({1: [Hang(), Succeed()]})
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=1, max_retries=1, timeout_seconds=120))
    assert backend.wait_for_calls(1, WAIT_SECONDS)
    assert backend.requests[0].timeout_seconds == 120
    clock.wait_for_pending(1)
    assert clock.advance(119) == 0
    clock.advance(1)
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    (retry,) = log.named(ev.SHEET_RETRY_SCHEDULED)
    assert retry.data["error_kind"] == "timeout"


# --- S17-S20 rate limits ----------------------------------------------------------------------


def rate_limit_once(job_id: str, wait: float) -> Any:
    def script(request: ExecutionRequest) -> Outcome:
        if request.job_id == job_id and request.attempt == 1:
            return RateLimit(wait_seconds=wait)
        return Succeed()

    return script


def test_S17_S18_a_rate_limit_blocks_the_instrument_across_jobs_until_it_ends(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    mock = ScriptedBackend(rate_limit_once("first", 600))
    other = ScriptedBackend()
    rt = rt_factory({"mock": mock, "other": other}, clock=clock)
    log = subscribed(rt)
    first = rt.submit(make_score(sheets=1), job_id="first")
    active = log.wait_for_event(ev.RATE_LIMIT_ACTIVE)
    assert (active.job_id, active.sheet_num) == ("first", 1)
    assert active.data["wait_seconds"] == 600
    clock.wait_for_pending(1)  # the pool's timer for the end of the block
    second = rt.submit(make_score(sheets=2, independent=True), job_id="second")
    elsewhere = rt.submit(make_score(sheets=2, instrument="other"), job_id="elsewhere")
    assert elsewhere.wait(WAIT_SECONDS).status is J.COMPLETED  # S17: others keep running
    log.wait_for(lambda events: any(e.job_id == "second" for e in events))
    assert clock.advance(599) == 0
    assert mock.calls() == 1 and second.status().counts == {"ready": 2}
    assert first.status().counts == {"waiting": 1}
    clock.advance(1)
    assert first.wait(WAIT_SECONDS).status is J.COMPLETED
    assert second.wait(WAIT_SECONDS).status is J.COMPLETED
    assert first.result().sheets[1].attempts == 2
    cleared = log.wait_for_event(ev.RATE_LIMIT_CLEARED)
    assert cleared.job_id == "" and cleared.sheet_num == 0
    assert cleared.data["instrument"] == "mock" and cleared.data["manual"] is False
    assert cleared.data["jobs"] == ["first", "second"]


def test_S18_no_retry_is_spent_on_rate_limits(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend({1: [RateLimit(0), RateLimit(0), Fail(), Succeed()]})
    rt = rt_factory({"mock": backend})
    result = rt.submit(make_score(sheets=1, max_retries=1)).wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert result.sheets[1].attempts == 4


def test_S19_clear_rate_limit_ends_the_wait_at_once(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend(rate_limit_once("job", 3600))
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=1), job_id="job")
    log.wait_for_count(ev.RATE_LIMIT_ACTIVE, 1)
    clock.wait_for_pending(1)
    assert rt.clear_rate_limit("other") == 0
    assert rt.clear_rate_limit() == 1
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    cleared = log.wait_for_event(ev.RATE_LIMIT_CLEARED)
    assert cleared.data["manual"] is True
    assert rt.clear_rate_limit("mock") == 0


def test_S20_too_many_rate_limits_in_a_row_fail_the_sheet(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend(default=RateLimit(0))
    rt = rt_factory({"mock": backend})
    result = rt.submit(make_score(sheets=1, rate_limit={"max_waits": 2})).wait(WAIT_SECONDS)
    assert result.status is J.FAILED
    sheet = result.sheets[1]
    assert sheet.attempts == 3 and sheet.error_kind == "rate_limited"
    assert sheet.error is not None and "rate_limit.max_waits" in sheet.error


# --- S21 circuit breakers ---------------------------------------------------------------------


def test_S21_the_breaker_opens_waits_then_a_trial_closes_it(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend({n: [Fail(), Succeed(delay=1)] for n in (1, 2, 3)})
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(
        make_score(
            sheets=3, independent=True, max_concurrent=3, retry_delay=1,
            retry={"jitter": False},
            circuit_breaker={"failure_threshold": 2, "recovery_timeout_seconds": 100},
        ),
        job_id="job",
    )  # fmt: skip
    opened = log.wait_for_event(ev.CIRCUIT_OPENED)
    assert opened.job_id == "" and opened.sheet_num == 0
    assert opened.data["instrument"] == "mock" and opened.data["jobs"] == ["job"]
    log.wait_for_count(ev.SHEET_RETRY_SCHEDULED, 3)
    clock.wait_for_pending(4)  # three retries and the breaker's recovery
    assert clock.advance(99) == 3  # the retries are due; the breaker is still open
    assert handle.status().counts == {"ready": 3}
    clock.advance(1)  # half-open: one trial, alone
    log.wait_for_count(ev.SHEET_DISPATCHED, 4)
    assert handle.status().counts == {"dispatched": 1, "ready": 2}
    clock.wait_for_pending(1)
    clock.advance(1)
    closed = log.wait_for_event(ev.CIRCUIT_CLOSED)
    assert closed.job_id == "" and closed.data["instrument"] == "mock"
    assert backend.wait_for_calls(6, WAIT_SECONDS)
    clock.wait_for_pending(2)
    clock.advance(1)
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    assert backend.calls() == 6


def test_S21_sheets_with_a_fallback_move_on_when_the_breaker_opens(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    mock = ScriptedBackend(default=Fail())
    backup = ScriptedBackend()
    rt = rt_factory({"mock": mock, "backup": backup}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(
        sheets=3, independent=True, max_concurrent=1, retry_delay=50, max_retries=5,
        instrument_fallbacks=["backup"],
        circuit_breaker={"failure_threshold": 1, "recovery_timeout_seconds": 1000},
    ))  # fmt: skip
    log.wait_for_count(ev.CIRCUIT_OPENED, 1)
    # Sheet 1 failed and opened the breaker; the next sheet's request is refused
    # and it moves to its fallback without spending any attempt on mock.
    log.wait_for_count(ev.INSTRUMENT_FALLBACK, 1)
    log.wait_for_count(ev.SHEET_COMPLETED, 2)
    assert mock.calls() == 1
    clock.wait_for_pending(1)
    clock.advance(50)  # sheet 1's retry: refused too, off to backup
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    assert mock.calls() == 1 and backup.calls() == 3


# --- S22 concurrency and fairness -------------------------------------------------------------


def test_S22_two_jobs_of_100_sheets_on_one_instrument_share_it_fairly(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=1), max_concurrent=2)
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    a = rt.submit(make_score(sheets=100, independent=True, max_concurrent=10), job_id="a")
    b = rt.submit(make_score(sheets=100, independent=True, max_concurrent=10), job_id="b")
    log.wait_for(lambda events: any(e.job_id == "b" for e in events))
    for calls in range(2, 201, 2):
        assert backend.wait_for_calls(calls, WAIT_SECONDS)
        clock.wait_for_pending(2)
        clock.advance(1)
    assert a.wait(WAIT_SECONDS).status is J.COMPLETED
    assert b.wait(WAIT_SECONDS).status is J.COMPLETED
    assert backend.max_running == 2
    done = {"a": 0, "b": 0}
    at_first_finish = None
    for event in log.events:
        if event.event == ev.SHEET_COMPLETED:
            done[event.job_id] += 1
        elif event.event == ev.JOB_COMPLETED and at_first_finish is None:
            at_first_finish = dict(done)
    assert at_first_finish is not None
    assert min(at_first_finish.values()) >= 90, at_first_finish


def test_S22_a_model_limit_holds(rt_factory: RuntimeFactory, make_score: ScoreFactory) -> None:
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=1))
    backend.model_limits = {"small": 1}  # type: ignore[attr-defined]
    rt = rt_factory({"mock": backend}, clock=clock)
    small = rt.submit(make_score(sheets=3, independent=True, instrument_config={"model": "small"}))
    large = rt.submit(make_score(sheets=3, independent=True, instrument_config={"model": "large"}))
    for calls, running in ((4, 4), (5, 1), (6, 1)):
        assert backend.wait_for_calls(calls, WAIT_SECONDS)
        clock.wait_for_pending(running)
        clock.advance(1)
    assert small.wait(WAIT_SECONDS).status is J.COMPLETED
    assert large.wait(WAIT_SECONDS).status is J.COMPLETED
    on_small = [r for r in backend.requests if r.model == "small"]
    assert len(on_small) == 3
    # The three large sheets ran together in the first step, small ones one by one.
    assert [r.model for r in backend.requests[:4]].count("small") == 1


# --- S23 pacing, S24 cost ---------------------------------------------------------------------


def test_S23_pause_between_sheets_holds_dispatch_on_the_clock(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend()
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=2, pause_between_sheets_seconds=30))
    log.wait_for_count(ev.SHEET_COMPLETED, 1)
    clock.wait_for_pending(1)
    assert clock.advance(29) == 0
    assert backend.calls() == 1
    clock.advance(1)
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    assert backend.calls() == 2


def test_S24_over_the_job_limit_the_job_pauses_and_resume_pauses_again(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend(default=Succeed(cost=0.6))
    rt = rt_factory({"mock": backend})
    log = subscribed(rt)
    handle = rt.submit(make_score(
        sheets=4, cost_limits={"max_cost_per_job": 1.0, "warn_at_percent": 50},
    ))  # fmt: skip
    exceeded = log.wait_for_event(ev.COST_EXCEEDED)
    assert exceeded.sheet_num == 0 and exceeded.data["scope"] == "job"
    log.wait_for(lambda events: any(e.event == ev.JOB_PAUSED for e in events))
    progress = handle.status()
    assert progress.status is J.PAUSED and progress.cost == pytest.approx(1.2)
    assert progress.counts == {"completed": 2, "ready": 1, "pending": 1}
    assert [e.event for e in log.events if e.event.startswith("cost.")] == [
        ev.COST_WARNING, ev.COST_EXCEEDED,
    ]  # fmt: skip
    handle.resume()
    log.wait_for_count(ev.COST_EXCEEDED, 2)
    assert handle.status().status is J.PAUSED
    assert backend.calls() == 2
    assert handle.cancel() is True
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.CANCELLED and result.cost == pytest.approx(1.2)
    checkpoint = load_checkpoint(rt.state_dir / "jobs" / handle.job_id).checkpoint
    assert checkpoint["cost"] == pytest.approx(1.2)
    assert [sheet["cost"] for sheet in checkpoint["sheets"]] == [0.6, 0.6, 0.0, 0.0]


def test_S24_a_sheet_over_its_own_limit_fails(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend({1: Fail(cost=0.7)})
    rt = rt_factory({"mock": backend})
    handle = rt.submit(make_score(sheets=1, cost_limits={"max_cost_per_sheet": 1.0}))
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.FAILED
    assert result.sheets[1].error_kind == "cost" and result.sheets[1].attempts == 2


# --- S26 cancel -----------------------------------------------------------------------------


# --- S34 events -------------------------------------------------------------------------------

S34_EVENTS = {
    "job.started", "job.resumed", "job.paused", "job.completed", "job.failed",
    "job.cancelled", "sheet.dispatched", "sheet.completed", "sheet.partial", "sheet.failed",
    "sheet.retry_scheduled", "sheet.skipped", "sheet.fermata", "rate_limit.active",
    "rate_limit.cleared", "instrument.fallback", "circuit.opened", "circuit.closed",
    "cost.exceeded", "concert.next",
}  # fmt: skip
ADDED_EVENTS = {"cost.warning", "sheet.cancelled"}


def test_S34_every_transition_publishes_a_complete_event(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    mock = ScriptedBackend({
        1: [Succeed(files={"a.txt": "a"}), Succeed(files={"a.txt": "", "b.txt": ""})],
        2: [RateLimit(10), Fail(), Succeed()],
        3: Fail(),
    })  # fmt: skip
    rt = rt_factory(
        {"mock": mock, "backup": ScriptedBackend(default=Fail())}, clock=clock, escalation=True
    )
    log = subscribed(rt)
    score = make_score(
        sheets=4, dependencies={4: [3]}, max_retries=1, max_concurrent=1,
        retry={"completion_delay_seconds": 0},
        validations=[
            {"type": "file_exists", "path": "{workspace}/a.txt", "condition": "sheet_num == 1"},
            {"type": "file_exists", "path": "{workspace}/b.txt", "condition": "sheet_num == 1"},
        ],
    )  # fmt: skip
    score["sheet"]["per_sheet_fallbacks"] = {3: ["backup"]}
    handle = rt.submit(score, job_id="events")
    log.wait_for_count(ev.RATE_LIMIT_ACTIVE, 1)
    clock.wait_for_pending(1)
    clock.advance(10)
    log.wait_for_count(ev.SHEET_FERMATA, 1)
    assert rt.resolve_fermata("events", 3, "fail") is True
    assert handle.wait(WAIT_SECONDS).status is J.FAILED
    events = log.wait_for_count(ev.RATE_LIMIT_CLEARED, 1)
    names = {e.event for e in events}
    assert names <= S34_EVENTS | ADDED_EVENTS, names - S34_EVENTS - ADDED_EVENTS
    assert {
        "job.started", "job.paused", "job.resumed", "job.failed", "sheet.dispatched",
        "sheet.completed", "sheet.partial", "sheet.failed", "sheet.retry_scheduled",
        "sheet.skipped", "sheet.fermata", "rate_limit.active", "rate_limit.cleared",
        "instrument.fallback",
    } <= names  # fmt: skip
    for event in events:
        record = event.to_dict()
        assert set(record) == {"job_id", "sheet_num", "event", "data", "timestamp"}
        assert isinstance(record["data"], dict) and isinstance(record["timestamp"], float)
        if event.event.startswith(("rate_limit.cleared", "circuit.")):
            assert (event.job_id, event.sheet_num) == ("", 0)  # instrument-wide
        else:
            assert event.job_id == "events"
        if event.event.startswith("job."):
            assert event.sheet_num == 0
        elif event.event.startswith("sheet."):
            assert event.sheet_num in (1, 2, 3, 4)
    # Per sheet, the story in order.
    per_sheet = {n: log.names("events", n) for n in (1, 2, 3, 4)}
    assert per_sheet[1] == [
        "sheet.dispatched", "sheet.partial", "sheet.dispatched", "sheet.completed",
    ]  # fmt: skip
    assert per_sheet[2] == [
        "sheet.dispatched", "rate_limit.active", "sheet.dispatched", "sheet.retry_scheduled",
        "sheet.dispatched", "sheet.completed",
    ]  # fmt: skip
    assert per_sheet[3] == [
        "sheet.dispatched", "sheet.retry_scheduled", "sheet.dispatched",
        "instrument.fallback", "sheet.dispatched", "sheet.retry_scheduled",
        "sheet.dispatched", "sheet.fermata", "sheet.failed",
    ]  # fmt: skip
    assert per_sheet[4] == ["sheet.skipped"]
