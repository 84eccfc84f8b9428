"""Loading scores: every key Marianne accepts, unknown keys rejected, errors that
name the key path, the file and the line (SCORE_FORMAT.md)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import ConfigError, ScoreError
from runtime.plan import build_plan
from runtime.score import Score, load_score, score_from_mapping, score_warnings


def write(tmp_path: Path, text: str, name: str = "score.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


MINIMAL = """
    name: demo
    sheet:
      size: 1
      total_items: 2
    prompt:
      template: "do {{ sheet_num }}"
"""


def load_error(tmp_path: Path, text: str) -> ScoreError:
    with pytest.raises(ScoreError) as caught:
        build_plan(load_score(write(tmp_path, text)))
    return caught.value


def test_minimal_score_loads_with_documented_defaults(tmp_path: Path) -> None:
    score = load_score(write(tmp_path, MINIMAL))
    assert score.name == "demo"
    assert score.workspace == str((tmp_path / "workspace").resolve())
    assert score.backend.type == "claude_cli"
    assert score.backend.timeout_seconds == 1800
    assert score.retry.max_retries == 3
    assert score.retry.base_delay_seconds == 10
    assert score.retry.max_delay_seconds == 3600
    assert score.retry.exponential_base == 2
    assert score.retry.jitter is True
    assert score.retry.max_completion_attempts == 5
    assert score.retry.completion_delay_seconds == 5
    assert score.retry.completion_threshold_percent == 50
    assert score.rate_limit.wait_minutes == 60
    assert score.rate_limit.max_waits == 24
    assert score.rate_limit.max_quota_waits == 48
    assert score.circuit_breaker.enabled is True
    assert score.circuit_breaker.failure_threshold == 5
    assert score.circuit_breaker.recovery_timeout_seconds == 300
    assert score.cost_limits.enabled is False
    assert score.cost_limits.warn_at_percent == 80
    assert score.parallel.enabled is False
    assert score.parallel.max_concurrent == 3
    assert score.parallel.fail_fast is True
    assert score.cross_sheet is None
    assert score.pause_between_sheets_seconds == 2
    assert score.concert.max_chain_depth == 5
    assert score.concert.cooldown_between_jobs_seconds == 5
    assert score.concert.inherit_workspace is True
    assert score.warnings == []


def test_workspace_and_template_file_resolve_against_the_score_folder(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    folder.mkdir()
    (folder / "prompts").mkdir()
    (folder / "prompts" / "main.j2").write_text("from file {{ sheet_num }}", encoding="utf-8")
    path = write(
        folder,
        """
        name: demo
        workspace: ../out
        sheet: {size: 1, total_items: 1}
        prompt: {template_file: prompts/main.j2}
        """,
    )
    score = load_score(path)
    assert score.workspace == str((tmp_path / "out").resolve())
    assert score.prompt.template == "from file {{ sheet_num }}"
    assert score.base_dir == str(folder.resolve())


def test_missing_template_file_names_key_file_and_line(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        name: demo
        sheet: {size: 1, total_items: 1}
        prompt:
          template_file: nowhere.j2
        """,
    )
    assert error.key_path == "prompt.template_file"
    assert error.line == 4
    assert "nowhere.j2" in error.message


def test_unknown_key_is_an_error_with_path_line_and_suggestion(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        name: demo
        sheet:
          size: 1
          total_items: 2
          fan_ot: {2: 3}
        prompt: {template: x}
        """,
    )
    assert error.key_path == "sheet.fan_ot"
    assert error.line == 5
    assert error.source is not None and error.source.endswith("score.yaml")
    assert "did you mean 'fan_out'" in error.message
    assert str(error).startswith(f"{error.source}:5: sheet.fan_ot: unknown key")


def test_unknown_key_without_close_match_lists_what_is_expected(tmp_path: Path) -> None:
    error = load_error(tmp_path, MINIMAL + "    retry: {zzz: 1}\n")
    assert error.key_path == "retry.zzz"
    assert "expected one of" in error.message and "max_retries" in error.message


def test_wrong_type_names_the_key_and_what_is_expected(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        name: demo
        sheet:
          size: 1
          total_items: lots
        prompt: {template: x}
        """,
    )
    assert error.key_path == "sheet.total_items"
    assert error.line == 4
    assert "integer" in error.message and "'lots'" in error.message


