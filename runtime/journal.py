"""Checkpoint files of one job: the snapshot, the journal, and reading them back.

Owns the on-disk format under ``<state_dir>/jobs/<job_id>/``: ``score.json`` (the
score as submitted), ``checkpoint.json`` (a readable snapshot) and
``journal.jsonl`` (records appended since the snapshot, each with a sequence
number). Writing is blocking file I/O: the Persistence actor calls these
functions from gevent's thread pool, never from an actor's greenlet. Decides
nothing about jobs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from loguru import logger

from runtime.errors import PersistenceError

FORMAT_VERSION = 1
SCORE_FILE = "score.json"
SNAPSHOT_FILE = "checkpoint.json"
JOURNAL_FILE = "journal.jsonl"


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


def append_and_sync(handle: BinaryIO, data: bytes, *, fsync: bool) -> None:
    """Append ``data`` whole or not at all: a failed write (a full disk) is cut
    back off, so no torn line is left in the middle of the journal."""
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
    except OSError:
        try:
            handle.truncate(start)
            handle.seek(start)
        except OSError:
            logger.error("could not cut a failed write off the journal {}", handle.name)
        raise


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, directory fsync: a reader sees the old or the new file."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_snapshot(job_dir: Path, checkpoint: dict[str, Any]) -> None:
    write_atomically(job_dir / SNAPSHOT_FILE, orjson.dumps(checkpoint, option=orjson.OPT_INDENT_2))


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    checkpoint: dict[str, Any]
    score: dict[str, Any]
    replayed_records: int
    skipped_tail: bool


def list_job_dirs(state_dir: Path) -> list[Path]:
    """Every job folder under a state directory, by name."""
    root = jobs_dir(state_dir)
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir() if (path / SNAPSHOT_FILE).exists())


def load_checkpoint(job_dir: Path) -> LoadedCheckpoint:
    """Read the snapshot, replay the journal, ignore a torn or corrupt tail (S30)."""
    snapshot_path = job_dir / SNAPSHOT_FILE
    try:
        checkpoint = orjson.loads(snapshot_path.read_bytes())
        score = orjson.loads((job_dir / SCORE_FILE).read_bytes())
    except FileNotFoundError as exc:
        raise PersistenceError(f"checkpoint file missing: {exc.filename}") from None
    except orjson.JSONDecodeError as exc:
        raise PersistenceError(
            f"corrupt checkpoint {snapshot_path}: {exc}; restore it from a backup or "
            "remove the job's folder to forget the job"
        ) from None
    if not isinstance(checkpoint, dict) or "sheets" not in checkpoint:
        raise PersistenceError(f"corrupt checkpoint {snapshot_path}: not a checkpoint document")
    replayed, skipped_tail = 0, False
    journal_path = job_dir / JOURNAL_FILE
    if journal_path.exists():
        for number, line in enumerate(journal_path.read_bytes().split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                logger.warning(
                    "{}: ignoring unreadable journal line {} and everything after it",
                    journal_path,
                    number,
                )
                skipped_tail = True
                break
            if record.get("seq", 0) <= checkpoint["seq"]:
                continue
            apply_record(checkpoint, record)
            replayed += 1
    return LoadedCheckpoint(checkpoint, score, replayed, skipped_tail)
