"""Supervision: a crash of ours is an event and a restart, never a hang (S14, S29).

A JobActor is crashed by making a decision function of ``runtime.machine``
raise inside its handler (the actor calls it through the module, so a
monkeypatch reaches it); the Supervisor restarts the job from the checkpoint
Persistence holds. A SheetActor is crashed by making its handler raise; its
job sees a failed attempt classified "crashed". Scripted backends record
every request, so a test can tell which sheets ran again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import (
    WAIT_SECONDS,
    RuntimeFactory,
    ScoreFactory,
    TimerClock,
    captured_logs,
    subscribed,
)

import actors.supervisor as supervisor_module
from actors.pool import BackendPool
from actors.sheet import SheetActor
from runtime import events as ev
from runtime import journal, machine
from runtime.errors import CallTimeoutError, EnsembleError
from runtime.messages import RunAttempt
from runtime.state import JobProgress
from runtime.state import JobStatus as J
from runtime.state import SheetStatus as S
from runtime.testing import Hang, ScriptedBackend, Succeed


class InjectedCrashError(RuntimeError):
    """The bug a test plants in a handler."""


def crash_when(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    should_crash: Callable[..., bool],
) -> list[tuple[Any, ...]]:
    """Make ``runtime.machine.<name>`` raise whenever ``should_crash(*args)``;
    returns the arguments of the calls that crashed."""
    real = getattr(machine, name)
    crashed: list[tuple[Any, ...]] = []

    def wrapper(*args: Any) -> Any:
        if should_crash(*args):
            crashed.append(args)
            raise InjectedCrashError(f"injected crash #{len(crashed)} in {name}")
        return real(*args)

    monkeypatch.setattr(machine, name, wrapper)
    return crashed


@pytest.fixture
def error_logs() -> Iterator[list[str]]:
    with captured_logs("ERROR") as messages:
        yield messages


# --- JobActor crashes ----------------------------------------------------------------------


def test_crashed_job_actor_is_restarted_from_its_checkpoint_and_the_job_completes(
    rt_factory: RuntimeFactory,
    make_score: ScoreFactory,
    monkeypatch: pytest.MonkeyPatch,
    error_logs: list[str],
) -> None:
    """S29 inside one runtime: completed sheets are not run again, the sheet whose
    result was being applied runs again (no retry spent), another job is untouched.
    One slot in the whole runtime: the dead actor's lease must have been freed."""
    crashed = crash_when(
        monkeypatch,
        "on_attempt_finished",
        lambda state, sheet_num, *_: state.job_id == "victim" and sheet_num == 2 and not crashed,
    )
    backend = ScriptedBackend(default=Succeed(cost=0.5))
    rt = rt_factory({"mock": backend}, max_concurrent_sheets=1)
    log = subscribed(rt)
    victim = rt.submit(make_score(name="victim", sheets=3, max_concurrent=None))
    bystander = rt.submit(make_score(name="bystander", sheets=3, max_concurrent=None))

    result = victim.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert len(crashed) == 1
    assert backend.attempts(1, "victim") == [1]  # completed before the crash: not re-run
    assert backend.attempts(2, "victim") == [1, 2]  # its result was lost with the actor
    assert backend.attempts(3, "victim") == [1]
    # The lost result's cost was never applied; only what was committed counts.
    assert result.sheets[2].attempts == 2 and result.sheets[2].cost == 0.5
    assert result.cost == 1.5
    assert bystander.wait(WAIT_SECONDS).status is J.COMPLETED
    assert all(backend.attempts(n, "bystander") == [1] for n in (1, 2, 3))

    (error,) = log.named(ev.RUNTIME_ERROR)
    assert error.job_id == "victim" and "injected crash #1" in error.data["error"]
    names = log.names("victim")
    assert (
        names.index(ev.RUNTIME_ERROR) < names.index(ev.JOB_RESUMED) < names.index(ev.JOB_COMPLETED)
    )
    assert any("restarting it from its checkpoint (1 of 3)" in line for line in error_logs)
    checkpoint = journal.load_checkpoint(rt.state_dir / "jobs" / "victim").checkpoint
    assert checkpoint["status"] == "completed"


