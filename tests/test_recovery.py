"""S29-S30 end to end: stop or break a runtime, start another on the same state
directory with ``recover=True``, and check what carries over.

Jobs run on scripted backends with a manual clock, so retry, pacing and
rate-limit deadlines are exact numbers. ``Runtime.stop`` leaves the checkpoint
as a crash would (the job is not final); each test reads that checkpoint from
disk, recovers in a new runtime with a new backend (whose recorded requests
show exactly what ran again), and compares counters, costs and outputs.
Durability settings and the journal's torn-tail handling are here too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import (
    WAIT_SECONDS,
    EventLog,
    RuntimeFactory,
    ScoreFactory,
    TimerClock,
    captured_logs,
    subscribed,
)

import runtime
from actors.sheet import SheetActor
from runtime import events as ev
from runtime import journal
from runtime.errors import EnsembleError, JobNotFoundError, PersistenceError
from runtime.messages import CancelAttempt
from runtime.state import JobStatus as J
from runtime.state import SheetStatus as S
from runtime.testing import AuthFailure, Fail, Hang, RateLimit, ScriptedBackend, Succeed

START = 1_000_000.0  # where every TimerClock starts


def stored(rt: runtime.Runtime, job_id: str) -> dict[str, Any]:
    """The job's checkpoint as a recovery would read it from disk."""
    return journal.load_checkpoint(rt.state_dir / "jobs" / job_id).checkpoint


