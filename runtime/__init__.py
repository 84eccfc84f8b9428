"""Ensemble: an actor-model runtime for multi-stage AI work.

The host surface is ``runtime.start()``; see ``runtime.api``. Everything else in
this package is plain data and pure logic (scores, plans, the decision core),
free of actors, gevent and pykka.
"""

from runtime.api import JobHandle, Runtime, start
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
