"""The ``ensemble`` command: run scores and inspect a state directory.

Owns argument parsing, one function per subcommand (``run``, ``resume``,
``status``; a new subcommand is one ``add_*_command`` function listed in
``COMMANDS``, or, when it has a parser of its own like ``validate``, one entry
in ``DELEGATED_COMMANDS``), exit codes and what goes to stdout and stderr.
Running goes through the host API (``runtime.start``; ``Runtime.recover`` for
``resume``); ``status`` reads checkpoints from disk without starting a runtime.
How progress looks is ``runtime.progress``; no job logic lives here.

Exit codes: 0 success, 1 a job did not complete (or a checkpoint is
unreadable), 2 invalid usage or an invalid score, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from loguru import logger
from rich.console import Console

import runtime
from runtime import journal
from runtime.errors import ConfigError, EnsembleError, JobNotFoundError
from runtime.events import Event
from runtime.gc_tuning import tune_for_long_runs
from runtime.instruments import load_profiles
from runtime.preflight import check_score
from runtime.progress import (
    STATUS_ORDER,
    LineView,
    LiveView,
    ProgressView,
    QuietView,
    stored_jobs_table,
    summary_table,
)
from runtime.score import Score, load_score
from runtime.state import JobProgress, JobResult, JobStatus

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_STATE_DIR = ".ensemble-state"
POLL_SECONDS = 0.2
# Non-terminal output (CI logs, pipes) gets wide tables instead of 80 columns.
PIPE_WIDTH = 120

Handler = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    """Run the ``ensemble`` command with ``argv`` (default: ``sys.argv[1:]``)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    tune_for_long_runs()
    try:
        if arguments and arguments[0] in DELEGATED_COMMANDS:
            _, delegate = DELEGATED_COMMANDS[arguments[0]]
            return delegate(arguments[1:])
        parser = build_parser()
        try:
            args = parser.parse_args(arguments)
        except SystemExit as exc:  # --help, --version and usage errors
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        handler: Handler = args.handler
        return handler(args)
    except BrokenPipeError:
        # The reader went away (`ensemble status | head`): end quietly, and keep
        # Python from failing again when it flushes stdout at exit.
        _silence_stdout()
        return EXIT_FAILED


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ensemble",
        description="Run Marianne-format scores on the Ensemble actor runtime.",
    )
    parser.add_argument("--version", action="version", version=f"ensemble {_version()}")
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add_command in COMMANDS:
        add_command(subcommands)
    for name, (summary, _) in DELEGATED_COMMANDS.items():
        # Listed for --help only: main() hands their arguments over untouched.
        subcommands.add_parser(name, help=summary, add_help=False)
    return parser


def _version() -> str:
    try:
        return metadata.version("ensemble-runtime")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _running_options(parser: argparse.ArgumentParser) -> None:
    """The options of the commands that run jobs (run, resume)."""
    parser.add_argument(
        "--max-concurrent",
        type=_positive_int,
        default=10,
        metavar="N",
        help="most sheets running at once, across all jobs (default: 10)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="show no progress, only the final summary"
    )


def _state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(DEFAULT_STATE_DIR),
        metavar="DIR",
        help=f"where job checkpoints live (default: ./{DEFAULT_STATE_DIR})",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _console(stream: Any) -> Console:
    if stream.isatty():
        return Console(file=stream)
    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else PIPE_WIDTH
    return Console(file=stream, width=width)


def _error(message: str) -> None:
    print(f"ensemble: error: {message}", file=sys.stderr)


# --- ensemble run -------------------------------------------------------------------


def add_run_command(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "run",
        help="run scores until they finish",
        description=(
            "Run one or more scores at once on one runtime, showing their progress. "
            "Exits 0 only if every job completed."
        ),
    )
    parser.add_argument("scores", nargs="+", type=Path, metavar="SCORE", help="score YAML file")
    _state_dir_option(parser)
    _running_options(parser)
    parser.set_defaults(handler=run_command)


