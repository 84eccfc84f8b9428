"""The decision core: what happens to a job and its sheets on every message.

Every function here takes the job state, one input (a start, a lease grant or
refusal, an attempt result, a timer, a host command) and the time, updates the
state in place and appends what must happen next to an ``Effects``: journal
the changed sheets, request leases, start attempts, arm timers, block a
rate-limited instrument, cancel attempts, publish events, report the job
finished. The JobActor carries the effects out after it has committed the
journal (DESIGN rules 2 and 3).

It imports no gevent, no pykka and does no I/O. Cost per call is proportional to
the sheets it touches: readiness moves through per-sheet counters of unmet
dependencies, never by walking all sheets (rule 5). The only whole-job walks are
a job's start and its cancellation, each done once.

Rules implemented here: S1-S3 (readiness, cascade), S6-S12 and S14 (attempt
outcomes, budgets, backoff), S15-S16 (exhaustion: fallback, self-healing,
fermata), S17-S20 (the sheet's side of rate limits), S22 (the job's own
limit), S23 (pacing), S24 (cost), S25-S28 (job control and final status).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime import events as ev
from runtime.conditions import skip_when_verdict
from runtime.context import PriorOutput, lookback_window
from runtime.events import Event
from runtime.outcomes import AttemptResult, OutcomeKind
from runtime.plan import Plan
from runtime.policy import Policy, policy_from_plan
from runtime.prompts import sheet_variables
from runtime.state import (
    CHECKPOINTED_FIELDS,
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

PACING_TIMER = 0  # the sheet number of the job's own pacing timer (S23)
FERMATA_DECISIONS = ("retry", "skip", "accept", "fail")


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    sheet_num: int
    instrument: str
    model: str | None
    has_fallback: bool


@dataclass(frozen=True, slots=True)
class AttemptOrder:
    """Start attempt number ``attempt`` of a sheet on the granted lease.

    ``retry_number`` is 0 for a first run and k for retry #k (S11);
    ``completion`` marks a completion-mode attempt whose prompt gets the
    completion note built from ``validations`` (S8).
    """

    sheet_num: int
    attempt: int
    lease: Any
    instrument: str
    model: str | None
    retry_number: int
    completion: bool
    validations: tuple[tuple[str, bool], ...]
    prior_outputs: Mapping[int, PriorOutput] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TimerOrder:
    """Call ``on_timer`` for this sheet (or ``PACING_TIMER``) at ``due``."""

    sheet_num: int
    due: float


@dataclass(frozen=True, slots=True)
class BlockOrder:
    """S17: no leases for this instrument (and model, if given) until ``until``."""

    instrument: str
    model: str | None
    until: float


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
    blocks: list[BlockOrder] = field(default_factory=list)
    cancel_attempts: list[int] = field(default_factory=list)
    skip_checks: list[int] = field(default_factory=list)
    # (lease, AttemptResult.instrument_health of the attempt that held it, or None)
    released_leases: list[tuple[Any, bool | None]] = field(default_factory=list)
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
            or self.blocks
            or self.cancel_attempts
            or self.skip_checks
            or self.released_leases
            or self.finished
        )


def merge_effects(first: Effects, then: Effects) -> Effects:
    """One batch that does what ``first`` and then ``then`` do."""
    return Effects(
        dirty_sheets=first.dirty_sheets | then.dirty_sheets,
        job_dirty=first.job_dirty or then.job_dirty,
        events=first.events + then.events,
        lease_requests=first.lease_requests + then.lease_requests,
        withdraw_lease_requests=first.withdraw_lease_requests or then.withdraw_lease_requests,
        attempts=first.attempts + then.attempts,
        timers=first.timers + then.timers,
        blocks=first.blocks + then.blocks,
        cancel_attempts=first.cancel_attempts + then.cancel_attempts,
        skip_checks=first.skip_checks + then.skip_checks,
        released_leases=first.released_leases + then.released_leases,
        finished=then.finished or first.finished,
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


def new_job(
    job_id: str,
    plan: Plan,
    policy: Policy | None = None,
    seed: int | None = None,
    variables: Mapping[str, Any] | None = None,
) -> JobState:
    sheets = [SheetState(num=sheet.num) for sheet in plan.sheets]
    for sheet in sheets:
        sheet.unmet_dependencies = len(plan.dependencies.get(sheet.num, ()))
    # Without an explicit policy the plan's own settings apply (its retry,
    # rate_limit, circuit_breaker, cost_limits and pacing), never bare defaults.
    if policy is None:
        policy = policy_from_plan(plan)
    state = JobState(job_id=job_id, plan=plan, sheets=sheets, policy=policy)
    state.variables = dict(variables or {})
    state.counts[SheetStatus.PENDING] = len(sheets)
    if seed is not None:
        state.rng.seed(seed)
    return state


def start(state: JobState, now: float, fx: Effects) -> None:
    """Make every sheet without dependencies ready and ask for leases (S1, S28)."""
    if state.started:
        return
    state.started = True
    _emit(state, fx, 0, ev.JOB_STARTED, now, total_sheets=state.total_sheets)
    fx.job_dirty = True
    for sheet in state.sheets:
        ready = sheet.status is SheetStatus.PENDING and sheet.unmet_dependencies == 0
        if ready and _became_ready(state, sheet, now, fx):
            _release_dependents(state, sheet.num, now, fx)
    _request_leases(state, now, fx)
    _finish_if_done(state, now, fx)


# --- leases and attempts --------------------------------------------------------------


def on_leases_granted(
    state: JobState, grants: Iterable[tuple[int, Any]], now: float, fx: Effects
) -> None:
    """A lease per sheet: the sheet is dispatched and its next attempt starts (rule 3)."""
    blocked = _dispatch_blocked(state, now)
    given_back: list[int] = []
    for sheet_num, lease in grants:
        if sheet_num not in state.lease_requested:
            fx.released_leases.append((lease, None))
            continue
        sheet = state.sheet(sheet_num)
        if _lease_key(lease) not in (None, current_instrument(state, sheet)):
            # A stale grant for a request made before the sheet moved to a
            # fallback instrument (a pause withdrew it while the grant was on
            # its way): running on it would bypass the instrument's breaker.
            # The request for the current instrument is still queued.
            fx.released_leases.append((lease, None))
            continue
        state.lease_requested.discard(sheet_num)
        if blocked or sheet.status not in (SheetStatus.READY, SheetStatus.WAITING):
            fx.released_leases.append((lease, None))
            if sheet.status in (SheetStatus.READY, SheetStatus.WAITING):
                given_back.append(sheet_num)
            continue
        _dispatch(state, sheet, lease, now, fx)
    # Back to the front of the queue in their order (S22: FIFO within a job).
    state.ready_queue.extendleft(reversed(given_back))


def _lease_key(lease: Any) -> tuple[str, str | None] | None:
    """The (instrument, model) a lease is for, when the lease says (pool leases do)."""
    instrument = getattr(lease, "instrument", None)
    return None if instrument is None else (instrument, getattr(lease, "model", None))


def _dispatch(state: JobState, sheet: SheetState, lease: Any, now: float, fx: Effects) -> None:
    sheet.attempts += 1
    sheet.lease = lease
    sheet.retry_at = None
    completion = sheet.completion_pending
    _set_status(state, sheet, SheetStatus.DISPATCHED, fx)
    state.running += 1
    instrument, model = current_instrument(state, sheet)
    fx.attempts.append(
        AttemptOrder(
            sheet_num=sheet.num,
            attempt=sheet.attempts,
            lease=lease,
            instrument=instrument,
            model=model,
            # A completion attempt is not a retry: its prompt gets the completion note.
            retry_number=0 if completion else sheet.retries_used,
            completion=completion,
            validations=sheet.validations if completion else (),
            prior_outputs=prior_outputs(state, sheet.num),
        )
    )
    _emit(
        state, fx, sheet.num, ev.SHEET_DISPATCHED, now,
        attempt=sheet.attempts, instrument=instrument, model=model, completion=completion,
    )  # fmt: skip


def on_leases_refused(
    state: JobState, refusals: Iterable[tuple[int, str, str]], now: float, fx: Effects
) -> None:
    """S21: the pool refused a sheet's request (its instrument's breaker is open):
    a sheet with a fallback moves on to it with fresh budgets."""
    for sheet_num, instrument, reason in refusals:
        if sheet_num not in state.lease_requested:
            continue
        sheet = state.sheet(sheet_num)
        if current_instrument(state, sheet)[0] != instrument:
            # A stale refusal, for a request the sheet no longer has (a pause
            # withdrew it and the sheet has moved on since): its fallback is
            # not skipped on the strength of the old instrument's breaker.
            continue
        state.lease_requested.discard(sheet_num)
        if sheet.status not in (SheetStatus.READY, SheetStatus.WAITING):
            continue
        _fall_back(state, sheet, reason, now, fx)
        # Requested sheets left the ready queue: back to its front, on the new
        # instrument or, without a fallback, to wait for the breaker's trial.
        state.ready_queue.appendleft(sheet_num)
    _request_leases(state, now, fx)


def on_attempt_finished(
    state: JobState, sheet_num: int, attempt: int, result: AttemptResult, now: float, fx: Effects
) -> bool:
    """Apply one attempt's result (S6-S12, S17, S20, S24). False for a stale report."""
    if not state.has_sheet(sheet_num):
        return False
    sheet = state.sheet(sheet_num)
    if sheet.status is not SheetStatus.DISPATCHED or attempt != sheet.attempts:
        return False
    state.running -= 1
    # The job gives the lease back after committing the result, in one message
    # per batch: a slot is never reused before the attempt's outcome is durable.
    if sheet.lease is not None:
        fx.released_leases.append((sheet.lease, result.instrument_health))
        sheet.lease = None
    # A completion attempt (S8) that taught nothing (rate limited, or cancelled
    # from outside) stays one: the next attempt is the completion again.
    was_completion, sheet.completion_pending = sheet.completion_pending, False
    if result.kind is OutcomeKind.SUCCESS:
        # S31: later sheets see the last successful attempt's output, even an
        # empty one; a failed attempt's words never stand in for it.
        sheet.output_tail = result.output_tail
    if result.validations:
        sheet.validations = result.validations
    _add_cost(state, sheet, result.cost, now, fx)
    if result.kind is not OutcomeKind.RATE_LIMITED:
        sheet.rate_limit_waits = 0

    if sheet.cancel_requested:
        _set_status(state, sheet, SheetStatus.CANCELLED, fx)
        _emit(state, fx, sheet_num, ev.SHEET_CANCELLED, now)
    elif _over_sheet_cost(state, sheet):
        limit = state.policy.cost.max_cost_per_sheet
        _emit(
            state, fx, sheet_num, ev.COST_EXCEEDED, now, scope="sheet", cost=sheet.cost, limit=limit
        )
        _fail(
            state, sheet, f"sheet cost {sheet.cost:.4f} is over max_cost_per_sheet ({limit:g})",
            "cost", now, fx,
        )  # fmt: skip
    elif result.kind is OutcomeKind.CANCELLED:
        # Cancelled from outside the job (the runtime is stopping): nothing was
        # learned about the sheet, so it is ready again and no retry is spent.
        sheet.attempts -= 1
        sheet.completion_pending = was_completion
        _make_ready(state, sheet, fx)
    elif result.kind is OutcomeKind.RATE_LIMITED:
        sheet.completion_pending = was_completion
        _rate_limited(state, sheet, result, now, fx)
    elif result.kind is OutcomeKind.SUCCESS and result.pass_rate >= 100.0:
        _complete(state, sheet, result, now, fx)
    elif result.kind is OutcomeKind.SUCCESS and _is_partial(state, result):
        _partial(state, sheet, result, now, fx)
    else:
        _attempt_failed(state, sheet, result, now, fx)
    _request_leases(state, now, fx)
    _finish_if_done(state, now, fx)
    return True


