"""Persistence failures: a full disk or a lost permission pauses the job and loses
nothing that was committed (DESIGN rule 3, issue 5).

The Persistence actor writes through ``runtime.journal`` (looked up on the
module at each call), so a monkeypatch of ``journal.append_and_sync`` or
``journal.write_snapshot`` makes the disk fail on demand. Jobs run on a
scripted backend with a manual clock, so the failure lands between two known
steps. What was committed is read back from disk, as a recovery would.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from support import WAIT_SECONDS, RuntimeFactory, ScoreFactory, TimerClock, subscribed

from actors import job as job_actor
from actors import persistence
from runtime import events as ev
from runtime import journal
from runtime.errors import PersistenceError
from runtime.state import JobStatus as J
from runtime.testing import ScriptedBackend, Succeed


class Disk:
    """Switches a journal function between working and failing with ``error``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, error: int) -> None:
        self.failing = threading.Event()
        self.failures = 0
        self._error = error
        real: Callable[..., Any] = getattr(journal, name)

        def maybe_fail(*args: Any, **kwargs: Any) -> Any:
            if self.failing.is_set():
                self.failures += 1
                raise OSError(self._error, os.strerror(self._error))
            return real(*args, **kwargs)

        monkeypatch.setattr(journal, name, maybe_fail)


def checkpoint_on_disk(state_dir: Path, job_id: str) -> journal.LoadedCheckpoint:
    return journal.load_checkpoint(state_dir / "jobs" / job_id)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES], ids=["disk-full", "permission"])
def test_failed_commit_pauses_the_job_loses_nothing_and_resume_retries_it(
    rt_factory: RuntimeFactory,
    make_score: ScoreFactory,
    monkeypatch: pytest.MonkeyPatch,
    error: int,
) -> None:
    disk = Disk(monkeypatch, "append_and_sync", error)
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=10, cost=0.5))
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=3, max_concurrent=None))  # a chain: 1, 2, 3
    assert backend.wait_for_calls(1, WAIT_SECONDS)
    clock.wait_for_pending(1)

    disk.failing.set()
    clock.advance(10)  # sheet 1 finishes: its result cannot be committed
    log.wait_for_count(ev.JOB_PAUSED, 1)
    (problem,) = log.named(ev.RUNTIME_ERROR)
    message = problem.data["error"]
    assert os.strerror(error) in message
    assert handle.job_id in message and "resume" in message
    assert journal.JOURNAL_FILE in message  # names the file it could not write
    (paused,) = log.named(ev.JOB_PAUSED)
    assert paused.data["reason"] == "storage"
    # The batch is held: nothing of it was released (no event, no next sheet).
    assert ev.SHEET_COMPLETED not in log.names()
    assert handle.status().status is J.PAUSED
    assert backend.calls() == 1

    # Nothing that was committed is lost, and no torn line was left behind.
    on_disk = checkpoint_on_disk(rt.state_dir, handle.job_id)
    assert on_disk.skipped_tail is False
    assert [s["status"] for s in on_disk.checkpoint["sheets"]] == [
        "dispatched",
        "pending",
        "pending",
    ]
    assert on_disk.checkpoint["sheets"][0]["attempts"] == 1

    # Resuming while the disk is still full fails again, and says so again.
    assert handle.resume() is True
    log.wait_for_count(ev.RUNTIME_ERROR, 2)
    log.wait_for_count(ev.JOB_PAUSED, 2)
    assert handle.status().status is J.PAUSED

    disk.failing.clear()
    assert handle.resume() is True
    log.wait_for_count(ev.SHEET_COMPLETED, 1)
    for calls in (2, 3):
        assert backend.wait_for_calls(calls, WAIT_SECONDS)
        clock.wait_for_pending(1)
        clock.advance(10)
    result = handle.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert backend.calls(1) == 1  # the held result was applied, not re-run
    assert {num: sheet.attempts for num, sheet in result.sheets.items()} == {1: 1, 2: 1, 3: 1}
    assert result.cost == 1.5
    final = checkpoint_on_disk(rt.state_dir, handle.job_id).checkpoint
    assert final["status"] == "completed" and final["cost"] == 1.5
    assert disk.failures >= 2


