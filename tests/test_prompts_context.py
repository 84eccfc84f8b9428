"""Cross-sheet context in prompts: ``previous_outputs`` (S31) and
``previous_files`` (S32), with lookback, truncation, redaction and globs that
cannot leave the workspace."""

from __future__ import annotations

import os
from pathlib import Path

from actors.sheet import prepare_attempt
from runtime.context import (
    SKIPPED_MARKER,
    PriorOutput,
    capture_files,
    lookback_window,
    previous_outputs,
    truncate,
)
from runtime.plan import build_plan
from runtime.prompts import PromptTemplate
from runtime.redaction import REDACTED, redact
from runtime.score import CrossSheetConfig, score_from_mapping


def cross(**fields: object) -> CrossSheetConfig:
    return CrossSheetConfig.model_validate({"auto_capture_stdout": True, **fields})


def test_S31_lookback_window() -> None:
    assert list(lookback_window(5, 3)) == [2, 3, 4]
    assert list(lookback_window(2, 3)) == [1]
    assert list(lookback_window(5, 0)) == [1, 2, 3, 4]  # 0 = all earlier sheets
    assert list(lookback_window(1, 0)) == []


def test_S31_previous_outputs_with_lookback_truncation_and_skipped() -> None:
    outputs = {
        1: PriorOutput("one"),
        2: PriorOutput(skipped=True),
        3: PriorOutput("x" * 50 + "END"),
        5: PriorOutput("later sheet"),
    }
    result = previous_outputs(4, cross(lookback_sheets=2, max_output_chars=10), outputs)
    assert set(result) == {2, 3}
    assert result[2] == SKIPPED_MARKER
    assert result[3].endswith("xxxxxxxEND")  # the end of an output is kept
    assert result[3].startswith("[... 43 earlier characters cut]")
    everything = previous_outputs(4, cross(lookback_sheets=0), outputs)
    assert set(everything) == {1, 2, 3}


def test_S31_previous_outputs_need_auto_capture() -> None:
    outputs = {1: PriorOutput("one")}
    assert previous_outputs(2, None, outputs) == {}
    off = CrossSheetConfig.model_validate({"auto_capture_stdout": False})
    assert previous_outputs(2, off, outputs) == {}


def test_S31_outputs_are_redacted() -> None:
    outputs = {1: PriorOutput("key sk-ant-abcdefghijklmnopqrstuvwxyz0123 done")}
    assert previous_outputs(2, cross(), outputs) == {1: f"key {REDACTED} done"}


def test_credentials_are_redacted() -> None:
    text = "\n".join(
        [
            "ANTHROPIC_API_KEY=sk-ant-api03-abcdefghijklmnopqrstuv",
            "aws AKIAABCDEFGHIJKLMNOP here",
            "token: ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            '"password": "hunter2hunter2"',
            "Authorization: Bearer abcdef123456",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
            "nothing secret in this line: 12345",
        ]
    )
    redacted = redact(text)
    for secret in ("sk-ant", "AKIAABCD", "ghp_abc", "hunter2", "abcdef123456", "MIIE"):
        assert secret not in redacted
    assert "ANTHROPIC_API_KEY=" in redacted and '"password": "' in redacted
    assert "nothing secret in this line: 12345" in redacted


def test_truncate_marks_the_cut() -> None:
    assert truncate("short", 10) == "short"
    assert truncate("abcdefghij", 4) == "abcd\n[... 6 more characters cut]"


def test_S32_capture_files_globs_stay_inside_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "notes").mkdir(parents=True)
    (workspace / "a.md").write_text("A")
    (workspace / "notes" / "b.md").write_text("B")
    (workspace / "big.md").write_text("y" * 100)
    (tmp_path / "outside.md").write_text("SECRET OUTSIDE")
    os.symlink(tmp_path / "outside.md", workspace / "link.md")
    found = capture_files(
        ["*.md", "**/*.md", "../*.md", str(tmp_path / "outside.md"), "{{ workspace }}/a.md"],
        workspace,
        20,
        render=lambda pattern: pattern.replace("{{ workspace }}", str(workspace)),
    )
    assert found == {
        str(workspace / "a.md"): "A",
        str(workspace / "big.md"): "y" * 20 + "\n[... 80 more characters cut]",
        str(workspace / "notes" / "b.md"): "B",
    }


def test_S32_captured_files_are_redacted(tmp_path: Path) -> None:
    (tmp_path / "env.txt").write_text("OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwx\n")
    found = capture_files(["env.txt"], tmp_path, 1000)
    assert found == {str(tmp_path / "env.txt"): f"OPENAI_API_KEY={REDACTED}\n"}


def test_S31_S32_reach_the_template_through_prepare_attempt(tmp_path: Path) -> None:
    (tmp_path / "draft.md").write_text("DRAFT TEXT")
    data = {
        "name": "ctx",
        "workspace": str(tmp_path),
        "sheet": {"size": 1, "total_items": 3},
        "prompt": {"template": "x"},
        "cross_sheet": {
            "auto_capture_stdout": True,
            "lookback_sheets": 1,
            "capture_files": ["{{ workspace }}/draft.md"],
        },
        "validations": [{"type": "file_modified", "path": "draft.md"}],
    }
    plan = build_plan(score_from_mapping(data, base_dir=tmp_path, source_name="<test>"))
    template = PromptTemplate(
        "{% for n, out in previous_outputs.items() %}[{{ n }}:{{ out }}]{% endfor %}"
        "{% for path, text in previous_files.items() %}<{{ path.split('/')[-1] }}={{ text }}>"
        "{% endfor %}"
    )
    prepared = prepare_attempt(
        plan,
        plan.sheet(3),
        template,
        attempt=1,
        prior_outputs={1: PriorOutput("first"), 2: PriorOutput("second")},
    )
    assert "[2:second]<draft.md=DRAFT TEXT>" in prepared.prompt
    assert "[1:first]" not in prepared.prompt
    assert prepared.mtimes == {
        str(tmp_path / "draft.md"): (tmp_path / "draft.md").stat().st_mtime_ns
    }
