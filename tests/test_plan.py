"""Planning: sheet count and item ranges, fan-out, dependency expansion (S3, S4),
cycle detection, and the per-sheet resolution orders of SCORE_FORMAT.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime.errors import ScoreError
from runtime.plan import MAX_SHEETS, Plan, build_plan, find_cycle, sheet_count
from runtime.score import score_from_mapping


def plan_of(sheet: dict[str, Any], **extra: Any) -> Plan:
    data = {"name": "p", "workspace": "/tmp/p", "sheet": sheet, "prompt": {"template": "x"}}
    data.update(extra)
    return build_plan(score_from_mapping(data, base_dir=Path("/tmp"), source_name="<test>"))


def plan_error(sheet: dict[str, Any], **extra: Any) -> ScoreError:
    with pytest.raises(ScoreError) as caught:
        plan_of(sheet, **extra)
    return caught.value


def deps(plan: Plan) -> dict[int, tuple[int, ...]]:
    return {sheet.num: plan.dependencies.get(sheet.num, ()) for sheet in plan.sheets}


# --- sheets and items ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "size", "start", "expected"),
    [(10, 5, 1, 2), (11, 5, 1, 3), (10, 3, 4, 3), (5, 1, 1, 5), (0, 1, 1, 0), (3, 2, 5, 0)],
)
def test_sheet_count_is_ceil_of_items_over_size(
    total: int, size: int, start: int, expected: int
) -> None:
    assert sheet_count(total, size, start) == expected
    plan = plan_of({"size": size, "total_items": total, "start_item": start})
    assert plan.total_sheets == expected


def test_S33_item_ranges_for_size_greater_than_one() -> None:
    """S33 (fix): start_item/end_item are the sheet's real range, not the sheet number."""
    plan = plan_of({"size": 4, "total_items": 10})
    assert [(s.start_item, s.end_item) for s in plan.sheets] == [(1, 4), (5, 8), (9, 10)]
    shifted = plan_of({"size": 3, "total_items": 10, "start_item": 4})
    assert [(s.start_item, s.end_item) for s in shifted.sheets] == [(4, 6), (7, 9), (10, 10)]


def test_fan_out_expands_stages_into_consecutive_sheets() -> None:
    plan = plan_of({"size": 1, "total_items": 3, "fan_out": {2: 3}})
    assert plan.total_sheets == 5
    assert plan.total_stages == 3
    assert [(s.stage, s.instance, s.fan_count) for s in plan.sheets] == [
        (1, 1, 1), (2, 1, 3), (2, 2, 3), (2, 3, 3), (3, 1, 1),
    ]  # fmt: skip
    assert dict(plan.stage_sheets) == {1: (1,), 2: (2, 3, 4), 3: (5,)}


def test_movement_voices_are_a_fan_out_shorthand() -> None:
    plan = plan_of({"size": 1, "total_items": 2}, movements={2: {"name": "many", "voices": 2}})
    assert [(s.stage, s.instance, s.fan_count) for s in plan.sheets] == [
        (1, 1, 1), (2, 1, 2), (2, 2, 2),
    ]  # fmt: skip
    assert plan.sheet(2).movement_name == "many"


def test_fan_out_of_an_unknown_stage_is_an_error() -> None:
    error = plan_error({"size": 1, "total_items": 2, "fan_out": {3: 2}})
    assert error.key_path == "sheet.fan_out.3"


def test_a_score_with_too_many_sheets_is_refused_without_planning_them() -> None:
    error = plan_error({"size": 1, "total_items": 10**12})
    assert str(MAX_SHEETS) in error.message
    error = plan_error({"size": 1, "total_items": 2, "fan_out": {1: 10**9}})
    assert error.key_path == "sheet.fan_out"


# --- dependencies ------------------------------------------------------------------------


def test_S3_without_dependencies_stages_form_a_chain() -> None:
    plan = plan_of({"size": 2, "total_items": 6})
    assert deps(plan) == {1: (), 2: (1,), 3: (2,)}
    fanned = plan_of({"size": 1, "total_items": 3, "fan_out": {2: 2}})
    # Each sheet of stage k depends on every sheet of stage k-1.
    assert deps(fanned) == {1: (), 2: (1,), 3: (1,), 4: (2, 3)}