@dataclass(frozen=True, slots=True)
class _LoadedScore:
    path: Path
    score: Score


def run_command(args: argparse.Namespace) -> int:
    scores, problems = _load_scores(args.scores)
    for problem in problems:
        _error(problem)
    if problems:
        return EXIT_USAGE
    console = _console(sys.stdout)
    live = sys.stdout.isatty() and not args.quiet
    with _stop_signals_interrupt(), _warnings_only_on_stderr():
        try:
            rt = runtime.start(args.state_dir, max_concurrent_sheets=args.max_concurrent)
        except (EnsembleError, OSError) as exc:
            _error(f"cannot start the runtime in {args.state_dir}: {exc}")
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("Interrupted while starting; nothing was submitted.", file=sys.stderr)
            return EXIT_INTERRUPTED
        return _run_on(rt, scores, console, live=live, quiet=args.quiet)


def _load_scores(paths: Sequence[Path]) -> tuple[list[_LoadedScore], list[str]]:
    """Load and check every score before anything starts, as the runtime's
    submit would (``runtime.preflight``); collect every problem."""
    try:
        profiles = load_profiles()
    except ConfigError as exc:  # a broken instrument profile: nothing can be checked
        return [], [str(exc)]
    loaded, problems = [], []
    for path in paths:
        try:
            score = load_score(path)
            check_score(score, profiles)
        except ConfigError as exc:
            problems.append(_describe_config_error(path, exc))
            continue
        loaded.append(_LoadedScore(path, score))
    return loaded, problems


def _describe_config_error(path: Path, exc: ConfigError) -> str:
    # Planning errors do not know the file they came from; say it for them.
    return str(exc) if exc.source else f"{path}: {exc}"


def _run_on(
    rt: runtime.Runtime,
    scores: Sequence[_LoadedScore],
    console: Console,
    *,
    live: bool,
    quiet: bool,
) -> int:
    def submit_all(handles: list[runtime.JobHandle]) -> int | None:
        for loaded in scores:
            try:
                handles.append(rt.submit(loaded.score))
            except ConfigError as exc:
                _error(_describe_config_error(loaded.path, exc))
                for handle in handles:
                    handle.cancel()
                return EXIT_USAGE
        return None

    return _drive(rt, submit_all, console, live=live, quiet=quiet, verb="Running")


# Starts the jobs to watch, appending each handle as soon as it exists (so an
# interrupt can name them); returns an exit code to end with instead of watching.
JobStarter = Callable[[list["runtime.JobHandle"]], "int | None"]


