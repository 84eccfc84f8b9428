"""End-to-end tests of the actor runtime through ``runtime.start`` with scripted backends.

Every test waits on job results, observer events or the scripted backend's
counters, never on sleeps; tests that need time to pass use a ManualClock.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import WAIT_SECONDS, EventLog, RuntimeFactory, ScoreFactory, TimerClock, subscribed

import runtime
from runtime import events as ev
from runtime.events import Event
from runtime.journal import load_checkpoint
from runtime.messages import ExecutionRequest
from runtime.testing import AuthFailure, Crash, Fail, Hang, Outcome, ScriptedBackend, Succeed

S = runtime.SheetStatus
J = runtime.JobStatus


def sheet_events(log: EventLog, job_id: str) -> list[Event]:
    return [e for e in log.events if e.job_id == job_id and e.sheet_num]


# --- S1, S2 dependencies --------------------------------------------------------------------


def test_S1_no_sheet_starts_before_its_dependencies_completed(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    dependencies = {2: [1], 3: [1], 4: [1], 5: [2, 3, 4], 6: [5], 7: [], 8: [7, 3]}
    backend = ScriptedBackend(default=Succeed(delay=0.005))
    rt = rt_factory({"mock": backend})
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=8, dependencies=dependencies, max_concurrent=8))
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    completed: set[int] = set()
    dispatched: list[int] = []
    for event in sheet_events(log, handle.job_id):
        if event.event == ev.SHEET_DISPATCHED:
            missing = set(dependencies.get(event.sheet_num, [])) - completed
            assert not missing, f"sheet {event.sheet_num} dispatched before {missing} completed"
            dispatched.append(event.sheet_num)
        elif event.event == ev.SHEET_COMPLETED:
            completed.add(event.sheet_num)
    assert sorted(dispatched) == list(range(1, 9))
    # The backend saw each sheet once, in an order that respects the same rule.
    order = [request.sheet_num for request in backend.requests]
    assert sorted(order) == list(range(1, 9))
    for sheet, deps in dependencies.items():
        assert all(order.index(dep) < order.index(sheet) for dep in deps)


def test_S2_failure_cascades_to_dependents_end_to_end(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend({1: Fail(exit_code=3)})
    rt = rt_factory({"mock": backend})
    score = make_score(sheets=5, max_retries=1, dependencies={2: [1], 3: [2], 4: [1, 5], 5: []})
    result = rt.submit(score).wait(WAIT_SECONDS)
    assert result.status is J.FAILED
    assert result.sheets[1].status is S.FAILED
    assert result.sheets[1].attempts == 2
    assert backend.calls(1) == 2
    for num in (2, 3, 4):
        sheet = result.sheets[num]
        assert sheet.status is S.SKIPPED
        assert sheet.error == "blocked by failed dependency: sheet 1"
        assert sheet.attempts == 0
        assert backend.calls(num) == 0
    assert result.sheets[5].status is S.COMPLETED


# --- S22 concurrency ------------------------------------------------------------------------


def run_in_rounds(
    clock: TimerClock, backend: ScriptedBackend, handle: runtime.JobHandle, width: int, sheets: int
) -> runtime.JobResult:
    """Let attempts of 1 s on the manual clock end a round at a time. While the
    clock stands still nothing ends, so each round shows how many may run at once:
    exactly ``width`` must be running before the clock moves on."""
    for calls in range(width, sheets + 1, width):
        assert backend.wait_for_calls(calls, WAIT_SECONDS)
        clock.wait_for_pending(width)
        assert backend.running == width
        clock.advance(1)
    return handle.wait(WAIT_SECONDS)


def test_S22_running_attempts_never_exceed_the_runtime_ceiling(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=1))
    rt = rt_factory({"mock": backend}, max_concurrent_sheets=5, clock=clock)
    handle = rt.submit(make_score(sheets=20, independent=True, max_concurrent=50))
    result = run_in_rounds(clock, backend, handle, width=5, sheets=20)
    assert result.count(S.COMPLETED) == 20
    assert backend.max_running == 5


def test_S22_instrument_limit(rt_factory: RuntimeFactory, make_score: ScoreFactory) -> None:
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=1), max_concurrent=2)
    rt = rt_factory({"mock": backend}, max_concurrent_sheets=10, clock=clock)
    handle = rt.submit(make_score(sheets=6, independent=True, max_concurrent=10))
    result = run_in_rounds(clock, backend, handle, width=2, sheets=6)
    assert result.count(S.COMPLETED) == 6
    assert backend.max_running == 2


@pytest.mark.parametrize(("parallel", "expected"), [(3, 3), (None, 1)])
def test_S22_job_parallel_limit(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, parallel: int | None, expected: int
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=1))
    rt = rt_factory({"mock": backend}, max_concurrent_sheets=10, clock=clock)
    handle = rt.submit(make_score(sheets=6, independent=True, max_concurrent=parallel))
    result = run_in_rounds(clock, backend, handle, width=expected, sheets=6)
    assert result.status is J.COMPLETED
    assert backend.max_running == expected


def test_S22_two_jobs_share_the_ceiling_and_take_turns(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=10))
    rt = rt_factory({"mock": backend}, max_concurrent_sheets=2, clock=clock)
    log = subscribed(rt)
    first = rt.submit(make_score(name="a", sheets=8, independent=True, max_concurrent=8))
    assert backend.wait_for_calls(2, WAIT_SECONDS)
    second = rt.submit(make_score(name="b", sheets=8, independent=True, max_concurrent=8))
    # b's lease requests reach the pool in the same batch as its job.started event.
    log.wait_for(lambda events: any(e.job_id == "b" for e in events))
    for calls in range(2, 17, 2):
        assert backend.wait_for_calls(calls, WAIT_SECONDS)
        clock.wait_for_pending(2)
        clock.advance(10)
    assert first.wait(WAIT_SECONDS).status is J.COMPLETED
    assert second.wait(WAIT_SECONDS).status is J.COMPLETED
    assert backend.max_running == 2
    # a held both slots before b arrived; from then on the jobs alternate.
    jobs = [request.job_id for request in backend.requests]
    assert jobs == ["a", "a", *["a", "b"] * 6, "b", "b"]


# --- S25, S26 pause, resume, cancel ------------------------------------------------------


def test_S25_pause_stops_dispatch_running_attempts_apply_resume_continues(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=10))
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=4, independent=True, max_concurrent=2))
    assert backend.wait_for_calls(2, WAIT_SECONDS)
    clock.wait_for_pending(2)
    assert handle.pause() is True
    assert handle.pause() is False  # already paused
    assert handle.status().status is J.PAUSED

    clock.advance(10)  # the two running attempts finish while paused
    log.wait_for_count(ev.SHEET_COMPLETED, 2)
    progress = handle.status()
    assert progress.counts.get("completed") == 2
    assert progress.running == 0
    assert backend.calls() == 2

    assert handle.resume() is True
    assert backend.wait_for_calls(4, WAIT_SECONDS)
    clock.wait_for_pending(2)
    clock.advance(10)
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert backend.calls() == 4

    names = log.names(handle.job_id)
    paused, resumed = names.index(ev.JOB_PAUSED), names.index(ev.JOB_RESUMED)
    assert ev.SHEET_DISPATCHED not in names[paused:resumed]
    assert names[paused:resumed].count(ev.SHEET_COMPLETED) == 2
    assert names[resumed:].count(ev.SHEET_DISPATCHED) == 2


def test_S26_cancel_terminates_running_attempts_and_keeps_completed_sheets(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend({1: Succeed()}, default=Hang())
    rt = rt_factory({"mock": backend})
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=5, dependencies={4: [2]}, max_concurrent=3))
    # 1 completes, then 2, 3 and 5 hang; 4 waits for 2.
    assert backend.wait_for_calls(4, WAIT_SECONDS)
    log.wait_for_count(ev.SHEET_COMPLETED, 1)
    assert handle.cancel() is True
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.CANCELLED
    assert result.sheets[1].status is S.COMPLETED
    assert {num: result.sheets[num].status for num in (2, 3, 4, 5)} == dict.fromkeys(
        (2, 3, 4, 5), S.CANCELLED
    )
    assert result.sheets[4].attempts == 0
    assert backend.running == 0  # every hanging attempt was ended
    assert backend.calls() == 4
    cancelled = {e.sheet_num for e in log.named(ev.SHEET_CANCELLED)}
    assert {2, 3, 5} <= cancelled
    assert log.names(handle.job_id)[-1] == ev.JOB_CANCELLED
    assert handle.cancel() is False
    assert handle.pause() is False


# --- scale and threads -----------------------------------------------------------------------


def test_a_1000_sheet_job_completes(rt_factory: RuntimeFactory, make_score: ScoreFactory) -> None:
    backend = ScriptedBackend()
    rt = rt_factory({"mock": backend}, max_concurrent_sheets=50)
    result = rt.submit(make_score(sheets=1000, independent=True, max_concurrent=200)).wait(
        WAIT_SECONDS
    )
    assert result.status is J.COMPLETED
    assert result.count(S.COMPLETED) == 1000
    assert sorted(request.sheet_num for request in backend.requests) == list(range(1, 1001))


def test_host_calls_from_8_threads_at_once(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend(default=Succeed(delay=0.002))
    rt = rt_factory({"mock": backend}, max_concurrent_sheets=8)
    barrier = threading.Barrier(8)
    score = make_score(name="job", sheets=20, independent=True, max_concurrent=4)

    def client(index: int) -> tuple[str, runtime.JobResult]:
        barrier.wait(WAIT_SECONDS)
        handle = rt.submit(score)
        handle.status()
        handle.pause()
        handle.status()
        handle.resume()
        handle.result()
        return handle.job_id, handle.wait(WAIT_SECONDS)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(client, range(8)))
    ids = {job_id for job_id, _ in outcomes}
    assert ids == {"job", *(f"job-{n}" for n in range(2, 9))}
    for _, result in outcomes:
        assert result.status is J.COMPLETED
        assert result.count(S.COMPLETED) == 20
    assert backend.calls() == 160


# --- stopping ------------------------------------------------------------------------------------


def test_stop_leaves_no_actor_and_is_idempotent(tmp_path: Path, make_score: ScoreFactory) -> None:
    with runtime.start(
        tmp_path / "state", backends={"mock": ScriptedBackend()}, durability="process"
    ) as rt:
        assert rt.alive_actors() > 0
        assert rt.submit(make_score()).wait(WAIT_SECONDS).status is J.COMPLETED
    assert rt.alive_actors() == 0
    rt.stop()
    assert rt.alive_actors() == 0


def test_a_call_racing_stop_gets_runtime_stopped_not_a_pykka_error(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    """stop() in another thread can end the supervisor between a call's check
    that the runtime runs and its message: the call still says the runtime
    stopped, in Ensemble's words (here the supervisor is stopped directly,
    which is that window held open)."""
    rt = rt_factory({"mock": ScriptedBackend()})
    handle = rt.submit(make_score(sheets=1))
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    rt._supervisor.stop()
    with pytest.raises(runtime.RuntimeStoppedError):
        rt.submit(make_score(sheets=1))
    with pytest.raises(runtime.RuntimeStoppedError):
        handle.status()


def test_stop_with_running_jobs_ends_every_actor_and_wakes_waiters(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend(default=Hang())
    rt = rt_factory({"mock": backend})
    handles = [rt.submit(make_score(name=f"j{n}", sheets=3, independent=True)) for n in range(3)]
    assert backend.wait_for_calls(9, WAIT_SECONDS)
    rt.stop()
    assert rt.alive_actors() == 0
    assert backend.running == 0
    for handle in handles:
        with pytest.raises(runtime.RuntimeStoppedError):
            handle.wait(WAIT_SECONDS)
        assert handle.done() is False  # cut short, not ended: it can be resumed
    with pytest.raises(runtime.RuntimeStoppedError):
        rt.submit(make_score())
    with pytest.raises(runtime.RuntimeStoppedError):
        rt.subscribe(EventLog())
    with pytest.raises(runtime.RuntimeStoppedError):
        handles[0].status()


# --- S34 events ------------------------------------------------------------------------


def test_S34_events_of_a_job_arrive_in_order(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory({"mock": ScriptedBackend()})
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=4, independent=True, max_concurrent=4))
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    # wait() returns only after the job's last events were delivered.
    job_events = [e for e in log.events if e.job_id == handle.job_id and e.sheet_num == 0]
    assert job_events[0].event == ev.JOB_STARTED
    assert job_events[-1].event == ev.JOB_COMPLETED
    assert log.events[0].event == ev.JOB_STARTED
    assert log.events[-1].event == ev.JOB_COMPLETED
    for num in range(1, 5):
        assert log.names(handle.job_id, num) == [ev.SHEET_DISPATCHED, ev.SHEET_COMPLETED]
    for event in log.events:
        record = event.to_dict()
        assert set(record) == {"job_id", "sheet_num", "event", "data", "timestamp"}
        assert isinstance(record["timestamp"], float)


def test_S34_unsubscribe_stops_deliveries(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory({"mock": ScriptedBackend()})
    leaving, staying = EventLog(), EventLog()
    unsubscribe = rt.subscribe(leaving)
    rt.subscribe(staying)
    first = rt.submit(make_score(name="first"))
    first.wait(WAIT_SECONDS)
    assert ev.JOB_COMPLETED in leaving.names(first.job_id)
    unsubscribe()
    second = rt.submit(make_score(name="second"))
    second.wait(WAIT_SECONDS)
    assert ev.JOB_COMPLETED in staying.names(second.job_id)
    assert leaving.names(second.job_id) == []


@pytest.mark.parametrize("error", [RuntimeError, SystemExit], ids=["exception", "system-exit"])
def test_S34_a_failing_subscriber_does_not_break_others(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, error: type[BaseException]
) -> None:
    """Even a callback that raises SystemExit (a host calling sys.exit in it)
    leaves the delivery thread, the other subscribers and the waiters alive."""
    rt = rt_factory({"mock": ScriptedBackend()})
    calls = []

    def broken(event: Event) -> None:
        calls.append(event)
        raise error("subscriber bug")

    rt.subscribe(broken)
    log = subscribed(rt)
    for name in ("one", "two"):
        handle = rt.submit(make_score(name=name, sheets=2))
        assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
        assert log.names(handle.job_id)[-1] == ev.JOB_COMPLETED
    assert len(calls) == len(log.events)  # still subscribed, called for every event


# --- submit errors and job ids ----------------------------------------------------------------


def jobs_in(state_dir: Path) -> list[str]:
    jobs = state_dir / "jobs"
    return sorted(path.name for path in jobs.iterdir()) if jobs.exists() else []


def test_submit_invalid_score_raises_score_error_and_creates_nothing(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, tmp_path: Path
) -> None:
    rt = rt_factory()
    missing_prompt = make_score()
    del missing_prompt["prompt"]
    with pytest.raises(runtime.ScoreError) as missing:
        rt.submit(missing_prompt)
    assert missing.value.key_path == "prompt"
    with pytest.raises(runtime.ScoreError) as unknown:
        rt.submit(make_score(sheet={"sizes": 2}))
    assert unknown.value.key_path == "sheet.sizes"
    with pytest.raises(runtime.ScoreError) as cycle:
        rt.submit(make_score(sheets=3, dependencies={1: [3], 3: [1]}))
    assert "cycle" in str(cycle.value)
    assert jobs_in(rt.state_dir) == []
    assert not (tmp_path / "workspace").exists()


def test_submit_template_syntax_error_raises_score_error_and_runtime_lives_on(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory()
    with pytest.raises(runtime.ScoreError):
        rt.submit(make_score(template="{{ sheet_num "), timeout=2)
    assert jobs_in(rt.state_dir) == []
    assert rt.submit(make_score(), timeout=5).wait(WAIT_SECONDS).status is J.COMPLETED


def test_submit_unknown_instrument(rt_factory: RuntimeFactory, make_score: ScoreFactory) -> None:
    rt = rt_factory()
    with pytest.raises(runtime.UnknownInstrumentError) as error:
        rt.submit(make_score(instrument="no-such-tool"))
    assert "no-such-tool" in str(error.value)
    assert jobs_in(rt.state_dir) == []


def test_job_ids_explicit_duplicate_and_same_name(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory()
    fixed = rt.submit(make_score(name="alpha"), job_id="fixed")
    assert fixed.job_id == "fixed"
    with pytest.raises(runtime.JobExistsError):
        rt.submit(make_score(name="alpha"), job_id="fixed")
    names = [rt.submit(make_score(name="my score")).job_id for _ in range(3)]
    assert names == ["my-score", "my-score-2", "my-score-3"]
    for job_id in ("fixed", *names):
        assert rt.job(job_id).wait(WAIT_SECONDS).status is J.COMPLETED
    with pytest.raises(runtime.JobNotFoundError):
        rt.job("never-submitted")
    rt.stop()

    # A new runtime on the same state directory knows the ids already taken.
    again = rt_factory()
    with pytest.raises(runtime.JobExistsError):
        again.submit(make_score(name="alpha"), job_id="fixed")
    assert again.submit(make_score(name="my score")).job_id == "my-score-4"


@pytest.mark.parametrize("job_id", ["../../escaped", "a/b", "", ".hidden"])
def test_explicit_job_id_cannot_escape_the_state_directory(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, tmp_path: Path, job_id: str
) -> None:
    rt = rt_factory()
    with pytest.raises(runtime.ConfigError) as error:
        rt.submit(make_score(), job_id=job_id)
    assert error.value.key_path == "job_id"
    assert not (tmp_path / "escaped").exists()
    assert jobs_in(rt.state_dir) == []


def test_status_name_is_the_score_name_after_the_job_finished(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory()
    handle = rt.submit(make_score(name="my score"))
    handle.wait(WAIT_SECONDS)
    assert handle.status().name == "my score"


# --- checkpoint ------------------------------------------------------------------------


def test_checkpoint_files_hold_every_sheets_final_status(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory({"mock": ScriptedBackend({1: Fail()})})
    handle = rt.submit(make_score(sheets=4, max_retries=0, dependencies={2: [1], 4: []}))
    result = handle.wait(WAIT_SECONDS)
    expected = ["failed", "skipped", "completed", "completed"]
    assert [result.sheets[n].status.value for n in range(1, 5)] == expected
    rt.stop()
    job_dir = rt.state_dir / "jobs" / handle.job_id
    assert (job_dir / "journal.jsonl").exists()
    assert (job_dir / "score.json").exists()
    snapshot = json.loads((job_dir / "checkpoint.json").read_text())
    assert snapshot["job_id"] == handle.job_id
    assert snapshot["status"] == "failed"
    assert [sheet["status"] for sheet in snapshot["sheets"]] == expected
    assert snapshot["sheets"][0]["attempts"] == 1
    assert load_checkpoint(job_dir).checkpoint["status"] == "failed"


def test_checkpoint_first_dispatch_is_in_the_journal_before_the_attempt_runs(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend(default=Hang())
    rt = rt_factory({"mock": backend})
    handle = rt.submit(make_score(sheets=2, independent=True))
    assert backend.wait_for_calls(2, WAIT_SECONDS)
    # The attempts run only after their dispatch was committed (DESIGN rule 3).
    loaded = load_checkpoint(rt.state_dir / "jobs" / handle.job_id).checkpoint
    assert [sheet["status"] for sheet in loaded["sheets"]] == ["dispatched", "dispatched"]
    assert [sheet["attempts"] for sheet in loaded["sheets"]] == [1, 1]


def test_checkpoint_is_final_when_wait_returns(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory({"mock": ScriptedBackend({1: Fail()})})
    handle = rt.submit(make_score(sheets=3, max_retries=0, dependencies={2: [1], 3: []}))
    handle.wait(WAIT_SECONDS)
    loaded = load_checkpoint(rt.state_dir / "jobs" / handle.job_id).checkpoint
    assert loaded["status"] == "failed"
    assert [sheet["status"] for sheet in loaded["sheets"]] == ["failed", "skipped", "completed"]


# --- retries, clock, crashes --------------------------------------------------------------------


def test_S10_retry_waits_on_the_clock_until_advanced(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    backend = ScriptedBackend({1: [Fail(), Succeed()]})
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=1, max_retries=1, retry_delay=3600))
    (scheduled,) = [
        e
        for e in log.wait_for_count(ev.SHEET_RETRY_SCHEDULED, 1)
        if e.event == ev.SHEET_RETRY_SCHEDULED
    ]
    assert scheduled.data["delay_seconds"] == 3600
    clock.wait_for_pending(1)
    assert handle.status().counts == {"retry_scheduled": 1}
    assert clock.advance(3599) == 0
    assert handle.status().counts == {"retry_scheduled": 1}
    assert backend.calls(1) == 1
    assert clock.advance(1) == 1
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert result.sheets[1].attempts == 2


def test_S9_S14_crash_is_a_failed_attempt_classified_crashed_and_retried(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend({1: [Crash(), Succeed()], 2: Crash("always")})
    rt = rt_factory({"mock": backend})
    log = subscribed(rt)
    result = rt.submit(make_score(sheets=2, independent=True, max_retries=1)).wait(WAIT_SECONDS)
    assert result.sheets[1].status is S.COMPLETED
    assert result.sheets[1].attempts == 2
    retried = [e for e in log.named(ev.SHEET_RETRY_SCHEDULED) if e.sheet_num == 1]
    assert [e.data["error_kind"] for e in retried] == ["crashed"]
    assert result.sheets[2].status is S.FAILED
    assert result.sheets[2].attempts == 2
    assert result.sheets[2].error_kind == "crashed"
    assert "always" in (result.sheets[2].error or "")
    assert result.status is J.FAILED


def test_S9_max_retries_3_makes_4_attempts_end_to_end(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend(default=Fail())
    rt = rt_factory({"mock": backend})
    result = rt.submit(make_score(sheets=1, max_retries=3)).wait(WAIT_SECONDS)
    assert result.sheets[1].status is S.FAILED
    assert result.sheets[1].attempts == 4
    assert backend.calls(1) == 4


def test_S12_auth_failure_is_not_retried_end_to_end(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend(default=AuthFailure())
    rt = rt_factory({"mock": backend})
    result = rt.submit(make_score(sheets=1, max_retries=3)).wait(WAIT_SECONDS)
    assert result.sheets[1].status is S.FAILED
    assert result.sheets[1].error_kind == "auth_failed"
    assert backend.calls(1) == 1


def test_S28_a_job_with_no_sheets_completes_at_once(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory()
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=0))
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert result.sheets == {}
    assert log.names(handle.job_id) == [ev.JOB_STARTED, ev.JOB_COMPLETED]


def test_script_function_sees_each_request(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    seen: list[tuple[int, int]] = []

    def script(request: ExecutionRequest) -> Outcome:
        seen.append((request.sheet_num, request.attempt))
        return Fail() if request.attempt == 1 and request.sheet_num == 2 else Succeed()

    rt = rt_factory({"mock": ScriptedBackend(script)})
    score = make_score(sheets=2, dependencies={2: [1]}, template="do {{ sheet_num }}")
    result = rt.submit(score).wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert seen == [(1, 1), (2, 1), (2, 2)]


def test_a_state_directory_is_used_by_one_runtime_at_a_time(
    rt_factory: RuntimeFactory, tmp_path: Path
) -> None:
    """Two runtimes on one state directory would run sheets twice (S29)."""
    first = rt_factory(state_dir=tmp_path / "shared-state")
    with pytest.raises(runtime.EnsembleError, match="in use by another Ensemble runtime"):
        runtime.start(tmp_path / "shared-state")
    first.stop()
    second = rt_factory(state_dir=tmp_path / "shared-state")
    assert second.alive_actors() > 0


def test_a_workspace_that_cannot_be_made_is_one_clear_error_and_no_traceback(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    """The folder is made in the hub's thread pool; gevent would print the
    traceback of the pool task's OSError on stderr besides the error the
    submit raises. The user sees the one error, in Ensemble's words."""
    rt = rt_factory({"mock": ScriptedBackend()})
    score = make_score(sheets=1, workspace="/proc/no-such-process/workspace")
    with pytest.raises(runtime.EnsembleError, match="cannot create workspace"):
        rt.submit(score)
    rt.stop()  # whatever the hub had to print is printed by now
    assert "Traceback" not in capfd.readouterr().err