def on_attempt_lost(state: JobState, sheet_num: int, error: str, now: float, fx: Effects) -> None:
    """S14: the sheet actor died without reporting: a failed attempt, classified as crash."""
    if not state.has_sheet(sheet_num):
        return
    sheet = state.sheet(sheet_num)
    if sheet.status is not SheetStatus.DISPATCHED:
        return
    # Our actor crashed, not the instrument: its breaker hears nothing of it.
    lost = AttemptResult(kind=OutcomeKind.CRASHED, error=error, not_the_instruments_fault=True)
    on_attempt_finished(state, sheet_num, sheet.attempts, lost, now, fx)


def on_timer(state: JobState, sheet_num: int, now: float, fx: Effects) -> None:
    """A retry or completion delay (S8, S10) or the job's pacing (S23) is over."""
    # A timer can fire before its time by this clock: timers run on a monotonic
    # clock and ``now`` is wall time, which NTP may step back. Such a timer is
    # armed again for the time still to wait, or nothing would ever wake the
    # sheet (or the paced job) again. A stale one, from before a later
    # reschedule, is armed again too; the later timer finds nothing to do.
    if sheet_num == PACING_TIMER:
        if state.paced_until is not None and state.paced_until > now:
            fx.timers.append(TimerOrder(PACING_TIMER, state.paced_until))
        elif state.paced_until is not None:
            state.paced_until = None
            fx.job_dirty = True
            _request_leases(state, now, fx)
        return
    if not state.has_sheet(sheet_num):
        return
    sheet = state.sheet(sheet_num)
    if sheet.status is not SheetStatus.RETRY_SCHEDULED:
        return
    if sheet.retry_at is not None and sheet.retry_at > now:
        fx.timers.append(TimerOrder(sheet.num, sheet.retry_at))
        return
    sheet.retry_at = None
    _make_ready(state, sheet, fx)
    _request_leases(state, now, fx)


