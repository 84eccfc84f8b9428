"""The demo concert (`make demo`): three scores on one in-process runtime.

Starts Ensemble inside this program, prints every observer event as it
happens, runs two scores at the same time (fanout-report and pipeline), and
once fanout-report completed runs a third score (publish) that builds on its
report. Everything runs on the built-in `cli` instrument, so no AI account is
needed. The state directory and the example workspaces are wiped first, so
every run starts fresh. Exits 0 only if all three jobs completed.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from loguru import logger
from rich.console import Console
from rich.table import Table

import runtime
from runtime.score import Score, load_score

EXAMPLES = Path(__file__).resolve().parent
SCORES = EXAMPLES / "scores"
STATE_DIR = EXAMPLES / ".ensemble-state"
WAIT_SECONDS = 120.0

_print_lock = threading.Lock()


def say(text: str) -> None:
    """Print one line; events arrive on the runtime's delivery thread meanwhile."""
    with _print_lock:
        print(text, flush=True)


def show_event(event: runtime.Event) -> None:
    clock = time.strftime("%H:%M:%S", time.localtime(event.timestamp))
    millis = int(event.timestamp % 1 * 1000)
    sheet = f"sheet {event.sheet_num}" if event.sheet_num else "job"
    # Unset and zero values (no model, no cost on the cli instrument) are noise here.
    details = " ".join(
        f"{key}={_compact(value)}"
        for key, value in event.data.items()
        if value is not None and value is not False and value != 0.0
    )
    say(f"{clock}.{millis:03d}  {event.job_id:<14} {sheet:<8} {event.event:<22} {details}")


def _compact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") or "0"
    if isinstance(value, dict):
        return ",".join(f"{key}:{_compact(item)}" for key, item in value.items())
    return str(value)


def load_fresh(name: str) -> Score:
    """Load an example score and empty its workspace, so outputs are this run's."""
    score = load_score(SCORES / f"{name}.yaml")
    workspace = Path(score.workspace)
    if workspace.is_relative_to(EXAMPLES):  # never delete anything outside examples/
        shutil.rmtree(workspace, ignore_errors=True)
    return score


def results_table(results: list[runtime.JobResult]) -> Table:
    table = Table(title="Concert results", title_justify="left")
    for column in ("job", "status", "sheets", "completed", "failed", "attempts", "cost"):
        table.add_column(column, justify="left" if column in ("job", "status") else "right")
    for result in results:
        table.add_row(
            result.job_id,
            result.status.value,
            str(len(result.sheets)),
            str(result.count(runtime.SheetStatus.COMPLETED)),
            str(result.count(runtime.SheetStatus.FAILED)),
            str(sum(sheet.attempts for sheet in result.sheets.values())),
            f"${result.cost:.2f}",
        )
    return table


def main() -> int:
    # Keep the runtime's own info logs out of the event stream printed below.
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    report_score, pipeline_score, publish_score = (
        load_fresh(name) for name in ("fanout-report", "pipeline", "publish")
    )

    with runtime.start(STATE_DIR, max_concurrent_sheets=6) as rt:
        rt.subscribe(show_event)
        say(f"Ensemble concert; checkpoints in {STATE_DIR}")
        report_job = rt.submit(report_score)
        pipeline_job = rt.submit(pipeline_score)
        jobs = [report_job, pipeline_job]
        first = report_job.wait(WAIT_SECONDS)
        if first.status is runtime.JobStatus.COMPLETED:
            say(f"-> {first.job_id} completed: submitting publish, which reads its report")
            jobs.append(rt.submit(publish_score))
        else:
            say(f"-> {first.job_id} ended {first.status.value}: publish is not submitted")
        results = [job.wait(WAIT_SECONDS) for job in jobs]

    console = Console()
    console.print()
    console.print(results_table(results))
    report = Path(report_score.workspace) / "report.md"
    site = Path(publish_score.workspace) / "site" / "index.html"
    # Plain prints: rich would wrap a long path at the console's width.
    if report.exists():
        say(f"Report: {report}")
    if site.exists():
        say(f"Site:   {site}")
    all_completed = len(results) == 3 and all(
        result.status is runtime.JobStatus.COMPLETED for result in results
    )
    return 0 if all_completed else 1


if __name__ == "__main__":
    sys.exit(main())
