"""Validations: checking what an attempt left in the workspace.

Owns which of a score's validation rules apply to a sheet (their
``condition``), the substitution of the sheet's variables into paths and
commands (shell-quoted in commands, according to the quotes around them),
the five checks (``file_exists``, ``file_modified`` against the mtime taken
before the attempt, ``content_contains``, ``content_regex``,
``command_succeeds``), staged fail-fast (a failing stage stops later stages)
and the pass rate (SEMANTICS S6).

It reads files but never starts a process itself: commands go through the
``CommandRunner`` the caller passes (the sheet actor passes the
process-group-safe runner of ``actors.process``), so this module stays free of
gevent. What a pass rate means for the sheet is ``runtime.machine``'s decision.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.conditions import condition_holds
from runtime.score import ValidationRule

# Marianne's ceiling for a validation command without its own timeout_seconds.
DEFAULT_COMMAND_TIMEOUT_SECONDS = 3600.0
# A content check reads at most this much of a file.
MAX_CONTENT_BYTES = 64 * 1024 * 1024

# Built-in sheet variables that paths and commands may name as {name} or {{ name }}.
# User variables are deliberately not substituted: commands are full of
# `{...}` that belong to the shell or to inline Python (`{len(items)}`).
SUBSTITUTED_VARIABLES = frozenset(
    {
        "workspace",
        "sheet_num",
        "total_sheets",
        "start_item",
        "end_item",
        "stage",
        "movement",
        "instance",
        "voice",
        "fan_count",
        "voice_count",
        "total_stages",
        "total_movements",
        "instrument_name",
        "attempt",
    }
)
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}|\{([A-Za-z_]\w*)\}")


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """How a validation command ended; ``exit_code`` None means it did not run or finish."""

    exit_code: int | None
    timed_out: bool = False
    error: str | None = None
    output: str = ""


# (command, working directory, timeout seconds) -> outcome
CommandRunner = Callable[[str, str, float], CommandOutcome]


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    index: int  # position in the score's `validations` list
    rule: ValidationRule
    description: str
    passed: bool
    ran: bool = True
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ValidationReport:
    outcomes: tuple[RuleOutcome, ...] = ()

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def passed(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.passed)

    @property
    def pass_rate(self) -> float:
        """S6: passed / applicable, in percent; no applicable validation is 100 %."""
        if not self.outcomes:
            return 100.0
        return 100.0 * self.passed / self.total

    @property
    def failed_descriptions(self) -> list[str]:
        return [outcome.description for outcome in self.outcomes if not outcome.passed]


def applicable_rules(
    rules: Iterable[ValidationRule], variables: Mapping[str, Any]
) -> list[tuple[int, ValidationRule]]:
    """The rules whose condition (or ``sheet:`` shorthand) holds for this sheet, in order."""
    return [
        (index, rule)
        for index, rule in enumerate(rules)
        if condition_holds(rule.effective_condition, variables)
    ]


# --- substitution --------------------------------------------------------------------------


def substitute(text: str, variables: Mapping[str, Any]) -> str:
    """Replace ``{name}`` / ``{{ name }}`` of built-in variables (no quoting: for paths)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in SUBSTITUTED_VARIABLES or name not in variables:
            return match.group(0)
        if match.start() > 0 and text[match.start() - 1] == "$":
            return match.group(0)  # `${name}` is the shell's
        return str(variables[name])

    return _PLACEHOLDER.sub(replace, text)


def substitute_command(command: str, variables: Mapping[str, Any]) -> str:
    """Like ``substitute``, but each value is quoted for where it lands in the shell text.

    Outside quotes a value is quoted as one word; inside single quotes its own
    single quotes are escaped; inside double quotes ``\\ " $ ``` are escaped.
    So a workspace path with spaces or quotes can never split or inject words.
    """
    out: list[str] = []
    quote: str | None = None
    index = 0
    length = len(command)
    while index < length:
        char = command[index]
        if char == "{":
            match = _PLACEHOLDER.match(command, index)
            if match is not None:
                name = match.group(1) or match.group(2)
                shell_variable = index > 0 and command[index - 1] == "$"
                if name in SUBSTITUTED_VARIABLES and name in variables and not shell_variable:
                    out.append(_quoted(str(variables[name]), quote))
                    index = match.end()
                    continue
        if char == "\\" and quote != "'":
            out.append(command[index : index + 2])
            index += 2
            continue
        if quote is None and char in "'\"":
            quote = char
        elif quote == char:
            quote = None
        out.append(char)
        index += 1
    return "".join(out)


def _quoted(value: str, quote: str | None) -> str:
    if quote == "'":
        return value.replace("'", "'\\''")
    if quote == '"':
        return re.sub(r'([\\"$`])', r"\\\1", value)
    return shlex.quote(value)


def rule_path(rule: ValidationRule, variables: Mapping[str, Any], workspace: str) -> Path:
    """The rule's path with variables substituted, relative paths taken in the workspace."""
    path = Path(substitute(rule.path or "", variables)).expanduser()
    return path if path.is_absolute() else Path(workspace) / path