# --- outcomes ------------------------------------------------------------------------


def _complete(
    state: JobState, sheet: SheetState, result: AttemptResult, now: float, fx: Effects
) -> None:
    """S7: success at 100 % completes the sheet and releases its dependents."""
    sheet.last_error = None
    sheet.error_kind = None
    _set_status(state, sheet, SheetStatus.COMPLETED, fx)
    _emit(
        state, fx, sheet.num, ev.SHEET_COMPLETED, now,
        attempt=sheet.attempts, cost=result.cost, duration_seconds=result.duration_seconds,
    )  # fmt: skip
    _release_dependents(state, sheet.num, now, fx)
    pacing = state.policy.pause_between_sheets_seconds
    if pacing > 0 and state.running == 0 and not state.cancelling:
        state.paced_until = now + pacing
        fx.job_dirty = True
        fx.timers.append(TimerOrder(PACING_TIMER, state.paced_until))


def _is_partial(state: JobState, result: AttemptResult) -> bool:
    """S8: a pass rate at or above the threshold and below 100 is partial success."""
    rate = result.pass_rate
    return 0.0 < rate < 100.0 and rate >= state.policy.retry.completion_threshold_percent


def _partial(
    state: JobState, sheet: SheetState, result: AttemptResult, now: float, fx: Effects
) -> None:
    """S8: completion mode: the next attempt gets the completion note, on the
    completion budget, after the completion delay."""
    retry = state.policy.retry
    if sheet.completion_attempts >= retry.max_completion_attempts:
        # The completion budget is spent: from now on a partial result is a
        # failure and spends a retry (S9); exhaustion comes when those are gone.
        _attempt_failed(state, sheet, result, now, fx)
        return
    sheet.last_error = _validation_error(result)
    sheet.error_kind = "partial"
    sheet.completion_attempts += 1
    sheet.completion_pending = True
    _emit(
        state, fx, sheet.num, ev.SHEET_PARTIAL, now,
        attempt=sheet.attempts, pass_rate=result.pass_rate,
        completion_attempt=sheet.completion_attempts,
    )  # fmt: skip
    _schedule_retry(state, sheet, retry.completion_delay_seconds, now, fx)


