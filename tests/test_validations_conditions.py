"""The two condition languages: validation ``condition`` clauses, and the S5
``skip_when`` expression evaluator (no Python eval of arbitrary code)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.conditions import (
    condition_holds,
    parse_skip_expression,
    parse_validation_condition,
    should_skip,
)
from runtime.errors import ConditionError, ConfigError

SHEET = {"sheet_num": 3, "stage": 2, "instance": 1, "fan_count": 2, "name": "alpha"}


# --- validation conditions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("sheet_num == 3", True),
        ("sheet_num >= 4", False),
        ("sheet_num <= 3", True),
        ("sheet_num != 3", False),
        ("sheet_num > 2", True),
        ("sheet_num < 3", False),
        ("stage == 2 and instance == 1", True),
        ("stage == 2 and instance == 2", False),
        ("  stage==2  ", True),
        ("fan_count >= -1", True),
        ("unknown == 1", False),  # a missing variable fails its clause
        ("name == 1", False),  # so does a non-integer one
        (None, True),
    ],
)
def test_validation_condition_clauses(condition: str | None, expected: bool) -> None:
    assert condition_holds(condition, SHEET) is expected


def test_validation_condition_accepts_numeric_strings() -> None:
    assert condition_holds("sheet_num == 3", {"sheet_num": "3"})


@pytest.mark.parametrize(
    "condition",
    [
        "",
        "sheet_num = 3",
        "sheet_num == three",
        "sheet_num == 1 or sheet_num == 2",  # 'or' is not part of the language
        "sheet_num == 1 and",
        "sheet_num in [1, 2]",
        "1 == sheet_num",
    ],
)
def test_a_clause_that_cannot_be_parsed_is_a_config_error_not_true(condition: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_validation_condition(condition)
    assert isinstance(caught.value, ConfigError)


# --- skip_when (S5) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sheet_num == 3", True),
        ("stage > 1 and instance == 1", True),
        ("stage > 1 and not instance == 1", False),
        ("stage == 5 or fan_count == 2", True),
        ("not (stage == 2)", False),
        ("1 < stage < 3", True),
        ("1 < stage < 2", False),
        ("name == 'alpha'", True),
        ('name != "alpha"', False),
        ("name in ['alpha', 'beta']", True),
        ("stage not in [1, 3]", True),
        ("'lph' in name", True),
        ("true", True),
        ("False", False),
        ("none == null", True),
        ("-1 < 0", True),
        ("2.5 > stage", True),
        ("flags.skip", True),
        ("flags['skip'] and items[1] == 'b'", True),
        ("sheets[2].status == 'completed'", True),  # integer YAML keys, either spelling
        ("sheets['2'].status == 'completed'", True),
    ],
)
def test_S5_skip_when_expressions(expression: str, expected: bool) -> None:
    variables: dict[str, Any] = {
        **SHEET,
        "flags": {"skip": True},
        "items": ["a", "b"],
        "sheets": {2: {"status": "completed"}},
    }
    assert should_skip(expression, variables) is expected


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "stage ==",
        "(stage == 1",
        "stage == 1)",
        "__import__('os').system('true')",
        "stage.__class__",  # attribute of a Python object, not a mapping key
        "open('x')",
        "lambda: 1",
        "stage == 1; 2",
        "[1, 2",
        "a" * 3000,
        "not " * 100 + "true",
    ],
)
def test_S5_anything_else_is_refused_without_running_code(expression: str) -> None:
    with pytest.raises(ConditionError):
        should_skip(expression, SHEET)


@pytest.mark.parametrize(
    ("expression", "variables"),
    [
        ("missing == 1", {}),
        ("flags.absent", {"flags": {}}),
        ("items[5]", {"items": [1]}),
        ("name < 3", {"name": "x"}),
        ("stage.real", {"stage": 2}),
        ("-name", {"name": "x"}),
    ],
)
def test_S5_evaluation_errors_are_condition_errors(
    expression: str, variables: dict[str, Any]
) -> None:
    with pytest.raises(ConditionError):
        should_skip(expression, variables)


def test_S5_parsed_expressions_are_reused() -> None:
    assert parse_skip_expression("stage == 1") is parse_skip_expression("stage == 1")
    parsed = parse_skip_expression("stage == 2")
    assert should_skip(parsed, SHEET)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab ()[]'\"=<>!.,-0123456789andortinull", max_size=60))
def test_S5_arbitrary_text_parses_or_raises_a_condition_error(text: str) -> None:
    try:
        expression = parse_skip_expression(text)
    except ConditionError:
        return
    with contextlib.suppress(ConditionError):
        should_skip(expression, {"a": 1, "b": [1, 2]})
