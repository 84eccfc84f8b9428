"""Compatibility with Marianne's example scores: every one validates and renders
every sheet (``ensemble validate --json --render``), with the sheet count and
dependency map that Marianne's fan-out and dependency rules give (S3, S4)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.plan import build_plan
from runtime.prompts import PromptTemplate, build_prompt
from runtime.score import load_score, score_from_mapping
from runtime.validate_cmd import EXIT_INVALID, EXIT_VALID, plan_document, validate_main

MARIANNE = Path(__file__).parents[1].parent / "shared" / "marianne"
EXAMPLES = sorted(
    path
    for path in (MARIANNE / "examples").rglob("*.yaml")
    if path.name != "conductor-snippet.yaml"  # a conductor setting, not a score
)

needs_examples = pytest.mark.skipif(not EXAMPLES, reason="../shared/marianne is not present")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = validate_main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def expected_shape(raw: dict[str, Any]) -> tuple[int, dict[int, list[int]]]:
    """Sheet count and dependencies from the raw YAML, by Marianne's documented rules."""
    sheet = raw["sheet"]
    fan_out = {int(k): int(v) for k, v in (sheet.get("fan_out") or {}).items()}
    size, start = sheet.get("size", 1), sheet.get("start_item", 1)
    stages = sheet["total_items"] if fan_out else -(-(sheet["total_items"] - start + 1) // size)
    sheets_of: dict[int, list[int]] = {}
    number = 0
    for stage in range(1, stages + 1):
        count = fan_out.get(stage, 1)
        sheets_of[stage] = list(range(number + 1, number + count + 1))
        number += count
    declared = sheet.get("dependencies") or {stage: [stage - 1] for stage in range(2, stages + 1)}
    deps: dict[int, set[int]] = {n: set() for n in range(1, number + 1)}
    for stage, sources in declared.items():
        targets = sheets_of[int(stage)]
        for source_stage in sources:
            sources_sheets = sheets_of[int(source_stage)]
            if 1 < len(sources_sheets) == len(targets):
                for target, source in zip(targets, sources_sheets, strict=True):
                    deps[target].add(source)
            else:
                for target in targets:
                    deps[target].update(sources_sheets)
    return number, {n: sorted(d) for n, d in deps.items()}


@needs_examples
def test_there_are_49_example_scores() -> None:
    assert len(EXAMPLES) == 49


@needs_examples
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(MARIANNE / "examples")))
def test_example_validates_and_renders_every_sheet(path: Path) -> None:
    code, out, err = run(str(path), "--json", "--render")
    assert code == EXIT_VALID, err
    document = json.loads(out)
    total, dependencies = expected_shape(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert document["total_sheets"] == total == len(document["sheets"])
    assert document["dependencies"] == {str(n): d for n, d in dependencies.items()}
    for index, sheet in enumerate(document["sheets"], start=1):
        assert sheet["num"] == index
        assert set(sheet) == {
            "num", "stage", "instance", "fan_count", "instrument", "model", "fallbacks",
            "timeout_seconds", "start_item", "end_item",
        }  # fmt: skip
        assert sheet["timeout_seconds"] > 0
        assert document["prompts"][str(index)].strip()


@needs_examples
def test_validate_summary_and_single_sheet_render() -> None:
    path = MARIANNE / "examples" / "getting-started" / "simple-sheet.yaml"
    code, out, _ = run(str(path), "--render", "2")
    assert code == EXIT_VALID
    assert "valid score 'simple-sheet': 2 sheets" in out
    assert "===== sheet 2 " in out and "===== sheet 1 " not in out
    assert "Items: 6 to 10" in out  # S33 (fix): the real item range
    code, _, err = run(str(path), "--render", "3")
    assert code == EXIT_INVALID and "sheets 1 to 2" in err


def test_validate_reports_an_invalid_score_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nsheet:\n  size: 1\n  total_items: 2\n  dependencies: {1: [2], 2: [1]}\n"
        "prompt: {template: x}\n",
        encoding="utf-8",
    )
    code, out, err = run(str(path))
    assert code == EXIT_INVALID
    assert out == ""
    assert f"{path}:5: sheet.dependencies.1: dependency cycle between sheets: 1 -> 2 -> 1" in err
    code, out, _ = run(str(path), "--json")
    assert code == EXIT_INVALID
    assert json.loads(out) == {
        "valid": False,
        "error": "dependency cycle between sheets: 1 -> 2 -> 1",
        "key_path": "sheet.dependencies.1",
        "source": str(path),
        "line": 5,
    }


