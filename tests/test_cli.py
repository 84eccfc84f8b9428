"""Tests for the ``ensemble`` command (runtime.cli), its views and the examples.

``ensemble run`` and ``ensemble status`` are run in-process through
``runtime.cli.main`` (output captured by capsys, which is not a terminal, so
``run`` prints one line per job change) and as real subprocesses for the
entry point and Ctrl-C. The example scores and the demo concert run for real
on the built-in ``cli`` instrument, on a copy of ``examples/`` in tmp_path so
they never touch the checkout.
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

import runtime
from runtime import journal
from runtime.cli import main
from runtime.events import Event
from runtime.progress import STATUS_ORDER, LineView, LiveView
from runtime.state import JobProgress, JobStatus

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# A cell border in a rich table: a box-drawing bar, or "|" on an ASCII-only console.
CELL = r"\s*[│|]\s*"
WAIT_SECONDS = 30.0
LINE = re.compile(
    r"^\d\d:\d\d:\d\d (?P<job>\S+) (?P<status>running|paused|completed|failed|cancelled): "
    r"(?P<done>\d+)/(?P<total>\d+) done, (?P<running>\d+) running, (?P<failed>\d+) failed, "
    r"cost \$\d+\.\d+$"
)


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A private copy of examples/ (scores, data, concert.py), without old outputs."""
    copy = tmp_path / "examples"
    shutil.copytree(
        EXAMPLES,
        copy,
        ignore=shutil.ignore_patterns("workspace", ".ensemble-state", "__pycache__"),
    )
    return copy


def write_score(directory: Path, name: str, body: dict[str, Any]) -> Path:
    """A cli-instrument score file with fast defaults; ``body`` keys override."""
    score: dict[str, Any] = {
        "name": name,
        "instrument": "cli",
        "workspace": f"./workspace-{name}",
        "retry": {"max_retries": 0, "base_delay_seconds": 0},
        "pause_between_sheets_seconds": 0,
        **body,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(score), encoding="utf-8")
    return path


def progress_lines(stdout: str) -> list[re.Match[str]]:
    return [match for line in stdout.splitlines() if (match := LINE.match(line))]


def status_json(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["status", "--state-dir", str(state_dir), "--json"])
    return code, json.loads(capsys.readouterr().out)


# --- ensemble run ------------------------------------------------------------------