def _attempt_failed(
    state: JobState, sheet: SheetState, result: AttemptResult, now: float, fx: Effects
) -> None:
    """S9, S12: a failure spends one retry; an authentication failure is never retried."""
    kind = result.kind
    if kind is OutcomeKind.SUCCESS:
        kind = OutcomeKind.FAILURE  # the instrument succeeded, too few validations passed
        error = _validation_error(result)
    else:
        error = result.error or _default_error(result)
    sheet.last_error = error
    sheet.error_kind = kind.value
    if kind is OutcomeKind.AUTH_FAILED:
        if not _fall_back(state, sheet, "authentication failed", now, fx):
            _fail(state, sheet, error, kind.value, now, fx)
        return
    retry = state.policy.retry
    if sheet.retries_used < retry.max_retries:
        sheet.retries_used += 1
        delay = retry.delay(sheet.retries_used, state.rng.random())
        _emit(
            state, fx, sheet.num, ev.SHEET_RETRY_SCHEDULED, now,
            attempt=sheet.attempts, retry=sheet.retries_used, delay_seconds=delay,
            error=error, error_kind=kind.value,
        )  # fmt: skip
        _schedule_retry(state, sheet, delay, now, fx)
        return
    _exhausted(state, sheet, now, fx)


def _rate_limited(
    state: JobState, sheet: SheetState, result: AttemptResult, now: float, fx: Effects
) -> None:
    """S17, S20: no retry is spent; the instrument is blocked and the sheet waits
    for its next lease. Too many waits in a row fail the sheet."""
    limits = state.policy.rate_limit
    sheet.rate_limit_waits += 1
    if sheet.rate_limit_waits > limits.max_waits:
        _fail(
            state, sheet,
            f"rate limited {sheet.rate_limit_waits} times in a row (rate_limit.max_waits is "
            f"{limits.max_waits})",
            OutcomeKind.RATE_LIMITED.value, now, fx,
        )  # fmt: skip
        return
    wait = result.wait_seconds if result.wait_seconds is not None else limits.wait_minutes * 60
    instrument, model = current_instrument(state, sheet)
    sheet.retry_at = now + wait
    sheet.last_error = result.error or "rate limited"
    sheet.error_kind = OutcomeKind.RATE_LIMITED.value
    _set_status(state, sheet, SheetStatus.WAITING, fx)
    state.ready_queue.appendleft(sheet.num)
    fx.blocks.append(BlockOrder(instrument, model, sheet.retry_at))
    _emit(
        state, fx, sheet.num, ev.RATE_LIMIT_ACTIVE, now,
        instrument=instrument, model=model, wait_seconds=wait, waits=sheet.rate_limit_waits,
    )  # fmt: skip


def _exhausted(state: JobState, sheet: SheetState, now: float, fx: Effects) -> None:
    """S15: budgets are spent: fallback, else self-healing, else fermata, else failed."""
    if _fall_back(state, sheet, "retries exhausted", now, fx):
        return
    policy = state.policy
    if policy.self_healing and not sheet.healing_used:
        sheet.healing_used = True
        _emit(
            state, fx, sheet.num, ev.SHEET_RETRY_SCHEDULED, now, self_healing=True, delay_seconds=0
        )
        _make_ready(state, sheet, fx)
        return
    if policy.escalation:
        _set_status(state, sheet, SheetStatus.FERMATA, fx)
        state.open_fermatas += 1
        _emit(state, fx, sheet.num, ev.SHEET_FERMATA, now, error=sheet.last_error)
        _update_pause(state, now, fx)
        return
    _fail(state, sheet, sheet.last_error or "failed", sheet.error_kind or "failure", now, fx)


def _fall_back(state: JobState, sheet: SheetState, reason: str, now: float, fx: Effects) -> bool:
    """Move the sheet to its next fallback instrument with fresh budgets (S15)."""
    chain = instrument_chain(state, sheet.num)
    if sheet.instrument_index + 1 >= len(chain):
        return False
    previous = chain[sheet.instrument_index]
    sheet.instrument_index += 1
    sheet.retries_used = 0
    sheet.completion_attempts = 0
    sheet.completion_pending = False
    sheet.healing_used = False
    sheet.rate_limit_waits = 0
    _emit(
        state, fx, sheet.num, ev.INSTRUMENT_FALLBACK, now,
        from_instrument=previous, to_instrument=chain[sheet.instrument_index], reason=reason,
    )  # fmt: skip
    if sheet.status in (SheetStatus.READY, SheetStatus.WAITING):
        # A refused request (S21): the caller puts the sheet back in the queue.
        sheet.retry_at = None
        _set_status(state, sheet, SheetStatus.READY, fx)
    else:
        _make_ready(state, sheet, fx)
    return True


