"""runtime.gc_tuning: the process-wide collector settings the CLI and benchmarks use."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from support import RuntimeFactory, ScoreFactory

import runtime
from runtime.gc_tuning import YOUNG_GENERATION_THRESHOLD, tune_for_long_runs
from runtime.testing import ScriptedBackend


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()  # an earlier CLI test in this process may have frozen everything
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def tracked(objects: list[list[int]]) -> bool:
    """Whether the collector's scans still see any of ``objects``."""
    return any(any(found is made for made in objects) for found in gc.get_objects())


@pytest.mark.usefixtures("restored_gc")
def test_tuning_freezes_existing_objects_and_raises_only_the_young_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    made_before = [[] for _ in range(3)]  # lists: containers the collector tracks
    assert tracked(made_before) and gc.get_freeze_count() == 0

    tune_for_long_runs()

    assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 0
    assert not tracked(made_before)  # frozen: out of every later scan


@pytest.mark.usefixtures("restored_gc")
def test_the_library_never_tunes_the_collector_by_itself(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    # Embedding applications own their collector: running a job must not change
    # the thresholds (only the CLI and the benchmarks call the tuning).
    gc.set_threshold(700, 10, 10)
    rt = rt_factory({"mock": ScriptedBackend()})
    result = rt.submit(make_score(sheets=2)).wait(timeout=30)

    assert result.status is runtime.JobStatus.COMPLETED
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0
