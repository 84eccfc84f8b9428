"""The pytest plugin Ensemble installs (entry point ``pytest11``).

Gives users' tests the ``ensemble_runtime`` fixture: a runtime on a temporary
state directory, stopped after the test, failing the test if any of its actors
is still running then. Backends come from the ``ensemble_backends`` fixture,
which a test module overrides to stand in scripted backends; the clock from
``ensemble_clock`` (the wall clock unless overridden with a ``ManualClock``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import runtime
from runtime.api import Runtime
from runtime.clock import Clock

# A stuck actor should fail the test quickly, not hold it for the runtime's default.
STOP_TIMEOUT_SECONDS = 5.0


@pytest.fixture
def ensemble_backends() -> Mapping[str, Any]:
    """Backends for ``ensemble_runtime``; override it to script instruments."""
    return {}


@pytest.fixture
def ensemble_clock() -> Clock | None:
    """The clock of ``ensemble_runtime``; override it to return a ``ManualClock``."""
    return None


@pytest.fixture
def ensemble_runtime(
    tmp_path: Path, ensemble_backends: Mapping[str, Any], ensemble_clock: Clock | None
) -> Iterator[Runtime]:
    """A started runtime on ``tmp_path / "state"``; stopped after the test."""
    rt = runtime.start(
        tmp_path / "state",
        backends=ensemble_backends,
        max_concurrent_sheets=10,
        durability="process",
        clock=ensemble_clock,
    )
    try:
        yield rt
    finally:
        rt.stop(timeout=STOP_TIMEOUT_SECONDS)
        left = rt.alive_actors()
        if left:
            pytest.fail(f"{left} Ensemble actor(s) still running after the runtime stopped")
