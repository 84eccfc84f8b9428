"""Fuzzing the loader and planner: thousands of generated and mutated scores,
starting from Marianne's examples (or built-in seeds when ``../shared`` is
absent), with keys dropped, altered, renamed and inserted, and YAML text cut and
spliced. Every one must load and plan, or raise our ``ConfigError``: no other
exception, no hang (SCORE_FORMAT.md; S4 for the dependency checks)."""

from __future__ import annotations

import contextlib
import random
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import ConfigError
from runtime.plan import build_plan
from runtime.score import score_from_mapping, score_from_text

MARIANNE = Path(__file__).parents[1].parent / "shared" / "marianne"
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

SEED_TEXTS = [
    """
name: seed-fan-out
workspace: ./ws
instrument: claude-code
instrument_fallbacks: [fast]
instruments:
  fast: {profile: gemini-cli, config: {model: flash, timeout_seconds: 60}}
movements:
  1: {name: plan}
  2: {name: work, instrument: fast}
sheet:
  size: 1
  total_items: 3
  fan_out: {2: 3}
  dependencies: {2: [1], 3: [2]}
  skip_when: {3: "stage == 3 and instance == 1"}
  skip_when_command: {2: {command: "test -f x", timeout_seconds: 5}}
  per_sheet_instruments: {5: codex-cli}
  instrument_map: {gemini-cli: [2]}
  cadenzas: {1: [{file: a.md, as: skill}]}
  prelude: [{directory: docs, as: context}]
prompt:
  template: "{{ stage }} {{ voice }} {{ topic }}"
  variables: {topic: fuzz}
validations:
  - {type: file_exists, path: "{workspace}/a", condition: "stage == 1"}
  - {type: command_succeeds, command: "true", stage: 2}
retry: {max_retries: 2, base_delay_seconds: 1}
parallel: {enabled: true, max_concurrent: 2}
cross_sheet: {auto_capture_stdout: true, capture_files: ["*.md"]}
""",
    """
name: seed-plain
sheet: {size: 3, total_items: 10, start_item: 2, dependencies: {2: [1], 3: [1, 2]}}
backend: {type: claude_cli, timeout_seconds: 100, timeout_overrides: {2: 5}}
prompt: {template: "items {{ start_item }}-{{ end_item }}"}
cost_limits: {max_cost_per_job: 3}
notifications: [{type: desktop}]
""",
]


def _example_texts() -> list[str]:
    if not (MARIANNE / "examples").is_dir():
        return []
    return [
        path.read_text(encoding="utf-8")
        for path in sorted((MARIANNE / "examples").rglob("*.yaml"))
        if path.name != "conductor-snippet.yaml"
    ]