def test_run_examples_exit_0_with_one_line_per_change_when_not_a_terminal(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """S27: every job completed → exit 0; non-TTY output is plain lines plus a summary."""
    scores = examples / "scores"
    code = main(
        [
            "run",
            str(scores / "fanout-report.yaml"),
            str(scores / "pipeline.yaml"),
            "--state-dir",
            str(tmp_path / "state"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    lines = progress_lines(out)
    finals = {m["job"]: m for m in lines if m["status"] == "completed"}
    assert finals["fanout-report"]["done"] == finals["fanout-report"]["total"] == "5"
    assert finals["pipeline"]["done"] == finals["pipeline"]["total"] == "4"
    # One line per change: no job prints the same state twice in a row.
    for job in ("fanout-report", "pipeline"):
        states = [m.group(0).split(" ", 1)[1] for m in lines if m["job"] == job]
        assert all(a != b for a, b in itertools.pairwise(states))
    assert "\x1b[" not in out  # no terminal control codes in a log
    assert "Summary" in out
    assert (examples / "workspace" / "fanout-report" / "report.md").is_file()


def test_run_failed_sheet_exits_1_and_summary_names_first_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """S9, S2, S27: a sheet fails with no retries left, its dependent is skipped,
    the job ends failed and ``run`` exits 1 showing the sheet's error."""
    score = write_score(
        tmp_path,
        "breaks",
        {
            "sheet": {"size": 1, "total_items": 3, "dependencies": {2: [1], 3: []}},
            "parallel": {"enabled": True, "max_concurrent": 2},
            "prompt": {
                "template": (
                    "{% if sheet_num == 1 %}echo 'input table is empty' >&2; exit 3"
                    "{% else %}true{% endif %}"
                )
            },
        },
    )
    code = main(["run", str(score), "--state-dir", str(tmp_path / "state")])
    out = capsys.readouterr().out
    assert code == 1
    assert "breaks sheet 1 failed" in out and "input table is empty" in out
    final = [m for m in progress_lines(out) if m["status"] == "failed"]
    assert final and final[-1]["done"] == "2" and final[-1]["failed"] == "1"  # 3 + skipped 2
    summary = out[out.index("Summary") :]
    assert "sheet 1: exit code 3: input table is empty" in summary

    code, document = status_json(tmp_path / "state", capsys)
    assert code == 0
    (job,) = document["jobs"]
    assert job["status"] == "failed"
    assert {k: v for k, v in job["counts"].items() if v} == {
        "completed": 1,
        "failed": 1,
        "skipped": 1,
    }


@pytest.mark.timeout(60)
def test_run_exits_1_when_storage_fails_with_sheets_held_dispatched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the commit of the batch that dispatches the sheets fails,
    so the job pauses with sheets counted as running that never will run.
    ``run`` must say so and exit 1, not wait for them for ever."""
    from runtime import journal

    real = journal.append_and_sync

    def full_disk(handle: Any, data: bytes, *, fsync: bool) -> None:
        if b'"dispatched"' in data:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(handle, data, fsync=fsync)

    monkeypatch.setattr(journal, "append_and_sync", full_disk)
    score = write_score(
        tmp_path,
        "full",
        {
            "sheet": {"size": 1, "total_items": 3, "dependencies": {1: []}},
            "parallel": {"enabled": True, "max_concurrent": 3},
            "prompt": {"template": "true"},
        },
    )
    code = main(["run", str(score), "--state-dir", str(tmp_path / "state"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "job full paused itself (storage:" in err and "No space left on device" in err


def test_run_mixed_results_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """S27: exit 0 only if every job completed; one failed job among two → 1."""
    good = write_score(
        tmp_path,
        "good",
        {
            "sheet": {"size": 1, "total_items": 1},
            "prompt": {"template": "true"},
        },
    )
    bad = write_score(
        tmp_path,
        "bad",
        {
            "sheet": {"size": 1, "total_items": 1},
            "prompt": {"template": "false"},
        },
    )
    code = main(["run", str(good), str(bad), "--state-dir", str(tmp_path / "state"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert progress_lines(out) == []  # --quiet: only the summary
    assert re.search(rf"good{CELL}completed", out) and re.search(rf"bad{CELL}failed", out)


def test_run_invalid_score_exits_2_naming_file_and_key_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown key and a dependency cycle (S4) are both reported, with their
    file and key path, and no job starts — not even the valid score's."""
    valid = write_score(
        tmp_path,
        "valid",
        {
            "sheet": {"size": 1, "total_items": 1},
            "prompt": {"template": "touch ran"},
        },
    )
    typo = write_score(
        tmp_path,
        "typo",
        {
            "sheet": {"size": 1, "total_items": 1, "sizee": 2},
            "prompt": {"template": "true"},
        },
    )
    cycle = write_score(
        tmp_path,
        "cycle",
        {
            "sheet": {"size": 1, "total_items": 2, "dependencies": {1: [2], 2: [1]}},
            "prompt": {"template": "true"},
        },
    )
    state = tmp_path / "state"
    code = main(["run", str(valid), str(typo), str(cycle), "--state-dir", str(state)])
    captured = capsys.readouterr()
    assert code == 2
    # The file, then the line when YAML knows it, then the key path.
    assert re.search(rf"{re.escape(str(typo))}(:\d+)?: sheet\.sizee: unknown key", captured.err)
    assert re.search(
        rf"{re.escape(str(cycle))}(:\d+)?: sheet\.dependencies(\.\d+)?: dependency cycle",
        captured.err,
    )
    assert captured.out == ""
    assert not state.exists()
    assert not (tmp_path / "workspace-valid").exists()


def test_run_checks_templates_and_instruments_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a submit would refuse (a template that does not compile, an
    instrument with no profile) is found before any score starts; validate
    reports the first as an error and warns of the second."""
    valid = write_score(
        tmp_path,
        "valid",
        {"sheet": {"size": 1, "total_items": 1}, "prompt": {"template": "touch ran"}},
    )
    broken = write_score(
        tmp_path,
        "broken",
        {"sheet": {"size": 1, "total_items": 1}, "prompt": {"template": "{% if %}"}},
    )
    unknown = write_score(
        tmp_path,
        "unknown",
        {
            "instrument": "no-such-tool",
            "sheet": {"size": 1, "total_items": 1},
            "prompt": {"template": "true"},
        },
    )
    state = tmp_path / "state"
    code = main(["run", str(valid), str(broken), str(unknown), "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(rf"{re.escape(str(broken))}:\d+: prompt\.template: ", err)
    assert re.search(
        rf"{re.escape(str(unknown))}:\d+: instrument: no instrument profile named 'no-such-tool'",
        err,
    )
    assert not state.exists() and not (tmp_path / "workspace-valid").exists()

    assert main(["validate", str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err
    assert main(["validate", str(unknown)]) == 0
    assert "warning: " in capsys.readouterr().err


def test_run_missing_score_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(tmp_path / "nope.yaml"), "--state-dir", str(tmp_path / "state")])
    assert code == 2
    assert "nope.yaml: score file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [[], ["run"], ["run", "x.yaml", "--max-concurrent", "0"], ["frobnicate"]],
    ids=["no-command", "no-score", "zero-concurrency", "unknown-command"],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: ensemble" in capsys.readouterr().err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("run", "status", "validate"))


def test_validate_is_handed_its_arguments_untouched(
    examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ensemble validate`` has its own parser (runtime.validate_cmd): options
    before the score reach it as given."""
    assert main(["validate", "--json", str(examples / "scores" / "pipeline.yaml")]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["name"] == "pipeline" and document["total_sheets"] == 4


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert re.fullmatch(r"ensemble \S+\n", capsys.readouterr().out)


# --- ensemble status ---------------------------------------------------------------


def test_status_json_shape_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON form is one object listing every job with counts for all ten
    sheet statuses; the table shows only non-zero counts."""
    score = write_score(
        tmp_path,
        "pair",
        {
            "sheet": {"size": 1, "total_items": 2, "dependencies": {2: [1]}},
            "prompt": {"template": "true"},
        },
    )
    state = tmp_path / "state"
    assert main(["run", str(score), str(score), "--state-dir", str(state), "--quiet"]) == 0

    code, document = status_json(state, capsys)
    assert code == 0
    assert list(document) == ["jobs"]
    assert [job["job_id"] for job in document["jobs"]] == ["pair", "pair-2"]
    for job in document["jobs"]:
        assert set(job) >= {"job_id", "name", "status", "total_sheets", "counts", "cost"}
        assert job["name"] == "pair"
        assert job["status"] == "completed"
        assert job["total_sheets"] == 2
        assert list(job["counts"]) == list(STATUS_ORDER)
        assert job["counts"]["completed"] == 2
        assert sum(job["counts"].values()) == 2
        assert job["cost"] == 0.0

    assert main(["status", "--state-dir", str(state)]) == 0
    table = capsys.readouterr().out
    assert re.search(rf"pair-2{CELL}pair{CELL}completed{CELL}2{CELL}completed 2{CELL}", table)
    assert "pending" not in table


def test_status_of_missing_or_empty_state_dir_is_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for state in (tmp_path / "missing", tmp_path):
        code, document = status_json(state, capsys)
        assert (code, document) == (0, {"jobs": []})
        assert main(["status", "--state-dir", str(state)]) == 0
        assert capsys.readouterr().out == f"No jobs in {state}.\n"


def test_status_reports_corrupt_checkpoint_as_unreadable_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """S30: a corrupt snapshot is an error naming the file, never a silent fresh
    start; the other jobs are still listed."""
    score = write_score(
        tmp_path,
        "solid",
        {
            "sheet": {"size": 1, "total_items": 1},
            "prompt": {"template": "true"},
        },
    )
    state = tmp_path / "state"
    assert main(["run", str(score), str(score), "--state-dir", str(state), "--quiet"]) == 0
    snapshot = journal.jobs_dir(state) / "solid-2" / journal.SNAPSHOT_FILE
    snapshot.write_text('{"sheets": [', encoding="utf-8")

    code, document = status_json(state, capsys)
    assert code == 1
    healthy, broken = document["jobs"]
    assert healthy["job_id"] == "solid" and healthy["status"] == "completed"
    assert broken["job_id"] == "solid-2" and broken["status"] == "unreadable"
    assert str(snapshot) in broken["error"]

    assert main(["status", "--state-dir", str(state)]) == 1
    assert "unreadable" in capsys.readouterr().out


def test_status_reads_a_job_that_is_still_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status`` reads snapshot plus journal, without a runtime: a sheet that is
    running shows as dispatched while another has completed."""
    marker = tmp_path / "release"
    score = write_score(
        tmp_path,
        "slow",
        {
            "sheet": {"size": 1, "total_items": 2, "dependencies": {2: [1]}},
            "backend": {"timeout_seconds": WAIT_SECONDS},
            # Sheet 2 waits on a FIFO, so the test decides when it may finish.
            "prompt": {"template": f"{{% if sheet_num == 2 %}}cat '{marker}'{{% endif %}}"},
        },
    )
    os.mkfifo(marker)
    state = tmp_path / "state"
    with runtime.start(state, durability="process") as rt:
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        rt.subscribe(events.put)
        job = rt.submit(score)
        while True:
            event = events.get(timeout=WAIT_SECONDS)
            if event.event == "sheet.dispatched" and event.sheet_num == 2:
                break
        code, document = status_json(state, capsys)
        with open(marker, "w") as fifo:  # lets sheet 2 end
            fifo.write("done\n")
        assert job.wait(WAIT_SECONDS).status is JobStatus.COMPLETED
    assert code == 0
    (stored,) = document["jobs"]
    assert stored["status"] == "running"
    assert stored["counts"]["completed"] == 1 and stored["counts"]["dispatched"] == 1


# --- the entry point as a real process ---------------------------------------------


def run_ensemble(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_subprocess_run_then_status(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real command, default state dir in the current directory; stdout is
    a pipe, so progress comes as lines; the runtime's info logs stay off stderr."""
    done = run_ensemble("run", str(examples / "scores" / "pipeline.yaml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert any(m["status"] == "completed" and m["done"] == "4" for m in progress_lines(done.stdout))
    assert "INFO" not in done.stderr
    assert (tmp_path / ".ensemble-state" / "jobs" / "pipeline").is_dir()

    code, document = status_json(tmp_path / ".ensemble-state", capsys)
    assert code == 0
    (job,) = document["jobs"]
    assert (job["job_id"], job["status"]) == ("pipeline", "completed")
    assert job["counts"]["completed"] == 4


def processes_running(argv: list[str]) -> list[int]:
    """Pids of live processes whose command line is exactly ``argv``."""
    wanted = ("\0".join(argv) + "\0").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == wanted:
                    found.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile
    return found


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name
)
def test_subprocess_ctrl_c_stops_keeps_checkpoint_and_exits_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stop: signal.Signals
) -> None:
    """Ctrl-C, or the SIGTERM of timeout, kill and CI (SIGHUP of a closed
    terminal): the runtime stops cleanly and its instruments with it, the job
    stays resumable (not final) in its checkpoint, the command says so and
    exits 130. Left to its default, SIGTERM would leave the tool running."""
    seconds = f"{60 + int(stop)}.{os.getpid() % 97}"  # unique to this test
    score = write_score(
        tmp_path,
        "long",
        {
            "sheet": {"size": 1, "total_items": 2, "dependencies": {2: [1]}},
            "prompt": {"template": f"sleep {seconds}"},
        },
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "run", str(score)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()

    def read_lines() -> None:
        for line in process.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read_lines)
    reader.start()
    try:
        while True:
            match = LINE.match(lines.get(timeout=WAIT_SECONDS).rstrip("\n"))
            if match and match["running"] == "1":
                break
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(WAIT_SECONDS)
    assert process.returncode == 130, stderr
    assert "can be resumed" in stderr and "long" in stderr
    assert processes_running([shutil.which("sleep") or "sleep", seconds]) == []

    code, document = status_json(tmp_path / ".ensemble-state", capsys)
    assert code == 0
    (job,) = document["jobs"]
    assert job["status"] == "running"
    assert job["counts"]["completed"] == 0 and job["counts"]["failed"] == 0


# --- views -------------------------------------------------------------------------


def test_live_view_draws_one_row_per_job_with_counts() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=140, color_system=None)
    view = LiveView(console)
    view.note(Event("alpha", 2, "sheet.dispatched", 0.0, {"attempt": 1}))
    view.show(
        [
            JobProgress(
                "alpha", "alpha", JobStatus.RUNNING, 5, {"completed": 2, "dispatched": 1}, 0.5
            ),
            JobProgress("beta", "beta", JobStatus.FAILED, 3, {"failed": 1, "skipped": 2}, 0.0),
        ]
    )
    view.close()
    drawn = buffer.getvalue()
    assert re.search(r"alpha .* 2/1/0 of 5 .* running .* \$0\.50 .* sheet 2 dispatched", drawn)
    assert re.search(r"beta .* 2/0/1 of 3 .* failed", drawn)


def test_line_view_prints_only_changes_and_notable_events() -> None:
    stream = io.StringIO()
    view = LineView(stream)
    running = JobProgress("alpha", "alpha", JobStatus.RUNNING, 2, {"dispatched": 1}, 0.0)
    view.show([running])
    view.show([running])
    view.note(Event("alpha", 1, "sheet.dispatched", 0.0, {"attempt": 1}))
    view.note(
        Event(
            "alpha",
            1,
            "sheet.retry_scheduled",
            0.0,
            {
                "attempt": 1,
                "delay_seconds": 2.0,
                "error": "exit code 1: boom",
            },
        )
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert LINE.match(lines[0])
    assert lines[1].endswith("alpha sheet 1 retry scheduled (attempt 1, in 2 s): exit code 1: boom")


# --- the examples ------------------------------------------------------------------


def test_example_scores_complete_with_expected_outputs(examples: Path, tmp_path: Path) -> None:
    """S27, S3: both example scores run together on the real cli instrument and
    produce what their scripts promise, checked against Python's own counts."""
    with runtime.start(tmp_path / "state", durability="process") as rt:
        report_job = rt.submit(examples / "scores" / "fanout-report.yaml")
        pipeline_job = rt.submit(examples / "scores" / "pipeline.yaml")
        results = [report_job.wait(WAIT_SECONDS), pipeline_job.wait(WAIT_SECONDS)]
    assert [r.status for r in results] == [JobStatus.COMPLETED, JobStatus.COMPLETED]

    report = (examples / "workspace" / "fanout-report" / "report.md").read_text()
    inputs = ["strings.txt", "woodwinds.txt", "brass.txt", "percussion.txt"]
    texts = {name: (examples / "data" / name).read_text() for name in inputs}
    assert report.startswith("# ")
    assert f"- total words: {sum(len(t.split()) for t in texts.values())}\n" in report
    assert f"- total lines: {sum(len(t.splitlines()) for t in texts.values())}\n" in report
    sections = report.split("\n## ")[1:]
    assert [section.splitlines()[0] for section in sections] == inputs
    for name, section in zip(inputs, sections, strict=True):
        longest = max(texts[name].splitlines(), key=len)
        assert f"- words: {len(texts[name].split())}\n" in section
        assert f"- longest line, {len(longest)} chars: {longest}\n" in section
        assert "- most frequent words: " in section

    workspace = examples / "workspace" / "pipeline"
    readings = [(i * 37 + 11) % 101 for i in range(1, 501)]
    bands = Counter("high" if r >= 80 else "mid" if r >= 50 else "low" for r in readings if r >= 20)
    summary = (workspace / "summary.csv").read_text().splitlines()
    assert summary[0] == "band,count,min,max,mean"
    assert {row.split(",")[0]: int(row.split(",")[1]) for row in summary[1:]} == bands
    assert (workspace / "verified.txt").read_text().startswith("verified:")


def test_demo_concert_runs_three_jobs_and_prints_events(examples: Path) -> None:
    """`make demo`: events stream as lines, publish runs after fanout-report
    completed, and the script exits 0 with every job completed."""
    done = subprocess.run(
        [sys.executable, str(examples / "concert.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"fanout-report\s+sheet 5\s+sheet\.completed", out)
    assert out.index("fanout-report  job      job.completed") < out.index("publish        job")
    assert re.search(rf"publish{CELL}completed", out)
    report = examples / "workspace" / "fanout-report" / "report.md"
    assert f"Report: {report}" in out
    assert (examples / "workspace" / "publish" / "site" / "index.html").is_file()


def test_readme_embedding_snippet_runs(examples: Path) -> None:
    """The README's embedding example is real code: run it next to a copy of
    examples/ and check it reports a completed job."""
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    embedding = readme[readme.index("## Embedding") :]
    start = embedding.index("```python\n") + len("```python\n")
    snippet = embedding[start : embedding.index("\n```", start)]
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=examples.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "fanout-report 5 sheet.completed" in done.stdout
    assert "completed 5 sheets completed" in done.stdout
    assert (examples / "workspace" / "fanout-report" / "report.md").is_file()


def test_run_stops_with_a_message_when_every_job_paused_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """S24: a job over its cost limit pauses; nothing in `ensemble run` can resume
    it, so the command says why and exits 1 instead of waiting for ever."""
    from runtime.testing import ScriptedBackend, Succeed

    real_start = runtime.start

    def start_with_costly_cli(*args: Any, **kwargs: Any) -> runtime.Runtime:
        kwargs["backends"] = {"cli": ScriptedBackend(default=Succeed(cost=2.0))}
        return real_start(*args, **kwargs)

    monkeypatch.setattr(runtime, "start", start_with_costly_cli)
    score = tmp_path / "costly.yaml"
    score.write_text(yaml.safe_dump({
        "name": "costly",
        "workspace": str(tmp_path / "ws"),
        "instrument": "cli",
        "sheet": {"size": 1, "total_items": 3},
        "prompt": {"template": "true"},
        "cost_limits": {"max_cost_per_job": 1.0},
        "pause_between_sheets_seconds": 0,
    }))  # fmt: skip
    code = main(["run", str(score), "--state-dir", str(tmp_path / "state"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "job costly paused itself (cost)" in err
    assert "ensemble resume --state-dir" in err


def test_warnings_during_a_run_read_as_one_short_line(capsys: pytest.CaptureFixture[str]) -> None:
    """While jobs run only warnings and errors reach stderr, one line each; a
    message with braces is not taken for a format."""
    from loguru import logger

    from runtime.cli import _warnings_only_on_stderr

    with _warnings_only_on_stderr():
        logger.info("not shown")
        logger.warning("disk {} is {{nearly}} full", "/tmp")
        logger.error("cannot write")
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "ensemble: warning: disk /tmp is {nearly} full",
        "ensemble: error: cannot write",
    ]
