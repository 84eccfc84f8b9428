"""S5 skip conditions and S31 previous outputs, end to end through the job.

The pure evaluators are tested in test_validations_conditions.py and
test_prompts_context.py; these tests check the job acts on them: a skipped
sheet is never executed and satisfies its dependents, a skip command runs
before the sheet, and a later sheet's prompt carries earlier outputs.
"""

from __future__ import annotations

from conftest import RuntimeFactory, ScoreFactory
from support import WAIT_SECONDS

from runtime.state import SheetStatus
from runtime.testing import ScriptedBackend, Succeed


def test_S5_skip_when_skips_the_sheet_and_satisfies_its_dependents(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend()
    rt = rt_factory({"mock": backend})
    score = make_score(sheets=3, dependencies={2: [1], 3: [2]})
    score["sheet"]["skip_when"] = {2: "sheet_num == 2"}
    result = rt.submit(score).wait(WAIT_SECONDS)
    assert result.status.value == "completed"
    assert result.sheets[2].status is SheetStatus.SKIPPED
    assert result.sheets[3].status is SheetStatus.COMPLETED
    assert sorted(request.sheet_num for request in backend.requests) == [1, 3]


def test_S5_a_long_chain_of_skipped_sheets_is_handled_without_recursion(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend()
    rt = rt_factory({"mock": backend})
    sheets = 3000
    score = make_score(sheets=sheets, dependencies={n: [n - 1] for n in range(2, sheets + 1)})
    score["sheet"]["skip_when"] = {n: "sheet_num < 2999" for n in range(2, sheets + 1)}
    result = rt.submit(score).wait(WAIT_SECONDS)
    assert result.count(SheetStatus.SKIPPED) == sheets - 3
    assert sorted(request.sheet_num for request in backend.requests) == [1, 2999, 3000]


def test_S5_skip_when_command_exit_0_skips_and_non_zero_runs(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend()
    rt = rt_factory({"mock": backend})
    score = make_score(sheets=3, independent=True)
    score["sheet"]["skip_when_command"] = {
        1: {"command": "exit 0", "description": "already done"},
        2: {"command": "exit 3"},
    }
    result = rt.submit(score).wait(WAIT_SECONDS)
    assert result.sheets[1].status is SheetStatus.SKIPPED
    assert result.sheets[2].status is SheetStatus.COMPLETED
    assert sorted(request.sheet_num for request in backend.requests) == [2, 3]


def test_S31_previous_outputs_reach_the_next_sheets_prompt(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend({1: Succeed(stdout="the answer is 42")})
    rt = rt_factory({"mock": backend})
    score = make_score(
        sheets=2,
        dependencies={2: [1]},
        template="{% for n, out in previous_outputs.items() %}[{{ n }}: {{ out }}]{% endfor %}",
    )
    score["cross_sheet"] = {"auto_capture_stdout": True, "lookback_sheets": 1}
    rt.submit(score).wait(WAIT_SECONDS)
    (second,) = [request for request in backend.requests if request.sheet_num == 2]
    assert "[1: the answer is 42]" in second.prompt