@cache
def seeds() -> tuple[tuple[str, Any, tuple[tuple[Any, ...], ...]], ...]:
    """(text, data, every key path in data) for each seed score."""
    result = []
    for text in [*SEED_TEXTS, *_example_texts()]:
        data = yaml.load(text, Loader=Loader)
        result.append((text, data, tuple(_paths(data))))
    return tuple(result)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            paths.extend(_paths(value, (*prefix, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            paths.extend(_paths(value, (*prefix, index)))
    return paths


# Names that matter to the loader and planner, so insertions and renames hit real keys.
KEYS = [
    "name", "sheet", "prompt", "size", "total_items", "start_item", "fan_out", "dependencies",
    "instrument", "instruments", "movements", "profile", "config", "template", "variables",
    "validations", "type", "path", "pattern", "command", "condition", "stage", "sheet_num",
    "timeout_seconds", "instrument_map", "per_sheet_instruments", "per_sheet_fallbacks",
    "skip_when", "skip_when_command", "cadenzas", "prelude", "file", "directory", "as",
    "voices", "backend", "retry", "max_retries", "cross_sheet", "capture_files",
    "lookback_sheets", "cost_limits", "enabled", "parallel", "max_concurrent", "logging",
    "isolation", "bridge", "agent_card", "on_success", "job_path", "unknown_key",
]  # fmt: skip

SPECIAL_STRINGS = [
    "", "claude-code", "cli", "{{ undefined }}", "{% if %}", "sheet_num ==", "stage == 2",
    "file_exists", "command_succeeds", "content_regex", "(", "context", "skill", "{workspace}",
    "a" * 300, "\x00", "é", "[1, 2]",
]  # fmt: skip
SPECIAL_NUMBERS = [
    0, 1, 2, -1, 10**6, 10**12, 2**63, -(2**63), 0.5, -0.0, 1e308, float("inf"), float("nan"),
]  # fmt: skip


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A value of any YAML shape, biased to what the loader finds interesting."""
    kind = rng.randrange(10 if depth < 2 else 7)
    if kind == 0:
        return rng.randint(-3, 40)
    if kind == 1:
        return rng.choice(SPECIAL_NUMBERS)
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.choice(KEYS)
    if kind == 4:
        return rng.choice(SPECIAL_STRINGS)
    if kind in (5, 6):
        return "".join(rng.choice("ab1 _-{}%:") for _ in range(rng.randrange(8)))
    if kind in (7, 8):
        return {random_key(rng): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def random_key(rng: random.Random) -> Any:
    return rng.choice(KEYS) if rng.random() < 0.7 else rng.randint(-1, 9)


def _set(data: Any, path: tuple[Any, ...], change: Any) -> Any:
    """A copy of ``data`` with the node at ``path`` changed; only the path is copied."""
    if not path:
        return change(data)
    head, rest = path[0], path[1:]
    if isinstance(data, dict) and head in data:
        copy = dict(data)
        result = _set(data[head], rest, change)
        if result is _DROP:
            del copy[head]
        else:
            copy[head] = result
        return copy
    if isinstance(data, list) and isinstance(head, int) and head < len(data):
        items = list(data)
        result = _set(data[head], rest, change)
        if result is _DROP:
            del items[head]
        else:
            items[head] = result
        return items
    return data


_DROP = object()


def mutate(seed: int) -> Any:
    """One seed score with 1-4 random mutations: drop, replace, insert or rename a key."""
    rng = random.Random(seed)
    _, data, paths = rng.choice(seeds())
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(paths)
        operation = rng.choice(("drop", "replace", "insert", "rename"))
        if operation == "drop" and path:
            data = _set(data, path, lambda _node: _DROP)
        elif operation == "replace":
            new = random_value(rng)
            data = _set(data, path, lambda _node, new=new: new)
        elif operation == "insert":
            key, new = random_key(rng), random_value(rng)

            def insert(node: Any, key: Any = key, new: Any = new) -> Any:
                if isinstance(node, dict):
                    return {**node, key: new}
                if isinstance(node, list):
                    return [*node, new]
                return node

            data = _set(data, path, insert)
        elif operation == "rename" and path:
            new_key, old_key = random_key(rng), path[-1]

            def rename(node: Any, old: Any = old_key, new: Any = new_key) -> Any:
                if isinstance(node, dict) and old in node and new not in node:
                    return {(new if k == old else k): v for k, v in node.items()}
                return node

            data = _set(data, path[:-1], rename)
    return data


def load_and_plan(data: Any, tmp: Path) -> None:
    with contextlib.suppress(ConfigError):
        build_plan(score_from_mapping(data, base_dir=tmp, source_name="<fuzz>"))


FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.timeout(600)
@FUZZ
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_mutated_scores_load_or_raise_a_config_error(seed: int) -> None:
    """Hypothesis picks the seed; the mutations are drawn from it (cheaply and replayably)."""
    load_and_plan(mutate(seed), Path("/nonexistent-fuzz-dir"))


@pytest.mark.timeout(600)
@settings(max_examples=400, deadline=None, database=None)
@given(
    seed=st.integers(min_value=0, max_value=10**6),
    cut=st.floats(min_value=0, max_value=1),
    length=st.integers(min_value=0, max_value=40),
    insert=st.text(alphabet=" \n\t:-[]{}&*!|>'\"#%@`,?abc123", max_size=8),
)
def test_mutated_yaml_text_loads_or_raises_a_config_error(
    seed: int, cut: float, length: int, insert: str
) -> None:
    texts = [text for text, _, _ in seeds() if len(text) < 12_000] or [SEED_TEXTS[0]]
    text = texts[seed % len(texts)]
    at = int(cut * len(text))
    mutated = text[:at] + insert + text[at + length :]
    with contextlib.suppress(ConfigError):
        build_plan(score_from_text(mutated, base_dir=Path("/nonexistent"), source_name="<fuzz>"))


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, database=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_generated_documents_load_or_raise_a_config_error(seed: int) -> None:
    rng = random.Random(seed)
    document = {random_key(rng): random_value(rng) for _ in range(rng.randrange(7))}
    if rng.random() < 0.5:  # often a near-valid skeleton, so deeper checks are reached
        sheet: dict[Any, Any] = {"total_items": rng.randint(0, 5)}
        extra = random_value(rng, 1)
        if isinstance(extra, dict):
            sheet.update(extra)
        document = {"name": "g", "sheet": sheet, "prompt": {"template": "x"}, **document}
    load_and_plan(document, Path("/nonexistent"))
