"""The decision core: what happens to a job and its sheets on every message.

Every function here takes the job state, one input (a start, a lease grant, an
attempt result, a timer, a host command) and the time, updates the state in
place and appends what must happen next to an ``Effects``: journal the changed
sheets, request leases, start attempts, arm timers, cancel attempts, publish
events, report the job finished. The JobActor carries the effects out after it
has committed the journal (DESIGN rules 2 and 3).

It imports no gevent, no pykka and does no I/O. Cost per call is proportional to
the sheets it touches: readiness moves through per-sheet counters of unmet
dependencies, never by walking all sheets (rule 5). The only whole-job walks are
a job's start and its cancellation, each done once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from runtime import events as ev
from runtime.events import Event
from runtime.outcomes import AttemptResult, OutcomeKind
from runtime.plan import Plan
from runtime.state import (
    FINAL_JOB_STATUSES,
    JobProgress,
    JobResult,
    JobState,
    JobStatus,
    SheetResult,
    SheetState,
    SheetStatus,
    SkipReason,
)


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    sheet_num: int
    instrument: str


@dataclass(frozen=True, slots=True)
class AttemptOrder:
    """Start attempt number ``attempt`` of a sheet on the granted lease."""

    sheet_num: int
    attempt: int
    lease: Any


@dataclass(frozen=True, slots=True)
class TimerOrder:
    """Call ``on_timer`` for this sheet at ``due`` (clock time)."""

    sheet_num: int
    due: float


@dataclass(slots=True)
class Effects:
    """What the JobActor must do after committing one batch of decisions."""

    dirty_sheets: set[int] = field(default_factory=set)
    job_dirty: bool = False
    events: list[Event] = field(default_factory=list)
    lease_requests: list[LeaseRequest] = field(default_factory=list)
    withdraw_lease_requests: bool = False
    attempts: list[AttemptOrder] = field(default_factory=list)
    timers: list[TimerOrder] = field(default_factory=list)
    cancel_attempts: list[int] = field(default_factory=list)
    released_leases: list[Any] = field(default_factory=list)
    finished: JobStatus | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.dirty_sheets
            or self.job_dirty
            or self.events
            or self.lease_requests
            or self.withdraw_lease_requests
            or self.attempts
            or self.timers
            or self.cancel_attempts
            or self.released_leases
            or self.finished
        )


def checkpoint_records(state: JobState, effects: Effects) -> list[dict[str, Any]]:
    """Journal records for everything this batch changed: one per sheet, one for the job."""
    records: list[dict[str, Any]] = [
        {"kind": "sheet", **state.sheet(num).to_record()} for num in sorted(effects.dirty_sheets)
    ]
    if effects.job_dirty:
        records.append({"kind": "job", **state.job_record()})
    return records


# --- building a job -----------------------------------------------------------------


def new_job(job_id: str, plan: Plan) -> JobState:
    sheets = [SheetState(num=sheet.num) for sheet in plan.sheets]
    for sheet in sheets:
        sheet.unmet_dependencies = len(plan.dependencies.get(sheet.num, ()))
    state = JobState(job_id=job_id, plan=plan, sheets=sheets)
    state.counts[SheetStatus.PENDING] = len(sheets)
    return state


def start(state: JobState, now: float, fx: Effects) -> None:
    """Make every sheet without dependencies ready and ask for leases (S1, S28)."""
    if state.started:
        return
    state.started = True
    _emit(state, fx, 0, ev.JOB_STARTED, now, total_sheets=state.total_sheets)
    fx.job_dirty = True
    for sheet in state.sheets:
        if sheet.status is SheetStatus.PENDING and sheet.unmet_dependencies == 0:
            _make_ready(state, sheet, fx)
    _request_leases(state, fx)
    _finish_if_done(state, now, fx)


# --- leases and attempts --------------------------------------------------------------


def on_leases_granted(
    state: JobState, grants: Iterable[tuple[int, Any]], now: float, fx: Effects
) -> None:
    """A lease per sheet: the sheet is dispatched and its next attempt starts (rule 3)."""
    for sheet_num, lease in grants:
        if sheet_num not in state.lease_requested:
            fx.released_leases.append(lease)
            continue
        state.lease_requested.discard(sheet_num)
        sheet = state.sheet(sheet_num)
        if sheet.status is not SheetStatus.READY or state.cancelling or state.paused_by_user:
            fx.released_leases.append(lease)
            if sheet.status is SheetStatus.READY:
                state.ready_queue.appendleft(sheet_num)
            continue
        sheet.attempts += 1
        sheet.lease = lease
        _set_status(state, sheet, SheetStatus.DISPATCHED, fx)
        state.running += 1
        fx.attempts.append(AttemptOrder(sheet_num, sheet.attempts, lease))
        _emit(
            state,
            fx,
            sheet_num,
            ev.SHEET_DISPATCHED,
            now,
            attempt=sheet.attempts,
            instrument=state.plan.sheet(sheet_num).instrument,
        )


def on_attempt_finished(
    state: JobState, sheet_num: int, attempt: int, result: AttemptResult, now: float, fx: Effects
) -> bool:
    """Apply one attempt's result (S6, S7, S9, S12). Returns False for a stale report."""
    if not state.has_sheet(sheet_num):
        return False
    sheet = state.sheet(sheet_num)
    if sheet.status is not SheetStatus.DISPATCHED or attempt != sheet.attempts:
        return False
    state.running -= 1
    # The job gives the lease back after committing the result, in one message
    # per batch: a slot is never reused before the attempt's outcome is durable.
    if sheet.lease is not None:
        fx.released_leases.append(sheet.lease)
        sheet.lease = None
    sheet.cost += result.cost
    state.cost += result.cost
    if result.cost:
        fx.job_dirty = True
    if result.output_tail:
        sheet.output_tail = result.output_tail

    if sheet.cancel_requested:
        _set_status(state, sheet, SheetStatus.CANCELLED, fx)
        _emit(state, fx, sheet_num, ev.SHEET_CANCELLED, now)
    elif result.kind is OutcomeKind.SUCCESS and result.pass_rate >= 100.0:
        sheet.last_error = None
        sheet.error_kind = None
        _set_status(state, sheet, SheetStatus.COMPLETED, fx)
        _emit(
            state,
            fx,
            sheet_num,
            ev.SHEET_COMPLETED,
            now,
            attempt=attempt,
            cost=result.cost,
            duration_seconds=result.duration_seconds,
        )
        _release_dependents(state, sheet_num, fx)
    elif result.kind is OutcomeKind.CANCELLED:
        # Cancelled from outside the job (the runtime is stopping): nothing was
        # learned about the sheet, so it is ready again and no retry is spent.
        sheet.attempts -= 1
        _make_ready(state, sheet, fx)
    elif result.kind is OutcomeKind.RATE_LIMITED:
        wait = result.wait_seconds if result.wait_seconds is not None else 60.0
        sheet.retry_at = now + wait
        _set_status(state, sheet, SheetStatus.WAITING, fx)
        fx.timers.append(TimerOrder(sheet_num, sheet.retry_at))
        _emit(state, fx, sheet_num, ev.RATE_LIMIT_ACTIVE, now, wait_seconds=wait)
    else:
        _attempt_failed(state, sheet, result, now, fx)
    _request_leases(state, fx)
    _finish_if_done(state, now, fx)
    return True