def test_a_failed_commit_pauses_only_the_jobs_whose_write_failed(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each job has its own journal file; one file failing pauses its job only."""
    real = journal.append_and_sync
    broken: set[str] = set()

    def append_and_sync(handle: BinaryIO, data: bytes, *, fsync: bool) -> None:
        if any(f"/{job_id}/" in handle.name for job_id in broken):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        real(handle, data, fsync=fsync)

    monkeypatch.setattr(journal, "append_and_sync", append_and_sync)
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=10))
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    sick = rt.submit(make_score(name="sick", sheets=2, max_concurrent=None))
    well = rt.submit(make_score(name="well", sheets=2, max_concurrent=None))
    assert backend.wait_for_calls(2, WAIT_SECONDS)
    clock.wait_for_pending(2)
    broken.add("sick")
    clock.advance(10)  # both first sheets finish in the same instant
    log.wait_for_count(ev.JOB_PAUSED, 1)
    assert backend.wait_for_calls(3, WAIT_SECONDS)
    clock.wait_for_pending(1)
    clock.advance(10)
    assert well.wait(WAIT_SECONDS).status is J.COMPLETED
    assert sick.status().status is J.PAUSED
    assert [e.job_id for e in log.named(ev.RUNTIME_ERROR)] == ["sick"]

    broken.clear()
    assert sick.resume()
    assert backend.wait_for_calls(4, WAIT_SECONDS)
    clock.wait_for_pending(1)
    clock.advance(10)
    result = sick.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert backend.calls(1, "sick") == 1


def test_stopping_while_paused_for_storage_keeps_only_what_was_committed(
    rt_factory: RuntimeFactory,
    make_score: ScoreFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The held batch never reaches the disk, not even through the snapshot
    written at stop: a recovery runs the interrupted sheet again, from the
    counters that were committed."""
    disk = Disk(monkeypatch, "append_and_sync", errno.ENOSPC)
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=10))
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=2, max_concurrent=None))
    assert backend.wait_for_calls(1, WAIT_SECONDS)
    clock.wait_for_pending(1)
    disk.failing.set()
    clock.advance(10)
    log.wait_for_count(ev.JOB_PAUSED, 1)
    disk.failing.clear()  # room again, but the job was not resumed
    rt.stop()
    checkpoint = checkpoint_on_disk(rt.state_dir, handle.job_id).checkpoint
    assert [s["status"] for s in checkpoint["sheets"]] == ["dispatched", "pending"]

    again = ScriptedBackend()
    rt2 = rt_factory({"mock": again}, state_dir=tmp_path / "state")
    (recovered,) = rt2.recover()
    assert recovered.wait(WAIT_SECONDS).status is J.COMPLETED
    assert [(r.sheet_num, r.attempt) for r in again.requests] == [(1, 2), (2, 1)]


def test_job_files_that_cannot_be_created_refuse_the_submit_and_free_the_job_id(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch, "write_snapshot", errno.ENOSPC)
    rt = rt_factory({"mock": ScriptedBackend()})
    disk.failing.set()
    with pytest.raises(PersistenceError, match="No space left on device") as raised:
        rt.submit(make_score(sheets=1), job_id="full")
    assert str(rt.state_dir / "jobs" / "full") in str(raised.value)
    assert not (rt.state_dir / "jobs" / "full").exists()
    disk.failing.clear()
    assert rt.submit(make_score(sheets=1), job_id="full").wait(WAIT_SECONDS).status is J.COMPLETED


