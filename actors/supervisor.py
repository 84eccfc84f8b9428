"""The Supervisor actor: one per runtime, parent of every JobActor.

Owns job ids, spawning a JobActor per submitted or recovered score, routing host
commands to the right job, supervision (a crashed JobActor is restarted from the
checkpoint Persistence holds, with a ``runtime.error`` event and a log line; host
commands wait for the new actor; after ``MAX_RESTARTS`` the job ends failed, in
its result and its checkpoint), and the end of every job: its result is handed
to the host's waiter after the job's last events were delivered. It holds no
job state of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger
from pykka import ActorRef

from actors.base import ActorContext, EnsembleActor, GeventFuture, send
from actors.bus import Notify
from actors.job import JobActor
from runtime import journal, machine
from runtime.errors import ConfigError, JobExistsError, JobNotFoundError, RuntimeStoppedError
from runtime.events import JOB_FAILED, RUNTIME_ERROR, Event
from runtime.messages import (
    ChildFailed,
    CloseJobFiles,
    Commit,
    GetCheckpoint,
    JobCommand,
    JobFinished,
    Publish,
    Recipient,
    RecoverJob,
    ReleaseJob,
    Reply,
    SubmitJob,
)
from runtime.plan import Plan
from runtime.policy import Policy
from runtime.state import JobResult, JobStatus, SheetResult, SheetState

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_job_id(job_id: str) -> None:
    """A job id names a folder under the state directory: nothing that could leave it."""
    if not _JOB_ID.fullmatch(job_id):
        raise ConfigError(
            f"invalid job id {job_id!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit",
            key_path="job_id",
        )


def job_id_from_name(name: str) -> str:
    """A job id safe as a folder name: the score's name with odd characters replaced."""
    return _UNSAFE_ID_CHARS.sub("-", name).strip("-.") or "job"