def _attempt_failed(
    state: JobState, sheet: SheetState, result: AttemptResult, now: float, fx: Effects
) -> None:
    kind = result.kind
    if kind is OutcomeKind.SUCCESS:
        # Instrument succeeded but validations did not all pass (S6, S9).
        kind = OutcomeKind.FAILURE
        error = result.error or (
            f"validations passed {result.validations_passed} of {result.validations_total}"
        )
    else:
        error = result.error or _default_error(result)
    sheet.last_error = error
    sheet.error_kind = kind.value
    retryable = kind is not OutcomeKind.AUTH_FAILED  # S12: never retried
    if retryable and sheet.retries_used < state.plan.max_retries:
        sheet.retries_used += 1
        sheet.retry_at = now + state.plan.retry_delay_seconds
        _set_status(state, sheet, SheetStatus.RETRY_SCHEDULED, fx)
        fx.timers.append(TimerOrder(sheet.num, sheet.retry_at))
        _emit(
            state,
            fx,
            sheet.num,
            ev.SHEET_RETRY_SCHEDULED,
            now,
            attempt=sheet.attempts,
            retry=sheet.retries_used,
            delay_seconds=state.plan.retry_delay_seconds,
            error=error,
            error_kind=kind.value,
        )
        return
    _set_status(state, sheet, SheetStatus.FAILED, fx)
    _emit(
        state,
        fx,
        sheet.num,
        ev.SHEET_FAILED,
        now,
        attempts=sheet.attempts,
        error=error,
        error_kind=kind.value,
    )
    _cascade_failure(state, sheet.num, now, fx)