def sheet_records(checkpoint: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {sheet["num"]: sheet for sheet in checkpoint["sheets"]}


# --- everything at once -----------------------------------------------------------------


def test_S29_stop_mid_way_then_recover_keeps_counters_costs_outputs_and_reruns_nothing_finished(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    """Six sheets caught in five statuses: completed (1, 4), retry_scheduled (2),
    dispatched (3), pending behind a running sheet (5), waiting on a rate limit (6)."""
    first_backend = ScriptedBackend(
        {
            1: Succeed(stdout="one", cost=0.25),
            2: Fail(cost=0.5),
            3: Hang(),
            4: Succeed(stdout="four", cost=0.125),
        }
    )
    limited = ScriptedBackend({6: RateLimit(wait_seconds=600)})
    clock = TimerClock()
    rt = rt_factory({"mock": first_backend, "limited": limited}, clock=clock)
    log = subscribed(rt)
    score = make_score(
        sheets=6,
        dependencies={4: [1], 5: [3], 1: [], 2: [], 3: [], 6: []},
        retry_delay=1000,
        max_retries=2,
        sheet={"per_sheet_instruments": {6: "limited"}},
    )
    handle = rt.submit(score)
    log.wait_for(
        lambda events: (
            [e.event for e in events].count(ev.SHEET_COMPLETED) == 2
            and any(e.event == ev.SHEET_RETRY_SCHEDULED for e in events)
            and any(e.event == ev.RATE_LIMIT_ACTIVE for e in events)
        )
    )
    assert first_backend.wait_for_calls(4, WAIT_SECONDS)  # 1, 2, 3, 4: 3 hangs
    rt.stop()

    before = sheet_records(stored(rt, handle.job_id))
    assert {num: sheet["status"] for num, sheet in before.items()} == {
        1: "completed", 2: "retry_scheduled", 3: "dispatched", 4: "completed",
        5: "pending", 6: "waiting",
    }  # fmt: skip
    assert before[2]["retry_at"] == START + 1000
    assert before[6]["retry_at"] == START + 600

    backend = ScriptedBackend(default=Succeed(cost=1.0))
    again = ScriptedBackend(default=Succeed(cost=1.0))
    clock2 = TimerClock()  # the same wall time: nothing is due yet
    rt2 = rt_factory({"mock": backend, "limited": again}, clock=clock2)
    log2 = EventLog()
    rt2.subscribe(log2)  # before recovering, so no event is missed
    (recovered,) = rt2.recover()
    assert rt2.recovery_errors == []
    assert recovered.job_id == handle.job_id

    # 3 runs again at once (its interrupted attempt counted, no retry spent), then 5.
    assert backend.wait_for_calls(2, WAIT_SECONDS)
    log2.wait_for_count(ev.SHEET_COMPLETED, 2)
    assert [(r.sheet_num, r.attempt) for r in backend.requests] == [(3, 2), (5, 1)]
    # The rate-limit block and the retry wait for their stored deadlines.
    clock2.wait_for_pending(2)
    assert again.calls() == 0
    assert clock2.advance(599) == 0
    assert again.calls() == 0 and backend.calls(2) == 0
    clock2.advance(1)
    assert again.wait_for_calls(1, WAIT_SECONDS)
    assert again.attempts(6) == [2]
    assert backend.calls(2) == 0
    clock2.advance(400)
    result = recovered.wait(WAIT_SECONDS)

    assert result.status is J.COMPLETED
    assert backend.calls(1) == backend.calls(4) == again.calls(1) == 0  # never re-run
    assert backend.attempts(2) == [2]
    attempts = {num: sheet.attempts for num, sheet in result.sheets.items()}
    assert attempts == {1: 1, 2: 2, 3: 2, 4: 1, 5: 1, 6: 2}
    costs = {num: sheet.cost for num, sheet in result.sheets.items()}
    assert costs == {1: 0.25, 2: 1.5, 3: 1.0, 4: 0.125, 5: 1.0, 6: 1.0}
    assert result.cost == sum(costs.values())

    after = sheet_records(stored(rt2, handle.job_id))
    assert after[1]["output_tail"] == "one" and after[4]["output_tail"] == "four"
    assert after[2]["retries_used"] == 1 and after[6]["rate_limit_waits"] == 0
    resumed = [e for e in log2.events if e.event == ev.JOB_RESUMED]
    assert [e.data for e in resumed] == [{"recovered": True}]


# --- each timer kind, re-armed or fired at once --------------------------------------------


@pytest.mark.parametrize("due", [False, True], ids=["rearmed", "due-during-outage"])
def test_S29_S10_retry_timer_is_rearmed_from_its_stored_deadline(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, due: bool
) -> None:
    clock = TimerClock()
    rt = rt_factory({"mock": ScriptedBackend({1: Fail()})}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=1, max_retries=1, retry_delay=3600))
    log.wait_for_count(ev.SHEET_RETRY_SCHEDULED, 1)
    rt.stop()
    assert sheet_records(stored(rt, handle.job_id))[1]["retry_at"] == START + 3600

    backend = ScriptedBackend()
    # Due during the outage: the real clock, for which a deadline in 1970 is long past.
    clock2 = None if due else TimerClock()
    rt2 = rt_factory({"mock": backend}, clock=clock2, recover=True)
    (recovered,) = rt2.recovered
    if clock2 is not None:
        clock2.wait_for_pending(1)
        assert recovered.status().counts == {"retry_scheduled": 1}
        assert clock2.advance(3599) == 0
        assert backend.calls() == 0
        assert clock2.advance(1) == 1
    result = recovered.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert backend.attempts(1) == [2]
    assert result.sheets[1].attempts == 2


@pytest.mark.parametrize("due", [False, True], ids=["rearmed", "due-during-outage"])
def test_S29_S23_pacing_deadline_is_rearmed_from_the_checkpoint(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, due: bool
) -> None:
    clock = TimerClock()
    first = ScriptedBackend()
    rt = rt_factory({"mock": first}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=2, max_concurrent=None, pause_between_sheets_seconds=120))
    log.wait_for_count(ev.SHEET_COMPLETED, 1)
    clock.wait_for_pending(1)  # the pacing timer
    rt.stop()
    checkpoint = stored(rt, handle.job_id)
    assert checkpoint["paced_until"] == START + 120
    assert first.calls() == 1

    backend = ScriptedBackend()
    # Due during the outage: the real clock, for which a deadline in 1970 is long past.
    clock2 = None if due else TimerClock()
    rt2 = rt_factory({"mock": backend}, clock=clock2, recover=True)
    (recovered,) = rt2.recovered
    if clock2 is not None:
        clock2.wait_for_pending(1)
        assert clock2.advance(119) == 0
        assert backend.calls() == 0
        assert recovered.status().counts == {"completed": 1, "ready": 1}
        assert clock2.advance(1) == 1
    assert recovered.wait(WAIT_SECONDS).status is J.COMPLETED
    assert [r.sheet_num for r in backend.requests] == [2]


