"""What the ``ensemble`` command shows: progress views and summary tables.

Owns the look of running and finished jobs on a terminal: the live table
(rich) refreshed in place, the one-line-per-change log used when output is not
a terminal (CI logs stay readable), and the tables of final results and of jobs
stored in a state directory. It only renders what it is given — progress
snapshots, results, events, stored job records — and never starts, polls or
changes a job.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TextIO

from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runtime import events as ev
from runtime.events import Event
from runtime.state import TERMINAL_STATUSES, JobProgress, JobResult, SheetStatus

# Sheet statuses in the order a sheet usually moves through them.
STATUS_ORDER: tuple[str, ...] = tuple(status.value for status in SheetStatus)

_STATUS_STYLES = {
    "running": "cyan",
    "paused": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "unreadable": "bold red",
}

# Events worth their own line in a log: something went wrong or needs a human.
_NOTABLE_EVENTS = frozenset(
    {
        ev.SHEET_FAILED,
        ev.SHEET_RETRY_SCHEDULED,
        ev.SHEET_FERMATA,
        ev.RATE_LIMIT_ACTIVE,
        ev.INSTRUMENT_FALLBACK,
        ev.CIRCUIT_OPENED,
        ev.COST_EXCEEDED,
        ev.RUNTIME_ERROR,
    }
)

ERROR_CHARS = 160
BAR_WIDTH = 20


def format_cost(cost: float) -> str:
    if 0 < cost < 0.01:
        return f"${cost:.4f}"
    return f"${cost:.2f}"


def counts_text(counts: Mapping[str, int]) -> str:
    """Non-zero sheet counts in status order, e.g. ``completed 4, failed 1``."""
    known = [(status, counts.get(status, 0)) for status in STATUS_ORDER]
    unknown = sorted((status, n) for status, n in counts.items() if status not in STATUS_ORDER)
    return ", ".join(f"{status} {n}" for status, n in (*known, *unknown) if n) or "-"


def styled_status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLES.get(status, ""))


def shorten(text: str, limit: int = ERROR_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def terminal_count(progress: JobProgress) -> int:
    return sum(progress.counts.get(status.value, 0) for status in TERMINAL_STATUSES)


def describe_event(event: Event) -> str:
    """One compact phrase for an event: ``sheet 3 failed: exit code 1``."""
    if event.sheet_num:
        subject = f"sheet {event.sheet_num} "
    elif "instrument" in event.data and not event.event.startswith("job."):
        subject = f"{event.data['instrument']}: "
    else:
        subject = "job "
    what = event.event.split(".", 1)[-1].replace("_", " ")
    if event.event.startswith(("rate_limit.", "circuit.", "cost.", "instrument.", "runtime.")):
        what = event.event.replace(".", " ").replace("_", " ")
    data = event.data
    details = []
    if "attempt" in data:
        details.append(f"attempt {data['attempt']}")
    if "delay_seconds" in data:
        details.append(f"in {data['delay_seconds']:g} s")
    if "wait_seconds" in data:
        details.append(f"wait {data['wait_seconds']:g} s")
    if "reason" in data:
        details.append(str(data["reason"]))
    text = subject + what
    if details:
        text += f" ({', '.join(details)})"
    if data.get("error"):
        text += f": {shorten(str(data['error']))}"
    return text


def first_error(result: JobResult) -> str:
    """The error of the lowest-numbered failed sheet, else the job's own error."""
    for num in sorted(result.sheets):
        sheet = result.sheets[num]
        if sheet.status is SheetStatus.FAILED:
            return f"sheet {num}: {shorten(sheet.error or 'failed')}"
    return shorten(result.error) if result.error else ""


# --- tables -----------------------------------------------------------------------


def progress_table(
    jobs: Sequence[JobProgress], last_events: Mapping[str, str] | None = None
) -> Table:
    """The live table; the "latest" column (one event per job) only when given."""
    # Fixed widths for everything but the last column, so rows do not jump
    # around as the text of the latest event changes.
    id_width = max((len(job.job_id) for job in jobs), default=3)
    table = Table(title="Ensemble", title_justify="left", expand=last_events is not None)
    table.add_column("job", no_wrap=True, min_width=id_width)
    table.add_column("progress", no_wrap=True, min_width=BAR_WIDTH)
    table.add_column("done/running/failed", justify="right", no_wrap=True, min_width=19)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("cost", justify="right", no_wrap=True, min_width=6)
    if last_events is not None:
        table.add_column("latest", overflow="ellipsis", no_wrap=True, ratio=1)
    for job in jobs:
        cells: list[RenderableType] = [
            job.job_id,
            ProgressBar(
                total=max(job.total_sheets, 1), completed=terminal_count(job), width=BAR_WIDTH
            ),
            f"{job.done}/{job.running}/{job.failed} of {job.total_sheets}",
            styled_status(job.status.value),
            format_cost(job.cost),
        ]
        if last_events is not None:
            cells.append(last_events.get(job.job_id, ""))
        table.add_row(*cells)
    return table


