"""The built-in ``cli`` instrument with real processes: the rendered prompt is a
shell command run in the sheet's workspace (S13, S26, the environment allow-list).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from support import (
    WAIT_SECONDS,
    RuntimeFactory,
    ScoreFactory,
    assert_group_gone,
    live_members,
    wait_until,
)

import runtime

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to check process groups"
)

S = runtime.SheetStatus
J = runtime.JobStatus


def read_pid(path: Path) -> int:
    wait_until(lambda: path.exists() and path.read_text().endswith("\n"))
    return int(path.read_text())


def test_cli_runs_the_rendered_command_in_the_workspace(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, tmp_path: Path
) -> None:
    rt = rt_factory({})
    score = make_score(
        instrument="cli",
        sheets=3,
        independent=True,
        template="echo {{ sheet_num }} of {{ total_sheets }} > out-{{ sheet_num }}.txt",
    )
    result = rt.submit(score).wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    workspace = tmp_path / "workspace"
    for num in (1, 2, 3):
        assert (workspace / f"out-{num}.txt").read_text() == f"{num} of 3\n"


def test_cli_non_zero_exit_is_a_failure_with_the_exit_code_and_consumes_retries(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, tmp_path: Path
) -> None:
    rt = rt_factory({})
    score = make_score(
        instrument="cli",
        sheets=1,
        max_retries=2,
        template='echo attempt >> attempts.txt; echo "broken {{ sheet_num }}" >&2; exit 7',
    )
    result = rt.submit(score).wait(WAIT_SECONDS)
    sheet = result.sheets[1]
    assert result.status is J.FAILED
    assert sheet.status is S.FAILED
    assert sheet.attempts == 3
    assert sheet.error_kind == "failure"
    assert "7" in (sheet.error or "")
    assert "broken 1" in (sheet.error or "")
    assert (tmp_path / "workspace" / "attempts.txt").read_text().count("attempt") == 3


def test_cli_environment_has_sheet_variables_and_no_host_secrets(
    rt_factory: RuntimeFactory,
    make_score: ScoreFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOST_ONLY_SECRET_TOKEN", "must-not-leak")
    rt = rt_factory({})
    score = make_score(
        instrument="cli",
        sheets=2,
        independent=True,
        template=(
            "printf '%s' \"$ENSEMBLE_SHEET_NUM\" > num-{{ sheet_num }}.txt; "
            "printf '%s' \"${HOST_ONLY_SECRET_TOKEN:-absent}\" > secret-{{ sheet_num }}.txt"
        ),
    )
    assert rt.submit(score).wait(WAIT_SECONDS).status is J.COMPLETED
    workspace = tmp_path / "workspace"
    for num in (1, 2):
        assert (workspace / f"num-{num}.txt").read_text() == str(num)
        assert (workspace / f"secret-{num}.txt").read_text() == "absent"
    assert os.environ["HOST_ONLY_SECRET_TOKEN"] == "must-not-leak"


def test_S26_cancelled_job_leaves_no_process_behind(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, tmp_path: Path
) -> None:
    rt = rt_factory({})
    score = make_score(instrument="cli", sheets=1, template="echo $$ > pid.txt; sleep 300 & wait")
    handle = rt.submit(score)
    pid = read_pid(tmp_path / "workspace" / "pid.txt")
    assert live_members(pid), "the command should be running"
    assert handle.cancel() is True
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.CANCELLED
    assert result.sheets[1].status is S.CANCELLED
    # The group was killed before the result came back; the kernel may still be
    # finishing the exits, which assert_group_gone waits for on pidfds.
    assert_group_gone(pid)


def test_S13_timeout_kills_the_group_and_fails_classified_timeout(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, tmp_path: Path
) -> None:
    rt = rt_factory({})
    score = make_score(
        instrument="cli",
        sheets=1,
        max_retries=0,
        timeout_seconds=1,
        template="echo $$ > pid.txt; sleep 30 & wait",
    )
    result = rt.submit(score).wait(WAIT_SECONDS)
    sheet = result.sheets[1]
    assert result.status is J.FAILED
    assert sheet.status is S.FAILED
    assert sheet.error_kind == "timeout"
    assert sheet.attempts == 1
    pid = int((tmp_path / "workspace" / "pid.txt").read_text())
    assert_group_gone(pid)
