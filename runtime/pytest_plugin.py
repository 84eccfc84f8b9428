"""The pytest plugin Ensemble installs (entry point ``pytest11``).

Gives users' tests the ``ensemble_runtime`` fixture: a runtime on a temporary
state directory, stopped after the test, failing the test if any of its actors
is still running then. Backends come from the ``ensemble_backends`` fixture,
which a test module overrides to stand in scripted backends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import runtime
from runtime.api import Runtime

# A stuck actor should fail the test quickly, not hold it for the runtime's default.
STOP_TIMEOUT_SECONDS = 5.0


@pytest.fixture
def ensemble_backends() -> Mapping[str, Any]:
    """Backends for ``ensemble_runtime``; override it to script instruments."""
    return {}


@pytest.fixture
def ensemble_runtime(tmp_path: Path, ensemble_backends: Mapping[str, Any]) -> Iterator[Runtime]:
    """A started runtime on ``tmp_path / "state"``; stopped after the test."""
    rt = runtime.start(
        tmp_path / "state",
        backends=ensemble_backends,
        max_concurrent_sheets=10,
        durability="process",
    )
    try:
        yield rt
    finally:
        rt.stop(timeout=STOP_TIMEOUT_SECONDS)
        left = rt.alive_actors()
        if left:
            pytest.fail(f"{left} Ensemble actor(s) still running after the runtime stopped")