def test_host_calls_during_a_restart_wait_for_the_restarted_job(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the crash and the restart the job has no actor; a host call then
    is held and answered by the new actor, not refused as an unknown job."""
    crashed = crash_when(monkeypatch, "on_attempt_finished", lambda *_: not crashed)
    # Hold the checkpoint on its way back to the supervisor: the restart waits.
    held: list[tuple[Any, Any]] = []
    checkpoint_requested = threading.Event()
    deliver = supervisor_module._Tagged.tell

    def hold(tagged: Any, reply: Any) -> None:
        held.append((tagged, reply))
        checkpoint_requested.set()

    monkeypatch.setattr(supervisor_module._Tagged, "tell", hold)
    # White-box, to make the timing certain: hear when the supervisor holds a call.
    command_held = threading.Event()
    route = supervisor_module.Supervisor._command

    def routed(supervisor: Any, message: Any) -> None:
        route(supervisor, message)
        if message.job_id in supervisor._restarting:
            command_held.set()

    monkeypatch.setattr(supervisor_module.Supervisor, "_command", routed)
    backend = ScriptedBackend({1: Succeed(), 2: Hang()})
    rt = rt_factory({"mock": backend})
    handle = rt.submit(make_score(sheets=2, max_concurrent=None))
    assert checkpoint_requested.wait(WAIT_SECONDS)

    answers: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def ask() -> None:
        try:
            answers.put(handle.status())
        except Exception as exc:  # the bug this test guards against: JobNotFoundError
            answers.put(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    assert command_held.wait(WAIT_SECONDS)  # it reached the supervisor, which holds it
    for tagged, reply in held:
        deliver(tagged, reply)
    answer = answers.get(timeout=WAIT_SECONDS)
    asker.join(WAIT_SECONDS)
    assert isinstance(answer, JobProgress), answer
    assert answer.job_id == handle.job_id and answer.total_sheets == 2

    assert backend.wait_for_calls(3, WAIT_SECONDS)  # 1, 1 again (its result was lost), 2
    assert handle.cancel()
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.CANCELLED
    assert result.sheets[1].status is S.COMPLETED


def test_a_job_that_keeps_crashing_ends_failed_after_three_restarts_and_wait_returns(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = crash_when(
        monkeypatch, "on_attempt_finished", lambda state, *_: state.job_id == "doomed"
    )
    backend = ScriptedBackend(default=Succeed(cost=0.25))
    rt = rt_factory({"mock": backend})
    log = subscribed(rt)
    doomed = rt.submit(make_score(name="doomed", sheets=2, max_concurrent=None))
    healthy = rt.submit(make_score(name="healthy", sheets=2, max_concurrent=None))

    result = doomed.wait(WAIT_SECONDS)
    assert result.status is J.FAILED
    assert len(crashed) == 4  # the first crash and one after each of 3 restarts
    assert result.error is not None and "crashed 4 times" in result.error
    assert "injected crash #4" in result.error
    assert result.sheets[1].status is S.DISPATCHED and result.sheets[1].attempts == 4
    assert backend.attempts(1, "doomed") == [1, 2, 3, 4]
    assert backend.attempts(2, "doomed") == []
    names = log.names("doomed")
    assert names.count(ev.RUNTIME_ERROR) == 4
    assert names[-1] == ev.JOB_FAILED
    assert healthy.wait(WAIT_SECONDS).status is J.COMPLETED

    # The checkpoint agrees with the result: a later recovery does not pick it up.
    rt.stop()
    job_dir = rt.state_dir / "jobs" / "doomed"
    checkpoint = journal.load_checkpoint(job_dir).checkpoint
    assert checkpoint["status"] == "failed" and "crashed 4 times" in checkpoint["error"]
    rt2 = rt_factory({"mock": ScriptedBackend()})
    assert rt2.recover() == []


def test_a_job_that_crashes_while_restarting_still_ends_and_wait_returns(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restart itself crashes (in the recovery of the checkpoint): after the
    last restart the job fails; no waiter hangs."""
    first = crash_when(monkeypatch, "on_attempt_finished", lambda *_: not first)
    again = crash_when(monkeypatch, "recover", lambda *_: True)
    rt = rt_factory({"mock": ScriptedBackend()})
    handle = rt.submit(make_score(sheets=1))
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.FAILED
    assert (len(first), len(again)) == (1, 3)
    assert result.error is not None and "in recover" in result.error


def test_a_crash_while_starting_a_new_job_restarts_it_from_its_first_checkpoint(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = crash_when(monkeypatch, "start", lambda *_: not crashed)
    backend = ScriptedBackend()
    rt = rt_factory({"mock": backend})
    handle = rt.submit(make_score(sheets=3))
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    assert len(crashed) == 1
    assert backend.calls() == 3


# --- SheetActor crashes (S14) --------------------------------------------------------------


def crash_sheet_actor(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """The first ``times`` RunAttempts make their SheetActor's handler raise."""
    real = SheetActor.on_receive
    crashed: list[int] = []

    def on_receive(self: SheetActor, message: Any) -> Any:
        if isinstance(message, RunAttempt) and len(crashed) < times:
            crashed.append(message.attempt)
            raise InjectedCrashError("injected sheet actor crash")
        return real(self, message)

    monkeypatch.setattr(SheetActor, "on_receive", on_receive)
    return crashed


def test_S14_crashed_sheet_actor_is_a_failed_attempt_classified_crashed_and_retried(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = crash_sheet_actor(monkeypatch, times=1)
    backend = ScriptedBackend()
    rt = rt_factory({"mock": backend}, max_concurrent_sheets=1)
    log = subscribed(rt)
    result = rt.submit(make_score(sheets=2, max_retries=1)).wait(WAIT_SECONDS)
    assert crashed == [1]
    assert result.status is J.COMPLETED
    assert result.sheets[1].attempts == 2
    assert backend.attempts(1) == [2]  # attempt 1 never reached the backend
    (retry,) = log.named(ev.SHEET_RETRY_SCHEDULED)
    assert retry.data["error_kind"] == "crashed"
    assert "sheet actor crashed" in retry.data["error"]
    assert ev.RUNTIME_ERROR not in log.names()  # the job itself never crashed


def test_S14_sheet_actor_that_always_crashes_fails_its_sheet_and_the_job_ends(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_sheet_actor(monkeypatch, times=10**6)
    rt = rt_factory({"mock": ScriptedBackend()})
    result = rt.submit(make_score(sheets=2, max_retries=1, dependencies={2: [1]})).wait(
        WAIT_SECONDS
    )
    assert result.status is J.FAILED
    assert result.sheets[1].status is S.FAILED
    assert result.sheets[1].error_kind == "crashed"
    assert result.sheets[1].attempts == 2
    assert result.sheets[2].status is S.SKIPPED


def test_stop_after_a_give_up_leaves_no_actor_and_files_closed(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch,

) -> None:  # fmt: skip
    crash_when(monkeypatch, "on_attempt_finished", lambda *_: True)
    rt = rt_factory({"mock": ScriptedBackend()})
    handle = rt.submit(make_score(sheets=1))
    assert handle.wait(WAIT_SECONDS).status is J.FAILED
    job_dir = rt.state_dir / "jobs" / handle.job_id
    rt.stop()
    assert rt.alive_actors() == 0
    assert (job_dir / journal.JOURNAL_FILE).read_bytes() == b""  # compacted when closed
    assert journal.load_checkpoint(job_dir).checkpoint["status"] == "failed"


def test_a_host_command_that_crashes_the_job_actor_is_answered_not_left_to_time_out(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = crash_when(monkeypatch, "pause", lambda *_: not crashed)
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=10))
    rt = rt_factory({"mock": backend}, clock=clock)
    handle = rt.submit(make_score(sheets=1))
    assert backend.wait_for_calls(1, WAIT_SECONDS)
    try:
        handle.pause(timeout=WAIT_SECONDS)
    except CallTimeoutError:
        pytest.fail("the pause call was never answered")
    except EnsembleError:
        pass  # an error naming the crash is a fine answer
    assert len(crashed) == 1


def test_a_crash_of_the_backend_pool_does_not_leave_wait_hanging(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = BackendPool._grant
    crashed: list[bool] = []

    def grant(self: BackendPool, now: float) -> None:
        if not crashed:
            crashed.append(True)
            raise InjectedCrashError("injected pool crash")
        real(self, now)

    monkeypatch.setattr(BackendPool, "_grant", grant)
    rt = rt_factory({"mock": ScriptedBackend()})
    handle = rt.submit(make_score(sheets=1))
    try:
        handle.wait(WAIT_SECONDS)
    except TimeoutError:
        pytest.fail("job.wait() hung after the pool crashed")
    except EnsembleError:
        pass  # an error naming the crash is a fine end
    assert crashed
