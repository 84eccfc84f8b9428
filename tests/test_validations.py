"""Validations (S6): the five types, conditions, staged fail-fast, file_modified
against the mtime taken before the attempt, and command validations run as real
processes through the process-group-safe runner with shell-quoted values."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import gevent.event
import pytest
from support import wait_for_exit

from actors.sheet import _command_runner
from runtime.score import ValidationRule
from runtime.validations import (
    CommandOutcome,
    applicable_rules,
    describe_rule,
    run_validations,
    snapshot_mtimes,
    substitute,
    substitute_command,
)


def rule(**fields: Any) -> ValidationRule:
    return ValidationRule.model_validate(fields)


def variables(workspace: Path, **extra: Any) -> dict[str, Any]:
    base = {
        "workspace": str(workspace),
        "sheet_num": 2,
        "start_item": 3,
        "end_item": 4,
        "stage": 2,
        "instance": 1,
        "fan_count": 1,
    }
    base.update(extra)
    return base


def no_commands(command: str, cwd: str, timeout: float) -> CommandOutcome:
    raise AssertionError(f"no command expected, got {command!r}")


def check(rules: list[ValidationRule], workspace: Path, **kwargs: Any) -> Any:
    values = kwargs.pop("values", None) or variables(workspace)
    return run_validations(
        rules,
        values,
        workspace=str(workspace),
        mtimes_before=kwargs.pop("mtimes_before", {}),
        run_command=kwargs.pop("run_command", no_commands),
    )


def real_runner() -> Any:
    return _command_runner(gevent.event.Event())


def test_S6_no_validations_is_a_full_pass(tmp_path: Path) -> None:
    report = check([], tmp_path)
    assert (report.passed, report.total, report.pass_rate) == (0, 0, 100.0)


def test_file_exists_with_substituted_path(tmp_path: Path) -> None:
    (tmp_path / "out-2.md").write_text("x")
    rules = [
        rule(type="file_exists", path="{workspace}/out-{sheet_num}.md"),
        rule(type="file_exists", path="out-{end_item}.md"),  # relative: in the workspace
    ]
    report = check(rules, tmp_path)
    assert [o.passed for o in report.outcomes] == [True, False]
    assert report.pass_rate == 50.0
    assert "out-4.md does not exist" in report.outcomes[1].detail


def test_content_contains_and_content_regex(tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text("intro\n# Title\nbody DONE\n")
    rules = [
        rule(type="content_contains", path="doc.md", pattern="DONE"),
        rule(type="content_contains", path="doc.md", pattern="MISSING"),
        rule(type="content_regex", path="doc.md", pattern=r"^#\s+\w+"),  # any line (multiline)
        rule(type="content_regex", path="doc.md", pattern=r"^body$"),
        rule(type="content_contains", path="absent.md", pattern="x"),
    ]
    report = check(rules, tmp_path)
    assert [o.passed for o in report.outcomes] == [True, False, True, False, False]
    assert "cannot read" in report.outcomes[4].detail


def test_file_modified_compares_with_the_mtime_taken_before_the_attempt(tmp_path: Path) -> None:
    old, new, untouched = (tmp_path / name for name in ("old.md", "new.md", "same.md"))
    old.write_text("before")
    untouched.write_text("before")
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    os.utime(untouched, ns=(1_000_000_000, 1_000_000_000))
    rules = [
        rule(type="file_modified", path="old.md"),
        rule(type="file_modified", path="new.md"),
        rule(type="file_modified", path="same.md"),
        rule(type="file_modified", path="never.md"),
    ]
    values = variables(tmp_path)
    before = snapshot_mtimes(rules, values, str(tmp_path))
    assert before[str(new)] is None
    old.write_text("during the attempt")
    new.write_text("created during the attempt")
    report = check(rules, tmp_path, mtimes_before=before)
    assert [o.passed for o in report.outcomes] == [True, True, False, False]
    assert "not modified" in report.outcomes[2].detail


def test_conditions_select_the_rules_of_a_sheet(tmp_path: Path) -> None:
    rules = [
        rule(type="file_exists", path="a", condition="sheet_num == 1"),
        rule(type="file_exists", path="b", condition="stage == 2 and instance == 1"),
        rule(type="file_exists", path="c", sheet=2),
        rule(type="file_exists", path="d", sheet=3),
        rule(type="file_exists", path="e", condition="sheet_num >= 2", sheet=5),  # condition wins
        rule(type="file_exists", path="f"),
    ]
    selected = applicable_rules(rules, variables(tmp_path))
    assert [index for index, _ in selected] == [1, 2, 4, 5]
    assert check(rules, tmp_path).total == 4


def test_staged_fail_fast_stops_later_stages_and_counts_them(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    calls: list[str] = []

    def runner(command: str, cwd: str, timeout: float) -> CommandOutcome:
        calls.append(command)
        return CommandOutcome(0)

    rules = [
        rule(type="file_exists", path="a", stage=1),
        rule(type="file_exists", path="missing", stage=2),
        rule(type="file_exists", path="a", stage=2),  # same stage: still checked
        rule(type="command_succeeds", command="echo later", stage=3),
    ]
    report = check(rules, tmp_path, run_command=runner)
    assert [(o.passed, o.ran) for o in report.outcomes] == [
        (True, True), (False, True), (True, True), (False, False),
    ]  # fmt: skip
    assert calls == []  # stage 3 never ran
    assert "stage 2 failed" in report.outcomes[3].detail
    assert report.pass_rate == 50.0
    assert report.failed_descriptions == [
        f"file exists: {tmp_path / 'missing'}",
        "command succeeds: echo later",
    ]


def test_substitution_leaves_shell_and_python_braces_alone(tmp_path: Path) -> None:
    values = variables(tmp_path)
    assert substitute("{workspace}/x-{sheet_num}.md", values) == f"{tmp_path}/x-2.md"
    assert substitute("{{ workspace }}/y", values) == f"{tmp_path}/y"
    command = "today=$(date); echo ${today} {len(items)} {p} ${workspace} {unknown}"
    assert substitute_command(command, values) == command


@pytest.mark.parametrize(
    "workspace_name", ["plain", "with space", "it's", 'dq"uote', "dollar$HOME", "back`tick`"]
)
def test_command_values_are_shell_quoted_for_their_context(
    tmp_path: Path, workspace_name: str
) -> None:
    workspace = tmp_path / workspace_name
    workspace.mkdir()
    (workspace / "sheet2.md").write_text("one two three\n")
    rules = [
        rule(type="command_succeeds", command="test -f {workspace}/sheet{sheet_num}.md"),
        rule(type="command_succeeds", command='test -f "{workspace}/sheet{sheet_num}.md"'),
        rule(type="command_succeeds", command="test -f '{workspace}/sheet{sheet_num}.md'"),
        rule(
            type="command_succeeds",
            command='test $(wc -w < "{workspace}/sheet{sheet_num}.md") -ge 3',
        ),
        rule(type="command_succeeds", command='test "$(pwd)" = {workspace}'),
    ]
    report = check(rules, workspace, values=variables(workspace), run_command=real_runner())
    assert [o.detail for o in report.outcomes] == [""] * 5


def test_command_substitution_cannot_inject_commands(tmp_path: Path) -> None:
    evil = tmp_path / "x; touch injected"
    evil.mkdir()
    values = variables(evil)
    rules = [rule(type="command_succeeds", command="ls {workspace} > /dev/null")]
    report = check(rules, evil, values=values, run_command=real_runner())
    assert report.passed == 1
    assert not (evil / "injected").exists() and not (tmp_path / "injected").exists()


def test_command_exit_code_output_and_working_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    rules = [
        rule(type="command_succeeds", command="echo nope >&2; exit 3"),
        rule(
            type="command_succeeds",
            command='test "$(basename "$PWD")" = sub',
            working_directory="sub",
        ),
        rule(type="command_succeeds", command="true", working_directory="/no/such/dir"),
    ]
    report = check(rules, tmp_path, run_command=real_runner())
    assert report.outcomes[0].detail == "command exited with 3: nope"
    assert report.outcomes[1].passed
    assert not report.outcomes[2].passed and "/no/such/dir" in report.outcomes[2].detail


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_command_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    rules = [
        rule(
            type="command_succeeds",
            command=f"sleep 300 & echo $! > {pid_file}; wait",
            timeout_seconds=0.5,
        )
    ]
    report = check(rules, tmp_path, run_command=real_runner())
    assert report.outcomes[0].detail == "command timed out after 0.5 s"
    child = int(pid_file.read_text())
    # SIGKILL was sent; the kernel may take a moment to finish the exit.
    wait_for_exit(child, 5, "the timed-out validation command")


def test_descriptions_are_substituted_and_derived_when_absent(tmp_path: Path) -> None:
    values = variables(tmp_path)
    assert (
        describe_rule(
            rule(type="file_exists", path="a", description="sheet {sheet_num}"),
            values,
            str(tmp_path),
        )
        == "sheet 2"
    )
    assert (
        describe_rule(rule(type="content_regex", path="a", pattern="^x"), values, str(tmp_path))
        == f"{tmp_path}/a matches /^x/"
    )