def test_error_inside_a_list_names_the_index(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        MINIMAL
        + """
    validations:
      - type: file_exists
        path: a.md
      - type: content_regex
        path: b.md
        pattern: "("
""",
    )
    assert error.key_path == "validations.1"
    assert "regular expression" in error.message
    assert error.line == 11


def test_error_in_a_stage_keyed_map_names_the_stage(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        name: demo
        sheet:
          size: 1
          total_items: 3
          fan_out:
            2: zero
        prompt: {template: x}
        """,
    )
    assert error.key_path == "sheet.fan_out.2"
    assert error.line == 6


def test_missing_required_key_names_it(tmp_path: Path) -> None:
    error = load_error(tmp_path, "name: demo\nsheet: {size: 1, total_items: 1}\n")
    assert error.key_path == "prompt"
    assert "required" in error.message


@pytest.mark.parametrize(
    "text",
    [
        "name: [unclosed\n",
        "name: demo\n  bad indent: 1\n sheet: 2\n",
        "name: demo\nsheet: {size: 1\n",
        "\t- tab\n",
        "? [a, b]\n: 1\n",
    ],
)
def test_bad_yaml_is_a_score_error_with_a_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScoreError) as caught:
        load_score(path)
    assert "YAML" in caught.value.message
    assert caught.value.source == str(path)


@pytest.mark.parametrize("text", ["", "just a string\n", "- a list\n", "42\n"])
def test_a_document_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ScoreError) as caught:
        load_score(write(tmp_path, text))
    assert "mapping" in caught.value.message


def test_a_missing_file_is_a_score_error(tmp_path: Path) -> None:
    with pytest.raises(ScoreError) as caught:
        load_score(tmp_path / "absent.yaml")
    assert "not found" in caught.value.message


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")
    with pytest.raises(ScoreError) as caught:
        load_score(write(tmp_path, "\n".join(lines) + "\n"))
    assert "aliases" in caught.value.message


def test_duplicate_keys_are_warned_about(tmp_path: Path) -> None:
    score = load_score(write(tmp_path, MINIMAL + "    name: other\n"))
    assert score.name == "other"
    assert any("name: key appears more than once" in w for w in score.warnings)


def test_sheet_listed_twice_in_instrument_map_is_an_error(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        name: demo
        sheet:
          size: 1
          total_items: 4
          instrument_map:
            gemini-cli: [1, 2]
            codex-cli: [2, 3]
        prompt: {template: x}
        """,
    )
    assert error.key_path == "sheet.instrument_map"
    assert "sheet 2" in error.message and "gemini-cli" in error.message
    assert "codex-cli" in error.message


def test_fan_out_needs_size_one_and_start_item_one(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        name: demo
        sheet: {size: 2, total_items: 4, fan_out: {2: 3}}
        prompt: {template: x}
        """,
    )
    assert error.key_path == "sheet"
    assert "size: 1" in error.message


def test_template_and_template_file_together_are_an_error(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        name: demo
        sheet: {size: 1, total_items: 1}
        prompt: {template: x, template_file: y.j2}
        """,
    )
    assert error.key_path == "prompt"
    assert "not both" in error.message


def test_instrument_with_a_non_default_backend_type_is_an_error(tmp_path: Path) -> None:
    error = load_error(
        tmp_path, MINIMAL + "    instrument: gemini-cli\n    backend: {type: ollama}\n"
    )
    assert "keep one of them" in error.message


def test_validation_condition_that_cannot_be_parsed_is_a_config_error(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        MINIMAL
        + """
    validations:
      - type: file_exists
        path: a.md
        condition: "sheet_num is big"
""",
    )
    assert error.key_path == "validations.0.condition"
    assert "cannot parse condition clause" in error.message


def test_validation_fields_required_by_type(tmp_path: Path) -> None:
    error = load_error(tmp_path, MINIMAL + "    validations: [{type: command_succeeds}]\n")
    assert "needs 'command'" in error.message
    error = load_error(tmp_path, MINIMAL + "    validations: [{type: content_contains, path: a}]\n")
    assert "needs 'pattern'" in error.message