def test_S3_with_dependencies_a_sheet_missing_from_the_map_has_none() -> None:
    plan = plan_of({"size": 1, "total_items": 4, "dependencies": {3: [1], 4: [2, 3]}})
    assert deps(plan) == {1: (), 2: (), 3: (1,), 4: (2, 3)}
    assert dict(plan.dependents) == {1: (3,), 2: (4,), 3: (4,)}


def test_S4_one_to_n_each_instance_depends_on_the_source() -> None:
    plan = plan_of({"size": 1, "total_items": 2, "fan_out": {2: 3}, "dependencies": {2: [1]}})
    assert deps(plan) == {1: (), 2: (1,), 3: (1,), 4: (1,)}


def test_S4_n_to_one_the_join_depends_on_all() -> None:
    plan = plan_of({"size": 1, "total_items": 2, "fan_out": {1: 3}, "dependencies": {2: [1]}})
    assert deps(plan) == {1: (), 2: (), 3: (), 4: (1, 2, 3)}


def test_S4_n_to_n_instance_i_depends_on_instance_i() -> None:
    plan = plan_of({"size": 1, "total_items": 2, "fan_out": {1: 3, 2: 3}, "dependencies": {2: [1]}})
    assert deps(plan) == {1: (), 2: (), 3: (), 4: (1,), 5: (2,), 6: (3,)}


def test_S4_n_to_m_is_all_to_all() -> None:
    plan = plan_of({"size": 1, "total_items": 2, "fan_out": {1: 2, 2: 3}, "dependencies": {2: [1]}})
    assert deps(plan) == {1: (), 2: (), 3: (1, 2), 4: (1, 2), 5: (1, 2)}


def test_S4_dependency_keys_are_stages_with_fan_out() -> None:
    plan = plan_of(
        {
            "size": 1,
            "total_items": 4,
            "fan_out": {2: 2, 3: 2},
            "dependencies": {2: [1], 3: [2], 4: [3, 1]},
        }
    )
    assert deps(plan) == {1: (), 2: (1,), 3: (1,), 4: (2,), 5: (3,), 6: (1, 4, 5)}


def test_S4_cycle_is_an_error_naming_the_cycle() -> None:
    error = plan_error({"size": 1, "total_items": 3, "dependencies": {1: [3], 2: [1], 3: [2]}})
    assert "cycle" in error.message
    assert "1 -> 3 -> 2 -> 1" in error.message
    assert error.key_path == "sheet.dependencies.1"


def test_S4_self_dependency_is_an_error_naming_the_key() -> None:
    error = plan_error({"size": 1, "total_items": 3, "dependencies": {2: [1, 2]}})
    assert error.key_path == "sheet.dependencies.2.1"
    assert "depends on itself" in error.message


def test_S4_unknown_stage_is_an_error_naming_the_key() -> None:
    error = plan_error({"size": 1, "total_items": 2, "fan_out": {2: 2}, "dependencies": {2: [5]}})
    assert error.key_path == "sheet.dependencies.2.0"
    assert "stage 5" in error.message
    error = plan_error({"size": 1, "total_items": 2, "dependencies": {7: [1]}})
    assert error.key_path == "sheet.dependencies.7"
    assert "sheet 7 does not exist" in error.message


def test_find_cycle_on_a_long_chain_does_not_recurse() -> None:
    chain = {n: (n - 1,) for n in range(2, 50_001)}
    assert find_cycle(chain) is None
    chain[1] = (50_000,)
    cycle = find_cycle(chain)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == 50_001


# --- skip conditions and per-sheet data --------------------------------------------------


