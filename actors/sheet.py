"""The SheetActor: the musician that plays one sheet, attempt by attempt.

For each ``RunAttempt`` it prepares the prompt in a task (cross-sheet context,
injected files, the template, the success requirements, the completion note)
together with the mtimes ``file_modified`` validations compare against, sends
the request to the leased backend, waits for the result as a message, runs
the validations in a task (commands through the process-group-safe runner),
and reports one ``AttemptFinished`` to its job (which gives the lease back). It never
decides retries or statuses (that is ``runtime.machine``); it only reports what
happened. Stopping it cancels the attempt in flight, tasks included.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gevent.event
from pykka import ActorRef

from actors.base import ActorContext, EnsembleActor, TaskDone, send
from actors.hub import in_pool
from actors.process import decode_output, run_process
from runtime.conditions import SkipVerdict, skip_command_verdict
from runtime.context import PriorOutput, capture_files, previous_outputs
from runtime.messages import (
    AttemptFinished,
    CancelAttempt,
    CancelExecution,
    Execute,
    ExecutionFinished,
    ExecutionRequest,
    Lease,
    RunAttempt,
)
from runtime.outcomes import AttemptResult, ExecutionResult, OutcomeKind
from runtime.plan import Plan, SheetPlan
from runtime.prompts import (
    CompletionNote,
    PromptError,
    PromptTemplate,
    build_prompt,
    render_snippet,
    sheet_variables,
)
from runtime.validations import (
    CommandOutcome,
    CommandRunner,
    ValidationReport,
    applicable_rules,
    run_validations,
    snapshot_mtimes,
    substitute_command,
)

OUTPUT_TAIL_CHARS = 2000
# Output of a failing validation command kept for its error message.
VALIDATION_OUTPUT_BYTES = 64 * 1024
_request_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class PreparedAttempt:
    prompt: str
    variables: dict[str, Any]
    mtimes: dict[str, int | None]


def prepare_attempt(
    plan: Plan,
    sheet: SheetPlan,
    template: PromptTemplate,
    *,
    attempt: int,
    retry_number: int = 0,
    prior_outputs: Mapping[int, PriorOutput] | None = None,
    completion: CompletionNote | None = None,
) -> PreparedAttempt:
    """Variables with cross-sheet context (S31, S32), the prompt, and pre-attempt mtimes."""
    variables = sheet_variables(plan, sheet, attempt=attempt)
    cross = plan.cross_sheet
    variables["previous_outputs"] = previous_outputs(sheet.num, cross, prior_outputs or {})
    if cross is not None and cross.capture_files:
        everything = {**variables, **template.user_variables}
        variables["previous_files"] = capture_files(
            cross.capture_files,
            plan.workspace,
            cross.max_output_chars,
            render=lambda pattern: render_snippet(
                pattern, everything, key_path="cross_sheet.capture_files"
            ),
        )
    prompt = build_prompt(
        plan,
        sheet,
        template,
        attempt=attempt,
        retry_number=retry_number,
        variables=variables,
        completion=completion,
    )
    return PreparedAttempt(
        prompt, variables, snapshot_mtimes(plan.validations, variables, plan.workspace)
    )


def _prepare_reads_files(plan: Plan, sheet: SheetPlan) -> bool:
    """Whether preparing an attempt touches the disk (injected files, captured
    files, mtimes for file_modified), and so must run in the hub's thread pool
    (a task greenlet alone would still block the hub on the reads)."""
    cross = plan.cross_sheet
    return bool(
        plan.prelude
        or sheet.cadenzas
        or (cross is not None and cross.capture_files)
        or any(rule.type == "file_modified" for rule in plan.validations)
    )


def evaluate_skip_command(
    plan: Plan, sheet: SheetPlan, user_variables: Mapping[str, Any] | None = None
) -> SkipVerdict:
    """S5: run the sheet's ``skip_when_command``; call it in a task greenlet.

    The command runs with ``bash -c`` in the workspace, its values shell-quoted,
    within its ``timeout_seconds`` (the process group is killed on timeout).
    Exit 0 skips the sheet; anything else, a timeout or a spawn error runs it.
    """
    rule = sheet.skip_when_command
    if rule is None:
        return SkipVerdict(False, "")
    variables = {**sheet_variables(plan, sheet), **(user_variables or {})}
    process = run_process(
        ["bash", "-c", substitute_command(rule.command, variables)],
        cwd=plan.workspace,
        timeout=rule.timeout_seconds,
        max_output_bytes=VALIDATION_OUTPUT_BYTES,
    )
    if process.spawn_error is not None:
        return SkipVerdict(False, f"skip_when_command could not run: {process.spawn_error}")
    return skip_command_verdict(
        process.exit_code, timed_out=process.timed_out, description=rule.description
    )


def _command_runner(cancel: gevent.event.Event) -> CommandRunner:
    def run(command: str, cwd: str, timeout: float) -> CommandOutcome:
        process = run_process(
            ["bash", "-c", command],
            cwd=cwd,
            timeout=timeout,
            cancel=cancel,
            max_output_bytes=VALIDATION_OUTPUT_BYTES,
        )
        if process.spawn_error is not None:
            return CommandOutcome(None, error=process.spawn_error)
        if process.cancelled:
            return CommandOutcome(None, error="cancelled")
        output = decode_output(process.stderr or process.stdout)
        return CommandOutcome(process.exit_code, timed_out=process.timed_out, output=output)

    return run


class SheetActor(EnsembleActor):
    def __init__(
        self,
        context: ActorContext,
        *,
        job: ActorRef[Any],
        job_id: str,
        sheet_num: int,
        plan: Plan,
        template: PromptTemplate,
    ) -> None:
        super().__init__(context, parent=job, key=sheet_num)
        self._job = job
        self._job_id = job_id
        self._sheet = plan.sheet(sheet_num)
        self._current = self._sheet  # the sheet as the attempt in flight plays it
        self._plan = plan
        self._template = template
        self._attempt = 0
        self._lease: Lease | None = None
        self._request_id: str | None = None
        # The task preparing or validating the current attempt, and its cancel switch.
        self._task: int | None = None
        self._cancel_event: gevent.event.Event | None = None
        self._prepared: PreparedAttempt | None = None
        self._execution: ExecutionResult | None = None
        # Later sheets may see this output (S31): keep as much as they may be shown.
        cross = plan.cross_sheet
        self._tail_chars = OUTPUT_TAIL_CHARS
        if cross is not None and cross.auto_capture_stdout:
            self._tail_chars = max(OUTPUT_TAIL_CHARS, cross.max_output_chars)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RunAttempt):
            self._run(message)
        elif isinstance(message, ExecutionFinished):
            if message.request_id == self._request_id:
                self._finish(message.result)
        elif isinstance(message, CancelAttempt):
            self._cancel()
        else:
            return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        self._cancel()

    def on_task_done(self, done: TaskDone) -> None:
        if done.task_id != self._task:
            return
        self._task = None
        cancelled = self._cancel_event is not None and self._cancel_event.is_set()
        if cancelled:
            self._report(AttemptResult(kind=OutcomeKind.CANCELLED, error="cancelled"))
        elif self._execution is None:
            self._prepared_done(done)
        else:
            self._validated(done)

    # --- the attempt, step by step ------------------------------------------------------

    def _run(self, message: RunAttempt) -> None:
        self._attempt = message.attempt
        self._lease = message.lease
        self._current = self._sheet_for(message.lease)
        self._prepared = None
        self._execution = None
        self._cancel_event = gevent.event.Event()
        completion = None
        if message.completion:
            completion = CompletionNote(
                passed=tuple(name for name, passed in message.validations if passed),
                failed=tuple(name for name, passed in message.validations if not passed),
            )
        prepare = self._preparation(
            message.attempt, message.retry_number, message.prior_outputs, completion
        )
        if _prepare_reads_files(self._plan, self._current):
            self._task = self.spawn_task(in_pool, prepare)
            return
        # Nothing to read from disk: prepare in the handler, no task greenlet.
        try:
            prepared = prepare()
        except Exception as exc:  # reported as a failed attempt, as in a task
            self._prepared_done(TaskDone(0, None, exc))
            return
        self._prepared_done(TaskDone(0, prepared, None))

    def _sheet_for(self, lease: Lease) -> SheetPlan:
        """The sheet as this attempt plays it: on a fallback, the lease's instrument."""
        sheet = self._sheet
        if lease.instrument == sheet.instrument and lease.model == sheet.model:
            return sheet
        return dataclasses.replace(
            sheet,
            instrument=lease.instrument,
            model=lease.model,
            raw_prompt=lease.instrument in self._plan.raw_prompt_instruments,
        )

    def _preparation(
        self,
        attempt: int,
        retry_number: int,
        prior: Mapping[int, PriorOutput],
        completion: CompletionNote | None,
    ) -> Callable[[], PreparedAttempt]:
        """The attempt's preparation, bound to this attempt's values now (on the
        hub), so that it may run in a pool thread without reading the actor."""
        return functools.partial(
            prepare_attempt,
            self._plan,
            self._current,
            self._template,
            attempt=attempt,
            retry_number=retry_number,
            prior_outputs=prior,
            completion=completion,
        )

    def _prepared_done(self, done: TaskDone) -> None:
        if done.error is not None:
            error = (
                str(done.error)
                if isinstance(done.error, PromptError)
                else (f"could not prepare the prompt: {type(done.error).__name__}: {done.error}")
            )
            self._report(
                AttemptResult(kind=OutcomeKind.FAILURE, error=error, not_the_instruments_fault=True)
            )
            return
        prepared: PreparedAttempt = done.value
        self._prepared = prepared
        lease = self._lease
        if lease is None:  # released meanwhile (the actor is stopping)
            return
        self._request_id = f"{self._job_id}/{self._sheet.num}/{next(_request_ids)}"
        request = ExecutionRequest(
            request_id=self._request_id,
            job_id=self._job_id,
            sheet_num=self._sheet.num,
            attempt=self._attempt,
            instrument=self._current.instrument,
            prompt=prepared.prompt,
            workspace=self._plan.workspace,
            timeout_seconds=self._current.timeout_seconds,
            model=self._current.model,
            variables=prepared.variables,
        )
        if not send(lease.backend, Execute(request, self.actor_ref)):
            self._report(
                AttemptResult(
                    kind=OutcomeKind.CRASHED,
                    error=f"the backend of instrument '{self._current.instrument}' is not running",
                )
            )

    def _finish(self, result: ExecutionResult) -> None:
        self._request_id = None
        prepared = self._prepared
        if (
            result.kind is not OutcomeKind.SUCCESS
            or prepared is None
            or not applicable_rules(self._plan.validations, prepared.variables)
        ):
            self._report(self._result(result))
            return
        self._execution = result
        validate = functools.partial(
            run_validations,
            self._plan.validations,
            prepared.variables,
            workspace=self._plan.workspace,
            mtimes_before=prepared.mtimes,
            run_command=_command_runner(self._cancel_event or gevent.event.Event()),
        )
        if any(rule.type == "command_succeeds" for rule in self._plan.validations):
            # Commands run through run_process, which needs the hub.
            self._task = self.spawn_task(validate)
        else:
            # File checks read up to MAX_CONTENT_BYTES each: off the hub.
            self._task = self.spawn_task(in_pool, validate)

    def _validated(self, done: TaskDone) -> None:
        execution = self._execution
        assert execution is not None
        if done.error is not None:
            self._report(
                self._result(
                    execution,
                    kind=OutcomeKind.FAILURE,
                    error=f"validations could not run: {type(done.error).__name__}: {done.error}",
                    not_the_instruments_fault=True,
                )
            )
            return
        report: ValidationReport = done.value
        failed = [o for o in report.outcomes if not o.passed]
        error = None
        if failed:
            error = "; ".join(f"{o.description}: {o.detail}" for o in failed[:3])
        self._report(
            self._result(
                execution,
                error=error,
                validations_passed=report.passed,
                validations_total=report.total,
                validations=tuple((o.description, o.passed) for o in report.outcomes),
            )
        )

    def _result(self, result: ExecutionResult, **overrides: Any) -> AttemptResult:
        error = result.error
        if error is None and result.kind is not OutcomeKind.SUCCESS and result.stderr:
            error = result.stderr.strip()[-500:] or None
        fields: dict[str, Any] = {
            "kind": result.kind,
            "exit_code": result.exit_code,
            "error": error,
            "cost": result.cost,
            "output_tail": result.stdout[-self._tail_chars :],
            "duration_seconds": result.duration_seconds,
            "wait_seconds": result.wait_seconds,
        }
        fields.update(overrides)
        return AttemptResult(**fields)

    def _report(self, result: AttemptResult) -> None:
        self._task = None
        self._execution = None
        # The job gives the lease back once the result is committed.
        self._lease = None
        send(self._job, AttemptFinished(self._sheet.num, self._attempt, result))

    def _cancel(self) -> None:
        if self._cancel_event is not None:
            self._cancel_event.set()
        if self._request_id is not None and self._lease is not None:
            send(self._lease.backend, CancelExecution(self._request_id))