def _fail(
    state: JobState, sheet: SheetState, error: str, kind: str, now: float, fx: Effects
) -> None:
    sheet.last_error = error
    sheet.error_kind = kind
    sheet.retry_at = None
    _set_status(state, sheet, SheetStatus.FAILED, fx)
    _emit(
        state,
        fx,
        sheet.num,
        ev.SHEET_FAILED,
        now,
        attempts=sheet.attempts,
        error=error,
        error_kind=kind,
    )
    _cascade_failure(state, sheet.num, now, fx)


def _schedule_retry(
    state: JobState, sheet: SheetState, delay: float, now: float, fx: Effects
) -> None:
    if delay <= 0:
        _make_ready(state, sheet, fx)
        return
    sheet.retry_at = now + delay
    _set_status(state, sheet, SheetStatus.RETRY_SCHEDULED, fx)
    fx.timers.append(TimerOrder(sheet.num, sheet.retry_at))


def _validation_error(result: AttemptResult) -> str:
    if result.error:
        return result.error
    failed = [name for name, passed in result.validations if not passed]
    detail = f": {', '.join(failed)}" if failed else ""
    return f"validations passed {result.validations_passed} of {result.validations_total}{detail}"


def _default_error(result: AttemptResult) -> str:
    if result.kind is OutcomeKind.TIMEOUT:
        return "attempt timed out"
    if result.exit_code is not None:
        return f"instrument exited with code {result.exit_code}"
    return f"attempt ended: {result.kind.value}"


# --- cost (S24) ------------------------------------------------------------------------


def _add_cost(state: JobState, sheet: SheetState, cost: float, now: float, fx: Effects) -> None:
    if not cost:
        return
    sheet.cost += cost
    state.cost += cost
    fx.job_dirty = True
    _check_job_cost(state, now, fx)


def _check_job_cost(state: JobState, now: float, fx: Effects) -> None:
    """S24: warn once at ``warn_at_percent``, pause once over ``max_cost_per_job``."""
    limit = state.policy.cost.max_cost_per_job
    if limit is None:
        return
    if not state.cost_warned and state.cost >= limit * state.policy.cost.warn_at_percent / 100:
        state.cost_warned = True
        _emit(state, fx, 0, ev.COST_WARNING, now, cost=state.cost, limit=limit)
    if state.cost > limit and not state.paused_for_cost:
        state.paused_for_cost = True
        _emit(state, fx, 0, ev.COST_EXCEEDED, now, scope="job", cost=state.cost, limit=limit)
        _update_pause(state, now, fx)


def _over_sheet_cost(state: JobState, sheet: SheetState) -> bool:
    limit = state.policy.cost.max_cost_per_sheet
    return limit is not None and sheet.cost > limit


# --- job control -------------------------------------------------------------------


def pause(state: JobState, now: float, fx: Effects) -> bool:
    """S25: no new dispatch; running attempts finish and apply."""
    if state.status in FINAL_JOB_STATUSES or state.paused_by_user or state.cancelling:
        return False
    state.paused_by_user = True
    fx.job_dirty = True
    _update_pause(state, now, fx)
    return True


def resume(state: JobState, now: float, fx: Effects) -> bool:
    """S25, S24: dispatch again, unless a fermata is open or the cost is still over."""
    if state.storage_error and state.status in FINAL_JOB_STATUSES:
        # Only the final batch is waiting: resuming retries its commit.
        state.storage_error = None
        fx.job_dirty = True
        return True
    if state.status in FINAL_JOB_STATUSES or not (
        state.paused_by_user or state.paused_for_cost or state.storage_error
    ):
        return False
    state.paused_by_user = False
    state.paused_for_cost = False
    state.storage_error = None
    fx.job_dirty = True
    limit = state.policy.cost.max_cost_per_job
    if limit is not None and state.cost > limit:
        state.paused_for_cost = True
        _emit(state, fx, 0, ev.COST_EXCEEDED, now, scope="job", cost=state.cost, limit=limit)
    _update_pause(state, now, fx)
    _request_leases(state, now, fx)
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
    state.open_fermatas = 0
    _finish_if_done(state, now, fx)
    return True


