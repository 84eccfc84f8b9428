"""The shipped pytest plugin (runtime.pytest_plugin): ``ensemble_runtime`` and
``ensemble_backends``.

This module uses the fixture as a user would (overriding ``ensemble_backends``),
and runs small user test files with pytester to check that the fixture stops
its runtime after the test and fails a test that leaves an actor running.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from support import WAIT_SECONDS, score_dict

import runtime
from runtime.testing import Fail, ScriptedBackend

BACKEND = ScriptedBackend({2: Fail()})


@pytest.fixture
def ensemble_backends() -> Mapping[str, Any]:
    return {"mock": BACKEND}


def test_ensemble_runtime_runs_jobs_on_the_overridden_backends(
    ensemble_runtime: runtime.Runtime, tmp_path: Path
) -> None:
    score = score_dict(tmp_path / "ws", sheets=3, independent=True, max_retries=0)
    result = ensemble_runtime.submit(score).wait(WAIT_SECONDS)
    assert result.status is runtime.JobStatus.FAILED
    assert result.sheets[1].status is runtime.SheetStatus.COMPLETED
    assert result.sheets[2].status is runtime.SheetStatus.FAILED
    assert BACKEND.calls(2) == 1
    assert ensemble_runtime.state_dir == (tmp_path / "state").resolve()


# The hypothesis plugin costs seconds of imports in an inner run and is not needed there.
INNER_ARGS = ("-q", "-p", "no:hypothesispytest")

USER_TESTS = """
import pytest
import runtime
from runtime.testing import ScriptedBackend, Succeed

SCORE = {{
    "name": "user-job",
    "workspace": {workspace!r},
    "instrument": "claude-code",
    "sheet": {{"size": 1, "total_items": 2}},
    "prompt": {{"template": "hello {{{{ sheet_num }}}}"}},
    "pause_between_sheets_seconds": 0,
}}
SEEN = []


@pytest.fixture
def ensemble_backends():
    return {{"claude-code": ScriptedBackend(default=Succeed(stdout="done"))}}


def test_user_job(ensemble_runtime):
    SEEN.append(ensemble_runtime)
    result = ensemble_runtime.submit(SCORE).wait(20)
    assert result.status is runtime.JobStatus.COMPLETED


def test_runtime_was_stopped_after_the_previous_test(ensemble_runtime):
    (previous,) = SEEN
    assert previous is not ensemble_runtime
    assert previous.alive_actors() == 0
    with pytest.raises(runtime.RuntimeStoppedError):
        previous.submit(SCORE)
"""


def test_user_tests_using_ensemble_runtime_pass(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS.format(workspace=str(pytester.path / "ws")))
    result = pytester.runpytest_inprocess(*INNER_ARGS)
    result.assert_outcomes(passed=2)


LEAKY_TEST = """
import gevent.event
from actors.base import EnsembleActor


class Stubborn(EnsembleActor):
    def on_receive(self, message):
        gevent.event.Event().wait()  # never returns, so the actor cannot be stopped


def test_leaves_an_actor_running(ensemble_runtime):
    rt = ensemble_runtime
    ref = rt._hub.run(Stubborn.start, rt._context)
    ref.tell("block")
    # Stop early with a short timeout so the stuck actor costs a fraction of a second;
    # the fixture's own stop() is then a no-op and it checks what is left.
    rt.stop(timeout=0.3)
"""


def test_fixture_fails_a_test_that_leaves_an_actor_running(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY_TEST)
    result = pytester.runpytest_inprocess(*INNER_ARGS)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*1 Ensemble actor(s) still running after the runtime stopped*"])


MANUAL_CLOCK_TEST = """
import pytest
import runtime
from runtime.testing import Fail, ScriptedBackend, Succeed

CLOCK = runtime.ManualClock()
SCORE = {{
    "name": "slow-retry", "workspace": {workspace!r}, "instrument": "mock",
    "sheet": {{"size": 1, "total_items": 1}}, "prompt": {{"template": "x"}},
    "retry": {{"max_retries": 1, "base_delay_seconds": 3600, "jitter": False}},
}}


@pytest.fixture
def ensemble_clock():
    return CLOCK


@pytest.fixture
def ensemble_backends():
    return {{"mock": ScriptedBackend({{1: [Fail(), Succeed()]}})}}


def test_an_hour_long_retry_passes_in_no_time(ensemble_runtime):
    job = ensemble_runtime.submit(SCORE)
    assert CLOCK.wait_for_timers(1, 20)
    CLOCK.advance(3600)
    assert job.wait(20).status is runtime.JobStatus.COMPLETED
"""


def test_ensemble_clock_override_runs_the_fixture_on_a_manual_clock(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_clock=MANUAL_CLOCK_TEST.format(workspace=str(pytester.path / "ws")))
    result = pytester.runpytest_inprocess(*INNER_ARGS)
    result.assert_outcomes(passed=1)