def test_skip_when_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        name: demo
        sheet:
          size: 1
          total_items: 2
          skip_when: {2: "sheet_num >"}
        prompt: {template: x}
        """,
    )
    assert error.key_path == "sheet.skip_when"
    assert "stage 2" in error.message


def test_skip_when_command_timeout_is_bounded(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        name: demo
        sheet:
          size: 1
          total_items: 2
          skip_when_command: {2: {command: "true", timeout_seconds: 61}}
        prompt: {template: x}
        """,
    )
    assert error.key_path == "sheet.skip_when_command.2.timeout_seconds"


def test_injection_item_needs_exactly_one_of_file_and_directory(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        name: demo
        sheet:
          size: 1
          total_items: 1
          prelude:
            - {file: a.md, directory: docs, as: context}
        prompt: {template: x}
        """,
    )
    assert error.key_path == "sheet.prelude.0"
    error = load_error(
        tmp_path,
        """
        name: demo
        sheet:
          size: 1
          total_items: 1
          prelude:
            - {file: a.md, as: memory}
        prompt: {template: x}
        """,
    )
    assert error.key_path == "sheet.prelude.0.as"


def test_cost_limits_enable_themselves_when_a_limit_is_set() -> None:
    score = score_from_mapping(
        {
            "name": "x",
            "sheet": {"total_items": 1},
            "prompt": {"template": "x"},
            "cost_limits": {"max_cost_per_job": 5},
        },
        base_dir=Path("/tmp"),
        source_name="<test>",
    )
    assert score.cost_limits.enabled is True
    with pytest.raises(ScoreError) as caught:
        score_from_mapping(
            {
                "name": "x",
                "sheet": {"total_items": 1},
                "prompt": {"template": "x"},
                "cost_limits": {"enabled": True},
            },
            base_dir=Path("/tmp"),
            source_name="<test>",
        )
    assert caught.value.key_path == "cost_limits"


def test_not_acted_on_sections_are_type_checked_and_warned_about(tmp_path: Path) -> None:
    score = load_score(
        write(
            tmp_path,
            MINIMAL
            + """
    notifications:
      - type: desktop
        on_events: [job_complete]
    state_backend: json
    state_path: ./state
    isolation: {enabled: true, mode: worktree}
    workspace_lifecycle: {archive_on_fresh: true, max_archives: 3}
    techniques:
      a2a: {kind: protocol, phases: [work]}
    spec: {spec_dir: specs}
    learning: {enabled: false}
    grounding: {enabled: false}
    checkpoints: {enabled: false}
    ai_review: {enabled: false}
    feedback: {enabled: true, format: text}
    logging: {level: DEBUG, include_context: false}
    conductor: {name: me, role: ai}
    bridge: {enabled: false}
    agent_card: {name: me}
    stale_detection: {enabled: true, idle_timeout_seconds: 600}
""",
        )
    )
    warned = {warning.split(":")[0] for warning in score_warnings(score)}
    assert warned == {
        "notifications", "state_backend", "state_path", "isolation", "workspace_lifecycle",
        "techniques", "spec", "learning", "grounding", "checkpoints", "ai_review", "feedback",
        "logging", "conductor", "bridge", "agent_card", "stale_detection",
    }  # fmt: skip
    error = load_error(tmp_path, MINIMAL + "    logging: {level: LOUD}\n")
    assert error.key_path == "logging.level"
    error = load_error(tmp_path, MINIMAL + "    isolation: {enabld: true}\n")
    assert error.key_path == "isolation.enabld"
    assert "did you mean 'enabled'" in error.message


def test_every_documented_engine_key_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "ext.md").write_text("Extension from a file.", encoding="utf-8")
    score = load_score(
        write(
            tmp_path,
            """
            name: full
            description: every key
            workspace: ./ws
            instrument: claude-code
            instrument_config: {model: claude-sonnet-4-6, timeout_seconds: 900}
            instrument_fallbacks: [fast]
            instruments:
              fast: {profile: gemini-cli, config: {model: gemini-flash}}
            movements:
              1: {name: One, instrument: fast, instrument_config: {x: 1}, instrument_fallbacks: []}
            backend:
              type: claude_cli
              timeout_seconds: 1200
              timeout_overrides: {2: 50}
              sheet_overrides: {3: {timeout_seconds: 40, model: m}}
              skip_permissions: true
              disable_mcp: true
              cli_model: opus
            sheet:
              size: 1
              total_items: 3
              start_item: 1
              dependencies: {2: [1], 3: [1]}
              skip_when: {3: "sheet_num > 100"}
              skip_when_command: {2: {command: "test -f x", description: d, timeout_seconds: 5}}
              descriptions: {1: first}
              cadenzas: {1: [{file: a.md, as: skill}]}
              per_sheet_instruments: {2: codex-cli}
              per_sheet_instrument_config: {2: {model: o3}}
              per_sheet_fallbacks: {2: []}
              instrument_map: {claude-code: [3]}
              prompt_extensions: {1: ["Be brief."]}
              spec_tags: {1: [goals]}
              prelude: [{directory: docs, as: context}]
            prompt:
              template: "{{ sheet_num }}"
              variables: {a: 1}
              stakes: high
              thinking_method: careful
              prompt_extensions: [ext.md, inline text]
            validations:
              - {type: file_exists, path: "{workspace}/a", stage: 1, sheet: 1, description: d}
              - {type: file_modified, path: a, condition: "sheet_num >= 1"}
              - {type: content_contains, path: a, pattern: x, retry_count: 2, retry_delay_ms: 10}
              - {type: content_regex, path: a, pattern: "^x"}
              - {type: command_succeeds, command: "true", timeout_seconds: 5, working_directory: .}
            retry:
              max_retries: 2
              base_delay_seconds: 1
              max_delay_seconds: 60
              exponential_base: 3
              jitter: false
              max_completion_attempts: 2
              completion_delay_seconds: 1
              completion_threshold_percent: 60
            rate_limit: {detection_patterns: ["slow down"], wait_minutes: 5, max_waits: 2, max_quota_waits: 3}
            circuit_breaker: {enabled: true, failure_threshold: 2, recovery_timeout_seconds: 30}
            cost_limits: {max_cost_per_sheet: 1, max_cost_per_job: 10, cost_per_1k_input_tokens: 0.01, cost_per_1k_output_tokens: 0.02, warn_at_percent: 90}
            parallel: {enabled: true, max_concurrent: 4, fail_fast: false, stagger_delay_ms: 100}
            cross_sheet: {auto_capture_stdout: true, max_output_chars: 100, capture_files: ["*.md"], lookback_sheets: 0}
            pause_between_sheets_seconds: 0
            on_success:
              - {type: run_job, job_path: next.yaml, detached: true, fresh: true, description: next}
              - {type: run_command, command: "echo done"}
            concert: {enabled: true, max_chain_depth: 3, cooldown_between_jobs_seconds: 1, inherit_workspace: false}
            """,  # noqa: E501
        )
    )
    # Accepted keys the engine does not act on yet are named, each once.
    assert sorted(note.split(":")[0] for note in score.warnings) == [
        "concert",
        "cost_limits.cost_per_1k_input_tokens",
        "cost_limits.cost_per_1k_output_tokens",
        "on_success",
        "parallel.fail_fast",
        "parallel.stagger_delay_ms",
        "rate_limit.detection_patterns",
        "rate_limit.max_quota_waits",
    ]
    assert score.prompt.prompt_extensions == ["Extension from a file.", "inline text"]
    assert score.validations[0].effective_condition == "sheet_num == 1"
    plan = build_plan(score)
    assert plan.total_sheets == 3


def test_loaded_score_survives_a_json_round_trip(tmp_path: Path) -> None:
    score = load_score(
        write(tmp_path, MINIMAL + "    validations: [{type: file_exists, path: a}]\n")
    )
    document: dict[str, Any] = score.model_dump(mode="json")
    again = load_score(document)
    assert again.model_dump(mode="json") == document
    assert isinstance(again, Score)


def test_load_score_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        load_score({"name": "x"})
