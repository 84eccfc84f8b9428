"""The BackendPool actor: leases backend actors to sheets (S17-S22).

Owns the mapping from instrument to backend actor and carries out what
``runtime.leases.LeaseTable`` decides: grants (global ceiling, per-instrument
and per-model limits, round-robin between jobs), instrument-wide rate-limit
blocks across jobs with a timer for their end, and circuit breakers with their
recovery timer. Grants and refusals go to the job that asked, in one message
per job per pass.

Instrument-wide events (``rate_limit.cleared``, ``circuit.opened``,
``circuit.closed``) describe an instrument, not a job: each is published once,
with job id "" and sheet 0, and names in ``data["jobs"]`` the jobs that had
requests waiting for, or attempts running on, that instrument (S34).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pykka import ActorRef

from actors.base import ActorContext, EnsembleActor, send
from runtime import events as ev
from runtime.breakers import BreakerState
from runtime.events import Event
from runtime.leases import Key, LeaseTable
from runtime.messages import (
    BlockInstrument,
    ClearRateLimits,
    Lease,
    LeasesGranted,
    LeasesRefused,
    Publish,
    Recipient,
    ReleaseJob,
    ReleaseLeases,
    Reply,
    RequestLeases,
    SaveRuntimeState,
    WithdrawLeaseRequests,
)
from runtime.policy import BreakerPolicy


@dataclass(frozen=True, slots=True)
class _Wake:
    """The pool's timer: a block or an open breaker may have ended."""


class BackendPool(EnsembleActor):
    def __init__(
        self,
        context: ActorContext,
        *,
        backends: Mapping[str, ActorRef[Any]],
        max_concurrent_sheets: int,
        instrument_limits: Mapping[str, int],
        model_limits: Mapping[Key, int] | None = None,
        default_models: Mapping[str, str] | None = None,
        bus: ActorRef[Any] | None = None,
        persistence: ActorRef[Any] | None = None,
        breakers: Mapping[str, Mapping[str, Any]] | None = None,
        parent: Recipient | None = None,
    ) -> None:
        super().__init__(context, parent=parent, key=("service", "backend pool"))
        self._backends = dict(backends)
        self._table = LeaseTable(
            max_concurrent_sheets,
            dict(instrument_limits),
            dict(model_limits or {}),
            dict(default_models or {}),
        )
        self._bus = bus
        self._persistence = persistence
        self._table.restore_breakers(breakers or {})
        self._jobs: dict[str, Recipient] = {}
        self._breaker_policies: dict[str, BreakerPolicy] = {}
        self._wake_at: float | None = None

    def on_start(self) -> None:
        # A breaker restored open must be tried again when its timeout ends.
        self._arm_wake(self.context.clock.now())

    def on_receive(self, message: Any) -> Any:
        now = self.context.clock.now()
        if isinstance(message, RequestLeases):
            self._request(message, now)
        elif isinstance(message, ReleaseLeases):
            self._release(message, now)
        elif isinstance(message, WithdrawLeaseRequests):
            self._table.withdraw(message.job_id)
        elif isinstance(message, ReleaseJob):
            self._table.release_job(message.job_id)
            self._jobs.pop(message.job_id, None)
        elif isinstance(message, BlockInstrument):
            if self._table.block(message.instrument, message.model, message.until):
                self._arm_wake(now)
        elif isinstance(message, ClearRateLimits):
            cleared = self._table.clear_blocks(message.instrument)
            self._announce_cleared(cleared, now, manual=True)
            send(message.reply_to, Reply(value=len(cleared)))
        elif isinstance(message, _Wake):
            self._wake_at = None
            self._announce_cleared(self._table.expire_blocks(now), now, manual=False)
            self._arm_wake(now)
        else:
            return super().on_receive(message)
        self._grant(now)
        return None

    def _request(self, message: RequestLeases, now: float) -> None:
        self._jobs[message.job_id] = message.reply_to
        self._breaker_policies[message.job_id] = message.breaker
        refused: list[tuple[int, str, str]] = []
        for sheet_num, instrument, model, has_fallback in message.requests:
            if not self._table.request(
                message.job_id, sheet_num, instrument, model, has_fallback=has_fallback, now=now
            ):
                refused.append((sheet_num, instrument, f"circuit breaker of {instrument} is open"))
        if refused:
            send(message.reply_to, LeasesRefused(tuple(refused)))

    def _release(self, message: ReleaseLeases, now: float) -> None:
        for lease_id, succeeded in message.releases:
            grant, change = self._table.release(lease_id, succeeded, self._policy_of(lease_id), now)
            if grant is None or change is None:
                continue
            jobs = sorted({grant.job_id, *self._table.jobs_on(grant.instrument)})
            if change is BreakerState.OPEN:
                self._publish(ev.CIRCUIT_OPENED, now, instrument=grant.instrument, jobs=jobs)
                self._refuse_fallback_requests(grant.instrument)
                self._arm_wake(now)
            else:
                self._publish(ev.CIRCUIT_CLOSED, now, instrument=grant.instrument, jobs=jobs)
            # A breaker's opening and closing outlive a restart (S29).
            send(
                self._persistence,
                SaveRuntimeState({"breakers": self._table.breaker_records()}),
            )

    def _policy_of(self, lease_id: int) -> BreakerPolicy:
        grant = self._table.holder(lease_id)
        if grant is None:
            return BreakerPolicy()
        return self._breaker_policies.get(grant.job_id, BreakerPolicy())

    def _refuse_fallback_requests(self, instrument: str) -> None:
        by_job: dict[str, list[tuple[int, str, str]]] = {}
        for job_id, sheet_num in self._table.refuse_fallback_requests(instrument):
            by_job.setdefault(job_id, []).append(
                (sheet_num, instrument, f"circuit breaker of {instrument} is open")
            )
        for job_id, refusals in by_job.items():
            send(self._jobs.get(job_id), LeasesRefused(tuple(refusals)))

    def _grant(self, now: float) -> None:
        granted_to_gone_job = True
        while granted_to_gone_job:
            granted_to_gone_job = False
            by_job: dict[str, list[tuple[int, Lease]]] = {}
            for grant in self._table.grant(now):
                backend = self._backends[grant.instrument]
                lease = Lease(grant.lease_id, grant.instrument, grant.model, backend)
                by_job.setdefault(grant.job_id, []).append((grant.sheet_num, lease))
            for job_id, grants in by_job.items():
                if send(self._jobs.get(job_id), LeasesGranted(tuple(grants))):
                    continue
                # The job stopped: take its leases back and forget its requests.
                for _, lease in grants:
                    self._table.release(lease.lease_id, None, BreakerPolicy(), now)
                self._table.withdraw(job_id)
                self._jobs.pop(job_id, None)
                granted_to_gone_job = True

    def _arm_wake(self, now: float) -> None:
        deadline = self._table.next_deadline(now)
        if deadline is None or (self._wake_at is not None and self._wake_at <= deadline):
            return
        self._wake_at = deadline
        ref = self.actor_ref
        self.context.clock.call_later(deadline - now, lambda: send(ref, _Wake()))

    def _announce_cleared(self, keys: list[Key], now: float, *, manual: bool) -> None:
        for instrument, model in keys:
            self._publish(
                ev.RATE_LIMIT_CLEARED, now, instrument=instrument, model=model, manual=manual,
                jobs=self._table.jobs_on(instrument, model),
            )  # fmt: skip

    def _publish(self, name: str, now: float, **data: Any) -> None:
        send(self._bus, Publish((Event("", 0, name, now, data),)))
