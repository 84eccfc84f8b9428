"""Checkpoint files of one job: the snapshot, the journal, and reading them back.

Owns the on-disk format under ``<state_dir>/jobs/<job_id>/``: ``score.json`` (the
score as submitted), ``checkpoint.json`` (a readable snapshot) and
``journal.jsonl`` (records appended since the snapshot, each with a sequence
number). Writing is blocking file I/O: the Persistence actor calls these
functions from gevent's thread pool, never from an actor's greenlet. Decides
nothing about jobs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from loguru import logger

from runtime.errors import PersistenceError
from runtime.state import JobStatus, SheetStatus

FORMAT_VERSION = 1
SCORE_FILE = "score.json"
SNAPSHOT_FILE = "checkpoint.json"
JOURNAL_FILE = "journal.jsonl"
# A job folder being created: ignored until it is renamed to its job id.
TEMPORARY_PREFIX = ".creating-"


def jobs_dir(state_dir: Path) -> Path:
    return state_dir / "jobs"


def new_checkpoint(
    job_id: str,
    name: str,
    sheets: Iterable[dict[str, Any]],
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A new job's first snapshot. ``options`` are the submit-time settings a
    recovery needs again (self-healing, escalation)."""
    return {
        "version": FORMAT_VERSION,
        "job_id": job_id,
        "name": name,
        "status": "running",
        "paused_by_user": False,
        "cost": 0.0,
        "seq": 0,
        "options": dict(options or {}),
        "sheets": list(sheets),
    }


def apply_record(checkpoint: dict[str, Any], record: dict[str, Any]) -> None:
    """Fold one journal record into a checkpoint document, in place."""
    kind = record.get("kind")
    if kind == "sheet":
        sheet = dict(record)
        del sheet["kind"]
        sheet.pop("seq", None)
        checkpoint["sheets"][sheet["num"] - 1] = sheet
    elif kind == "job":
        for key, value in record.items():
            if key not in ("kind", "seq"):
                checkpoint[key] = value
    checkpoint["seq"] = max(checkpoint["seq"], record.get("seq", 0))


def encode_records(records: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(record) + b"\n" for record in records)


def open_journal(job_dir: Path) -> BinaryIO:
    """The job's journal, opened unbuffered for appending."""
    return open(job_dir / JOURNAL_FILE, "ab", buffering=0)


class TornJournalError(OSError):
    """A failed append could not be cut back off: the journal may end in a torn
    line, and nothing may be appended after it before it is rewritten (replay
    stops at the first unreadable line, so whatever followed would be lost)."""


def append_and_sync(handle: BinaryIO, data: bytes, *, fsync: bool) -> None:
    """Append ``data`` whole or not at all: a failed write (a full disk) is cut
    back off, so no torn line is left in the middle of the journal. If even
    the cut fails, ``TornJournalError`` says so."""
    start = handle.tell()
    try:
        # An unbuffered file: a failed write leaves nothing queued in a buffer
        # that a later flush would write after the cut.
        remaining = memoryview(data)
        while remaining:
            written = handle.write(remaining)
            remaining = remaining[written or 0 :]
        if fsync:
            os.fsync(handle.fileno())
    except OSError as exc:
        try:
            handle.truncate(start)
            handle.seek(start)
        except OSError:
            logger.error("could not cut a failed write off the journal {}", handle.name)
            raise TornJournalError(exc.errno, exc.strerror or str(exc)) from exc
        raise


def write_synced(path: Path, data: bytes) -> None:
    """Write ``path`` whole and fsync it, in place: only for a file no reader
    can see yet (in a job folder still being built under its hidden name)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, directory fsync: a reader sees the old or the new file."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        write_synced(temporary, data)
        os.replace(temporary, path)
    except OSError:
        # A full disk: give back the space the half-written copy took.
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_snapshot(job_dir: Path, checkpoint: dict[str, Any], *, new_folder: bool = False) -> None:
    """Write the readable snapshot; ``new_folder``: the job's folder is still
    being built under its hidden name, so no temporary file is needed."""
    data = orjson.dumps(checkpoint, option=orjson.OPT_INDENT_2)
    if new_folder:
        write_synced(job_dir / SNAPSHOT_FILE, data)
    else:
        write_atomically(job_dir / SNAPSHOT_FILE, data)


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    checkpoint: dict[str, Any]
    score: dict[str, Any]
    replayed_records: int
    skipped_tail: bool


RUNTIME_FILE = "runtime.json"


def read_runtime_state(state_dir: Path) -> dict[str, Any]:
    """The runtime-wide state a previous runtime left (its circuit breakers).
    Missing or unreadable, it is empty: breakers then start closed, as new."""
    path = state_dir / RUNTIME_FILE
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        logger.warning("ignoring unreadable {}: {}; circuit breakers start closed", path, exc)
        return {}
    return document if isinstance(document, dict) else {}


def remove_unfinished_creations(state_dir: Path) -> int:
    """Delete job folders a killed runtime left half-built (hidden, never renamed
    into place); only safe while holding the state directory's lock."""
    root = jobs_dir(state_dir)
    if not root.is_dir():
        return 0
    leftovers = [path for path in root.iterdir() if path.name.startswith(TEMPORARY_PREFIX)]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return len(leftovers)