@pytest.mark.parametrize("due", [False, True], ids=["rearmed", "due-during-outage"])
def test_S29_S17_rate_limit_block_is_sent_to_the_pool_again(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, due: bool
) -> None:
    """The whole instrument stays blocked until the stored deadline, for the
    waiting sheet and for the others (S17); no retry is spent."""
    clock = TimerClock()
    rt = rt_factory({"mock": ScriptedBackend({1: RateLimit(wait_seconds=900)})}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=1))
    log.wait_for_count(ev.RATE_LIMIT_ACTIVE, 1)
    rt.stop()
    record = sheet_records(stored(rt, handle.job_id))[1]
    assert (record["status"], record["retry_at"], record["rate_limit_waits"]) == (
        "waiting", START + 900, 1,
    )  # fmt: skip

    backend = ScriptedBackend()
    # Due during the outage: the real clock, for which a deadline in 1970 is long past.
    clock2 = None if due else TimerClock()
    rt2 = rt_factory({"mock": backend}, clock=clock2, recover=True)
    (recovered,) = rt2.recovered
    if clock2 is not None:
        clock2.wait_for_pending(1)  # the block is back: the pool armed its end
        other = rt2.submit(make_score(name="other", sheets=1))
        assert clock2.advance(899) == 0
        assert backend.calls() == 0  # the other job's sheet waits too: same instrument
        clock2.advance(1)
        assert other.wait(WAIT_SECONDS).status is J.COMPLETED
    result = recovered.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert [r.attempt for r in backend.requests if r.job_id == handle.job_id] == [2]
    final = sheet_records(stored(rt2, handle.job_id))[1]
    assert (final["attempts"], final["retries_used"]) == (2, 0)


# --- statuses end to end --------------------------------------------------------------------


def test_S29_S16_fermata_survives_a_restart_and_is_resolved_after_it(
    tmp_path: Path, rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = runtime.start(
        tmp_path / "state",
        backends={"mock": ScriptedBackend({1: Fail()})},
        durability="process",
        escalation=True,
    )
    try:
        log = subscribed(rt)
        handle = rt.submit(make_score(sheets=2, max_retries=1, dependencies={2: [1]}))
        log.wait_for_count(ev.SHEET_FERMATA, 1)
    finally:
        rt.stop()
    assert stored(rt, handle.job_id)["status"] == "paused"

    backend = ScriptedBackend()
    rt2 = rt_factory({"mock": backend}, recover=True)
    (recovered,) = rt2.recovered
    progress = recovered.status()
    assert progress.status is J.PAUSED
    assert progress.counts == {"fermata": 1, "pending": 1}
    assert rt2.resolve_fermata(recovered.job_id, 1, "accept") is True
    result = recovered.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert result.sheets[1].attempts == 2  # the two failed attempts, kept
    assert [r.sheet_num for r in backend.requests] == [2]


def test_S29_S25_a_paused_job_is_recovered_paused(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    clock = TimerClock()
    first = ScriptedBackend(default=Succeed(delay=10))
    rt = rt_factory({"mock": first}, clock=clock)
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=3, max_concurrent=1))
    assert first.wait_for_calls(1, WAIT_SECONDS)
    assert handle.pause()
    log.wait_for_count(ev.JOB_PAUSED, 1)
    rt.stop()

    backend = ScriptedBackend()
    rt2 = rt_factory({"mock": backend}, recover=True)
    (recovered,) = rt2.recovered
    assert recovered.status().status is J.PAUSED
    assert backend.calls() == 0
    assert recovered.resume()
    result = recovered.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert result.sheets[1].attempts == 2


