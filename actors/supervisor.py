"""The Supervisor actor: one per runtime, parent of every JobActor.

Owns job ids, spawning a JobActor per submitted score, routing host commands to
the right job, and the end of every job: a finished job's result, or a crashed
JobActor turned into a failed result, is handed to the host's waiter after the
job's last events were delivered. It holds no job state of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger
from pykka import ActorRef

from actors.base import ActorContext, EnsembleActor, send
from actors.bus import Notify
from actors.job import JobActor
from runtime import journal, machine
from runtime.errors import ConfigError, JobExistsError, JobNotFoundError
from runtime.events import JOB_FAILED, RUNTIME_ERROR, Event
from runtime.messages import (
    ChildFailed,
    JobCommand,
    JobFinished,
    ListJobs,
    Publish,
    Reply,
    SubmitJob,
)
from runtime.state import JobResult, JobStatus

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

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, SubmitJob):
            self._submit(message)
        elif isinstance(message, JobCommand):
            self._command(message)
        elif isinstance(message, JobFinished):
            self._finished(message.job_id, message.result)
        elif isinstance(message, ChildFailed):
            self._job_crashed(message)
        elif isinstance(message, ListJobs):
            send(message.reply_to, Reply(value=list(self._jobs.values())))
        else:
            return super().on_receive(message)
        return None

    def _submit(self, message: SubmitJob) -> None:
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
        state = machine.new_job(job_id, message.plan, message.policy)
        ref = JobActor.start(
            self.context,
            supervisor=self.actor_ref,
            state=state,
            template=message.template,
            score_document=message.score.model_dump(mode="json"),
            pool=self._pool,
            persistence=self._persistence,
            bus=self._bus,
            created_reply=message.reply_to,
        )
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
        if result is None:
            return  # the job was refused at creation; the submitter was told why
        self._results[job_id] = result
        callback = self._on_job_finished
        send(self._bus, Notify(lambda: callback(result)))

    def _job_crashed(self, message: ChildFailed) -> None:
        job_id = self._job_by_urn.get(message.child_urn)
        if job_id is None:
            return
        logger.error("job {} stopped: its actor crashed: {}", job_id, message.error)
        now = self.context.clock.now()
        send(
            self._bus,
            Publish(
                (
                    Event(job_id, 0, RUNTIME_ERROR, now, {"error": message.error}),
                    Event(job_id, 0, JOB_FAILED, now, {"error": message.error}),
                )
            ),
        )
        # Checkpoint recovery of a crashed job is the Supervisor's next duty (restart);
        # until then the waiter must not hang: the job ends failed with the error.
        self._finished(job_id, JobResult(job_id, JobStatus.FAILED, 0.0, {}, error=message.error))