def test_validate_reports_an_undefined_template_variable(tmp_path: Path) -> None:
    path = tmp_path / "undefined.yaml"
    path.write_text(
        "name: u\nsheet: {size: 1, total_items: 2}\n"
        "prompt: {template: '{% if sheet_num == 2 %}{{ topic }}{% endif %}'}\n",
        encoding="utf-8",
    )
    assert run(str(path))[0] == EXIT_VALID  # only rendering finds it
    code, _, err = run(str(path), "--render")
    assert code == EXIT_INVALID
    assert "sheet 2: undefined template variable: 'topic' is undefined" in err


def test_validate_json_for_a_plain_score(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(
        "name: plain\nsheet: {size: 2, total_items: 3}\nprompt: {template: x}\n"
        "instrument: gemini-cli\ninstrument_config: {model: flash}\n"
        "instrument_fallbacks: [claude-code]\n",
        encoding="utf-8",
    )
    code, out, _ = run(str(path), "--json")
    assert code == EXIT_VALID
    assert json.loads(out) == {
        "name": "plain",
        "total_sheets": 2,
        "sheets": [
            {
                "num": 1, "stage": 1, "instance": 1, "fan_count": 1, "instrument": "gemini-cli",
                "model": "flash", "fallbacks": ["claude-code"], "timeout_seconds": 1800.0,
                "start_item": 1, "end_item": 2,
            },
            {
                "num": 2, "stage": 2, "instance": 1, "fan_count": 1, "instrument": "gemini-cli",
                "model": "flash", "fallbacks": ["claude-code"], "timeout_seconds": 1800.0,
                "start_item": 3, "end_item": 3,
            },
        ],
        "dependencies": {"1": [], "2": [1]},
    }  # fmt: skip


@needs_examples
def test_examples_survive_the_json_round_trip_of_a_checkpointed_score() -> None:
    """A job's score is stored as JSON: reloading it (with the score's folder) gives
    the same plan, and templates still find integer YAML keys such as
    ``characters[instance]`` after they became strings."""
    for path in EXAMPLES:
        score = load_score(path)
        document = json.loads(json.dumps(score.model_dump(mode="json")))
        again = score_from_mapping(
            document, base_dir=Path(score.base_dir or "."), source_name=str(path)
        )
        assert plan_document(build_plan(again)) == plan_document(build_plan(score)), path
    hello = MARIANNE / "examples" / "creative" / "hello-marianne.yaml"
    score = load_score(hello)
    document = json.loads(json.dumps(score.model_dump(mode="json")))
    assert "1" in document["prompt"]["variables"]["characters"]
    again = score_from_mapping(document, base_dir=hello.parent, source_name=str(hello))
    plan, plan_again = build_plan(score), build_plan(again)
    for sheet, sheet_again in zip(plan.sheets, plan_again.sheets, strict=True):
        assert build_prompt(
            plan_again,
            sheet_again,
            PromptTemplate(again.prompt.template or "", variables=again.prompt.variables),
        ) == build_prompt(
            plan,
            sheet,
            PromptTemplate(score.prompt.template or "", variables=score.prompt.variables),
        )


def test_validate_renders_a_raw_prompt_profile_as_run_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A project profile with raw_prompt: true gets its prompt as written, no preamble.
    profiles = tmp_path / ".ensemble" / "instruments"
    profiles.mkdir(parents=True)
    (profiles / "shell2.yaml").write_text(
        "name: shell2\nkind: cli\nraw_prompt: true\n"
        "cli: {command: {executable: bash, prompt_flag: '-c'}}\n"
    )
    score = tmp_path / "score.yaml"
    score.write_text(
        "name: raw\nworkspace: ws\ninstrument: shell2\n"
        "sheet: {size: 1, total_items: 1}\nprompt: {template: 'echo only this'}\n"
    )
    monkeypatch.chdir(tmp_path)

    code, out, err = run(str(score), "--json", "--render")

    assert code == EXIT_VALID, err
    assert json.loads(out)["prompts"]["1"] == "echo only this"