def _default_error(result: AttemptResult) -> str:
    if result.kind is OutcomeKind.TIMEOUT:
        return "attempt timed out"
    if result.exit_code is not None:
        return f"instrument exited with code {result.exit_code}"
    return f"attempt ended: {result.kind.value}"


def on_timer(state: JobState, sheet_num: int, now: float, fx: Effects) -> None:
    """A retry or rate-limit wait is over: the sheet is ready again (S10, S18)."""
    if not state.has_sheet(sheet_num):
        return
    sheet = state.sheet(sheet_num)
    if sheet.status not in (SheetStatus.RETRY_SCHEDULED, SheetStatus.WAITING):
        return
    if sheet.retry_at is not None and sheet.retry_at > now:
        return  # a stale timer from before a later reschedule
    sheet.retry_at = None
    _make_ready(state, sheet, fx)
    _request_leases(state, fx)


def on_attempt_lost(state: JobState, sheet_num: int, error: str, now: float, fx: Effects) -> None:
    """S14: the sheet actor died without reporting: a failed attempt, classified as crash."""
    if not state.has_sheet(sheet_num):
        return
    sheet = state.sheet(sheet_num)
    if sheet.status is not SheetStatus.DISPATCHED:
        return
    on_attempt_finished(
        state,
        sheet_num,
        sheet.attempts,
        AttemptResult(kind=OutcomeKind.CRASHED, error=error),
        now,
        fx,
    )


# --- job control -------------------------------------------------------------------


def pause(state: JobState, now: float, fx: Effects) -> bool:
    """S25: no new dispatch; running attempts finish and apply."""
    if state.status in FINAL_JOB_STATUSES or state.paused_by_user or state.cancelling:
        return False
    state.paused_by_user = True
    state.status = JobStatus.PAUSED
    fx.job_dirty = True
    _withdraw_lease_requests(state, fx)
    _emit(state, fx, 0, ev.JOB_PAUSED, now, reason="user")
    return True


def resume(state: JobState, now: float, fx: Effects) -> bool:
    if state.status in FINAL_JOB_STATUSES or not state.paused_by_user:
        return False
    state.paused_by_user = False
    state.status = JobStatus.RUNNING
    fx.job_dirty = True
    _emit(state, fx, 0, ev.JOB_RESUMED, now)
    _request_leases(state, fx)
    return True


def cancel(state: JobState, now: float, fx: Effects) -> bool:
    """S26: running attempts are terminated, every unfinished sheet ends cancelled."""
    if state.status in FINAL_JOB_STATUSES or state.cancelling:
        return False
    state.cancelling = True
    fx.job_dirty = True
    _withdraw_lease_requests(state, fx)
    for sheet in state.sheets:
        if sheet.is_terminal:
            continue
        if sheet.status is SheetStatus.DISPATCHED:
            sheet.cancel_requested = True
            fx.cancel_attempts.append(sheet.num)
        else:
            sheet.retry_at = None
            _set_status(state, sheet, SheetStatus.CANCELLED, fx)
    _finish_if_done(state, now, fx)
    return True


# --- reports -------------------------------------------------------------------------


def job_result(state: JobState) -> JobResult:
    return JobResult(
        job_id=state.job_id,
        status=state.status,
        cost=state.cost,
        sheets={
            sheet.num: SheetResult(
                num=sheet.num,
                status=sheet.status,
                attempts=sheet.attempts,
                cost=sheet.cost,
                error=sheet.last_error,
                error_kind=sheet.error_kind,
            )
            for sheet in state.sheets
        },
    )