def resolve_fermata(
    state: JobState, sheet_num: int, decision: str, now: float, fx: Effects
) -> bool:
    """S16: a human decides about a sheet in fermata. False if it is not in one."""
    if decision not in FERMATA_DECISIONS:
        raise ValueError(
            f"unknown fermata decision {decision!r}; use one of {', '.join(FERMATA_DECISIONS)}"
        )
    if not state.has_sheet(sheet_num):
        return False
    sheet = state.sheet(sheet_num)
    if sheet.status is not SheetStatus.FERMATA:
        return False
    state.open_fermatas -= 1
    if decision == "retry":
        sheet.retries_used = 0
        sheet.completion_attempts = 0
        sheet.healing_used = False
        _make_ready(state, sheet, fx)
    elif decision == "skip":
        sheet.skip_reason = SkipReason.USER
        _set_status(state, sheet, SheetStatus.SKIPPED, fx)
        _emit(state, fx, sheet_num, ev.SHEET_SKIPPED, now, reason="skipped at fermata")
        _release_dependents(state, sheet_num, now, fx)
    elif decision == "accept":
        sheet.last_error = None
        sheet.error_kind = None
        _set_status(state, sheet, SheetStatus.COMPLETED, fx)
        _emit(state, fx, sheet_num, ev.SHEET_COMPLETED, now, accepted_at_fermata=True)
        _release_dependents(state, sheet_num, now, fx)
    else:
        _fail(
            state,
            sheet,
            sheet.last_error or "failed at fermata",
            sheet.error_kind or "failure",
            now,
            fx,
        )
    _update_pause(state, now, fx)
    _request_leases(state, now, fx)
    _finish_if_done(state, now, fx)
    return True


def storage_failed(state: JobState, error: str, now: float, fx: Effects) -> None:
    """The checkpoint could not be written: the job pauses until ``resume`` (DESIGN
    rule 3: nothing of the failed batch was released). Nothing committed is lost.
    A job whose final batch failed keeps its final status in memory, but is not
    reported final until that batch is committed."""
    state.storage_error = error
    if state.status in FINAL_JOB_STATUSES:
        _emit(state, fx, 0, ev.JOB_PAUSED, now, reason="storage", error=error)
        return
    _update_pause(state, now, fx)


# --- reports -------------------------------------------------------------------------


def job_result(state: JobState) -> JobResult:
    return JobResult(
        job_id=state.job_id,
        status=state.status,
        cost=state.cost,
        sheets={sheet.num: SheetResult.of(sheet) for sheet in state.sheets},
        name=state.plan.name,
    )


def job_progress(state: JobState) -> JobProgress:
    # A job whose last batch is held by a storage error is paused, final or not.
    return JobProgress(
        job_id=state.job_id,
        name=state.plan.name,
        status=JobStatus.PAUSED if state.storage_error else state.status,
        total_sheets=state.total_sheets,
        counts={status.value: count for status, count in state.counts.items() if count},
        cost=state.cost,
        pause_reason=_pause_reason(state),
    )


def _pause_reason(state: JobState) -> str | None:
    if state.storage_error:
        return f"storage: {state.storage_error}"
    if state.status is not JobStatus.PAUSED:
        return None
    return _pause_cause(state)


def instrument_chain(state: JobState, sheet_num: int) -> tuple[str, ...]:
    """The sheet's instrument followed by its fallbacks, in order (S15)."""
    sheet_plan = state.plan.sheet(sheet_num)
    return (sheet_plan.instrument, *sheet_plan.fallbacks)


def current_instrument(state: JobState, sheet: SheetState) -> tuple[str, str | None]:
    """The instrument and model the sheet's next attempt runs on."""
    sheet_plan = state.plan.sheet(sheet.num)
    if sheet.instrument_index == 0:
        return sheet_plan.instrument, sheet_plan.model
    index = sheet.instrument_index - 1
    models = sheet_plan.fallback_models
    return sheet_plan.fallbacks[index], models[index] if index < len(models) else None


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


def _pause_cause(state: JobState) -> str | None:
    """What holds the job, the most pressing first when several do: a storage
    error, an open fermata (S16, a decision is awaited), its cost (S24), the
    user (S25). The job.paused event and progress both say this one."""
    if state.storage_error:
        return "storage"
    if state.open_fermatas:
        return "fermata"
    if state.paused_for_cost:
        return "cost"
    if state.paused_by_user:
        return "user"
    return None


def _held(state: JobState) -> bool:
    return _pause_cause(state) is not None


def _dispatch_blocked(state: JobState, now: float) -> bool:
    if _held(state) or state.cancelling:
        return True
    return state.paced_until is not None and now < state.paced_until


def _update_pause(state: JobState, now: float, fx: Effects) -> None:
    """Keep the job's status in step with its pause reasons (S16, S24, S25)."""
    if state.status in FINAL_JOB_STATUSES or state.cancelling:
        return
    paused = _held(state)
    if paused and state.status is JobStatus.RUNNING:
        state.status = JobStatus.PAUSED
        fx.job_dirty = True
        _withdraw_lease_requests(state, fx)
        if state.storage_error:
            _emit(state, fx, 0, ev.JOB_PAUSED, now, reason="storage", error=state.storage_error)
        else:
            _emit(state, fx, 0, ev.JOB_PAUSED, now, reason=_pause_cause(state))
    elif not paused and state.status is JobStatus.PAUSED:
        state.status = JobStatus.RUNNING
        fx.job_dirty = True
        _emit(state, fx, 0, ev.JOB_RESUMED, now)
    elif paused:
        _withdraw_lease_requests(state, fx)


