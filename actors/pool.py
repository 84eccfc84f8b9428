"""The BackendPool actor: leases backend actors to sheets (S22).

Owns the mapping from instrument to backend actor and carries out the grants
decided by ``runtime.leases.LeaseTable`` (global ceiling, per-instrument
limits, round-robin between jobs, FIFO within a job). Grants go to the job that
asked, in one message per job per pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pykka import ActorRef

from actors.base import ActorContext, EnsembleActor, send
from runtime.leases import LeaseTable
from runtime.messages import (
    Lease,
    LeasesGranted,
    Recipient,
    ReleaseLeases,
    RequestLeases,
    WithdrawLeaseRequests,
)


class BackendPool(EnsembleActor):
    def __init__(
        self,
        context: ActorContext,
        *,
        backends: Mapping[str, ActorRef[Any]],
        max_concurrent_sheets: int,
        instrument_limits: Mapping[str, int],
    ) -> None:
        super().__init__(context)
        self._backends = dict(backends)
        self._table = LeaseTable(max_concurrent_sheets, dict(instrument_limits))
        self._jobs: dict[str, Recipient] = {}

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RequestLeases):
            self._jobs[message.job_id] = message.reply_to
            for sheet_num, instrument in message.requests:
                self._table.request(message.job_id, sheet_num, instrument)
            self._grant()
        elif isinstance(message, ReleaseLeases):
            for lease_id in message.lease_ids:
                self._table.release(lease_id)
            self._grant()
        elif isinstance(message, WithdrawLeaseRequests):
            self._table.withdraw(message.job_id)
        else:
            return super().on_receive(message)
        return None

    def _grant(self) -> None:
        granted_to_gone_job = True
        while granted_to_gone_job:
            granted_to_gone_job = False
            by_job: dict[str, list[tuple[int, Lease]]] = {}
            for grant in self._table.grant():
                lease = Lease(grant.lease_id, grant.instrument, self._backends[grant.instrument])
                by_job.setdefault(grant.job_id, []).append((grant.sheet_num, lease))
            for job_id, grants in by_job.items():
                if send(self._jobs.get(job_id), LeasesGranted(tuple(grants))):
                    continue
                # The job stopped: take its leases back and forget its requests.
                for _, lease in grants:
                    self._table.release(lease.lease_id)
                self._table.withdraw(job_id)
                self._jobs.pop(job_id, None)
                granted_to_gone_job = True
