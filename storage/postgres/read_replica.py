"""The queries that tolerate replication lag, sent to a read replica when one is set
(`database_read_url`), to the primary otherwise.

Only figures for operators go there (docs/deployment.md lists them with the reason for each):
the count of stored messages (a full scan, for the stored-messages gauge) and the audit
trail of key changes (`relay audit`). Everything a client's exchange depends on reads the
primary: claims, drains after a commit, the directory, queue state, the origins of an ack.

The replica's calls are timed under the backend name `postgresql_replica`
(relay_backend_call_duration_seconds), the primary's under `postgresql`.

A replica that does not answer (down, not yet accepting connections, a query cancelled by
a conflict with recovery) is no outage: the query runs on the primary instead, and the
replica is left alone for RETRY_AFTER_S before it is tried again, so that its absence costs
one connect timeout per RETRY_AFTER_S at most, not one per query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from storage.errors import Unavailable
from storage.postgres.database import Connection, Database

__all__ = ["RETRY_AFTER_S", "LagTolerantReads"]

RETRY_AFTER_S: Final = 5.0

log = logging.getLogger(__name__)

T = TypeVar("T")


class LagTolerantReads:
    """Runs a read on the replica when there is one and it answers, on the primary else."""

    def __init__(
        self,
        primary: Database,
        replica: Database | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self._replica = replica
        self._clock = clock
        self._skip_until = 0.0

    @property
    def replica(self) -> Database | None:
        return self._replica

    async def run(self, operation: str, read: Callable[[Connection], Awaitable[T]]) -> T:
        """`read` on a connection of the replica, or of the primary when the replica fails
        (Unavailable or a timeout) or failed less than RETRY_AFTER_S ago. A failure of the
        primary is the caller's, as for any other query."""
        if self._replica is not None and self._clock() >= self._skip_until:
            try:
                async with self._replica.connection(operation) as conn:
                    result = await read(conn)
            except (Unavailable, TimeoutError) as exc:
                if self._skip_until == 0.0:
                    log.warning(
                        "read replica failed (%s); %s and the lag-tolerant reads of the next"
                        " %.0f s go to the primary",
                        exc,
                        operation,
                        RETRY_AFTER_S,
                    )
                self._skip_until = self._clock() + RETRY_AFTER_S
            else:
                if self._skip_until != 0.0:
                    log.warning("read replica answers again: lag-tolerant reads go to it")
                    self._skip_until = 0.0
                return result
        async with self._primary.connection(operation) as conn:
            return await read(conn)

    async def close(self) -> None:
        """Closes the replica's pool (the primary's is its owner's)."""
        if self._replica is not None:
            await self._replica.close()