@pytest.mark.parametrize("step", ["open_journal", "sync_directory"])
def test_a_refused_submit_leaves_no_job_behind_even_when_the_last_step_fails(
    rt_factory: RuntimeFactory,
    make_score: ScoreFactory,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """Out of descriptors when the journal is opened, or the jobs folder's fsync
    failing after the rename: the submit is refused, and no folder is left that
    a later start would recover and run although its submit was refused."""
    rt = rt_factory({"mock": ScriptedBackend()})
    jobs = rt.state_dir / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    real = getattr(journal, step)
    failed: list[str] = []

    def fail_once(path: Path, *args: Any) -> Any:
        if not failed and (step == "open_journal" or path == jobs):
            failed.append(str(path))
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(path, *args)

    monkeypatch.setattr(journal, step, fail_once)
    with pytest.raises(PersistenceError, match="Too many open files"):
        rt.submit(make_score(sheets=1), job_id="refused")
    assert failed
    assert sorted(path.name for path in jobs.iterdir()) == []
    assert rt.submit(make_score(sheets=1), job_id="refused").wait(WAIT_SECONDS).status is (
        J.COMPLETED
    )


def test_a_creation_slower_than_the_wait_is_refused_and_leaves_nothing(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state directory that hangs (a stalled network disk): the submit is
    refused once the JobActor stops waiting, and when the creation finally
    ends its folder is deleted, so no later start runs a job the user was told
    was not accepted."""
    release = threading.Event()
    real = persistence._create_files

    def stalled(*args: Any) -> Any:
        release.wait(WAIT_SECONDS)  # in the thread pool, as the real writes are
        return real(*args)

    monkeypatch.setattr(persistence, "_create_files", stalled)
    monkeypatch.setattr(job_actor, "CREATE_TIMEOUT_SECONDS", 0.2)
    rt = rt_factory({"mock": ScriptedBackend()})
    with pytest.raises(PersistenceError, match="was not accepted"):
        rt.submit(make_score(sheets=1), job_id="stalled")
    release.set()
    rt.stop()  # Persistence finishes the creation, then the discard, then stops
    jobs = rt.state_dir / "jobs"
    assert sorted(path.name for path in jobs.iterdir()) == []


def test_recovery_that_cannot_write_its_fresh_snapshot_is_a_recovery_error(
    rt_factory: RuntimeFactory,
    make_score: ScoreFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    rt = rt_factory({"mock": ScriptedBackend(default=Succeed(delay=10))}, clock=TimerClock())
    handle = rt.submit(make_score(sheets=1))
    rt.stop()
    disk = Disk(monkeypatch, "write_snapshot", errno.EACCES)
    disk.failing.set()
    rt2 = rt_factory({"mock": ScriptedBackend()}, state_dir=tmp_path / "state")
    assert rt2.recover() == []
    (problem,) = rt2.recovery_errors
    assert handle.job_id in problem and "Permission denied" in problem
    disk.failing.clear()
    (recovered,) = rt2.recover()
    assert recovered.wait(WAIT_SECONDS).status is J.COMPLETED


# --- the journal's own guarantees ------------------------------------------------------------


class FullDisk:
    """An unbuffered journal file with ``room`` bytes left: a write past it is
    partial, the next one fails with ENOSPC."""

    def __init__(self, handle: BinaryIO, room: int) -> None:
        self._handle = handle
        self.room = room
        self.name = handle.name

    def write(self, data: Any) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = self._handle.write(bytes(data[: self.room]))
        self.room -= written
        return written

    def tell(self) -> int:
        return self._handle.tell()

    def truncate(self, size: int) -> int:
        return self._handle.truncate(size)

    def seek(self, offset: int) -> int:
        return self._handle.seek(offset)

    def fileno(self) -> int:
        return self._handle.fileno()


def test_a_failed_append_is_cut_off_the_journal_so_no_torn_line_stays_in_the_middle(
    tmp_path: Path,
) -> None:
    checkpoint = journal.new_checkpoint("job", "job", [{"num": 1, "status": "pending"}])
    journal.write_atomically(tmp_path / journal.SCORE_FILE, b"{}")
    journal.write_snapshot(tmp_path, checkpoint)
    first = {"kind": "sheet", "num": 1, "status": "dispatched", "attempts": 1, "seq": 1}
    second = {"kind": "sheet", "num": 1, "status": "completed", "attempts": 1, "seq": 2}
    third = {"kind": "sheet", "num": 1, "status": "completed", "attempts": 1, "seq": 3}
    with journal.open_journal(tmp_path) as handle:
        journal.append_and_sync(handle, journal.encode_records([first]), fsync=True)
        before = (tmp_path / journal.JOURNAL_FILE).read_bytes()
        full = FullDisk(handle, room=10)
        with pytest.raises(OSError, match="No space left"):
            journal.append_and_sync(full, journal.encode_records([second]), fsync=True)  # type: ignore[arg-type]
        assert (tmp_path / journal.JOURNAL_FILE).read_bytes() == before
        journal.append_and_sync(handle, journal.encode_records([third]), fsync=True)
    loaded = journal.load_checkpoint(tmp_path)
    assert loaded.skipped_tail is False and loaded.replayed_records == 2
    assert loaded.checkpoint["sheets"][0]["status"] == "completed"
    assert loaded.checkpoint["seq"] == 3


def test_a_journal_left_torn_is_rewritten_before_anything_is_appended_after_it(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed append whose cut-back also failed leaves a torn line at the end
    of the journal. Replay stops at the first unreadable line, so a commit
    appended after it would be lost: the journal is rewritten first."""
    real = journal.append_and_sync
    torn: list[bytes] = []

    def tear_once(handle: BinaryIO, data: bytes, *, fsync: bool) -> None:
        if not torn and data:
            torn.append(data[: len(data) // 2])
            handle.write(torn[0])  # half a line stays: the cut-back "failed"
            raise journal.TornJournalError(errno.EIO, os.strerror(errno.EIO))
        real(handle, data, fsync=fsync)

    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=10))
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=2, max_concurrent=None))  # a chain: 1, 2
    assert backend.wait_for_calls(1, WAIT_SECONDS)
    clock.wait_for_pending(1)
    monkeypatch.setattr(journal, "append_and_sync", tear_once)
    clock.advance(10)  # sheet 1's result: its write tears the journal
    log.wait_for_count(ev.JOB_PAUSED, 1)
    journal_file = rt.state_dir / "jobs" / handle.job_id / journal.JOURNAL_FILE
    assert journal_file.read_bytes().endswith(torn[0])

    assert handle.resume() is True
    assert backend.wait_for_calls(2, WAIT_SECONDS)
    clock.wait_for_pending(1)
    assert torn[0] not in journal_file.read_bytes()  # rewritten before the append
    rt.stop()  # sheet 2 is in flight: only what was committed is on disk
    on_disk = checkpoint_on_disk(rt.state_dir, handle.job_id)
    assert on_disk.skipped_tail is False
    assert [s["status"] for s in on_disk.checkpoint["sheets"]] == ["completed", "dispatched"]


def test_a_snapshot_that_cannot_be_written_leaves_the_old_one_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal.write_atomically(tmp_path / "checkpoint.json", b"old")

    def no_room(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(OSError):
        journal.write_atomically(tmp_path / "checkpoint.json", b"new")
    assert (tmp_path / "checkpoint.json").read_bytes() == b"old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.json"]


def test_a_failed_final_commit_pauses_the_job_and_resume_finishes_it(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch, "append_and_sync", errno.ENOSPC)
    clock = TimerClock()
    backend = ScriptedBackend(default=Succeed(delay=10))
    rt = rt_factory({"mock": backend}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=1))
    assert backend.wait_for_calls(1, WAIT_SECONDS)
    clock.wait_for_pending(1)
    disk.failing.set()
    clock.advance(10)  # the only sheet finishes: the job's final batch cannot be committed
    log.wait_for_count(ev.RUNTIME_ERROR, 1)
    assert handle.status().status is J.PAUSED
    disk.failing.clear()
    assert handle.resume() is True
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    assert checkpoint_on_disk(rt.state_dir, handle.job_id).checkpoint["status"] == "completed"