def describe_rule(rule: ValidationRule, variables: Mapping[str, Any], workspace: str) -> str:
    """A line a person (or an agent) can act on: the description, else what is checked."""
    if rule.description:
        return substitute(rule.description, variables)
    if rule.type == "command_succeeds":
        return f"command succeeds: {substitute(rule.command or '', variables)}"
    path = rule_path(rule, variables, workspace)
    if rule.type == "file_exists":
        return f"file exists: {path}"
    if rule.type == "file_modified":
        return f"file is modified: {path}"
    if rule.type == "content_contains":
        return f"{path} contains {rule.pattern!r}"
    return f"{path} matches /{rule.pattern}/"


# --- running -------------------------------------------------------------------------------


def mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def snapshot_mtimes(
    rules: Iterable[ValidationRule], variables: Mapping[str, Any], workspace: str
) -> dict[str, int | None]:
    """The mtimes ``file_modified`` compares against; take them before the attempt starts."""
    snapshot: dict[str, int | None] = {}
    for _, rule in applicable_rules(rules, variables):
        if rule.type == "file_modified":
            path = rule_path(rule, variables, workspace)
            snapshot[str(path)] = mtime_ns(path)
    return snapshot


def run_validations(
    rules: Sequence[ValidationRule],
    variables: Mapping[str, Any],
    *,
    workspace: str,
    mtimes_before: Mapping[str, int | None],
    run_command: CommandRunner,
) -> ValidationReport:
    """Check the applicable rules stage by stage; a failing stage stops the later ones.

    Rules of stages that did not run count as not passed, so the pass rate
    reflects everything the sheet was asked for.
    """
    selected = applicable_rules(rules, variables)
    outcomes: list[RuleOutcome] = []
    failed_stage: int | None = None
    for stage in sorted({rule.stage for _, rule in selected}):
        for index, rule in selected:
            if rule.stage != stage:
                continue
            description = describe_rule(rule, variables, workspace)
            if failed_stage is not None:
                outcomes.append(
                    RuleOutcome(
                        index,
                        rule,
                        description,
                        passed=False,
                        ran=False,
                        detail=f"not checked: a validation of stage {failed_stage} failed",
                    )
                )
                continue
            passed, detail = check_rule(
                rule,
                variables,
                workspace=workspace,
                mtimes_before=mtimes_before,
                run_command=run_command,
            )
            outcomes.append(RuleOutcome(index, rule, description, passed, detail=detail))
        if failed_stage is None and any(not o.passed for o in outcomes if o.rule.stage == stage):
            failed_stage = stage
    outcomes.sort(key=lambda outcome: outcome.index)
    return ValidationReport(tuple(outcomes))


def check_rule(
    rule: ValidationRule,
    variables: Mapping[str, Any],
    *,
    workspace: str,
    mtimes_before: Mapping[str, int | None],
    run_command: CommandRunner,
) -> tuple[bool, str]:
    """Run one check; return whether it passed and, when not, why."""
    if rule.type == "command_succeeds":
        return _check_command(rule, variables, workspace, run_command)
    path = rule_path(rule, variables, workspace)
    if rule.type == "file_exists":
        return (True, "") if path.exists() else (False, f"{path} does not exist")
    if rule.type == "file_modified":
        after = mtime_ns(path)
        if after is None:
            return False, f"{path} does not exist"
        before = mtimes_before.get(str(path))
        if before is None or after > before:
            return True, ""
        return False, f"{path} was not modified during the attempt"
    try:
        with path.open("rb") as handle:
            content = handle.read(MAX_CONTENT_BYTES).decode("utf-8", errors="replace")
    except OSError as exc:
        return False, f"cannot read {path}: {exc.strerror or exc}"
    pattern = rule.pattern or ""
    if rule.type == "content_contains":
        if pattern in content:
            return True, ""
        return False, f"{path} does not contain {pattern!r}"
    if re.search(pattern, content, re.MULTILINE):
        return True, ""
    return False, f"{path} does not match /{pattern}/"


def _check_command(
    rule: ValidationRule,
    variables: Mapping[str, Any],
    workspace: str,
    run_command: CommandRunner,
) -> tuple[bool, str]:
    command = substitute_command(rule.command or "", variables)
    cwd = workspace
    if rule.working_directory:
        directory = Path(substitute(rule.working_directory, variables)).expanduser()
        cwd = os.fspath(directory if directory.is_absolute() else Path(workspace) / directory)
    timeout = rule.timeout_seconds or DEFAULT_COMMAND_TIMEOUT_SECONDS
    outcome = run_command(command, cwd, timeout)
    if outcome.exit_code == 0 and not outcome.timed_out:
        return True, ""
    if outcome.timed_out:
        return False, f"command timed out after {timeout:g} s"
    if outcome.exit_code is None:
        return False, outcome.error or "command did not run"
    tail = outcome.output.strip()[-300:]
    return False, f"command exited with {outcome.exit_code}" + (f": {tail}" if tail else "")