def list_job_dirs(state_dir: Path) -> list[Path]:
    """Every job folder under a state directory, by name."""
    root = jobs_dir(state_dir)
    if not root.is_dir():
        return []
    return sorted(
        path
        for path in root.iterdir()
        if not path.name.startswith(".") and (path / SNAPSHOT_FILE).exists()
    )


def load_checkpoint(job_dir: Path) -> LoadedCheckpoint:
    """Read the snapshot, replay the journal, ignore a torn or corrupt tail (S30).

    A snapshot or score that cannot be read, or is not what Ensemble writes, is
    a ``PersistenceError`` naming the file: never a silent fresh start. In the
    journal, the first line that is not a record this checkpoint can take (torn
    by a kill, garbage, a sheet the job does not have) ends the replay with a
    warning: everything before it is kept, it and everything after it ignored.
    """
    snapshot_path = job_dir / SNAPSHOT_FILE
    score_path = job_dir / SCORE_FILE
    checkpoint = _read_document(snapshot_path, "checkpoint")
    score = _read_document(score_path, "score")
    problem = _snapshot_problem(checkpoint)
    if problem:
        raise PersistenceError(
            f"corrupt checkpoint {snapshot_path}: {problem}; restore it from a backup or "
            "remove the job's folder to forget the job"
        )
    replayed, skipped_tail = 0, False
    journal_path = job_dir / JOURNAL_FILE
    try:
        content = journal_path.read_bytes()
    except FileNotFoundError:
        content = b""
    except OSError as exc:
        raise PersistenceError(f"cannot read the journal {journal_path}: {exc}") from None
    for number, line in enumerate(content.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None
        if not _is_record(record, len(checkpoint["sheets"])):
            logger.warning(
                "{}: ignoring unreadable journal line {} and everything after it",
                journal_path,
                number,
            )
            skipped_tail = True
            break
        if record["seq"] <= checkpoint["seq"]:
            continue
        apply_record(checkpoint, record)
        replayed += 1
    return LoadedCheckpoint(checkpoint, score, replayed, skipped_tail)


def _read_document(path: Path, what: str) -> dict[str, Any]:
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise PersistenceError(f"{what} file missing: {path}") from None
    except OSError as exc:
        raise PersistenceError(f"cannot read the {what} file {path}: {exc}") from None
    except orjson.JSONDecodeError as exc:
        raise PersistenceError(
            f"corrupt {what} {path}: {exc}; restore it from a backup or "
            "remove the job's folder to forget the job"
        ) from None
    if not isinstance(document, dict):
        raise PersistenceError(f"corrupt {what} {path}: not a {what} document")
    return document


_SHEET_STATUSES = frozenset(status.value for status in SheetStatus)
_JOB_STATUSES = frozenset(status.value for status in JobStatus)


def _snapshot_problem(checkpoint: dict[str, Any]) -> str:
    """What makes a snapshot unusable, or "" when it is a checkpoint document."""
    sheets = checkpoint.get("sheets")
    if not isinstance(sheets, list):
        return "'sheets' is not a list"
    if not isinstance(checkpoint.get("seq"), int):
        return "'seq' is missing"
    if checkpoint.get("status") not in _JOB_STATUSES:
        return f"job status {checkpoint.get('status')!r} is not one of {sorted(_JOB_STATUSES)}"
    for index, sheet in enumerate(sheets, start=1):
        if not _is_sheet(sheet) or sheet["num"] != index:
            return f"sheet entry {index} is not a sheet {index} record"
    return ""


def _is_sheet(sheet: Any) -> bool:
    return (
        isinstance(sheet, dict)
        and isinstance(sheet.get("num"), int)
        and sheet.get("status") in _SHEET_STATUSES
    )


def _is_record(record: Any, total_sheets: int) -> bool:
    """A journal record this checkpoint can take: a job record, or a sheet record
    of one of its sheets."""
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        return False
    kind = record.get("kind")
    if kind == "job":
        return record.get("status", "running") in _JOB_STATUSES
    return kind == "sheet" and _is_sheet(record) and 1 <= record["num"] <= total_sheets
