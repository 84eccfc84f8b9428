"""S5 skip conditions as the job acts on them: ``skip_when`` over the sheet's
variables, and ``skip_when_command`` run as a real process (exit 0 skips, a
non-zero exit, a timeout or an error runs the sheet)."""

from __future__ import annotations

from pathlib import Path

from support import plan_of

from actors.sheet import evaluate_skip_command
from runtime.conditions import skip_command_verdict, skip_when_verdict
from runtime.prompts import sheet_variables


def test_S5_skip_when_over_the_sheet_variables(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        {
            "size": 1,
            "total_items": 3,
            "fan_out": {2: 2},
            "skip_when": {2: "instance == 2 or mode == 'fast'"},
        },
    )
    verdicts = [
        skip_when_verdict(sheet.skip_when, {**sheet_variables(plan, sheet), "mode": "slow"})
        for sheet in plan.sheets
    ]
    assert [v.skip for v in verdicts] == [False, False, True, False]
    assert verdicts[2].reason == "skip_when: instance == 2 or mode == 'fast'"


def test_S5_a_skip_when_that_cannot_be_evaluated_runs_the_sheet() -> None:
    verdict = skip_when_verdict("missing == 1", {"stage": 1})
    assert not verdict.skip
    assert "unknown variable 'missing'" in verdict.reason


def test_S5_skip_command_verdicts() -> None:
    assert skip_command_verdict(0, description="done already").reason == (
        "skip_when_command: done already"
    )
    assert not skip_command_verdict(1).skip
    assert not skip_command_verdict(None).skip
    assert not skip_command_verdict(0, timed_out=True).skip


def test_S5_skip_when_command_runs_in_the_workspace_with_quoted_values(tmp_path: Path) -> None:
    workspace = tmp_path / "work space"
    workspace.mkdir()
    (workspace / "status.txt").write_text("status: CONVERGED\n")
    plan = plan_of(
        workspace,
        {
            "size": 1,
            "total_items": 3,
            "skip_when_command": {
                2: {"command": 'grep -q CONVERGED "{workspace}/status.txt"', "description": "done"},
                3: {"command": "test -f {workspace}/absent"},
            },
        },
    )
    assert not evaluate_skip_command(plan, plan.sheet(1)).skip  # no command
    assert evaluate_skip_command(plan, plan.sheet(2)).skip
    assert not evaluate_skip_command(plan, plan.sheet(3)).skip


def test_S5_skip_when_command_timeout_runs_the_sheet(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        {
            "size": 1,
            "total_items": 1,
            "skip_when_command": {1: {"command": "sleep 30; exit 0", "timeout_seconds": 0.3}},
        },
    )
    verdict = evaluate_skip_command(plan, plan.sheet(1))
    assert not verdict.skip
    assert "timed out" in verdict.reason