def test_S5_skip_conditions_are_keyed_by_stage_and_reach_every_voice() -> None:
    plan = plan_of(
        {
            "size": 1,
            "total_items": 3,
            "fan_out": {2: 2},
            "skip_when": {2: "stage == 2"},
            "skip_when_command": {3: {"command": "test -f done"}},
        }
    )
    assert [s.skip_when for s in plan.sheets] == [None, "stage == 2", "stage == 2", None]
    command = plan.sheet(4).skip_when_command
    assert command is not None and command.timeout_seconds == 10
    error = plan_error({"size": 1, "total_items": 2, "skip_when": {3: "true"}})
    assert error.key_path == "sheet.skip_when.3"


def test_sheet_keyed_maps_use_final_sheet_numbers_and_warn_on_unknown_sheets() -> None:
    plan = plan_of(
        {
            "size": 1,
            "total_items": 2,
            "fan_out": {2: 2},
            "descriptions": {3: "second voice", 9: "nothing"},
            "cadenzas": {3: [{"file": "c.md", "as": "skill"}]},
        }
    )
    assert plan.sheet(3).description == "second voice"
    assert [c.path for c in plan.sheet(3).cadenzas] == ["c.md"]
    assert plan.sheet(2).cadenzas == ()
    assert any("sheet.descriptions.9" in warning for warning in plan.warnings)


# --- resolution orders -------------------------------------------------------------------

INSTRUMENTS_SCORE: dict[str, Any] = {
    "instrument": "score-instr",
    "instrument_config": {"model": "score-model", "timeout_seconds": 100, "level": "score"},
    "instrument_fallbacks": ["fb-score"],
    "instruments": {
        "alias": {"profile": "alias-profile", "config": {"model": "alias-model", "extra": 1}},
        "fb-alias": {"profile": "fb-profile", "config": {"model": "fb-model"}},
    },
    "movements": {
        2: {
            "instrument": "movement-instr",
            "instrument_config": {"level": "movement", "timeout_seconds": 200},
            "instrument_fallbacks": ["fb-movement", "fb-alias"],
        },
        3: {"instrument": "alias", "instrument_config": {"level": "movement3"}},
    },
}
SHEETS: dict[str, Any] = {
    "size": 1,
    "total_items": 6,
    "per_sheet_instruments": {1: "per-sheet-instr"},
    "instrument_map": {"mapped-instr": [1, 2, 4]},
    "per_sheet_instrument_config": {4: {"model": "per-sheet-model", "timeout_seconds": 400}},
    "per_sheet_fallbacks": {5: []},
}


def test_instrument_resolution_order() -> None:
    """per_sheet_instruments -> instrument_map -> movement -> instrument -> backend.type."""
    plan = plan_of(SHEETS, **INSTRUMENTS_SCORE)
    assert [s.instrument for s in plan.sheets] == [
        "per-sheet-instr",  # per-sheet beats the map
        "mapped-instr",  # the map beats the movement
        "alias-profile",  # movement 3 names an alias: its profile
        "mapped-instr",
        "score-instr",
        "score-instr",
    ]
    legacy = plan_of({"size": 1, "total_items": 1})
    assert legacy.sheet(1).instrument == "claude-code"  # backend.type claude_cli
    other = plan_of({"size": 1, "total_items": 1}, backend={"type": "ollama"})
    assert other.sheet(1).instrument == "ollama"


def test_config_merge_order_score_movement_alias_per_sheet() -> None:
    plan = plan_of(SHEETS, **INSTRUMENTS_SCORE)
    third = plan.sheet(3).instrument_config
    assert third["level"] == "movement3"  # movement over score
    assert third["model"] == "alias-model"  # alias over movement and score
    assert third["extra"] == 1
    fourth = plan.sheet(4).instrument_config
    assert fourth["model"] == "per-sheet-model"  # per-sheet over everything
    assert plan.sheet(5).instrument_config["level"] == "score"
    # A sheet placed by instrument_map does not take its movement's config (as Marianne).
    assert plan.sheet(2).instrument_config["level"] == "score"


