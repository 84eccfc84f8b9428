"""The JobActor: owns one job and carries out the decisions of ``runtime.machine``.

Every message that changes the job goes through a machine function, which
updates the state and collects effects. The actor batches: it applies every
message already in its inbox, then on its own ``Flush`` message commits the
journal records of the batch once (the durability barrier, DESIGN rule 3) and
only then releases the effects — leases requested, attempts started, timers
armed, events published, the supervisor told the job is final. It spawns a
SheetActor per dispatched sheet and stops it once the sheet is terminal.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import gevent
import pykka
from loguru import logger
from pykka import ActorRef

from actors.base import ActorContext, EnsembleActor, GeventFuture, TaskDone, send
from actors.hub import in_pool
from actors.sheet import SheetActor, evaluate_skip_command
from runtime import machine
from runtime.conditions import SkipVerdict
from runtime.errors import EnsembleError, PersistenceError
from runtime.events import RUNTIME_ERROR, Event
from runtime.journal import new_checkpoint
from runtime.machine import Effects
from runtime.messages import (
    AttemptFinished,
    BlockInstrument,
    CancelAttempt,
    ChildFailed,
    CloseJobFiles,
    Commit,
    CreateJobFiles,
    DiscardJobFiles,
    Flush,
    JobCommand,
    JobFinished,
    LeasesGranted,
    LeasesRefused,
    OpenJobFiles,
    Publish,
    Recipient,
    ReleaseLeases,
    Reply,
    RequestLeases,
    RunAttempt,
    TimerFired,
    WithdrawLeaseRequests,
)
from runtime.prompts import PromptTemplate
from runtime.state import FINAL_JOB_STATUSES, JobState, SheetState

COMMIT_TIMEOUT_SECONDS = 120.0
CREATE_TIMEOUT_SECONDS = 60.0


class JobActor(EnsembleActor):
    def __init__(
        self,
        context: ActorContext,
        *,
        supervisor: ActorRef[Any],
        state: JobState,
        template: PromptTemplate,
        score_document: dict[str, Any],
        pool: ActorRef[Any],
        persistence: ActorRef[Any],
        bus: ActorRef[Any],
        created_reply: Recipient | None,
        recovered: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(context, parent=supervisor, key=state.job_id)
        self.state = state
        self._template = template
        self._score_document = score_document
        self._pool = pool
        self._persistence = persistence
        self._bus = bus
        self._supervisor = supervisor
        self._created_reply = created_reply
        self._sheets: dict[int, ActorRef[Any]] = {}
        self._sheet_by_urn: dict[str, int] = {}
        self._effects = Effects()
        self._held: Effects | None = None  # a batch whose commit failed (storage error)
        self._skip_checks: dict[int, int] = {}  # task id -> sheet whose skip command runs
        self._replies: list[tuple[Recipient, Reply]] = []  # host commands answered after a flush
        self._command_in_hand: JobCommand | None = None
        self._flush_scheduled = False
        self._recovered = recovered

    # --- life cycle ---------------------------------------------------------------

    def on_start(self) -> None:
        state = self.state
        try:
            # In the thread pool: a slow or network disk must not hold the hub.
            in_pool(functools.partial(os.makedirs, state.plan.workspace, exist_ok=True))
        except OSError as exc:
            self._refuse(
                EnsembleError(
                    f"cannot create workspace {state.plan.workspace}: {exc.strerror or exc}"
                )
            )
            return
        future = GeventFuture()
        if self._recovered is not None:
            opening: Any = OpenJobFiles(state.job_id, self._recovered, _FutureRecipient(future))
        else:
            checkpoint = new_checkpoint(
                state.job_id,
                state.plan.name,
                (sheet.to_record() for sheet in state.sheets),
                options={
                    "self_healing": state.policy.self_healing,
                    "escalation": state.policy.escalation,
                    # Injected files beside the score are found again on recovery.
                    "score_dir": state.plan.score_dir,
                },
            )
            opening = CreateJobFiles(
                state.job_id, self._score_document, checkpoint, _FutureRecipient(future)
            )
        send(self._persistence, opening)
        try:
            reply: Reply = future.get(timeout=CREATE_TIMEOUT_SECONDS)
        except pykka.Timeout:
            if self._created_reply is None:
                raise  # a restart after a crash: the supervisor tries again, then gives up
            self._refuse(self._files_too_slow())
            return
        if reply.error is not None:
            self._refuse(reply.error)
            return
        send(self._created_reply, Reply(value=state.job_id))
        self._created_reply = None
        now = self.context.clock.now()
        if self._recovered is not None:
            saved = [SheetState.from_record(record) for record in self._recovered["sheets"]]
            machine.recover(state, saved, self._recovered, now, self._effects)
            self._recovered = None
        else:
            machine.start(state, now, self._effects)
        self._schedule_flush()

    def _files_too_slow(self) -> PersistenceError:
        """Give up on a state directory that has not answered: a new job is
        discarded once its creation ends, a recovered one left as it is."""
        job_id, waited = self.state.job_id, f"{CREATE_TIMEOUT_SECONDS:g} s"
        if self._recovered is None:
            send(self._persistence, DiscardJobFiles(job_id))
            return PersistenceError(
                f"the state directory did not create job {job_id}'s files within {waited}; "
                "the job was not accepted and anything half-made is deleted: check the disk, "
                "then submit again"
            )
        send(self._persistence, CloseJobFiles(job_id))
        return PersistenceError(
            f"the state directory did not reopen job {job_id}'s checkpoint within {waited}; "
            "the checkpoint is unchanged: check the disk, then resume the job again"
        )

    def _refuse(self, error: BaseException) -> None:
        send(self._created_reply, Reply(error=error))
        self._created_reply = None
        send(self._supervisor, JobFinished(self.state.job_id, None))
        self.stop()

    def on_stop(self) -> None:
        for ref in self._sheets.values():
            ref.stop(block=False)
        self._sheets.clear()

    def on_failure(self, *_exc_info: Any) -> None:
        # The supervisor hears of the crash through ChildFailed and restarts the job;
        # the sheets go with this actor, and no host call is left to time out.
        self.on_stop()
        error = EnsembleError(
            f"job {self.state.job_id} crashed while handling this call and is being "
            "restarted from its checkpoint; try again"
        )
        pending = [recipient for recipient, _ in self._replies]
        if self._command_in_hand is not None:
            pending.append(self._command_in_hand.reply_to)
        self._replies = []
        for recipient in pending:
            send(recipient, Reply(error=error))

    # --- messages ----------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        state, fx, now = self.state, self._effects, self.context.clock.now()
        if isinstance(message, Flush):
            self._flush()
            return None
        if isinstance(message, AttemptFinished):
            machine.on_attempt_finished(
                state, message.sheet_num, message.attempt, message.result, now, fx
            )
        elif isinstance(message, LeasesGranted):
            machine.on_leases_granted(state, message.grants, now, fx)
        elif isinstance(message, LeasesRefused):
            machine.on_leases_refused(state, message.refusals, now, fx)
        elif isinstance(message, TimerFired):
            machine.on_timer(state, message.sheet_num, now, fx)
        elif isinstance(message, ChildFailed):
            self._sheet_crashed(message, now)
        elif isinstance(message, JobCommand):
            self._command(message, now)
        else:
            return super().on_receive(message)
        self._schedule_flush()
        return None

    def on_task_done(self, done: TaskDone) -> None:
        """S5: a sheet's skip_when_command finished (an error in it runs the sheet)."""
        sheet_num = self._skip_checks.pop(done.task_id, None)
        if sheet_num is None:
            return
        if done.error is not None:
            verdict = SkipVerdict(False, f"skip_when_command failed, the sheet runs: {done.error}")
        else:
            verdict = done.value
        machine.on_skip_verdict(
            self.state, sheet_num, verdict.skip, verdict.reason, self.context.clock.now(),
            self._effects,
        )  # fmt: skip
        self._schedule_flush()

    def _command(self, message: JobCommand, now: float) -> None:
        # Left set if the command crashes this actor, so on_failure can answer it.
        self._command_in_hand = message
        self._run_command(message, now)
        self._command_in_hand = None

    def _run_command(self, message: JobCommand, now: float) -> None:
        state, fx = self.state, self._effects
        if message.command == "pause":
            value: Any = machine.pause(state, now, fx)
        elif message.command == "resume":
            value = machine.resume(state, now, fx)
        elif message.command == "cancel":
            value = machine.cancel(state, now, fx)
        elif message.command == "progress":
            value = machine.job_progress(state)
        elif message.command == "result":
            value = machine.job_result(state)
        elif message.command == "resolve_fermata":
            try:
                sheet_num, decision = message.arguments
                value = machine.resolve_fermata(state, sheet_num, decision, now, fx)
            except ValueError as exc:
                send(message.reply_to, Reply(error=exc))
                return
        else:
            send(
                message.reply_to,
                Reply(error=ValueError(f"unknown job command {message.command!r}")),
            )
            return
        if fx.empty:
            send(message.reply_to, Reply(value=value))
        else:
            # Answer once the command's effects (withdrawn requests, cancel orders)
            # are committed and sent: a True from pause() means it is done.
            self._replies.append((message.reply_to, Reply(value=value)))

    def _sheet_crashed(self, message: ChildFailed, now: float) -> None:
        sheet_num = self._sheet_by_urn.pop(message.child_urn, None)
        if sheet_num is None:
            return
        self._sheets.pop(sheet_num, None)
        machine.on_attempt_lost(
            self.state, sheet_num, f"sheet actor crashed: {message.error}", now, self._effects
        )

    # --- the batch ---------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._effects.empty:
            self._flush_scheduled = True
            self.actor_ref.tell(Flush())

    def _flush(self) -> None:
        self._flush_scheduled = False
        state = self.state
        fx, self._effects = self._effects, Effects()
        if self._held is not None:
            fx, self._held = machine.merge_effects(self._held, fx), None
        if state.storage_error:
            # Nothing waits on a durable write while storage is failing; only
            # giving leases back and withdrawing requests are safe to do now.
            self._release_without_commit(fx)
            self._held = fx
            self._answer_commands()
            return
        records = machine.checkpoint_records(state, fx)
        if records:
            done = GeventFuture()
            send(self._persistence, Commit(state.job_id, tuple(records), done))
            try:
                done.get(timeout=COMMIT_TIMEOUT_SECONDS)
            except Exception as exc:
                self._storage_failed(fx, exc)
                return
        self._release(fx)
        self._answer_commands()

    def _answer_commands(self) -> None:
        replies, self._replies = self._replies, []
        for recipient, reply in replies:
            send(recipient, reply)

    def _storage_failed(self, fx: Effects, exc: BaseException) -> None:
        state, now = self.state, self.context.clock.now()
        error = (
            f"cannot write the checkpoint of job {state.job_id}: {exc}. The job is paused; "
            "free disk space or fix permissions in the state directory, then resume it. "
            "Nothing already committed is lost."
        )
        logger.error(error)
        pause = Effects()
        machine.storage_failed(state, error, now, pause)
        events = (Event(state.job_id, 0, RUNTIME_ERROR, now, {"error": error}), *pause.events)
        send(self._bus, Publish(events))
        pause.events.clear()
        held = machine.merge_effects(fx, pause)
        self._release_without_commit(held)
        self._held = held
        self._answer_commands()

    def _release_without_commit(self, fx: Effects) -> None:
        if fx.withdraw_lease_requests:
            send(self._pool, WithdrawLeaseRequests(self.state.job_id))
            fx.withdraw_lease_requests = False
        if fx.released_leases:
            releases = tuple((lease.lease_id, health) for lease, health in fx.released_leases)
            send(self._pool, ReleaseLeases(releases))
            fx.released_leases.clear()
        fx.lease_requests.clear()  # asked again once the job resumes

    def _release(self, fx: Effects) -> None:
        """Carry out a committed batch's effects."""
        state, job_ref = self.state, self.actor_ref
        if fx.events:
            send(self._bus, Publish(tuple(fx.events)))
        if fx.withdraw_lease_requests:
            send(self._pool, WithdrawLeaseRequests(state.job_id))
        # A rate limit's block reaches the pool before the lease it came with is
        # given back, so that slot is not granted again on the blocked instrument.
        for block in fx.blocks:
            send(
                self._pool,
                BlockInstrument(state.job_id, block.instrument, block.model, block.until),
            )
        if fx.released_leases:
            releases = tuple((lease.lease_id, health) for lease, health in fx.released_leases)
            send(self._pool, ReleaseLeases(releases))
        if fx.lease_requests:
            requests = tuple(
                (request.sheet_num, request.instrument, request.model, request.has_fallback)
                for request in fx.lease_requests
            )
            send(
                self._pool,
                RequestLeases(state.job_id, requests, state.policy.breaker, job_ref),
            )
        for count, order in enumerate(fx.attempts, start=1):
            if count % _ATTEMPTS_BEFORE_YIELD == 0:
                # Let the attempts told so far reach their backends before the
                # rest are told: the first children start while later sheet
                # actors are still being made, instead of after all of them.
                gevent.sleep(0)
            self._sheet_actor(order.sheet_num).tell(
                RunAttempt(
                    order.attempt,
                    order.lease,
                    retry_number=order.retry_number,
                    completion=order.completion,
                    validations=order.validations,
                    prior_outputs=order.prior_outputs,
                )
            )
        for sheet_num in fx.skip_checks:
            task_id = self.spawn_task(
                evaluate_skip_command, state.plan, state.plan.sheet(sheet_num), state.variables
            )
            self._skip_checks[task_id] = sheet_num
        now = self.context.clock.now()
        for timer in fx.timers:
            self.context.clock.call_later(
                timer.due - now, functools.partial(send, job_ref, TimerFired(timer.sheet_num))
            )
        for sheet_num in fx.cancel_attempts:
            ref = self._sheets.get(sheet_num)
            if ref is not None:
                ref.tell(CancelAttempt())
        for sheet_num in fx.dirty_sheets:
            if sheet_num in self._sheets and state.sheet(sheet_num).is_terminal:
                ref = self._sheets.pop(sheet_num)
                self._sheet_by_urn.pop(ref.actor_urn, None)
                ref.stop(block=False)
        if fx.finished is not None and state.status in FINAL_JOB_STATUSES:
            logger.info("job {} {}", state.job_id, state.status.value)
            send(self._persistence, CloseJobFiles(state.job_id))
            send(self._supervisor, JobFinished(state.job_id, machine.job_result(state)))
            self.stop()

    def _sheet_actor(self, sheet_num: int) -> ActorRef[Any]:
        ref = self._sheets.get(sheet_num)
        if ref is None:
            ref = SheetActor.start(
                self.context,
                job=self.actor_ref,
                job_id=self.state.job_id,
                sheet_num=sheet_num,
                plan=self.state.plan,
                template=self._template,
            )
            self._sheets[sheet_num] = ref
            self._sheet_by_urn[ref.actor_urn] = sheet_num
        return ref


# How many attempts a batch starts between yields to the hub (see _release).
_ATTEMPTS_BEFORE_YIELD = 32


class _FutureRecipient:
    """Lets an actor receive one ``Reply`` into a future it waits on."""

    __slots__ = ("_future",)

    def __init__(self, future: GeventFuture) -> None:
        self._future = future

    def tell(self, message: Any) -> None:
        self._future.set(message)
