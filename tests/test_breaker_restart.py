"""S21 with S29: an open circuit breaker stays open across a restart of the runtime."""

from __future__ import annotations

import json
from pathlib import Path

from support import WAIT_SECONDS, score_dict, wait_until

import runtime
from runtime.breakers import BreakerState, CircuitBreaker
from runtime.clock import ManualClock
from runtime.testing import Fail, ScriptedBackend, Succeed


def test_breaker_records_round_trip_and_half_open_is_stored_as_due() -> None:
    open_one = CircuitBreaker("x", BreakerState.OPEN, open_until=500.0)
    assert CircuitBreaker.from_record("x", open_one.to_record()).open_until == 500.0
    half_open = CircuitBreaker("x", BreakerState.HALF_OPEN, open_until=500.0)
    restored = CircuitBreaker.from_record("x", half_open.to_record())
    assert restored.state is BreakerState.OPEN and restored.allows(now=0.0)
    closed = CircuitBreaker("x", consecutive_failures=2)
    assert CircuitBreaker.from_record("x", closed.to_record()).consecutive_failures == 2


def test_S21_S29_an_open_breaker_is_restored_open_until_its_deadline(tmp_path: Path) -> None:
    state = tmp_path / "state"
    breaker = {"failure_threshold": 2, "recovery_timeout_seconds": 3600}
    failing = score_dict(
        tmp_path / "ws", name="first", sheets=2, independent=True, max_retries=0,
        instrument="flaky", circuit_breaker=breaker,
    )  # fmt: skip
    with runtime.start(state, backends={"flaky": ScriptedBackend(default=Fail())},
                       clock=ManualClock(start=1000.0)) as rt:  # fmt: skip
        assert rt.submit(failing).wait(WAIT_SECONDS).status is runtime.JobStatus.FAILED
    saved = json.loads((state / "runtime.json").read_text())
    assert saved["breakers"]["flaky"] == {"state": "open", "open_until": 4600.0}

    healthy = ScriptedBackend(default=Succeed())
    clock = ManualClock(start=1000.0)
    with runtime.start(state, backends={"flaky": healthy}, clock=clock) as rt:
        second = rt.submit(score_dict(tmp_path / "ws", name="second", sheets=1, instrument="flaky"))
        # Ready, asking for a lease the open breaker does not grant.
        wait_until(lambda: second.status().counts.get("ready") == 1)
        assert healthy.calls() == 0
        assert clock.wait_for_timers(1, WAIT_SECONDS)  # the pool's wake at the deadline
        clock.advance(3600)
        assert second.wait(WAIT_SECONDS).status is runtime.JobStatus.COMPLETED
        assert healthy.calls() == 1
