"""Fixtures for Ensemble's own tests: ``make_score`` and ``rt_factory``.

The helpers they build on live in ``support.py``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support import RuntimeFactory, ScoreFactory, score_dict

import runtime
from runtime.testing import ScriptedBackend

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def collector_as_found() -> Iterator[None]:
    """Undo ``tune_for_long_runs``, which ``ensemble`` commands run in this
    process call: later tests must see CPython's collector, not a frozen one."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.fixture
def make_score(tmp_path: Path) -> ScoreFactory:
    """``make_score(**overrides)``: ``score_dict`` with its workspace under tmp_path."""

    def build(**overrides: Any) -> dict[str, Any]:
        workspace = overrides.pop("workspace", tmp_path / "workspace")
        return score_dict(workspace, **overrides)

    return build


@pytest.fixture
def rt_factory(tmp_path: Path) -> Iterator[RuntimeFactory]:
    """Start runtimes on ``tmp_path/"state"``; every one is stopped after the test
    and must have no actor left (DESIGN rule 7)."""
    started: list[runtime.Runtime] = []

    def start(
        backends: Mapping[str, Any] | None = None,
        *,
        max_concurrent_sheets: int = 10,
        clock: Any = None,
        state_dir: Path | None = None,
        durability: str = "process",
        **options: Any,
    ) -> runtime.Runtime:
        rt = runtime.start(
            state_dir if state_dir is not None else tmp_path / "state",
            backends=backends if backends is not None else {"mock": ScriptedBackend()},
            max_concurrent_sheets=max_concurrent_sheets,
            clock=clock,
            durability=durability,
            **options,
        )
        started.append(rt)
        return rt

    yield start
    for rt in started:
        rt.stop()
    for rt in started:
        assert rt.alive_actors() == 0, "actors left running after Runtime.stop()"
