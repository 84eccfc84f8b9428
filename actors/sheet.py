"""The SheetActor: the musician that plays one sheet, attempt by attempt.

For each ``RunAttempt`` it renders the prompt, sends the request to the leased
backend, waits for the result as a message, releases the lease and reports one
``AttemptFinished`` to its job. It never decides retries or statuses (that is
``runtime.machine``); it only reports what happened. Stopping it cancels the
attempt in flight.
"""

from __future__ import annotations

import itertools
from typing import Any

from pykka import ActorRef

from actors.base import ActorContext, EnsembleActor, send
from runtime.messages import (
    AttemptFinished,
    CancelAttempt,
    CancelExecution,
    ExecutionFinished,
    ExecutionRequest,
    Execute,
    Lease,
    RunAttempt,
)
from runtime.outcomes import AttemptResult, ExecutionResult, OutcomeKind
from runtime.plan import Plan
from runtime.prompts import PromptError, PromptTemplate, sheet_variables

OUTPUT_TAIL_CHARS = 2000
_request_ids = itertools.count(1)


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
        pool: ActorRef[Any],
    ) -> None:
        super().__init__(context, parent=job, key=sheet_num)
        self._job = job
        self._job_id = job_id
        self._sheet = plan.sheet(sheet_num)
        self._plan = plan
        self._template = template
        self._pool = pool
        self._attempt = 0
        self._lease: Lease | None = None
        self._request_id: str | None = None

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

    def _run(self, message: RunAttempt) -> None:
        self._attempt = message.attempt
        self._lease = message.lease
        variables = sheet_variables(self._plan, self._sheet, attempt=message.attempt)
        try:
            prompt = self._template.render(variables)
        except PromptError as exc:
            self._report(AttemptResult(kind=OutcomeKind.FAILURE, error=str(exc)))
            return
        self._request_id = f"{self._job_id}/{self._sheet.num}/{next(_request_ids)}"
        request = ExecutionRequest(
            request_id=self._request_id,
            job_id=self._job_id,
            sheet_num=self._sheet.num,
            attempt=message.attempt,
            instrument=self._sheet.instrument,
            prompt=prompt,
            workspace=self._plan.workspace,
            timeout_seconds=self._sheet.timeout_seconds,
            variables=variables,
        )
        if not send(message.lease.backend, Execute(request, self.actor_ref)):
            self._report(AttemptResult(
                kind=OutcomeKind.CRASHED,
                error=f"the backend of instrument '{self._sheet.instrument}' is not running",
            ))

    def _finish(self, result: ExecutionResult) -> None:
        self._request_id = None
        tail = result.stdout[-OUTPUT_TAIL_CHARS:]
        error = result.error
        if error is None and result.kind is not OutcomeKind.SUCCESS and result.stderr:
            error = result.stderr.strip()[-500:] or None
        self._report(AttemptResult(
            kind=result.kind,
            exit_code=result.exit_code,
            error=error,
            cost=result.cost,
            output_tail=tail,
            duration_seconds=result.duration_seconds,
            wait_seconds=result.wait_seconds,
        ))

    def _report(self, result: AttemptResult) -> None:
        # The job gives the lease back once the result is committed.
        self._lease = None
        send(self._job, AttemptFinished(self._sheet.num, self._attempt, result))

    def _cancel(self) -> None:
        if self._request_id is not None and self._lease is not None:
            send(self._lease.backend, CancelExecution(self._request_id))