class Supervisor(EnsembleActor):
    def __init__(
        self,
        context: ActorContext,
        *,
        state_dir: Path,
        pool: ActorRef[Any],
        persistence: ActorRef[Any],
        bus: ActorRef[Any],
        on_job_finished: Callable[[JobResult], None],
    ) -> None:
        super().__init__(context)
        self._jobs_dir = journal.jobs_dir(state_dir)
        self._pool = pool
        self._persistence = persistence
        self._bus = bus
        self._on_job_finished = on_job_finished
        self._jobs: dict[str, ActorRef[Any]] = {}
        self._job_by_urn: dict[str, str] = {}
        self._results: dict[str, JobResult] = {}
        self._specs: dict[str, _JobSpec] = {}
        self._restarts: dict[str, int] = {}
        self._broken: str | None = None  # set when a service crashed: no new jobs
        self._errors: dict[str, str] = {}  # the crash a job is being restarted after
        self._restarting: dict[str, list[JobCommand]] = {}  # commands held meanwhile

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, SubmitJob):
            self._submit(message)
        elif isinstance(message, JobCommand):
            self._command(message)
        elif isinstance(message, JobFinished):
            self._finished(message.job_id, message.result)
        elif isinstance(message, RecoverJob):
            self._recover(message)
        elif isinstance(message, ChildFailed):
            self._job_crashed(message)
        elif isinstance(message, _CheckpointForRestart):
            self._restart(message.job_id, message.reply)
        else:
            return super().on_receive(message)
        return None

    def _refuse_when_broken(self, reply_to: Recipient) -> bool:
        if self._broken is None:
            return False
        send(reply_to, Reply(error=RuntimeStoppedError(f"{self._broken}; start a new runtime")))
        return True

    def _submit(self, message: SubmitJob) -> None:
        if self._refuse_when_broken(message.reply_to):
            return
        if message.job_id is not None:
            job_id = message.job_id
            if (
                job_id in self._jobs
                or job_id in self._results
                or (self._jobs_dir / job_id).exists()
            ):
                send(
                    message.reply_to,
                    Reply(
                        error=JobExistsError(
                            f"job '{job_id}' already exists; "
                            "choose another job id or resume that job"
                        )
                    ),
                )
                return
        else:
            job_id = self._free_job_id(job_id_from_name(message.score.name))
        spec = _JobSpec(
            message.plan, message.policy, message.template, score_document(message.score)
        )
        self._spawn(job_id, spec, message.reply_to, recovered=None)

    def _recover(self, message: RecoverJob) -> None:
        if self._refuse_when_broken(message.reply_to):
            return
        job_id = str(message.checkpoint["job_id"])
        if job_id in self._jobs or job_id in self._restarting:
            send(
                message.reply_to, Reply(error=JobExistsError(f"job '{job_id}' is already running"))
            )
            return
        spec = _JobSpec(
            message.plan, message.policy, message.template, score_document(message.score)
        )
        self._spawn(job_id, spec, message.reply_to, recovered=message.checkpoint)

    def _spawn(
        self,
        job_id: str,
        spec: _JobSpec,
        reply_to: Recipient | None,
        recovered: dict[str, Any] | None,
    ) -> None:
        ref = JobActor.start(
            self.context,
            supervisor=self.actor_ref,
            state=machine.new_job(
                job_id, spec.plan, spec.policy, variables=spec.template.user_variables
            ),
            template=spec.template,
            score_document=spec.score_document,
            pool=self._pool,
            persistence=self._persistence,
            bus=self._bus,
            created_reply=reply_to,
            recovered=recovered,
        )
        self._specs[job_id] = spec
        self._jobs[job_id] = ref
        self._job_by_urn[ref.actor_urn] = job_id

    def _free_job_id(self, base: str) -> str:
        candidate, number = base, 1
        while (
            candidate in self._jobs
            or candidate in self._results
            or (self._jobs_dir / candidate).exists()
        ):
            number += 1
            candidate = f"{base}-{number}"
        return candidate

    def _command(self, message: JobCommand) -> None:
        held = self._restarting.get(message.job_id)
        if held is not None:
            held.append(message)
            return
        ref = self._jobs.get(message.job_id)
        if ref is not None:
            if not send(ref, message):
                # The job just stopped; its JobFinished is already in our inbox,
                # so answer after it.
                self.actor_ref.tell(message)
            return
        result = self._results.get(message.job_id)
        if result is None:
            send(message.reply_to, Reply(error=JobNotFoundError(f"no job '{message.job_id}'")))
        elif message.command in ("result", "progress"):
            send(message.reply_to, Reply(value=result))
        else:
            send(message.reply_to, Reply(value=False))  # nothing to pause or cancel any more

    def _finished(self, job_id: str, result: JobResult | None) -> None:
        ref = self._jobs.pop(job_id, None)
        if ref is not None:
            self._job_by_urn.pop(ref.actor_urn, None)
        self._specs.pop(job_id, None)
        self._restarts.pop(job_id, None)
        # Leases granted to a job that was already stopping would be lost: free them.
        send(self._pool, ReleaseJob(job_id))
        if result is None:
            return  # the job was refused at creation; the submitter was told why
        self._results[job_id] = result
        callback = self._on_job_finished
        if not send(self._bus, Notify(lambda: callback(result))):
            callback(result)  # no bus to deliver in order: wake the waiter at once

    def _service_crashed(self, service: str, error: str) -> None:
        """A pool, persistence or event bus crash leaves no job able to go on:
        every job ends failed with the reason; the checkpoints stay resumable."""
        self._broken = f"the runtime's {service} crashed ({error})"
        logger.critical("{}; ending every job, their checkpoints are kept", self._broken)
        now = self.context.clock.now()
        for job_id, ref in list(self._jobs.items()):
            ref.stop(block=False)
            # No checkpoint given: it is not marked failed, a new runtime resumes it.
            self._give_up(
                job_id,
                f"{self._broken}; resume the job in a new runtime, its checkpoint is kept",
                None,
                now,
            )

    def _job_crashed(self, message: ChildFailed) -> None:
        """Restart a crashed JobActor from its checkpoint, a few times at most."""
        if isinstance(message.key, tuple) and message.key[:1] == ("service",):
            self._service_crashed(str(message.key[1]), message.error)
            return
        job_id = self._job_by_urn.pop(message.child_urn, None)
        if job_id is None:
            return
        self._jobs.pop(job_id, None)
        # Host commands that arrive before the new actor exists wait for it.
        self._restarting.setdefault(job_id, [])
        # Its attempts died with it (the sheets stop with their job): free their leases.
        send(self._pool, ReleaseJob(job_id))
        restarts = self._restarts.get(job_id, 0) + 1
        self._restarts[job_id] = restarts
        now = self.context.clock.now()
        if restarts <= MAX_RESTARTS:
            logger.error(
                "job {} crashed ({}); restarting it from its checkpoint ({} of {})",
                job_id, message.error, restarts, MAX_RESTARTS,
            )  # fmt: skip
            data = {"error": message.error, "restart": restarts}
            send(self._bus, Publish((Event(job_id, 0, RUNTIME_ERROR, now, data),)))
        self._errors[job_id] = message.error
        # The checkpoint as committed so far: to restart from, or to report from.
        send(self._persistence, GetCheckpoint(job_id, _Tagged(self.actor_ref, job_id)))

    def _restart(self, job_id: str, reply: Reply) -> None:
        spec = self._specs.get(job_id)
        now = self.context.clock.now()
        error = self._errors.pop(job_id, "crashed")
        restarts = self._restarts.get(job_id, 0)
        if spec is None or reply.error is not None:
            self._give_up(job_id, f"{error}; cannot restart it: {reply.error}", None, now)
        elif restarts > MAX_RESTARTS:
            self._give_up(job_id, f"{error} (crashed {restarts} times)", reply.value, now)
        else:
            self._spawn(job_id, spec, None, recovered=reply.value)
        for command in self._restarting.pop(job_id, []):
            self._command(command)

    def _give_up(
        self, job_id: str, error: str, checkpoint: dict[str, Any] | None, now: float
    ) -> None:
        """End a job that keeps crashing: failed, in its result and in its checkpoint,
        so that neither a waiter nor a later recovery is left expecting more."""
        logger.error("job {} stopped: {}", job_id, error)
        send(
            self._bus,
            Publish((
                Event(job_id, 0, RUNTIME_ERROR, now, {"error": error}),
                Event(job_id, 0, JOB_FAILED, now, {"error": error}),
            )),
        )  # fmt: skip
        result = JobResult(job_id, JobStatus.FAILED, 0.0, {}, error=error)
        if checkpoint is not None:
            result = _result_from_checkpoint(job_id, checkpoint, error)
            record = {"kind": "job", "status": JobStatus.FAILED.value, "error": error}
            send(self._persistence, Commit(job_id, (record,), GeventFuture()))
            send(self._persistence, CloseJobFiles(job_id))
        self._finished(job_id, result)