def _request_leases(state: JobState, now: float, fx: Effects) -> None:
    """Ask for leases for ready sheets, FIFO, up to the job's own limit (S22)."""
    if state.status in FINAL_JOB_STATUSES or _dispatch_blocked(state, now):
        return
    room = state.plan.max_parallel - state.running - len(state.lease_requested)
    queue = state.ready_queue
    while room > 0 and queue:
        sheet_num = queue.popleft()
        sheet = state.sheet(sheet_num)
        if sheet.status not in (SheetStatus.READY, SheetStatus.WAITING):
            continue  # left in the queue by a status change; dropped lazily
        if sheet_num in state.lease_requested:
            continue
        state.lease_requested.add(sheet_num)
        instrument, model = current_instrument(state, sheet)
        has_fallback = sheet.instrument_index + 1 < len(instrument_chain(state, sheet_num))
        fx.lease_requests.append(LeaseRequest(sheet_num, instrument, model, has_fallback))
        room -= 1


def _withdraw_lease_requests(state: JobState, fx: Effects) -> None:
    if not state.lease_requested:
        return
    fx.withdraw_lease_requests = True
    fx.lease_requests.clear()
    state.ready_queue.extendleft(sorted(state.lease_requested, reverse=True))
    state.lease_requested.clear()


def _release_dependents(state: JobState, sheet_num: int, now: float, fx: Effects) -> None:
    """S1: a satisfied sheet counts down its dependents; those with nothing left
    unmet become ready, or are skipped by their condition (S5) and count down
    theirs in turn. A worklist, not recursion: a long chain of skips is fine."""
    satisfied = [sheet_num]
    while satisfied:
        for dependent_num in state.plan.dependents.get(satisfied.pop(), ()):
            dependent = state.sheet(dependent_num)
            if dependent.status is not SheetStatus.PENDING:
                continue
            dependent.unmet_dependencies -= 1
            if dependent.unmet_dependencies == 0 and _became_ready(state, dependent, now, fx):
                satisfied.append(dependent_num)


def _became_ready(state: JobState, sheet: SheetState, now: float, fx: Effects) -> bool:
    """A sheet's dependencies are all satisfied for the first time. S5: its
    ``skip_when`` is evaluated now (True: it was skipped); a ``skip_when_command``
    is run by the job, and the sheet waits, ready but not queued, for the verdict."""
    sheet_plan = state.plan.sheet(sheet.num)
    if sheet_plan.skip_when:
        variables = {**sheet_variables(state.plan, sheet_plan), **state.variables}
        verdict = skip_when_verdict(sheet_plan.skip_when, variables)
        if verdict.skip:
            _skip_by_condition(state, sheet, verdict.reason, now, fx)
            return True
        if verdict.reason:
            note = verdict.reason
            _emit(state, fx, sheet.num, ev.SHEET_SKIP_CHECKED, now, skipped=False, note=note)
    if sheet_plan.skip_when_command is not None:
        _set_status(state, sheet, SheetStatus.READY, fx)
        fx.skip_checks.append(sheet.num)
        return False
    _make_ready(state, sheet, fx)
    return False


def on_skip_verdict(
    state: JobState, sheet_num: int, skip: bool, reason: str, now: float, fx: Effects
) -> None:
    """S5: the sheet's ``skip_when_command`` answered: skip it, or queue it to run."""
    if not state.has_sheet(sheet_num):
        return
    sheet = state.sheet(sheet_num)
    if sheet.status is not SheetStatus.READY or sheet.attempts:
        return
    if skip:
        _skip_by_condition(state, sheet, reason, now, fx)
        _release_dependents(state, sheet_num, now, fx)
    else:
        if reason:
            _emit(state, fx, sheet_num, ev.SHEET_SKIP_CHECKED, now, skipped=False, note=reason)
        state.ready_queue.append(sheet_num)
    _request_leases(state, now, fx)
    _finish_if_done(state, now, fx)


def _skip_by_condition(
    state: JobState, sheet: SheetState, reason: str, now: float, fx: Effects
) -> None:
    sheet.skip_reason = SkipReason.CONDITION
    sheet.last_error = None
    _set_status(state, sheet, SheetStatus.SKIPPED, fx)
    _emit(state, fx, sheet.num, ev.SHEET_SKIPPED, now, reason=reason)


def prior_outputs(state: JobState, sheet_num: int) -> dict[int, PriorOutput]:
    """S31: what the sheet may see of earlier sheets: the last good output of each
    completed one, a marker for each skipped one, within the lookback window."""
    cross = state.plan.cross_sheet
    if cross is None or not cross.auto_capture_stdout:
        return {}
    outputs: dict[int, PriorOutput] = {}
    for num in lookback_window(sheet_num, cross.lookback_sheets):
        earlier = state.sheet(num)
        if earlier.status is SheetStatus.COMPLETED:
            outputs[num] = PriorOutput(earlier.output_tail)
        elif earlier.status is SheetStatus.SKIPPED:
            outputs[num] = PriorOutput(skipped=True)
    return outputs


def _cascade_failure(state: JobState, failed_num: int, now: float, fx: Effects) -> None:
    """S2: every dependent that can no longer run is skipped, transitively."""
    reason = f"blocked by failed dependency: sheet {failed_num}"
    stack = list(state.plan.dependents.get(failed_num, ()))
    while stack:
        sheet = state.sheet(stack.pop())
        if sheet.is_terminal or sheet.status is SheetStatus.DISPATCHED:
            continue
        if sheet.status is SheetStatus.FERMATA:
            state.open_fermatas -= 1
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
    state.paced_until = None
    fx.job_dirty = True
    fx.finished = final
    counts = {status.value: count for status, count in state.counts.items() if count}
    _emit(state, fx, 0, event, now, counts=counts, cost=state.cost)


