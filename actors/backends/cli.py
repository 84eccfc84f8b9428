"""The built-in ``cli`` instrument: the rendered prompt is a shell command.

Owns running ``bash -c PROMPT`` in the sheet's workspace as its own process
group (killed, children included, on timeout or cancel), with a small
environment (a base allow-list plus ``ENSEMBLE_*`` variables describing the
sheet), and classifying the result: exit 0 is success, anything else a
failure, a timeout a timeout. Profile-driven AI CLIs build on the same runner.
"""

from __future__ import annotations

import os
import time
from typing import Any

import gevent.event
from pykka import ActorRef

from actors.backends.base import BackendActor
from actors.base import ActorContext
from actors.process import decode_output, run_process
from runtime.messages import ExecutionRequest
from runtime.outcomes import ExecutionResult, OutcomeKind

# Variables a shell command reasonably needs; nothing else from the host leaks in.
BASE_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "TMPDIR", "TZ")


class CliBackend:
    """Spec of the ``cli`` instrument for ``runtime.start(backends=...)``."""

    def __init__(
        self,
        *,
        shell: str = "bash",
        max_concurrent: int | None = None,
        kill_grace_seconds: float = 5.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.shell = shell
        self._max_concurrent = max_concurrent
        self.kill_grace_seconds = kill_grace_seconds
        self.extra_env = dict(extra_env or {})

    @property
    def max_concurrent(self) -> int | None:
        return self._max_concurrent

    def start_actor(self, context: ActorContext, instrument: str) -> ActorRef[Any]:
        return CliBackendActor.start(context, instrument=instrument, spec=self)


class CliBackendActor(BackendActor):
    def __init__(self, context: ActorContext, *, instrument: str, spec: CliBackend) -> None:
        super().__init__(context, instrument=instrument)
        self._spec = spec

    def execute(self, request: ExecutionRequest, cancel: gevent.event.Event) -> ExecutionResult:
        started = time.monotonic()
        process = run_process(
            [self._spec.shell, "-c", request.prompt],
            cwd=request.workspace,
            env=self._environment(request),
            timeout=request.timeout_seconds,
            kill_grace_seconds=self._spec.kill_grace_seconds,
            cancel=cancel,
        )
        stdout, stderr = decode_output(process.stdout), decode_output(process.stderr)
        duration = time.monotonic() - started
        if process.spawn_error is not None:
            kind, error = OutcomeKind.FAILURE, process.spawn_error
        elif process.cancelled:
            kind, error = OutcomeKind.CANCELLED, "cancelled"
        elif process.timed_out:
            kind, error = OutcomeKind.TIMEOUT, f"timed out after {request.timeout_seconds:g} s"
        elif process.wait_error is not None:
            kind, error = OutcomeKind.FAILURE, process.wait_error
        elif process.exit_code == 0:
            kind, error = OutcomeKind.SUCCESS, None
        else:
            kind = OutcomeKind.FAILURE
            detail = stderr.strip()[-500:]
            error = f"exit code {process.exit_code}" + (f": {detail}" if detail else "")
        return ExecutionResult(
            kind=kind,
            exit_code=process.exit_code,
            stdout=stdout,
            stderr=stderr,
            duration_seconds=duration,
            error=error,
        )

    def _environment(self, request: ExecutionRequest) -> dict[str, str]:
        environment = {name: os.environ[name] for name in BASE_ENVIRONMENT if name in os.environ}
        environment.update(self._spec.extra_env)
        environment.update(
            {
                "ENSEMBLE_JOB_ID": request.job_id,
                "ENSEMBLE_SHEET_NUM": str(request.sheet_num),
                "ENSEMBLE_ATTEMPT": str(request.attempt),
                "ENSEMBLE_WORKSPACE": request.workspace,
            }
        )
        return environment
