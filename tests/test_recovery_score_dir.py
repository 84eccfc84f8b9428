"""S29: a recovered job still finds the files its score injects from beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support import WAIT_SECONDS

import runtime
from runtime.testing import Hang, ScriptedBackend


def test_S29_recovered_job_reads_injected_files_from_the_score_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    score_dir = tmp_path / "scores"
    score_dir.mkdir()
    (score_dir / "context.md").write_text("HOUSE RULES: be brief\n")
    score_path = score_dir / "job.yaml"
    score_path.write_text(yaml.safe_dump({
        "name": "injected",
        "workspace": str(tmp_path / "workspace"),
        "instrument": "mock",
        "sheet": {"size": 1, "total_items": 2, "dependencies": {2: [1]},
                  "prelude": [{"file": "context.md", "as": "context"}]},
        "prompt": {"template": "do sheet {{ sheet_num }}"},
        "retry": {"max_retries": 0},
        "pause_between_sheets_seconds": 0,
    }))  # fmt: skip
    state = tmp_path / "state"
    first = ScriptedBackend({2: Hang()})
    with runtime.start(state, backends={"mock": first}, durability="process") as rt:
        rt.submit(score_path)
        assert first.wait_for_calls(2, WAIT_SECONDS)
    monkeypatch.chdir(tmp_path)  # recovery must not depend on the current folder
    second = ScriptedBackend()
    with runtime.start(state, backends={"mock": second}, recover=True) as rt:
        assert rt.recovery_errors == []
        result = rt.recovered[0].wait(WAIT_SECONDS)
    assert result.status is runtime.JobStatus.COMPLETED
    (retried,) = second.requests
    assert retried.sheet_num == 2 and "HOUSE RULES: be brief" in retried.prompt