def _emit(state: JobState, fx: Effects, sheet_num: int, name: str, now: float, **data: Any) -> None:
    fx.events.append(Event(state.job_id, sheet_num, name, now, data))


# --- recovery (S29) --------------------------------------------------------------------


def recover(
    state: JobState,
    saved_sheets: Iterable[SheetState],
    job_record: dict[str, Any],
    now: float,
    fx: Effects,
) -> None:
    """S29: rebuild a job from its checkpoint after a crash or a stop.

    ``state`` is a fresh ``new_job`` for the same plan. Terminal sheets keep
    their status and are never run again; fermatas stay open; counters, costs,
    outputs and errors are kept exactly. A sheet that was dispatched or waiting
    is ready again (its interrupted attempt spent no retry); a scheduled retry
    keeps its deadline, as do the job's pacing and the instrument blocks of
    rate-limited sheets: their timers are re-armed, firing at once if due.
    Readiness and failure cascades are recomputed from the dependencies, so a
    journal cut between two records of one batch still leads to the right state.
    """
    saved_by_num = {saved.num: saved for saved in saved_sheets}
    for sheet in state.sheets:
        saved = saved_by_num.get(sheet.num)
        if saved is None:
            continue
        for name in CHECKPOINTED_FIELDS:
            setattr(sheet, name, getattr(saved, name))
        if saved.is_terminal or saved.status is SheetStatus.FERMATA:
            _set_status(state, sheet, saved.status, fx)
            fx.dirty_sheets.discard(sheet.num)
    # The stored total is exact; the sheets' sum differs only by float rounding,
    # unless a torn batch left the job record behind its sheets.
    total = sum(sheet.cost for sheet in state.sheets)
    stored = float(job_record.get("cost", total))
    state.cost = stored if math.isclose(stored, total, rel_tol=1e-9, abs_tol=1e-12) else total
    state.paused_by_user = bool(job_record.get("paused_by_user", False))
    state.paused_for_cost = bool(job_record.get("paused_for_cost", False))
    state.cost_warned = bool(job_record.get("cost_warned", False))
    state.open_fermatas = state.counts.get(SheetStatus.FERMATA, 0)
    state.started = True
    paced_until = job_record.get("paced_until")
    if paced_until is not None:
        state.paced_until = paced_until
        fx.timers.append(TimerOrder(PACING_TIMER, paced_until))

    for sheet in state.sheets:
        if sheet.is_terminal or sheet.status is SheetStatus.FERMATA:
            continue
        sheet.unmet_dependencies = sum(
            1
            for dependency in state.plan.dependencies.get(sheet.num, ())
            if not state.sheet(dependency).satisfies_dependents
        )
    for sheet in state.sheets:
        if sheet.status is SheetStatus.FAILED or (
            sheet.status is SheetStatus.SKIPPED and sheet.skip_reason is SkipReason.CASCADE
        ):
            _cascade_failure(state, sheet.num, now, fx)

    for sheet in state.sheets:
        if sheet.status is not SheetStatus.PENDING:
            continue
        saved = saved_by_num.get(sheet.num)
        saved_status = saved.status if saved is not None else SheetStatus.PENDING
        if saved_status is SheetStatus.RETRY_SCHEDULED and sheet.retry_at is not None:
            _set_status(state, sheet, SheetStatus.RETRY_SCHEDULED, fx)
            fx.timers.append(TimerOrder(sheet.num, sheet.retry_at))
        elif saved_status is SheetStatus.WAITING and sheet.retry_at is not None:
            # Still waiting out its rate limit: the block goes back to the pool and
            # the deadline stays in the checkpoint in case of another crash.
            _set_status(state, sheet, SheetStatus.WAITING, fx)
            state.ready_queue.append(sheet.num)
            if sheet.retry_at > now:
                instrument, model = current_instrument(state, sheet)
                fx.blocks.append(BlockOrder(instrument, model, sheet.retry_at))
        elif sheet.unmet_dependencies == 0:
            if sheet.attempts:
                _make_ready(state, sheet, fx)
            elif _became_ready(state, sheet, now, fx):  # S5 verdicts are not stored
                _release_dependents(state, sheet.num, now, fx)
        elif saved_status is not SheetStatus.PENDING:
            fx.dirty_sheets.add(sheet.num)
    state.status = JobStatus.RUNNING
    fx.job_dirty = True
    _emit(state, fx, 0, ev.JOB_RESUMED, now, recovered=True)
    if job_record.get("cancelling"):
        # The job was being cancelled (S26): what had not ended is cancelled now.
        cancel(state, now, fx)
        return
    # The cost may come from the sheets (a job record torn off their batch):
    # the limit is checked again, not taken from the record.
    _check_job_cost(state, now, fx)
    _update_pause(state, now, fx)
    _request_leases(state, now, fx)
    _finish_if_done(state, now, fx)
