"""ScriptedBackend: a mock backend actor whose outcomes are scripted by a test.

Owns the scripted outcomes (success, failure, rate limit, auth failure, crash,
hang, each with an optional delay on the runtime's clock), the choice of
outcome per sheet and attempt or by a function, and what a test can observe:
the requests it received and how many ran at once. It is a shipped feature:
users stand it in for real AI tools in their own tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent.event
from pykka import ActorRef

from actors.backends.base import BackendActor
from actors.base import ActorContext
from runtime.messages import ExecutionRequest
from runtime.outcomes import ExecutionResult, OutcomeKind


@dataclass(frozen=True)
class Succeed:
    """Exit 0 with ``stdout``; ``files`` (path → text, both formatted with the
    sheet's variables such as ``{sheet_num}``) are written into the workspace."""

    stdout: str = ""
    cost: float = 0.0
    files: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Fail:
    exit_code: int = 1
    stderr: str = "scripted failure"
    stdout: str = ""
    cost: float = 0.0
    delay: float = 0.0


@dataclass(frozen=True)
class RateLimit:
    wait_seconds: float = 60.0
    message: str = "rate limit reached"
    delay: float = 0.0


@dataclass(frozen=True)
class AuthFailure:
    message: str = "authentication failed: invalid API key"
    delay: float = 0.0


@dataclass(frozen=True)
class Crash:
    """The backend's own code raises: the attempt ends classified as a crash."""

    message: str = "scripted crash"
    delay: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Never finishes on its own: ends when cancelled, or times out after the
    sheet's timeout on the runtime's clock."""


Outcome = Succeed | Fail | RateLimit | AuthFailure | Crash | Hang
Script = Mapping[int, Outcome | Sequence[Outcome]] | Callable[[ExecutionRequest], Outcome]


_NEVER_CANCELLED = gevent.event.Event()


class ScriptedCrashError(RuntimeError):
    """Raised inside the backend by a ``Crash`` outcome."""


class ScriptedBackend:
    """A backend spec for ``runtime.start(backends={...})`` with scripted outcomes.

    ``script`` maps a sheet number to one outcome or to a list by attempt (the
    last one repeats), or is a function of the request. Sheets not in the map
    get ``default``. Safe to inspect from the test's thread while jobs run.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        default: Outcome | None = None,
        max_concurrent: int | None = None,
    ) -> None:
        self.script = script if script is not None else {}
        self.default: Outcome = default if default is not None else Succeed()
        self._max_concurrent = max_concurrent
        self._condition = threading.Condition()
        self._requests: list[ExecutionRequest] = []
        self.running = 0
        self.max_running = 0

    @property
    def max_concurrent(self) -> int | None:
        return self._max_concurrent

    @property
    def requests(self) -> list[ExecutionRequest]:
        with self._condition:
            return list(self._requests)

    def calls(self, sheet_num: int | None = None, job_id: str | None = None) -> int:
        """How many requests started (for one sheet and/or job, if given)."""
        return len(self.attempts(sheet_num, job_id))

    def attempts(self, sheet_num: int | None = None, job_id: str | None = None) -> list[int]:
        """The attempt numbers of the requests started, in order (for one sheet
        and/or job, if given)."""
        with self._condition:
            return [
                request.attempt
                for request in self._requests
                if (sheet_num is None or request.sheet_num == sheet_num)
                and (job_id is None or request.job_id == job_id)
            ]

    def wait_for_calls(self, count: int, timeout: float = 10.0) -> bool:
        """Block the calling (test) thread until ``count`` requests have started."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while len(self._requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    def outcome_for(self, request: ExecutionRequest) -> Outcome:
        if callable(self.script):
            return self.script(request)
        chosen = self.script.get(request.sheet_num)
        if chosen is None:
            return self.default
        if isinstance(chosen, Sequence):
            if not chosen:
                return self.default
            return chosen[min(request.attempt, len(chosen)) - 1]
        return chosen

    def start_actor(self, context: ActorContext, instrument: str) -> ActorRef[Any]:
        return ScriptedBackendActor.start(context, instrument=instrument, spec=self)

    def _started(self, request: ExecutionRequest) -> None:
        with self._condition:
            self._requests.append(request)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self._condition.notify_all()

    def _ended(self) -> None:
        with self._condition:
            self.running -= 1
            self._condition.notify_all()


class ScriptedBackendActor(BackendActor):
    def __init__(self, context: ActorContext, *, instrument: str, spec: ScriptedBackend) -> None:
        super().__init__(context, instrument=instrument)
        self._spec = spec
        self._deferred: dict[str, Outcome] = {}

    def answer_now(self, request: ExecutionRequest) -> ExecutionResult | None:
        # Outcomes with nothing to wait for (and no files to write) are answered
        # in the handler: no task greenlet, two messages fewer per attempt.
        outcome = self._spec.outcome_for(request)
        if (
            isinstance(outcome, Hang)
            or outcome.delay
            or (isinstance(outcome, Succeed) and outcome.files)
        ):
            self._deferred[request.request_id] = outcome
            return None
        spec = self._spec
        spec._started(request)
        try:
            return self._play(outcome, request, _NEVER_CANCELLED)
        finally:
            spec._ended()

    def execute(self, request: ExecutionRequest, cancel: gevent.event.Event) -> ExecutionResult:
        spec = self._spec
        spec._started(request)
        try:
            return self._play(self._deferred.pop(request.request_id), request, cancel)
        finally:
            spec._ended()

    def _play(
        self, outcome: Outcome, request: ExecutionRequest, cancel: gevent.event.Event
    ) -> ExecutionResult:
        if isinstance(outcome, Hang):
            if self._wait(request.timeout_seconds, cancel):
                return ExecutionResult(kind=OutcomeKind.CANCELLED, error="cancelled")
            return ExecutionResult(
                kind=OutcomeKind.TIMEOUT,
                error=f"timed out after {request.timeout_seconds:g} s",
                duration_seconds=request.timeout_seconds,
            )
        if outcome.delay and self._wait(outcome.delay, cancel):
            return ExecutionResult(kind=OutcomeKind.CANCELLED, error="cancelled")
        if isinstance(outcome, Succeed):
            for path, text in outcome.files.items():
                target = Path(request.workspace) / path.format(**request.variables)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text.format(**request.variables), encoding="utf-8")
            return ExecutionResult(
                kind=OutcomeKind.SUCCESS, exit_code=0, stdout=outcome.stdout, cost=outcome.cost
            )
        if isinstance(outcome, Fail):
            return ExecutionResult(
                kind=OutcomeKind.FAILURE,
                exit_code=outcome.exit_code,
                stdout=outcome.stdout,
                stderr=outcome.stderr,
                cost=outcome.cost,
            )
        if isinstance(outcome, RateLimit):
            return ExecutionResult(
                kind=OutcomeKind.RATE_LIMITED,
                exit_code=1,
                stderr=outcome.message,
                wait_seconds=outcome.wait_seconds,
                error=outcome.message,
            )
        if isinstance(outcome, AuthFailure):
            return ExecutionResult(
                kind=OutcomeKind.AUTH_FAILED,
                exit_code=1,
                stderr=outcome.message,
                error=outcome.message,
            )
        if isinstance(outcome, Crash):
            raise ScriptedCrashError(outcome.message)
        raise TypeError(f"not a scripted outcome: {outcome!r}")

    def _wait(self, seconds: float, cancel: gevent.event.Event) -> bool:
        """Wait ``seconds`` of the runtime's clock; True if cancelled first."""
        if cancel.is_set():
            return True
        elapsed = gevent.event.Event()
        timer = self.context.clock.call_later(seconds, elapsed.set)
        try:
            woke = gevent.wait([elapsed, cancel], count=1)
        finally:
            timer.cancel()
        return cancel in woke or cancel.is_set()