def _result_from_checkpoint(job_id: str, checkpoint: dict[str, Any], error: str) -> JobResult:
    sheets = {}
    for record in checkpoint.get("sheets", ()):
        try:
            sheet = SheetState.from_record(record)
        except (KeyError, TypeError, ValueError):
            continue
        sheets[sheet.num] = SheetResult.of(sheet)
    return JobResult(
        job_id,
        JobStatus.FAILED,
        float(checkpoint.get("cost", 0.0)),
        sheets,
        error=error,
        name=str(checkpoint.get("name", "")),
    )


MAX_RESTARTS = 3


@dataclass(frozen=True, slots=True)
class _JobSpec:
    """What the supervisor needs to start a job's actor again."""

    plan: Plan
    policy: Policy
    template: Any
    score_document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _CheckpointForRestart:
    job_id: str
    reply: Reply


class _Tagged:
    """Delivers a ``Reply`` to the supervisor together with the job it is about."""

    __slots__ = ("_job_id", "_ref")

    def __init__(self, ref: ActorRef[Any], job_id: str) -> None:
        self._ref = ref
        self._job_id = job_id

    def tell(self, message: Any) -> None:
        self._ref.tell(_CheckpointForRestart(self._job_id, message))


def score_document(score: Any) -> dict[str, Any]:
    """The score as stored with the job: enough to load it again on recovery."""
    document: dict[str, Any] = score.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return document
