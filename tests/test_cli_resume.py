"""``ensemble resume``: resume unfinished jobs from a state directory (S29, S30).

Run in-process through ``runtime.cli.main`` (stdout captured, so progress comes
as lines). Unfinished jobs are written to disk the way Ensemble stores them
(score, snapshot) as a job killed mid-way leaves them, so each test knows
exactly what was finished; their sheets are real ``cli`` commands that append
to a ledger file, which shows what ran again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from runtime import journal
from runtime.cli import main
from runtime.state import SheetState, SheetStatus


def store_job(
    state_dir: Path,
    job_id: str,
    *,
    sheets: int,
    ledger: Path,
    finished: dict[int, SheetStatus] | None = None,
    status: str = "running",
) -> Path:
    """Write an unfinished job of ``sheets`` independent cli sheets; the sheets in
    ``finished`` already have their final status (and one attempt)."""
    workspace = state_dir.parent / f"workspace-{job_id}"
    score: dict[str, Any] = {
        "name": job_id,
        "workspace": str(workspace),
        "instrument": "cli",
        "sheet": {"size": 1, "total_items": sheets, "dependencies": {"1": []}},
        "prompt": {
            "template": f'echo "{job_id} {{{{ sheet_num }}}} $ENSEMBLE_ATTEMPT" >> {ledger}'
        },
        "retry": {"max_retries": 0, "base_delay_seconds": 0},
        "pause_between_sheets_seconds": 0,
    }
    records = []
    for num in range(1, sheets + 1):
        sheet = SheetState(num=num)
        if finished and num in finished:
            sheet.status, sheet.attempts = finished[num], 1
        records.append(sheet.to_record())
    checkpoint = journal.new_checkpoint(job_id, job_id, records)
    checkpoint["status"] = status
    job_dir = journal.jobs_dir(state_dir) / job_id
    job_dir.mkdir(parents=True)
    journal.write_atomically(job_dir / journal.SCORE_FILE, orjson.dumps(score))
    journal.write_snapshot(job_dir, checkpoint)
    return job_dir


def ledger_runs(ledger: Path) -> list[tuple[str, int, int]]:
    if not ledger.exists():
        return []
    runs = []
    for line in ledger.read_text().splitlines():
        job_id, sheet, attempt = line.split()
        runs.append((job_id, int(sheet), int(attempt)))
    return runs


def stored_status(job_dir: Path) -> str:
    return str(journal.load_checkpoint(job_dir).checkpoint["status"])


def resume(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["resume", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_S29_resume_runs_every_unfinished_job_to_completion_without_rerunning_finished_sheets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, ledger = tmp_path / "state", tmp_path / "ledger.txt"
    half = store_job(state, "half", sheets=4, ledger=ledger,
                     finished={1: SheetStatus.COMPLETED, 3: SheetStatus.COMPLETED})  # fmt: skip
    fresh = store_job(state, "fresh", sheets=2, ledger=ledger)
    code, out, err = resume(capsys, "--state-dir", str(state))
    assert code == 0, out + err
    assert "Resuming 2 job(s): fresh, half" in out
    assert sorted(ledger_runs(ledger)) == [
        ("fresh", 1, 1), ("fresh", 2, 1), ("half", 2, 1), ("half", 4, 1),
    ]  # fmt: skip
    assert stored_status(half) == stored_status(fresh) == "completed"
    # The same progress lines and summary as 'ensemble run'.
    assert "half completed: 4/4 done" in out and "Summary" in out


def test_resume_only_the_named_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, ledger = tmp_path / "state", tmp_path / "ledger.txt"
    chosen = store_job(state, "chosen", sheets=1, ledger=ledger)
    other = store_job(state, "other", sheets=1, ledger=ledger)
    code, out, _ = resume(capsys, "chosen", "--state-dir", str(state), "--quiet")
    assert code == 0
    assert [run[0] for run in ledger_runs(ledger)] == ["chosen"]
    assert stored_status(chosen) == "completed"
    assert stored_status(other) == "running"
    assert "Summary" in out and "Resuming" not in out  # --quiet: the summary only


def test_resume_an_unknown_job_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, ledger = tmp_path / "state", tmp_path / "ledger.txt"
    store_job(state, "real", sheets=1, ledger=ledger)
    code, _, err = resume(capsys, "real", "ghost", "--state-dir", str(state))
    assert code == 2
    assert "'ghost'" in err and str(state) in err and "real" in err
    assert ledger_runs(ledger) == []  # nothing was started


@pytest.mark.parametrize("layout", ["missing", "empty", "all-finished"])
def test_nothing_to_resume_is_a_friendly_message_and_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    state, ledger = tmp_path / "state", tmp_path / "ledger.txt"
    if layout == "empty":
        state.mkdir()
    if layout == "all-finished":
        store_job(state, "done", sheets=1, ledger=ledger, status="completed",
                  finished={1: SheetStatus.COMPLETED})  # fmt: skip
        store_job(state, "broke", sheets=1, ledger=ledger, status="failed",
                  finished={1: SheetStatus.FAILED})  # fmt: skip
    code, out, err = resume(capsys, "--state-dir", str(state))
    assert code == 0, err
    assert "nothing to resume" in out.lower()
    assert err == ""
    assert ledger_runs(ledger) == []
    if layout == "missing":
        assert not state.exists()  # resume did not create it


def test_resume_a_named_finished_job_says_there_is_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, ledger = tmp_path / "state", tmp_path / "ledger.txt"
    store_job(state, "done", sheets=1, ledger=ledger, status="completed",
              finished={1: SheetStatus.COMPLETED})  # fmt: skip
    code, out, _ = resume(capsys, "done", "--state-dir", str(state))
    assert code == 0
    assert "Nothing to resume" in out and "already finished" in out


def test_S30_unreadable_checkpoint_is_reported_naming_the_file_others_resume_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, ledger = tmp_path / "state", tmp_path / "ledger.txt"
    broken = store_job(state, "broken", sheets=1, ledger=ledger)
    healthy = store_job(state, "healthy", sheets=2, ledger=ledger)
    snapshot = broken / journal.SNAPSHOT_FILE
    snapshot.write_bytes(b'{"sheets": [')
    code, out, err = resume(capsys, "--state-dir", str(state))
    assert code == 1
    assert str(snapshot) in err and "broken" in err
    assert stored_status(healthy) == "completed"
    assert {run[0] for run in ledger_runs(ledger)} == {"healthy"}
    assert "healthy" in out

    # Only the broken job left: an error, exit 1, nothing runs.
    code, _, err = resume(capsys, "--state-dir", str(state))
    assert code == 1 and str(snapshot) in err


def test_resumed_job_that_fails_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    job_dir = store_job(state, "bad", sheets=1, ledger=tmp_path / "ledger.txt")
    score = json.loads((job_dir / journal.SCORE_FILE).read_text())
    score["prompt"]["template"] = "exit 3"
    (job_dir / journal.SCORE_FILE).write_text(json.dumps(score))
    code, out, _ = resume(capsys, "--state-dir", str(state))
    assert code == 1
    assert "bad failed" in out
    assert stored_status(job_dir) == "failed"


def test_help_lists_resume(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "resume" in capsys.readouterr().out
    assert main(["resume", "--help"]) == 0
    assert "--state-dir" in capsys.readouterr().out


def test_status_and_resume_ignore_a_job_folder_still_being_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kill while a job's folder was being filled leaves a hidden folder only."""
    state = tmp_path / "state"
    hidden = journal.jobs_dir(state) / f"{journal.TEMPORARY_PREFIX}x1"
    hidden.mkdir(parents=True)
    (hidden / journal.SNAPSHOT_FILE).write_text("{")
    capsys.readouterr()
    assert main(["status", "--state-dir", str(state), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"jobs": []}
    code, out, err = resume(capsys, "--state-dir", str(state))
    assert (code, err) == (0, "")
    assert "nothing to resume" in out.lower()
