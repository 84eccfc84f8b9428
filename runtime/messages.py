"""Every message the actors exchange (DESIGN rule 1).

Messages are small frozen dataclasses. A message that expects an answer carries
``reply_to``: anything with a ``tell`` method, an actor ref or a host-side
reply box. This module holds no behaviour and imports no actor code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.events import Event
from runtime.outcomes import AttemptResult, ExecutionResult
from runtime.plan import Plan
from runtime.policy import BreakerPolicy, Policy
from runtime.score import Score


class Recipient(Protocol):
    def tell(self, message: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a request: a value, or an exception to raise at the caller."""

    value: Any = None
    error: BaseException | None = None


# --- host -> supervisor ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitJob:
    score: Score
    plan: Plan
    policy: Policy
    template: Any  # runtime.prompts.PromptTemplate, compiled on the host's thread
    job_id: str | None
    reply_to: Recipient


JOB_COMMANDS = ("pause", "resume", "cancel", "progress", "result", "resolve_fermata")


@dataclass(frozen=True, slots=True)
class JobCommand:
    """``command`` is one of JOB_COMMANDS; the supervisor forwards it to the job.
    ``arguments`` carries the command's parameters (a fermata's sheet and decision)."""

    job_id: str
    command: str
    reply_to: Recipient
    arguments: tuple[Any, ...] = ()


# --- job <-> supervisor ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobFinished:
    job_id: str
    result: Any  # runtime.state.JobResult


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """Sent by the base actor to its parent when it dies of an unhandled error."""

    child_urn: str
    key: Any
    error: str


# --- job <-> pool ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """Permission to run one attempt on ``backend`` until released."""

    lease_id: int
    instrument: str
    model: str | None
    backend: Any  # ActorRef of the backend actor


@dataclass(frozen=True, slots=True)
class RequestLeases:
    """Requests in FIFO order: (sheet_num, instrument, model, has_fallback).
    ``breaker`` is the job's circuit-breaker policy, applied to its outcomes."""

    job_id: str
    requests: tuple[tuple[int, str, str | None, bool], ...]
    breaker: BreakerPolicy
    reply_to: Recipient


@dataclass(frozen=True, slots=True)
class LeasesGranted:
    grants: tuple[tuple[int, Lease], ...]  # (sheet_num, lease)


@dataclass(frozen=True, slots=True)
class LeasesRefused:
    """S21: these requests were dropped because their instrument's breaker is
    open and each sheet has a fallback: (sheet_num, instrument refused, reason)."""

    refusals: tuple[tuple[int, str, str], ...]


@dataclass(frozen=True, slots=True)
class WithdrawLeaseRequests:
    job_id: str


@dataclass(frozen=True, slots=True)
class ReleaseLeases:
    """(lease_id, what the attempt that held it says of the instrument's health:
    ``AttemptResult.instrument_health``, None if it never ran)."""

    releases: tuple[tuple[int, bool | None], ...]


@dataclass(frozen=True, slots=True)
class BlockInstrument:
    """S17: a rate limit: no leases for (instrument, model) until ``until``."""

    job_id: str
    instrument: str
    model: str | None
    until: float


@dataclass(frozen=True, slots=True)
class ClearRateLimits:
    """S19: end rate-limit blocks (of one instrument, or all); replies the count."""

    instrument: str | None
    reply_to: Recipient


# --- job <-> sheet -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunAttempt:
    """Run attempt number ``attempt`` on ``lease``. ``retry_number`` is 0 for a
    first run, k for retry #k (S11); a ``completion`` attempt's prompt ends with
    the completion note built from ``validations`` (S8)."""

    attempt: int
    lease: Lease
    retry_number: int = 0
    completion: bool = False
    validations: tuple[tuple[str, bool], ...] = ()
    prior_outputs: Mapping[int, Any] = field(default_factory=dict)  # S31: PriorOutput by sheet


@dataclass(frozen=True, slots=True)
class CancelAttempt:
    pass


@dataclass(frozen=True, slots=True)
class AttemptFinished:
    sheet_num: int
    attempt: int
    result: AttemptResult


@dataclass(frozen=True, slots=True)
class TimerFired:
    sheet_num: int


@dataclass(frozen=True, slots=True)
class Flush:
    """A job's note to itself: commit the batch and release its effects."""


# --- sheet <-> backend --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutionRequest:
    request_id: str
    job_id: str
    sheet_num: int
    attempt: int
    instrument: str
    prompt: str
    workspace: str
    timeout_seconds: float
    model: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Execute:
    request: ExecutionRequest
    reply_to: Recipient


@dataclass(frozen=True, slots=True)
class CancelExecution:
    request_id: str


@dataclass(frozen=True, slots=True)
class ExecutionFinished:
    request_id: str
    result: ExecutionResult


# --- persistence ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateJobFiles:
    """Write a new job's score and first snapshot; the job exists once it is answered."""

    job_id: str
    score: dict[str, Any]
    checkpoint: dict[str, Any]
    reply_to: Recipient


@dataclass(frozen=True, slots=True)
class OpenJobFiles:
    """Reopen a recovered job's journal; ``checkpoint`` is what was read back."""

    job_id: str
    checkpoint: dict[str, Any]
    reply_to: Recipient


@dataclass(frozen=True, slots=True)
class GetCheckpoint:
    """Reply with a copy of a job's checkpoint as committed so far (for restarts)."""

    job_id: str
    reply_to: Recipient


@dataclass(frozen=True, slots=True)
class ReleaseJob:
    """Forget a job in the pool: its requests and the leases its attempts held."""

    job_id: str


@dataclass(frozen=True, slots=True)
class RecoverJob:
    """Start a job again from its checkpoint (S29)."""

    score: Score
    plan: Plan
    policy: Policy
    template: Any
    checkpoint: dict[str, Any]
    reply_to: Recipient


@dataclass(frozen=True, slots=True)
class SaveRuntimeState:
    """The runtime-wide state that outlives a restart (circuit breakers, S21/S29)."""

    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Commit:
    """Append records to a job's journal; ``done`` is set once they are durable."""

    job_id: str
    records: tuple[dict[str, Any], ...]
    done: Any  # a future: set to the last sequence number, or to an exception


@dataclass(frozen=True, slots=True)
class CloseJobFiles:
    job_id: str


@dataclass(frozen=True, slots=True)
class DiscardJobFiles:
    """A JobActor gave up waiting for its job's creation and refused the job:
    Persistence deletes whatever the creation left once it is done."""

    job_id: str


# --- events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class Subscribe:
    subscription_id: int
    callback: Any  # Callable[[Event], None]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    subscription_id: int