def test_model_resolution() -> None:
    plan = plan_of(SHEETS, **INSTRUMENTS_SCORE)
    assert [s.model for s in plan.sheets] == [
        "score-model", "score-model", "alias-model", "per-sheet-model", "score-model",
        "score-model",
    ]  # fmt: skip
    overridden = plan_of(
        {"size": 1, "total_items": 2},
        backend={"cli_model": "backend-model", "sheet_overrides": {2: {"model": "sheet-model"}}},
    )
    assert [s.model for s in overridden.sheets] == ["backend-model", "sheet-model"]
    aliased = plan_of(
        {"size": 1, "total_items": 1},
        instrument="a",
        instruments={"a": {"profile": "gemini-cli", "config": {"cli_model": "g"}}},
    )
    assert aliased.sheet(1).model == "g"


def test_fallbacks_per_sheet_else_movement_else_score() -> None:
    plan = plan_of(SHEETS, **INSTRUMENTS_SCORE)
    assert plan.sheet(1).fallbacks == ("fb-score",)
    # Movement 2's chain, with its alias resolved to the profile and its config kept.
    assert plan.sheet(2).fallbacks == ("fb-movement", "fb-profile")
    assert plan.sheet(2).fallback_models == (None, "fb-model")
    assert plan.sheet(5).fallbacks == ()  # [] disables fallbacks for the sheet
    assert plan.fallback_instruments == {"fb-score", "fb-movement", "fb-profile"}


def test_timeout_resolution_order() -> None:
    """sheet_overrides -> timeout_overrides -> instrument_config -> backend.timeout_seconds."""
    plan = plan_of(
        SHEETS,
        **INSTRUMENTS_SCORE,
        backend={
            "timeout_seconds": 999,
            "timeout_overrides": {5: 50, 6: 60},
            "sheet_overrides": {6: {"timeout_seconds": 6}},
        },
    )
    assert [s.timeout_seconds for s in plan.sheets] == [100, 100, 100, 400, 50, 6]
    movement = plan_of({"size": 1, "total_items": 2}, **INSTRUMENTS_SCORE)
    assert movement.sheet(2).timeout_seconds == 200  # the movement's config
    plain = plan_of({"size": 1, "total_items": 1}, backend={"timeout_seconds": 77})
    assert plain.sheet(1).timeout_seconds == 77


def test_a_timeout_in_instrument_config_must_be_a_positive_number() -> None:
    error = plan_error({"size": 1, "total_items": 1}, instrument_config={"timeout_seconds": "x"})
    assert error.key_path == "instrument_config.timeout_seconds"


def test_plan_carries_job_settings_for_the_decision_core() -> None:
    plan = plan_of(
        {"size": 1, "total_items": 1},
        retry={"max_retries": 1, "base_delay_seconds": 2, "completion_threshold_percent": 70},
        parallel={"enabled": True, "max_concurrent": 4},
        cross_sheet={"auto_capture_stdout": True},
        validations=[{"type": "file_exists", "path": "a"}],
    )
    assert plan.retry.max_retries == 1 and plan.retry.base_delay_seconds == 2
    assert plan.retry.completion_threshold_percent == 70
    assert plan.max_parallel == 4
    assert plan.cross_sheet is not None and plan.cross_sheet.lookback_sheets == 3
    assert len(plan.validations) == 1


def test_raw_prompt_instruments_are_marked_per_sheet() -> None:
    plan = plan_of({"size": 1, "total_items": 2, "per_sheet_instruments": {2: "cli"}})
    assert [s.raw_prompt for s in plan.sheets] == [False, True]
    score = score_from_mapping(
        {"name": "p", "sheet": {"total_items": 1}, "prompt": {"template": "x"}, "instrument": "t"},
        base_dir=Path("/tmp"),
        source_name="<test>",
    )
    assert build_plan(score, raw_prompt_instruments={"t"}).sheet(1).raw_prompt


def test_plan_benchmark_prints_one_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    """bench/plan_bench.py (run with --sheets 10000 for the real figures) prints JSON."""
    import importlib.util
    import json

    path = Path(__file__).parents[1] / "bench" / "plan_bench.py"
    spec = importlib.util.spec_from_file_location("plan_bench", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--sheets", "300", "--repeat", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plain"]["sheets"] == 300
    assert report["fan_out"]["sheets"] == 300
    assert report["fan_out"]["dependency_edges"] > 0
