"""S15: a fallback given as an alias runs with the alias's own config (its model)."""

from __future__ import annotations

from pathlib import Path

from conftest import RuntimeFactory, ScoreFactory
from support import WAIT_SECONDS

from runtime.journal import TEMPORARY_PREFIX, jobs_dir
from runtime.testing import AuthFailure, ScriptedBackend


def test_S15_a_fallback_alias_brings_its_model(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    backup = ScriptedBackend()
    rt = rt_factory({"mock": ScriptedBackend(default=AuthFailure()), "spare": backup})
    score = make_score(
        sheets=1,
        instruments={"backup": {"profile": "spare", "config": {"model": "big-model"}}},
        instrument_fallbacks=["backup"],
    )
    assert rt.submit(score).wait(WAIT_SECONDS).status.value == "completed"
    (request,) = backup.requests
    assert request.instrument == "spare" and request.model == "big-model"


def test_a_half_built_job_folder_left_by_a_killed_runtime_is_removed_at_start(
    rt_factory: RuntimeFactory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    leftover = jobs_dir(state) / f"{TEMPORARY_PREFIX}abc"
    leftover.mkdir(parents=True)
    (leftover / "score.json").write_text("{}")
    rt_factory(state_dir=state)
    assert not leftover.exists()