def job_progress(state: JobState) -> JobProgress:
    return JobProgress(
        job_id=state.job_id,
        name=state.plan.name,
        status=state.status,
        total_sheets=state.total_sheets,
        counts={status.value: count for status, count in state.counts.items() if count},
        cost=state.cost,
    )


# --- internals -----------------------------------------------------------------------


def _set_status(state: JobState, sheet: SheetState, status: SheetStatus, fx: Effects) -> None:
    counts = state.counts
    counts[sheet.status] -= 1
    counts[status] = counts.get(status, 0) + 1
    sheet.status = status
    fx.dirty_sheets.add(sheet.num)


def _make_ready(state: JobState, sheet: SheetState, fx: Effects) -> None:
    _set_status(state, sheet, SheetStatus.READY, fx)
    state.ready_queue.append(sheet.num)


def _request_leases(state: JobState, fx: Effects) -> None:
    """Ask for leases for ready sheets, FIFO, up to the job's own limit (S22)."""
    if state.paused_by_user or state.cancelling or state.status in FINAL_JOB_STATUSES:
        return
    room = state.plan.max_parallel - state.running - len(state.lease_requested)
    queue = state.ready_queue
    while room > 0 and queue:
        sheet_num = queue.popleft()
        sheet = state.sheet(sheet_num)
        if sheet.status is not SheetStatus.READY or sheet_num in state.lease_requested:
            continue  # left in the queue by a status change; dropped lazily
        state.lease_requested.add(sheet_num)
        fx.lease_requests.append(LeaseRequest(sheet_num, state.plan.sheet(sheet_num).instrument))
        room -= 1


def _withdraw_lease_requests(state: JobState, fx: Effects) -> None:
    if not state.lease_requested:
        return
    fx.withdraw_lease_requests = True
    fx.lease_requests.clear()
    state.ready_queue.extendleft(sorted(state.lease_requested, reverse=True))
    state.lease_requested.clear()


def _release_dependents(state: JobState, sheet_num: int, fx: Effects) -> None:
    for dependent_num in state.plan.dependents.get(sheet_num, ()):
        dependent = state.sheet(dependent_num)
        if dependent.status is not SheetStatus.PENDING:
            continue
        dependent.unmet_dependencies -= 1
        if dependent.unmet_dependencies == 0:
            _make_ready(state, dependent, fx)


def _cascade_failure(state: JobState, failed_num: int, now: float, fx: Effects) -> None:
    """S2: every dependent that can no longer run is skipped, transitively."""
    reason = f"blocked by failed dependency: sheet {failed_num}"
    stack = list(state.plan.dependents.get(failed_num, ()))
    while stack:
        sheet = state.sheet(stack.pop())
        if sheet.is_terminal or sheet.status is SheetStatus.DISPATCHED:
            continue
        sheet.skip_reason = SkipReason.CASCADE
        sheet.last_error = reason
        sheet.retry_at = None
        _set_status(state, sheet, SheetStatus.SKIPPED, fx)
        _emit(state, fx, sheet.num, ev.SHEET_SKIPPED, now, reason=reason)
        stack.extend(state.plan.dependents.get(sheet.num, ()))


def _finish_if_done(state: JobState, now: float, fx: Effects) -> None:
    """S27, S28: once every sheet is terminal the job has its final status."""
    if state.status in FINAL_JOB_STATUSES or state.terminal_count < state.total_sheets:
        return
    if state.cancelling:
        final, event = JobStatus.CANCELLED, ev.JOB_CANCELLED
    elif state.counts.get(SheetStatus.FAILED, 0):
        final, event = JobStatus.FAILED, ev.JOB_FAILED
    else:
        final, event = JobStatus.COMPLETED, ev.JOB_COMPLETED
    state.status = final
    fx.job_dirty = True
    fx.finished = final
    counts = {status.value: count for status, count in state.counts.items() if count}
    _emit(state, fx, 0, event, now, counts=counts, cost=state.cost)


def _emit(state: JobState, fx: Effects, sheet_num: int, name: str, now: float, **data: Any) -> None:
    fx.events.append(Event(state.job_id, sheet_num, name, now, data))
