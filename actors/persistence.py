"""The Persistence actor: the only writer of checkpoints (DESIGN "Persistence format").

Owns each job's open journal, the in-memory checkpoint document it keeps up to
date from the records it writes, group commit (every ``Commit`` queued while a
write is in progress goes out in the next single write and fsync per job file),
snapshots that compact the journal, and the final snapshot of a finished job.
File I/O runs in gevent's thread pool so the hub never blocks on the disk.
It never calls back into a job: it only sets the ``done`` future it was given
(rule 1), so no cycle of asks can deadlock.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from loguru import logger

from actors.base import ActorContext, EnsembleActor, send
from actors.hub import in_pool
from runtime import journal
from runtime.errors import JobExistsError, PersistenceError
from runtime.messages import (
    CloseJobFiles,
    Commit,
    CreateJobFiles,
    DiscardJobFiles,
    GetCheckpoint,
    OpenJobFiles,
    Recipient,
    Reply,
    SaveRuntimeState,
)


@dataclass(frozen=True, slots=True)
class _WriteBatch:
    """Persistence's note to itself: write everything committed so far."""


@dataclass(slots=True)
class _OpenJob:
    directory: Path
    journal: BinaryIO
    checkpoint: dict[str, Any]  # as on disk: every record written, none that failed
    records_since_snapshot: int = 0
    # A failed append could not be cut back off: rewrite (compact) before appending.
    torn: bool = False


