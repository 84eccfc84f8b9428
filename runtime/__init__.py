"""Ensemble: an actor-model runtime for multi-stage AI work.

The host surface is ``runtime.start()``; see ``runtime.api``. Everything else in
this package is plain data and pure logic (scores, plans, the decision core),
free of actors, gevent and pykka.
"""

from typing import TYPE_CHECKING, Any

from runtime.clock import ManualClock
from runtime.errors import (
    CallTimeoutError,
    ConfigError,
    EnsembleError,
    JobExistsError,
    JobNotFoundError,
    PersistenceError,
    RuntimeStoppedError,
    ScoreError,
    UnknownInstrumentError,
)
from runtime.events import Event
from runtime.state import JobProgress, JobResult, JobStatus, SheetResult, SheetStatus

if TYPE_CHECKING:
    from runtime.api import JobHandle, Runtime, start


def __getattr__(name: str) -> Any:
    # The host surface imports the actors, and the actors import runtime's
    # plain modules: loading it lazily lets either side be imported first.
    if name in ("start", "Runtime", "JobHandle"):
        from runtime import api

        return getattr(api, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


__all__ = [
    "CallTimeoutError",
    "ConfigError",
    "EnsembleError",
    "Event",
    "JobExistsError",
    "JobHandle",
    "JobNotFoundError",
    "JobProgress",
    "JobResult",
    "JobStatus",
    "ManualClock",
    "PersistenceError",
    "Runtime",
    "RuntimeStoppedError",
    "ScoreError",
    "SheetResult",
    "SheetStatus",
    "UnknownInstrumentError",
    "start",
]
