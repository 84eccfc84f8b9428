"""Validations and prompts inside a running job: the sheet actor sends the
assembled prompt, runs the validations after a successful attempt (commands as
real processes) and reports the pass rate (S6); retries say so (S11) and a
partial pass continues in completion mode with the completion note (S8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import WAIT_SECONDS, RuntimeFactory, ScoreFactory

import runtime
from actors.backends.cli import CliBackend
from runtime.testing import ScriptedBackend, Succeed

S = runtime.SheetStatus
J = runtime.JobStatus

VALIDATIONS: list[dict[str, Any]] = [
    {"type": "file_exists", "path": "{workspace}/out-{sheet_num}.md", "description": "out exists"},
    {
        "type": "command_succeeds",
        "command": 'grep -q done "{workspace}/out-{sheet_num}.md"',
        "description": "out says done",
        "stage": 2,
    },
]


def test_S6_validations_pass_and_the_prompt_lists_them(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend(default=Succeed(files={"out-{sheet_num}.md": "done\n"}))
    rt = rt_factory({"mock": backend})
    result = rt.submit(make_score(sheets=2, validations=VALIDATIONS)).wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert [sheet.attempts for sheet in result.sheets.values()] == [1, 1]
    prompt = backend.requests[0].prompt
    assert prompt.startswith("You are working on sheet 1 of 2 of the job 'job'")
    assert "sheet 1\n" in prompt  # the rendered template
    assert "## Success requirements" in prompt
    assert "- out exists\n- out says done" in prompt


def test_S6_S11_failed_validations_retry_with_a_retry_preamble(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend(
        {1: [Succeed(files={"out-{sheet_num}.md": "not yet"}), Succeed(files={"out-1.md": "done"})]}
    )
    rt = rt_factory({"mock": backend})
    score = make_score(
        sheets=1, validations=VALIDATIONS, retry={"completion_threshold_percent": 100}
    )
    result = rt.submit(score).wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert result.sheets[1].attempts == 2
    second = backend.requests[1].prompt
    assert second.startswith("This is retry #1 of sheet 1 of 1")


def test_S8_a_partial_pass_continues_with_the_completion_note(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backend = ScriptedBackend(
        {1: [Succeed(files={"out-1.md": "half"}), Succeed(files={"out-1.md": "done"})]}
    )
    rt = rt_factory({"mock": backend})
    validations = [{**rule, "stage": 1} for rule in VALIDATIONS]  # both checked: 50 %
    score = make_score(sheets=1, validations=validations, retry={"completion_delay_seconds": 0})
    result = rt.submit(score).wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    note = backend.requests[1].prompt
    assert "## Completing the previous attempt" in note
    assert "Already passing:\n- out exists" in note
    assert "Still failing:\n- out says done" in note


def test_the_cli_instrument_gets_the_raw_template(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, tmp_path: Path
) -> None:
    """The cli profile is raw_prompt: its rendered template is the command, and the
    validations still run after it."""
    rt = rt_factory({"cli": CliBackend()})
    score = make_score(
        instrument="cli",
        sheets=1,
        template="echo done > out-{{ sheet_num }}.md",
        validations=VALIDATIONS,
    )
    result = rt.submit(score).wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert (tmp_path / "workspace" / "out-1.md").read_text() == "done\n"