class Persistence(EnsembleActor):
    def __init__(
        self,
        context: ActorContext,
        *,
        state_dir: Path,
        fsync: bool = True,
        compact_after: int = 2000,
        parent: Recipient | None = None,
    ) -> None:
        super().__init__(context, parent=parent, key=("service", "persistence"))
        self._jobs_dir = journal.jobs_dir(state_dir)
        self._runtime_file = state_dir / journal.RUNTIME_FILE
        self._fsync = fsync
        self._compact_after = compact_after
        self._jobs: dict[str, _OpenJob] = {}
        self._pending: list[Commit] = []
        self._write_scheduled = False
        self._seq = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Commit):
            self._pending.append(message)
            if not self._write_scheduled:
                self._write_scheduled = True
                self.actor_ref.tell(_WriteBatch())
        elif isinstance(message, _WriteBatch):
            self._write_scheduled = False
            self._write_batch()
        elif isinstance(message, CreateJobFiles):
            self._create(message)
        elif isinstance(message, OpenJobFiles):
            self._open(message)
        elif isinstance(message, GetCheckpoint):
            self._write_batch()
            job = self._jobs.get(message.job_id)
            if job is None:
                send(
                    message.reply_to,
                    Reply(error=PersistenceError(f"job {message.job_id} has no open checkpoint")),
                )
            else:
                send(message.reply_to, Reply(value=orjson.loads(orjson.dumps(job.checkpoint))))
        elif isinstance(message, CloseJobFiles):
            self._close(message.job_id)
        elif isinstance(message, DiscardJobFiles):
            self._discard(message.job_id)
        elif isinstance(message, SaveRuntimeState):
            try:
                _in_thread(
                    journal.write_atomically, self._runtime_file, orjson.dumps(message.document)
                )
            except OSError as exc:
                logger.error(
                    "could not save the circuit breakers to {}: {}", self._runtime_file, exc
                )
        else:
            return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        self._write_batch()
        for job_id in list(self._jobs):
            self._close(job_id)

    # --- creating and closing ------------------------------------------------------

    def _create(self, message: CreateJobFiles) -> None:
        directory = self._jobs_dir / message.job_id
        try:
            handle = _in_thread(_create_files, directory, message.score, message.checkpoint)
        except FileExistsError:
            send(
                message.reply_to,
                Reply(
                    error=JobExistsError(
                        f"job '{message.job_id}' already exists in {directory.parent}; "
                        "choose another job id or resume that job"
                    )
                ),
            )
            return
        except OSError as exc:
            send(
                message.reply_to,
                Reply(
                    error=PersistenceError(f"cannot create the job's files in {directory}: {exc}")
                ),
            )
            return
        self._jobs[message.job_id] = _OpenJob(directory, handle, message.checkpoint)
        send(message.reply_to, Reply(value=message.job_id))

    def _open(self, message: OpenJobFiles) -> None:
        """A recovered job: keep writing its journal where it stopped."""
        job = self._jobs.get(message.job_id)
        if job is not None:  # restarted after a crash in this runtime: already open
            send(message.reply_to, Reply(value=message.job_id))
            return
        directory = self._jobs_dir / message.job_id
        try:
            handle = _in_thread(journal.open_journal, directory)
        except OSError as exc:
            send(
                message.reply_to,
                Reply(
                    error=PersistenceError(f"cannot reopen the checkpoint in {directory}: {exc}")
                ),
            )
            return
        job = _OpenJob(directory, handle, message.checkpoint)
        try:
            # Start from a fresh snapshot: whatever torn or unreadable tail the
            # journal had is gone before anything is appended after it (S30).
            _in_thread(_compact, job)
        except OSError as exc:
            handle.close()
            send(
                message.reply_to,
                Reply(
                    error=PersistenceError(f"cannot reopen the checkpoint in {directory}: {exc}")
                ),
            )
            return
        self._seq = max(self._seq, int(message.checkpoint.get("seq", 0)))
        self._jobs[message.job_id] = job
        send(message.reply_to, Reply(value=message.job_id))

    def _discard(self, job_id: str) -> None:
        """Delete a job whose creation finished after its JobActor refused it."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return  # its creation failed: nothing was left
        _in_thread(_close_and_take_back, job)

    def _close(self, job_id: str) -> None:
        self._write_batch()
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        try:
            _in_thread(_snapshot_and_close, job, self._fsync)
        except OSError as exc:
            logger.error("could not write the final checkpoint of job {}: {}", job_id, exc)

    # --- group commit ------------------------------------------------------------

    def _write_batch(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        writes: dict[str, tuple[_OpenJob, list[dict[str, Any]]]] = {}
        for commit in batch:
            job = self._jobs.get(commit.job_id)
            if job is None:
                continue
            _, records = writes.setdefault(commit.job_id, (job, []))
            for record in commit.records:
                self._seq += 1
                record["seq"] = self._seq
                records.append(record)
        failures: dict[str, OSError] = _in_thread(
            _write_journals,
            [(job_id, job, records) for job_id, (job, records) in writes.items()],
            self._fsync,
        )
        # The in-memory checkpoint follows the disk: a restart from it (GetCheckpoint)
        # or the snapshot written at close never holds what failed to be written.
        for job_id, (job, records) in writes.items():
            if job_id in failures:
                continue
            for record in records:
                journal.apply_record(job.checkpoint, record)
            job.records_since_snapshot += len(records)
        for commit in batch:
            job = self._jobs.get(commit.job_id)
            failure = failures.get(commit.job_id)
            if job is None:
                error = PersistenceError(f"job {commit.job_id} has no open journal")
            elif failure is not None:
                error = PersistenceError(
                    f"cannot write the journal {job.directory / journal.JOURNAL_FILE}: "
                    f"{failure.strerror or failure}"
                )
            else:
                commit.done.set(self._seq)
                continue
            commit.done.set_exception((PersistenceError, error, None))
        for job_id, (job, _) in writes.items():
            if job_id in failures:
                logger.error(
                    "cannot write the journal of job {} in {}: {}",
                    job_id, job.directory, failures[job_id],
                )  # fmt: skip
            elif job.records_since_snapshot >= max(
                self._compact_after, len(job.checkpoint["sheets"])
            ):
                try:
                    _in_thread(_compact, job)
                except OSError as exc:
                    logger.error("could not compact the journal in {}: {}", job.directory, exc)


def _in_thread(function: Any, *args: Any) -> Any:
    return in_pool(function, *args)


def _create_files(directory: Path, score: dict[str, Any], checkpoint: dict[str, Any]) -> BinaryIO:
    """Create a job's folder whole or not at all: it is filled under a hidden
    temporary name and renamed into place, so a crash in the middle never leaves
    a folder without a checkpoint that holds the job id but cannot be resumed,
    and a refusal is never reported for a job that exists."""
    jobs = directory.parent
    if not jobs.is_dir():
        jobs.mkdir(parents=True, exist_ok=True)
        # A new jobs folder must be durable too, or a power cut could lose the
        # first job even though its creation was acknowledged.
        journal.sync_directory(jobs.parent)
    if directory.exists():
        raise FileExistsError(directory)  # the job id is taken
    # Not tempfile.mkdtemp: its mode 0700 would stay on the job's folder.
    building = _hidden_name(jobs)
    building.mkdir()
    handle: BinaryIO | None = None
    try:
        # Nobody reads the hidden folder: each file is written in place and
        # fsynced, then one fsync of the folder makes all three entries
        # durable before the rename shows the job (4 fsyncs, not 6).
        journal.write_synced(building / journal.SCORE_FILE, orjson.dumps(score))
        journal.write_snapshot(building, checkpoint, new_folder=True)
        # Opened (and so created) now: once the job is visible nothing may fail
        # for want of a descriptor while hundreds of children hold theirs.
        handle = journal.open_journal(building)
        journal.sync_directory(building)
        building.rename(directory)
    except OSError:
        if handle is not None:
            handle.close()
        shutil.rmtree(building, ignore_errors=True)
        raise
    try:
        journal.sync_directory(jobs)
    except OSError:
        # The rename may not be durable: take the job back, so that the
        # refusal the caller reports is true.
        handle.close()
        _take_back(directory)
        raise
    # The descriptor followed the rename; open it again under the job's own
    # name for the messages that quote it (keep the first if that fails).
    try:
        named = journal.open_journal(directory)
    except OSError:
        return handle
    handle.close()
    return named


def _hidden_name(jobs: Path) -> Path:
    """A fresh name in ``jobs`` that recovery ignores and the next start deletes."""
    return jobs / f"{journal.TEMPORARY_PREFIX}{uuid.uuid4().hex}"


def _close_and_take_back(job: _OpenJob) -> None:
    job.journal.close()
    _take_back(job.directory)


def _take_back(directory: Path) -> None:
    """Hide and delete a job folder whose creation is being reported as failed."""
    hidden = _hidden_name(directory.parent)
    try:
        directory.rename(hidden)
        # Durable, or a power cut could bring the job back under its own name.
        journal.sync_directory(directory.parent)
    except OSError as exc:
        logger.critical("could not take back the half-created job folder {}: {}", directory, exc)
        return
    shutil.rmtree(hidden, ignore_errors=True)


def _write_journals(
    writes: list[tuple[str, _OpenJob, list[dict[str, Any]]]], fsync: bool
) -> dict[str, OSError]:
    """Append each job's records to its journal; the jobs whose write failed.

    One job's full disk or lost permission fails that job's commits only; a
    failed append leaves nothing behind (``journal.append_and_sync``). A
    journal left torn by a failed cut is first rewritten from the snapshot
    of what was committed, so nothing is ever appended after a torn line."""
    failures: dict[str, OSError] = {}
    for job_id, job, records in writes:
        try:
            if job.torn:
                _compact(job)
                job.torn = False
            journal.append_and_sync(job.journal, journal.encode_records(records), fsync=fsync)
        except journal.TornJournalError as exc:
            job.torn = True
            failures[job_id] = exc
        except OSError as exc:
            failures[job_id] = exc
    return failures


def _compact(job: _OpenJob) -> None:
    # The snapshot carries the last sequence number, so records still in the
    # journal after a crash between these two steps are skipped on replay.
    journal.write_snapshot(job.directory, job.checkpoint)
    job.journal.truncate(0)
    job.journal.seek(0)
    job.records_since_snapshot = 0


def _snapshot_and_close(job: _OpenJob, fsync: bool) -> None:
    try:
        journal.append_and_sync(job.journal, b"", fsync=fsync)
        _compact(job)
    finally:
        # The journal holds everything if the snapshot failed: closing loses nothing.
        job.journal.close()