def summary_table(results: Sequence[JobResult]) -> Table:
    table = Table(title="Summary", title_justify="left")
    table.add_column("job", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in ("completed", "failed", "skipped", "cancelled"):
        table.add_column(column, justify="right")
    table.add_column("cost", justify="right")
    table.add_column("first error", overflow="fold")
    for result in results:
        table.add_row(
            result.job_id,
            styled_status(result.status.value),
            str(result.count(SheetStatus.COMPLETED)),
            str(result.count(SheetStatus.FAILED)),
            str(result.count(SheetStatus.SKIPPED)),
            str(result.count(SheetStatus.CANCELLED)),
            format_cost(result.cost),
            first_error(result),
        )
    return table


def stored_jobs_table(jobs: Sequence[Mapping[str, Any]]) -> Table:
    """Jobs as read from a state directory (the records of ``ensemble status``)."""
    table = Table(title="Jobs", title_justify="left")
    table.add_column("job", no_wrap=True)
    table.add_column("name")
    table.add_column("status", no_wrap=True)
    table.add_column("sheets", justify="right")
    table.add_column("by status", overflow="fold")
    table.add_column("cost", justify="right")
    for job in jobs:
        error = job.get("error")
        table.add_row(
            str(job["job_id"]),
            str(job.get("name") or ""),
            styled_status(str(job["status"])),
            str(job.get("total_sheets", "")),
            shorten(str(error), 200) if error else counts_text(job.get("counts", {})),
            format_cost(float(job.get("cost", 0.0))),
        )
    return table


# --- views ------------------------------------------------------------------------


class ProgressView(Protocol):
    """How ``ensemble run`` shows jobs while they run."""

    def show(self, jobs: Sequence[JobProgress]) -> None: ...

    def note(self, event: Event) -> None: ...

    def close(self) -> None: ...


class QuietView:
    """Shows nothing while jobs run (``--quiet``)."""

    def show(self, jobs: Sequence[JobProgress]) -> None:
        pass

    def note(self, event: Event) -> None:
        pass

    def close(self) -> None:
        pass


class LiveView:
    """A table redrawn in place on a terminal, one row per job."""

    # Below this width the table has no room for the latest event of each job.
    MIN_WIDTH_FOR_EVENTS = 110

    def __init__(self, console: Console) -> None:
        self._last_events: dict[str, str] = {}
        self._console = console
        self._live = Live(
            console=console,
            auto_refresh=False,
            redirect_stdout=True,
            redirect_stderr=True,
            transient=False,
        )
        self._live.start()

    def show(self, jobs: Sequence[JobProgress]) -> None:
        wide = self._console.width >= self.MIN_WIDTH_FOR_EVENTS
        table = progress_table(jobs, self._last_events if wide else None)
        self._live.update(table, refresh=True)

    def note(self, event: Event) -> None:
        self._last_events[event.job_id] = describe_event(event)

    def close(self) -> None:
        self._live.stop()


class LineView:
    """One line per change of a job's status or sheet counts, for logs and pipes.

    Failures, retries and other events that need attention get a line of their
    own, with the error, since a log reader cannot see a table refresh.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {}

    def show(self, jobs: Sequence[JobProgress]) -> None:
        for job in jobs:
            key = (job.status.value, tuple(sorted(job.counts.items())))
            if self._shown.get(job.job_id) == key:
                continue
            self._shown[job.job_id] = key
            self._write(
                f"{job.job_id} {job.status.value}: {job.done}/{job.total_sheets} done, "
                f"{job.running} running, {job.failed} failed, cost {format_cost(job.cost)}"
            )

    def note(self, event: Event) -> None:
        if event.event in _NOTABLE_EVENTS:
            self._write(f"{event.job_id} {describe_event(event)}")

    def close(self) -> None:
        self._stream.flush()

    def _write(self, line: str) -> None:
        self._stream.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        self._stream.flush()