def test_S29_S1_S2_skips_and_failures_are_kept_and_nothing_terminal_runs_again(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    """Sheet 1 fails (its dependent 2 is skipped by the cascade), 3 is skipped by
    the user at its fermata (its dependent 4 still runs, S1), 5 hangs until the stop."""
    first = ScriptedBackend({1: AuthFailure(), 3: Fail(), 5: Hang()})
    rt = rt_factory({"mock": first}, escalation=True)
    log = subscribed(rt)
    score = make_score(sheets=5, max_retries=0, dependencies={2: [1], 4: [3], 1: [], 3: [], 5: []})
    handle = rt.submit(score)
    log.wait_for_count(ev.SHEET_FERMATA, 1)
    assert first.wait_for_calls(3, WAIT_SECONDS)  # 1, 3 and the hanging 5
    assert rt.resolve_fermata(handle.job_id, 3, "skip")
    log.wait_for(
        lambda events: any(e.event == ev.SHEET_COMPLETED and e.sheet_num == 4 for e in events)
    )
    rt.stop()
    before = sheet_records(stored(rt, handle.job_id))
    assert {num: sheet["status"] for num, sheet in before.items()} == {
        1: "failed", 2: "skipped", 3: "skipped", 4: "completed", 5: "dispatched",
    }  # fmt: skip

    backend = ScriptedBackend()
    rt2 = rt_factory({"mock": backend}, recover=True)
    (recovered,) = rt2.recovered
    result = recovered.wait(WAIT_SECONDS)
    assert [r.sheet_num for r in backend.requests] == [5]
    assert result.status is J.FAILED
    statuses = {num: sheet.status for num, sheet in result.sheets.items()}
    assert statuses == {1: S.FAILED, 2: S.SKIPPED, 3: S.SKIPPED, 4: S.COMPLETED, 5: S.COMPLETED}
    after = sheet_records(stored(rt2, handle.job_id))
    for num in (1, 2, 3, 4):
        assert after[num] == before[num]
    assert after[3]["skip_reason"] == "user" and after[2]["skip_reason"] == "cascade"


def test_S29_finished_jobs_are_not_recovered_and_only_named_jobs_are(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory({"mock": ScriptedBackend(default=Hang()), "quick": ScriptedBackend()})
    done = rt.submit(make_score(name="done", sheets=1, instrument="quick"), job_id="done")
    assert done.wait(WAIT_SECONDS).status is J.COMPLETED
    rt.submit(make_score(name="a", sheets=1), job_id="a")
    rt.submit(make_score(name="b", sheets=1), job_id="b")
    rt.stop()

    backend = ScriptedBackend()
    rt2 = rt_factory({"mock": backend, "quick": ScriptedBackend()})
    with pytest.raises(JobNotFoundError, match="'nope'"):
        rt2.recover(["a", "nope"])
    (only_a,) = rt2.recover(["a"])
    assert only_a.job_id == "a"
    assert only_a.wait(WAIT_SECONDS).status is J.COMPLETED
    assert {r.job_id for r in backend.requests} == {"a"}
    assert stored(rt2, "b")["status"] == "running"  # untouched
    assert [h.job_id for h in rt2.recover()] == ["b"]  # 'done' and 'a' are final
    assert rt2.recovery_errors == []


def test_S29_recover_leaves_alone_the_jobs_this_runtime_is_running(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory({"mock": ScriptedBackend(default=Hang())})
    handle = rt.submit(make_score(name="old", sheets=1))
    rt.stop()
    backend = ScriptedBackend(default=Hang())
    rt2 = rt_factory({"mock": backend}, recover=True)
    assert [h.job_id for h in rt2.recovered] == [handle.job_id]
    fresh = rt2.submit(make_score(name="fresh", sheets=1))
    assert backend.wait_for_calls(2, WAIT_SECONDS)
    assert rt2.recover() == [] and rt2.recover([fresh.job_id]) == []
    assert rt2.recovery_errors == []
    assert backend.calls() == 2  # nothing was started twice


def test_S29_recovered_job_with_an_instrument_this_runtime_lacks_is_an_error_not_a_hang(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory({"mock": ScriptedBackend(default=Hang())})
    handle = rt.submit(make_score(sheets=1))
    rt.stop()
    rt2 = rt_factory({"other": ScriptedBackend()}, recover=True)
    assert rt2.recovered == []
    (problem,) = rt2.recovery_errors
    assert handle.job_id in problem and "'mock'" in problem
    # The runtime is still healthy.
    other = rt2.submit(make_score(name="other", sheets=1, instrument="other"))
    assert other.wait(WAIT_SECONDS).status is J.COMPLETED


# --- S30: torn and corrupt checkpoints --------------------------------------------------------


def interrupted_job(rt_factory: RuntimeFactory, make_score: ScoreFactory, job_id: str) -> Path:
    """A job stopped with sheet 1 completed and sheet 2 dispatched; its folder."""
    first = ScriptedBackend({2: Hang()})
    rt = rt_factory({"mock": first})
    log = subscribed(rt)
    rt.submit(make_score(name=job_id, sheets=2, dependencies={2: [1]}), job_id=job_id)
    log.wait_for_count(ev.SHEET_COMPLETED, 1, job_id=job_id)
    assert first.wait_for_calls(2, WAIT_SECONDS)
    rt.stop()
    return rt.state_dir / "jobs" / job_id


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    with captured_logs("WARNING") as messages:
        yield messages


@pytest.mark.parametrize(
    "tail",
    [
        b'{"kind": "sheet", "num": 1, "status": "pend',  # torn mid-record
        b"\x00\xff\xfe garbage \x13\n{not json}\n",  # garbage
        b"42\n",  # valid JSON, not a record
        b'{"kind": "sheet", "num": 99, "status": "completed", "seq": 99999}\n',  # no such sheet
    ],
    ids=["torn", "garbage", "not-a-record", "unknown-sheet"],
)
def test_S30_unreadable_journal_tail_is_ignored_with_a_warning(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, warnings: list[str], tail: bytes
) -> None:
    job_dir = interrupted_job(rt_factory, make_score, "torn")
    # The stopped runtime left a fresh snapshot; journal one more change, then the tail.
    checkpoint = journal.load_checkpoint(job_dir).checkpoint
    record = {**checkpoint["sheets"][1], "kind": "sheet", "attempts": 7,
              "seq": checkpoint["seq"] + 1}  # fmt: skip
    with open(job_dir / journal.JOURNAL_FILE, "ab") as handle:
        handle.write(journal.encode_records([record]) + tail)

    loaded = journal.load_checkpoint(job_dir)
    assert loaded.skipped_tail is True
    assert loaded.replayed_records == 1
    assert loaded.checkpoint["sheets"][1]["attempts"] == 7  # the good record before the tail
    assert any(str(job_dir / journal.JOURNAL_FILE) in message for message in warnings)

    backend = ScriptedBackend()
    rt = rt_factory({"mock": backend}, recover=True)
    (recovered,) = rt.recovered
    assert recovered.wait(WAIT_SECONDS).status is J.COMPLETED
    assert backend.attempts(2) == [8]
    # The recovered job started from a fresh snapshot: the bad tail is gone for good.
    rt.stop()
    again = journal.load_checkpoint(job_dir)
    assert again.skipped_tail is False
    assert again.checkpoint["status"] == "completed"


@pytest.mark.parametrize(
    "content",
    [
        b'{"sheets": [',
        b"",
        b"[]",
        b'{"sheets": {}, "seq": 0, "status": "running"}',
        b'{"sheets": [{"num": 1, "status": "completed"}, {"num": 2, "status": "bogus"}],'
        b' "seq": 0, "status": "running"}',
        b'{"sheets": [{"num": 1, "status": "completed"}, {"num": 2, "status": "pending"}],'
        b' "status": "running"}',
    ],
    ids=["truncated", "empty", "not-an-object", "sheets-not-a-list", "bad-sheet", "no-seq"],
)
def test_S30_corrupt_snapshot_is_an_error_naming_the_file_and_other_jobs_still_recover(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, content: bytes
) -> None:
    broken = interrupted_job(rt_factory, make_score, "broken")
    healthy = interrupted_job(rt_factory, make_score, "healthy")
    snapshot = broken / journal.SNAPSHOT_FILE
    snapshot.write_bytes(content)

    with pytest.raises(PersistenceError) as raised:
        journal.load_checkpoint(broken)
    assert str(snapshot) in str(raised.value)

    backend = ScriptedBackend()
    rt = rt_factory({"mock": backend}, recover=True)
    (problem,) = rt.recovery_errors
    assert "broken" in problem and str(snapshot) in problem
    (recovered,) = rt.recovered
    assert recovered.job_id == "healthy"
    assert recovered.wait(WAIT_SECONDS).status is J.COMPLETED
    assert snapshot.read_bytes() == content  # never silently replaced by a fresh start
    assert healthy.is_dir()


def test_S30_missing_score_file_is_an_error_naming_it(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    job_dir = interrupted_job(rt_factory, make_score, "lost")
    (job_dir / journal.SCORE_FILE).unlink()
    rt = rt_factory({"mock": ScriptedBackend()}, recover=True)
    (problem,) = rt.recovery_errors
    assert str(job_dir / journal.SCORE_FILE) in problem


# --- durability settings ---------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
@pytest.mark.parametrize("durability", ["fsync", "process"])
def test_durability_setting_decides_whether_the_journal_is_fsynced(
    rt_factory: RuntimeFactory,
    make_score: ScoreFactory,
    monkeypatch: pytest.MonkeyPatch,
    durability: str,
) -> None:
    """Both settings leave a checkpoint a recovery can read; only 'fsync' fsyncs
    every group commit of the journal (snapshots are always fsynced)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        with contextlib.suppress(OSError):
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    backend = ScriptedBackend(default=Hang())
    rt = rt_factory({"mock": backend}, durability=durability)
    handle = rt.submit(make_score(sheets=3, independent=True))
    assert backend.wait_for_calls(3, WAIT_SECONDS)
    # While the job runs, its dispatch records are in the journal (no snapshot yet).
    loaded = journal.load_checkpoint(rt.state_dir / "jobs" / handle.job_id)
    assert [sheet["status"] for sheet in loaded.checkpoint["sheets"]] == ["dispatched"] * 3
    assert loaded.replayed_records >= 3
    journal_syncs = [path for path in synced if path.endswith(journal.JOURNAL_FILE)]
    assert bool(journal_syncs) is (durability == "fsync")
    # The first snapshot is written in the job's hidden folder, in place.
    assert any(path.endswith(journal.SNAPSHOT_FILE) for path in synced)
    rt.stop()

    rt2 = rt_factory({"mock": ScriptedBackend()}, durability=durability, recover=True)
    (recovered,) = rt2.recovered
    result = recovered.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert {sheet.attempts for sheet in result.sheets.values()} == {2}


def test_a_new_jobs_files_are_durable_before_its_folder_appears(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder is filled under a hidden name: both files and that folder are
    fsynced, then the folder is renamed to the job id and the jobs folder
    fsynced, so a power cut leaves the whole job or none of it."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    backend = ScriptedBackend(default=Hang())
    rt = rt_factory({"mock": backend}, durability="process")  # no journal fsyncs
    handle = rt.submit(make_score(sheets=1))
    assert backend.wait_for_calls(1, WAIT_SECONDS)
    jobs = rt.state_dir / "jobs"
    hidden = Path(synced[1]).parent
    assert hidden.parent == jobs and hidden.name.startswith(journal.TEMPORARY_PREFIX)
    assert synced == [
        str(rt.state_dir),  # the first job made the jobs folder: it is made durable too
        str(hidden / journal.SCORE_FILE),
        str(hidden / journal.SNAPSHOT_FILE),
        str(hidden),
        str(jobs),
    ]
    assert not hidden.exists()
    job_dir = jobs / handle.job_id
    assert sorted(path.name for path in job_dir.iterdir()) == [
        journal.SNAPSHOT_FILE, journal.JOURNAL_FILE, journal.SCORE_FILE,
    ]  # fmt: skip
    # The folder gets the process's usual mode (the umask), not a temporary folder's 0700.
    probe = rt.state_dir / "probe"
    probe.mkdir()
    assert job_dir.stat().st_mode & 0o777 == probe.stat().st_mode & 0o777


def test_unknown_durability_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EnsembleError, match="durability"):
        runtime.start(tmp_path / "state", durability="sometimes")


def test_compaction_keeps_the_journal_short_and_recovery_exact(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    """A long job compacts its journal into snapshots as it goes; what a
    recovery reads back is still exact."""
    sheets = 1200
    backend = ScriptedBackend({sheets: Hang()})
    rt = rt_factory({"mock": backend})
    handle = rt.submit(
        make_score(sheets=sheets, dependencies={sheets: list(range(1, sheets))}, max_concurrent=20)
    )
    assert backend.wait_for_calls(sheets, WAIT_SECONDS)
    job_dir = rt.state_dir / "jobs" / handle.job_id
    snapshot = orjson.loads((job_dir / journal.SNAPSHOT_FILE).read_bytes())
    assert snapshot["seq"] > 0  # compacted while running, not only at the end
    loaded = journal.load_checkpoint(job_dir)
    assert loaded.replayed_records < loaded.checkpoint["seq"]
    assert loaded.checkpoint["sheets"][-1]["status"] == "dispatched"
    rt.stop()
    rt2 = rt_factory({"mock": ScriptedBackend()}, recover=True)
    (recovered,) = rt2.recovered
    result = recovered.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED
    assert result.sheets[sheets].attempts == 2
    assert all(result.sheets[num].attempts == 1 for num in range(1, sheets))


def test_a_job_folder_left_half_created_by_a_kill_is_ignored_and_does_not_hold_the_id(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    """A job's folder is filled under a hidden name and renamed into place; a kill
    in between leaves only the hidden folder, which nothing mistakes for a job."""
    rt = rt_factory({"mock": ScriptedBackend()})
    leftover = journal.jobs_dir(rt.state_dir) / f"{journal.TEMPORARY_PREFIX}abc123"
    leftover.mkdir(parents=True)
    (leftover / journal.SCORE_FILE).write_text("{}")
    (leftover / journal.SNAPSHOT_FILE).write_text('{"sheets": [')
    assert journal.list_job_dirs(rt.state_dir) == []
    assert rt.recover() == [] and rt.recovery_errors == []
    handle = rt.submit(make_score(sheets=1), job_id="abc123")
    assert handle.wait(WAIT_SECONDS).status is J.COMPLETED
    assert [path.name for path in journal.list_job_dirs(rt.state_dir)] == ["abc123"]


def test_S29_S31_previous_outputs_survive_a_restart(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    """The output of a sheet finished before the crash reaches a later sheet's
    prompt after it, from the checkpoint."""
    first = ScriptedBackend({1: Succeed(stdout="alpha-output"), 2: Hang()})
    rt = rt_factory({"mock": first})
    score = make_score(
        sheets=2,
        max_concurrent=None,
        template="sheet {{ sheet_num }} saw {{ previous_outputs }}",
        cross_sheet={"auto_capture_stdout": True},
    )
    handle = rt.submit(score)
    assert first.wait_for_calls(2, WAIT_SECONDS)
    (before,) = [r.prompt for r in first.requests if r.sheet_num == 2]
    assert "alpha-output" in before
    rt.stop()

    backend = ScriptedBackend()
    rt2 = rt_factory({"mock": backend}, recover=True)
    (recovered,) = rt2.recovered
    assert recovered.wait(WAIT_SECONDS).status is J.COMPLETED
    (request,) = backend.requests
    assert (request.sheet_num, request.attempt) == (2, 2)
    assert "alpha-output" in request.prompt
    assert sheet_records(stored(rt2, handle.job_id))[1]["output_tail"] == "alpha-output"


def test_S29_S5_sheet_skipped_by_its_condition_stays_skipped_and_satisfies_its_dependent(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    first = ScriptedBackend(default=Hang())
    rt = rt_factory({"mock": first})
    log = subscribed(rt)
    score = make_score(sheets=2, max_concurrent=None, sheet={"skip_when": {1: "sheet_num == 1"}})
    handle = rt.submit(score)
    log.wait_for_count(ev.SHEET_SKIPPED, 1)
    assert first.wait_for_calls(1, WAIT_SECONDS)  # sheet 2, released by the skip
    rt.stop()
    assert sheet_records(stored(rt, handle.job_id))[1]["skip_reason"] == "condition"

    backend = ScriptedBackend()
    rt2 = rt_factory({"mock": backend}, recover=True)
    (recovered,) = rt2.recovered
    result = recovered.wait(WAIT_SECONDS)
    assert result.status is J.COMPLETED  # S27: skipped by a condition counts as done
    assert [(r.sheet_num, r.attempt) for r in backend.requests] == [(2, 2)]
    assert result.sheets[1].status is S.SKIPPED and result.sheets[1].attempts == 0


def test_S29_ready_sheet_waiting_for_a_slot_runs_after_recovery(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    first = ScriptedBackend(default=Hang())
    rt = rt_factory({"mock": first})
    handle = rt.submit(make_score(sheets=2, independent=True, max_concurrent=1))
    assert first.wait_for_calls(1, WAIT_SECONDS)
    rt.stop()
    statuses = [s["status"] for s in stored(rt, handle.job_id)["sheets"]]
    assert statuses == ["dispatched", "ready"]

    backend = ScriptedBackend()
    rt2 = rt_factory({"mock": backend}, recover=True)
    (recovered,) = rt2.recovered
    assert recovered.wait(WAIT_SECONDS).status is J.COMPLETED
    assert [(r.sheet_num, r.attempt) for r in backend.requests] == [(1, 2), (2, 1)]


def test_S29_S26_a_job_stopped_while_cancelling_ends_cancelled_after_recovery(
    rt_factory: RuntimeFactory, make_score: ScoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime stops while a cancel waits for its running attempts to end (they
    ignore it here, as a slow process would): the checkpoint says 'cancelling',
    and the next runtime finishes the cancel without running anything."""
    real = SheetActor.on_receive

    def slow_to_cancel(self: SheetActor, message: Any) -> Any:
        return None if isinstance(message, CancelAttempt) else real(self, message)

    monkeypatch.setattr(SheetActor, "on_receive", slow_to_cancel)
    first = ScriptedBackend({1: Succeed()}, default=Hang())
    rt = rt_factory({"mock": first})
    log = subscribed(rt)
    handle = rt.submit(make_score(sheets=4, dependencies={4: [2], 1: [], 2: [], 3: []}))
    log.wait_for_count(ev.SHEET_COMPLETED, 1)
    assert first.wait_for_calls(3, WAIT_SECONDS)
    assert handle.cancel()  # answered once the cancel is committed
    rt.stop()
    checkpoint = stored(rt, handle.job_id)
    assert checkpoint["status"] == "running" and checkpoint["cancelling"] is True

    backend = ScriptedBackend()
    rt2 = rt_factory({"mock": backend}, recover=True)
    (recovered,) = rt2.recovered
    result = recovered.wait(WAIT_SECONDS)
    assert result.status is J.CANCELLED
    assert backend.calls() == 0
    statuses = [s["status"] for s in stored(rt2, handle.job_id)["sheets"]]
    assert statuses == ["completed", "cancelled", "cancelled", "cancelled"]