def _drive(
    rt: runtime.Runtime,
    start_jobs: JobStarter,
    console: Console,
    *,
    live: bool,
    quiet: bool,
    verb: str,
) -> int:
    """Start jobs on ``rt``, show their progress until every one is final, print
    the summary and stop the runtime. 0 only if every job completed."""
    changed = threading.Event()
    inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def on_event(event: Event) -> None:
        inbox.put(event)
        changed.set()

    handles: list[runtime.JobHandle] = []
    view: ProgressView = QuietView()
    try:
        rt.subscribe(on_event)  # before starting jobs, so no event is missed
        early_exit = start_jobs(handles)
        if early_exit is not None:
            return early_exit
        if not quiet:
            names = ", ".join(handle.job_id for handle in handles)
            console.print(f"{verb} {len(handles)} job(s): {names} (state in {rt.state_dir})")
            view = LiveView(console) if live else LineView(sys.stdout)
        results = _watch(handles, view, changed, inbox)
    except KeyboardInterrupt:
        # The runtime first: with the terminal gone (SIGHUP) the view's last
        # drawing and these words fail, and the instruments must not outlive us.
        _stop_ignoring_interrupts(rt)
        _close_quietly(view)
        ids = ", ".join(handle.job_id for handle in handles) or "none started"
        with contextlib.suppress(OSError):
            print(
                f"Interrupted: the runtime stopped and the checkpoints are kept in "
                f"{rt.state_dir}; the jobs ({ids}) can be resumed from there with "
                f"'ensemble resume --state-dir {rt.state_dir}'.",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    except _JobsPausedError as paused:
        _stop_ignoring_interrupts(rt)
        _close_quietly(view)
        for job_id, reason in paused.reasons.items():
            _error(f"job {job_id} paused itself ({reason}) and cannot go on by itself")
        _error(
            f"the runtime stopped; the checkpoints are kept in {rt.state_dir}: fix the cause "
            f"(a cost limit, a full disk, a sheet waiting for a decision), then "
            f"'ensemble resume --state-dir {rt.state_dir}'"
        )
        return EXIT_FAILED
    except EnsembleError as exc:  # the runtime stopped or stopped answering
        _stop_ignoring_interrupts(rt)
        _close_quietly(view)
        _error(f"{exc}; the checkpoints are kept in {rt.state_dir}")
        return EXIT_FAILED
    finally:
        # Whatever ended the watch (also an error writing to a closed terminal).
        _stop_ignoring_interrupts(rt)
        _close_quietly(view)
    console.print(summary_table(results))
    completed = all(result.status is JobStatus.COMPLETED for result in results)
    return EXIT_OK if completed else EXIT_FAILED


def _close_quietly(view: ProgressView) -> None:
    """Close the view; a terminal that went away (EIO) has nothing to close."""
    with contextlib.suppress(OSError):
        view.close()


def _watch(
    handles: Sequence[runtime.JobHandle],
    view: ProgressView,
    changed: threading.Event,
    inbox: queue.SimpleQueue[Event],
) -> list[JobResult]:
    """Refresh the view on every event and at least every ``POLL_SECONDS`` until
    every job is final; return their results in submission order."""
    ours = {handle.job_id for handle in handles}
    final: dict[str, JobProgress] = {}
    while True:
        changed.clear()
        _drain(inbox, view, ours)
        snapshots = []
        for handle in handles:
            snapshot = final.get(handle.job_id)
            if snapshot is None:
                # done() first: a job found done is then read in its final state.
                is_done = handle.done()
                snapshot = handle.status()
                if is_done:
                    final[handle.job_id] = snapshot
            snapshots.append(snapshot)
        view.show(snapshots)
        if len(final) == len(handles):
            break
        unfinished = [snapshot for snapshot in snapshots if snapshot.job_id not in final]
        if all(_cannot_go_on(job) for job in unfinished):
            # Nothing here can resume them (a cost limit, a storage error, a
            # fermata): waiting on would be waiting for ever.
            raise _JobsPausedError({job.job_id: job.pause_reason or "paused" for job in unfinished})
        changed.wait(POLL_SECONDS)
    # A job's waiter wakes only after its last events were delivered.
    _drain(inbox, view, ours)
    return [handle.wait() for handle in handles]


def _cannot_go_on(job: JobProgress) -> bool:
    """Paused with nothing left running, or paused by a storage error: the
    sheets of its held batch count as running but never will run."""
    if job.status is not JobStatus.PAUSED:
        return False
    return not job.running or (job.pause_reason or "").startswith("storage")


class _JobsPausedError(Exception):
    """Every unfinished job paused itself; ``reasons`` by job id."""

    def __init__(self, reasons: dict[str, str]) -> None:
        super().__init__(reasons)
        self.reasons = reasons


def _drain(inbox: queue.SimpleQueue[Event], view: ProgressView, ours: set[str]) -> None:
    while True:
        try:
            event = inbox.get_nowait()
        except queue.Empty:
            return
        if event.job_id in ours:
            view.note(event)
        elif not event.job_id:
            # Instrument-wide events (a rate limit cleared, a breaker opened) name
            # the jobs they touch; each of ours among them hears of it.
            for job_id in sorted(ours.intersection(event.data.get("jobs", ()))):
                view.note(dataclasses.replace(event, job_id=job_id))


# Ctrl-C, and what timeout, kill, systemd, docker, a CI cancel or a closed
# terminal send: each stops the runtime cleanly. Left to their default, SIGTERM
# and SIGHUP would end the process at once, leaving the instruments running in
# their own sessions, and a resume would start the same sheets beside them.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """While jobs run, SIGTERM and SIGHUP interrupt as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_ignoring_interrupts(rt: runtime.Runtime) -> None:
    """Stop the runtime; a second signal must not tear the shutdown in half."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = (
        {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS} if in_main_thread else {}
    )
    try:
        rt.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# The id of loguru's stderr sink that this module may replace (0 at import).
_default_sink_id: int | None = 0
_DEFAULT_LOG_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}"
)


def _short_log_format(record: Any) -> str:
    """'ensemble: warning: ...' (a format template, so the message is not parsed)."""
    level: str = record["level"].name.lower()
    return "ensemble: " + level + ": {message}\n{exception}"


@contextmanager
def _warnings_only_on_stderr() -> Iterator[None]:
    """Let only warnings and errors reach stderr, so logs do not tear the display.

    Only loguru's default stderr sink is replaced, and put back afterwards;
    sinks a host program added stay as they are.
    """
    global _default_sink_id
    removed = False
    if _default_sink_id is not None:
        try:
            logger.remove(_default_sink_id)
            removed = True
        except ValueError:  # the host removed it already: leave logging alone
            _default_sink_id = None
    sink = logger.add(_write_to_current_stderr, level="WARNING", format=_short_log_format)
    try:
        yield
    finally:
        logger.remove(sink)
        if removed:
            # Bound to whatever sys.stderr is when a record is written, so a
            # caller that swaps sys.stderr (a test capturing output) and closes
            # its stream afterwards leaves no dead sink behind.
            _default_sink_id = logger.add(_write_to_current_stderr, format=_DEFAULT_LOG_FORMAT)


def _write_to_current_stderr(message: Any) -> None:
    # Looked up at write time: the live display redirects sys.stderr.
    sys.stderr.write(str(message))


# --- ensemble resume -----------------------------------------------------------------


def add_resume_command(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "resume",
        help="resume unfinished jobs from their checkpoints",
        description=(
            "Resume the unfinished jobs of a state directory (all of them, or the ones "
            "named) from their checkpoints after a crash, a kill or Ctrl-C, and run them "
            "to the end with the same display as 'run'. Finished sheets are never run "
            "again. Exits 0 only if every resumed job completed and every checkpoint "
            "could be read."
        ),
    )
    parser.add_argument(
        "jobs", nargs="*", metavar="JOB", help="a job id (default: every unfinished job)"
    )
    _state_dir_option(parser)
    _running_options(parser)
    parser.set_defaults(handler=resume_command)


def resume_command(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    wanted: list[str] = list(dict.fromkeys(args.jobs))
    stored = {directory.name for directory in journal.list_job_dirs(state_dir)}
    unknown = [job_id for job_id in wanted if job_id not in stored]
    if unknown:
        known = ", ".join(sorted(stored)) or "none"
        _error(
            f"no job {', '.join(repr(job_id) for job_id in unknown)} in {state_dir} "
            f"(jobs there: {known}); 'ensemble status --state-dir {state_dir}' lists them"
        )
        return EXIT_USAGE
    if not stored:
        # Checked before starting a runtime, which would create the directory.
        print(f"No jobs in {state_dir}; nothing to resume.")
        return EXIT_OK
    console = _console(sys.stdout)
    live = sys.stdout.isatty() and not args.quiet
    with _stop_signals_interrupt(), _warnings_only_on_stderr():
        try:
            rt = runtime.start(state_dir, max_concurrent_sheets=args.max_concurrent)
        except (EnsembleError, OSError) as exc:
            _error(f"cannot start the runtime in {state_dir}: {exc}")
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("Interrupted while starting; nothing was resumed.", file=sys.stderr)
            return EXIT_INTERRUPTED

        def recover(handles: list[runtime.JobHandle]) -> int | None:
            try:
                handles.extend(rt.recover(wanted or None))
            except JobNotFoundError as exc:  # the folder went away meanwhile
                _error(str(exc))
                return EXIT_USAGE
            for problem in rt.recovery_errors:
                _error(problem)
            if handles:
                return None
            if rt.recovery_errors:
                return EXIT_FAILED
            which = "the named jobs are" if wanted else "every job is"
            print(f"Nothing to resume in {state_dir}: {which} already finished.")
            return EXIT_OK

        code = _drive(rt, recover, console, live=live, quiet=args.quiet, verb="Resuming")
    if code == EXIT_OK and rt.recovery_errors:
        return EXIT_FAILED
    return code


# --- ensemble status ----------------------------------------------------------------


def add_status_command(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "status",
        help="list the jobs in a state directory",
        description=(
            "List the jobs stored in a state directory with their sheet counts, read "
            "from the checkpoints on disk (no runtime is started)."
        ),
    )
    _state_dir_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=status_command)


def status_command(args: argparse.Namespace) -> int:
    jobs = read_stored_jobs(args.state_dir)
    if args.json:
        print(json.dumps({"jobs": jobs}))
    elif not jobs:
        print(f"No jobs in {args.state_dir}.")
    else:
        _console(sys.stdout).print(stored_jobs_table(jobs))
    unreadable = any(job["status"] == "unreadable" for job in jobs)
    return EXIT_FAILED if unreadable else EXIT_OK


def read_stored_jobs(state_dir: Path) -> list[dict[str, Any]]:
    """One record per job folder under ``state_dir``, sorted by job id.

    Each record has ``job_id``, ``name``, ``status``, ``total_sheets``,
    ``counts`` (every sheet status, zeros included), ``cost`` and ``error``
    (``None`` unless the checkpoint could not be read: status ``unreadable``).
    """
    jobs_dir = journal.jobs_dir(state_dir)
    if not jobs_dir.is_dir():
        return []
    return [
        _stored_job(directory)
        for directory in sorted(jobs_dir.iterdir(), key=lambda path: path.name)
        # Dot-folders are jobs still being created (or never finished being).
        if directory.is_dir() and not directory.name.startswith(".")
    ]


def _stored_job(directory: Path) -> dict[str, Any]:
    try:
        loaded = journal.load_checkpoint(directory)
        checkpoint = loaded.checkpoint
        counts = dict.fromkeys(STATUS_ORDER, 0)
        for sheet in checkpoint["sheets"]:
            status = str(sheet["status"])
            counts[status] = counts.get(status, 0) + 1
        return {
            "job_id": str(checkpoint.get("job_id", directory.name)),
            "name": str(checkpoint.get("name") or loaded.score.get("name") or ""),
            "status": str(checkpoint["status"]),
            "total_sheets": len(checkpoint["sheets"]),
            "counts": counts,
            "cost": float(checkpoint.get("cost", 0.0)),
            "error": None,
        }
    except (EnsembleError, OSError, ValueError, LookupError, TypeError) as exc:
        return {
            "job_id": directory.name,
            "name": "",
            "status": "unreadable",
            "total_sheets": 0,
            "counts": {},
            "cost": 0.0,
            "error": str(exc) or type(exc).__name__,
        }


# --- registry -----------------------------------------------------------------------


def _validate(argv: list[str]) -> int:
    # Imported on use: the command lives in a module of its own.
    from runtime.validate_cmd import validate_main

    return validate_main(argv)


# Subcommands whose arguments this parser defines (one ``add_*`` function each).
COMMANDS: tuple[Callable[[Any], None], ...] = (
    add_run_command,
    add_resume_command,
    add_status_command,
)


# Subcommands with a parser of their own: name -> (help line, main(argv) -> exit code).
def _instruments(argv: list[str]) -> int:
    from runtime.instruments_cmd import instruments_main

    return instruments_main(argv)


DELEGATED_COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "validate": ("check a score without running it", _validate),
    "instruments": ("list instruments, or check one is ready to run", _instruments),
}


if __name__ == "__main__":
    sys.exit(main())
