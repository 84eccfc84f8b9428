"""Prompts: the S33 variables, strict and sandboxed rendering, and the assembled
prompt of SCORE_FORMAT "Prompts" (preamble, injections, requirements, completion
note, raw instruments)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import plan_of

from runtime.plan import build_plan
from runtime.prompts import (
    CompletionNote,
    PromptError,
    PromptTemplate,
    build_prompt,
    sheet_variables,
)
from runtime.score import score_from_mapping


def test_S33_built_in_variables_with_real_item_ranges(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, {"size": 5, "total_items": 12}, instrument="gemini-cli")
    variables = sheet_variables(plan, plan.sheet(2), attempt=3)
    assert variables == {
        "sheet_num": 2,
        "total_sheets": 3,
        "start_item": 6,
        "end_item": 10,
        "workspace": str(tmp_path),
        "stage": 2,
        "movement": 2,
        "instance": 1,
        "voice": 1,
        "fan_count": 1,
        "voice_count": 1,
        "total_stages": 3,
        "total_movements": 3,
        "instrument_name": "gemini-cli",
        "attempt": 3,
        "previous_outputs": {},
        "previous_files": {},
    }


def test_S33_fan_out_variables(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, {"size": 1, "total_items": 3, "fan_out": {2: 3}})
    variables = sheet_variables(plan, plan.sheet(4))
    assert (variables["stage"], variables["instance"], variables["fan_count"]) == (2, 3, 3)
    assert (variables["movement"], variables["voice"], variables["voice_count"]) == (2, 3, 3)
    assert (variables["total_sheets"], variables["total_stages"]) == (5, 3)


def test_S33_user_variables_override_built_ins() -> None:
    template = PromptTemplate(
        "{{ stage }} {{ topic }}", variables={"stage": "custom", "topic": "t"}
    )
    assert template.render({"stage": 1}) == "custom t"


def test_S33_an_undefined_variable_is_an_error_naming_it() -> None:
    template = PromptTemplate("hello {{ nmae }}")
    with pytest.raises(PromptError) as caught:
        template.render({"name": "x"})
    assert "'nmae' is undefined" in caught.value.message
    assert caught.value.key_path == "prompt.template"
    # ...but `default` still works for optional variables, as in Marianne's examples.
    assert PromptTemplate("{{ opt | default('none') }}").render({}) == "none"


def test_a_template_syntax_error_is_reported_with_its_line() -> None:
    with pytest.raises(PromptError) as caught:
        PromptTemplate("line one\n{% if %}")
    assert "line 2" in caught.value.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ workspace.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{% set x = [] %}{{ x.append(1) }}",
    ],
)
def test_the_sandbox_keeps_templates_away_from_python_internals(source: str) -> None:
    with pytest.raises(PromptError):
        PromptTemplate(source).render({"workspace": "/w"})


def test_the_template_is_compiled_once_and_rendered_per_attempt() -> None:
    template = PromptTemplate("n={{ sheet_num }}")
    compiled = template._template
    assert [template.render({"sheet_num": n}) for n in (1, 2)] == ["n=1", "n=2"]
    assert template._template is compiled


def test_prompt_sections_in_order(tmp_path: Path) -> None:
    (tmp_path / "context.md").write_text("CONTEXT BODY")
    (tmp_path / "skill.md").write_text("SKILL BODY")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "a.md").write_text("TOOL A")
    (tmp_path / "tools" / "b.md").write_text("TOOL B")
    (tmp_path / "tools" / ".hidden").write_text("HIDDEN")
    plan = plan_of(
        tmp_path,
        {
            "size": 1,
            "total_items": 2,
            "prelude": [
                {"file": "{{ workspace }}/context.md", "as": "context"},
                {"directory": "tools", "as": "tool"},
            ],
            "cadenzas": {2: [{"file": "skill.md", "as": "skill"}]},
            "prompt_extensions": {2: ["EXTENSION"]},
        },
        prompt={"template": "TEMPLATE {{ sheet_num }}", "stakes": "STAKES"},
        validations=[
            {"type": "file_exists", "path": "{workspace}/out-{sheet_num}.md"},
            {"type": "command_succeeds", "command": "true", "description": "CHECK {sheet_num}"},
            {"type": "file_exists", "path": "never", "condition": "sheet_num == 1"},
        ],
    )
    template = PromptTemplate("TEMPLATE {{ sheet_num }}")
    prompt = build_prompt(plan, plan.sheet(2), template)
    order = [
        "You are working on sheet 2 of 2 of the job 'demo'",
        "EXTENSION",
        "## Injected Skills",
        "SKILL BODY",
        "## Injected Tools",
        "### a.md\nTOOL A",
        "### b.md\nTOOL B",
        "## Injected Context",
        "### context.md\nCONTEXT BODY",
        "TEMPLATE 2",
        "## Stakes\nSTAKES",
        "## Success requirements",
        f"- file exists: {tmp_path}/out-2.md",
        "- CHECK 2",
    ]
    positions = [prompt.index(text) for text in order]
    assert positions == sorted(positions)
    assert "HIDDEN" not in prompt and "never" not in prompt
    assert "## Injected Skills" not in build_prompt(plan, plan.sheet(1), template)


def test_a_missing_injected_file_is_left_out(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        {"size": 1, "total_items": 1, "prelude": [{"file": "absent.md", "as": "context"}]},
    )
    prompt = build_prompt(plan, plan.sheet(1), PromptTemplate("T"))
    assert "Injected Context" not in prompt and "T" in prompt


def test_an_injected_file_not_in_the_workspace_is_looked_up_beside_the_score(
    tmp_path: Path,
) -> None:
    score_dir = tmp_path / "scores"
    score_dir.mkdir()
    (score_dir / "lib.md").write_text("LIBRETTO")
    data = {
        "name": "demo",
        "workspace": str(tmp_path / "ws"),
        "sheet": {"total_items": 1, "prelude": [{"file": "lib.md", "as": "context"}]},
        "prompt": {"template": "T"},
    }
    plan = build_plan(score_from_mapping(data, base_dir=score_dir, source_name="<test>"))
    assert "LIBRETTO" in build_prompt(plan, plan.sheet(1), PromptTemplate("T"))


def test_injection_paths_use_user_variables(tmp_path: Path) -> None:
    (tmp_path / "design.md").write_text("DESIGN DOC")
    plan = plan_of(
        tmp_path,
        {"size": 1, "total_items": 1, "prelude": [{"file": "{{ doc }}", "as": "context"}]},
    )
    prompt = build_prompt(plan, plan.sheet(1), PromptTemplate("T", variables={"doc": "design.md"}))
    assert "DESIGN DOC" in prompt


def test_S11_retry_preamble_names_the_retry(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, {"size": 1, "total_items": 1})
    prompt = build_prompt(plan, plan.sheet(1), PromptTemplate("T"), attempt=3, retry_number=2)
    assert prompt.startswith("This is retry #2 of sheet 1 of 1")


def test_S8_completion_note_ends_the_prompt(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, {"size": 1, "total_items": 1})
    note = CompletionNote(passed=("file a exists",), failed=("tests pass",))
    prompt = build_prompt(plan, plan.sheet(1), PromptTemplate("T"), attempt=2, completion=note)
    tail = prompt[prompt.index("## Completing the previous attempt") :]
    assert "Already passing:\n- file a exists" in tail
    assert "Still failing:\n- tests pass" in tail


def test_raw_prompt_instruments_get_the_rendered_template_alone(tmp_path: Path) -> None:
    (tmp_path / "ctx.md").write_text("CONTEXT")
    plan = plan_of(
        tmp_path,
        {"size": 1, "total_items": 1, "prelude": [{"file": "ctx.md", "as": "context"}]},
        instrument="cli",
        validations=[{"type": "file_exists", "path": "a"}],
    )
    template = PromptTemplate("echo {{ sheet_num }} > out.txt")
    assert build_prompt(plan, plan.sheet(1), template, attempt=2, retry_number=1) == (
        "echo 1 > out.txt"
    )
