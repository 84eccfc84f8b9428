"""The backend actor base and the spec a runtime starts backends from.

Owns the request protocol every backend follows: an ``Execute`` runs in its own
task greenlet (so the actor stays responsive, DESIGN rule 4), a
``CancelExecution`` sets that request's cancel event, and exactly one
``ExecutionFinished`` goes back for every request, a crash in the backend's
code included. How a request is run is the subclass's ``execute``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import gevent.event
from loguru import logger
from pykka import ActorRef

from actors.base import ActorContext, EnsembleActor, TaskDone, send
from runtime.instruments import InstrumentProfile
from runtime.messages import (
    CancelExecution,
    Execute,
    ExecutionFinished,
    ExecutionRequest,
    Recipient,
)
from runtime.outcomes import ExecutionResult, OutcomeKind


class BackendSpec(Protocol):
    """What ``runtime.start(backends={...})`` accepts for one instrument."""

    @property
    def max_concurrent(self) -> int | None:
        """At most this many attempts at once on this instrument (None: no own limit)."""
        ...

    def start_actor(self, context: ActorContext, instrument: str) -> ActorRef[Any]:
        """Start the backend actor on the runtime's hub."""
        ...


@dataclass(slots=True)
class _Running:
    request: ExecutionRequest
    reply_to: Recipient
    cancel: gevent.event.Event
    started: float


class BackendActor(EnsembleActor):
    """Runs execution requests concurrently, one task greenlet each."""

    def __init__(self, context: ActorContext, *, instrument: str) -> None:
        super().__init__(context)
        self.instrument = instrument
        self._running: dict[int, _Running] = {}
        self._task_by_request: dict[str, int] = {}

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Execute):
            immediate = self._answer_now(message.request)
            if immediate is not None:
                send(message.reply_to, ExecutionFinished(message.request.request_id, immediate))
                return None
            cancel = gevent.event.Event()
            task_id = self.spawn_task(self.execute, message.request, cancel)
            self._running[task_id] = _Running(
                message.request, message.reply_to, cancel, time.monotonic()
            )
            self._task_by_request[message.request.request_id] = task_id
        elif isinstance(message, CancelExecution):
            cancelled_task = self._task_by_request.get(message.request_id)
            if cancelled_task is not None:
                self._running[cancelled_task].cancel.set()
        else:
            return super().on_receive(message)
        return None

    def on_task_done(self, done: TaskDone) -> None:
        running = self._running.pop(done.task_id, None)
        if running is None:
            return
        self._task_by_request.pop(running.request.request_id, None)
        if done.error is not None:
            logger.opt(exception=done.error).warning(
                "instrument {} crashed on {}", self.instrument, running.request.request_id
            )
            result = ExecutionResult(
                kind=OutcomeKind.CRASHED,
                error=f"backend crashed: {type(done.error).__name__}: {done.error}",
                duration_seconds=time.monotonic() - running.started,
            )
        else:
            result = done.value
        send(running.reply_to, ExecutionFinished(running.request.request_id, result))

    def on_stop(self) -> None:
        for running in self._running.values():
            running.cancel.set()

    def _answer_now(self, request: ExecutionRequest) -> ExecutionResult | None:
        try:
            return self.answer_now(request)
        except Exception as exc:
            logger.opt(exception=exc).warning(
                "instrument {} crashed on {}", self.instrument, request.request_id
            )
            return ExecutionResult(
                kind=OutcomeKind.CRASHED, error=f"backend crashed: {type(exc).__name__}: {exc}"
            )

    def answer_now(self, request: ExecutionRequest) -> ExecutionResult | None:
        """The result, if it is known without waiting for anything; else None and
        ``execute`` runs in a task. Must not block."""
        return None

    def execute(self, request: ExecutionRequest, cancel: gevent.event.Event) -> ExecutionResult:
        """Run one request to its end; runs in its own greenlet. Must honour ``cancel``."""
        raise NotImplementedError


class ProfileBackend:
    """A backend spec made from an instrument profile (CLI or HTTP).

    Its limits come from the profile unless ``max_concurrent`` overrides them;
    subclasses say how one request runs (``run``, in a task greenlet).
    """

    def __init__(self, profile: InstrumentProfile, max_concurrent: int | None) -> None:
        self.profile = profile
        self._max_concurrent = (
            max_concurrent if max_concurrent is not None else profile.max_concurrent
        )

    @property
    def max_concurrent(self) -> int | None:
        return self._max_concurrent

    @property
    def model_limits(self) -> dict[str, int]:
        """At most this many attempts at once per model (S22), from the profile."""
        return self.profile.model_limits

    def start_actor(self, context: ActorContext, instrument: str) -> ActorRef[Any]:
        return ProfileBackendActor.start(context, instrument=instrument, spec=self)

    def run(self, request: ExecutionRequest, cancel: gevent.event.Event) -> ExecutionResult:
        raise NotImplementedError


class ProfileBackendActor(BackendActor):
    """The backend actor of every profile-made spec: each request is ``spec.run``."""

    def __init__(self, context: ActorContext, *, instrument: str, spec: ProfileBackend) -> None:
        super().__init__(context, instrument=instrument)
        self._spec = spec

    def execute(self, request: ExecutionRequest, cancel: gevent.event.Event) -> ExecutionResult:
        return self._spec.run(request, cancel)
