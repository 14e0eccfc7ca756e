"""Reads of one row per device, for many devices in one statement: a handshake reads its
device, its queue's state and its key counts, and the handshakes of the same event-loop turn
(and those made while the previous statement is on the wire) share one pooled connection
and one round trip for each of those reads, instead of a pool checkout and a query each.

One statement is one snapshot, so each read in it sees what a statement of its own, started
at that moment, would see: what its caller waited for before asking has committed by then.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from storage.postgres.database import Database, Row
from storage.turn_batches import TurnBatches, answer

__all__ = ["DEVICE_KEYS", "DeviceReads"]

MAX_READS: Final = 500  # reads in one statement; more wait for the next one

DEVICE_KEYS: Final = "unnest($1::int[], $2::text[], $3::smallint[], $4::bigint[]) AS q(n, u, d, at)"
"""What a statement of DeviceReads selects from: one row per read, `n` its place in the
batch, `u` and `d` the device, `at` a time the read needs (its `now`; 0 when none). The
statement answers at most one row per `n`, with an `n` column."""


@dataclass(slots=True)
class _Read:
    user: str
    device: int
    at: int
    future: asyncio.Future[Row | None]


class DeviceReads:
    """Batches one kind of per-device read; one statement on the wire at a time."""

    def __init__(
        self,
        db: Database,
        statement: str,
        operation: str,
        *,
        max_reads: int = MAX_READS,
        generic_plans: bool = False,
    ) -> None:
        """`statement` selects from DEVICE_KEYS; `operation` names it for the observer;
        `generic_plans`: run it on the connections of generic plans (Database.connection)."""
        self._db = db
        self._generic_plans = generic_plans
        self._statement = statement
        self._operation = operation
        self._batches: TurnBatches[_Read] = TurnBatches(
            self._send,
            max_batch=max_reads,
            name=f"relay-postgres-{operation}",
            closed_message="the store is closed",
        )
        self.statements = 0  # statements sent; reads / statements is the mean batch
        self.reads = 0

    async def read(self, user: str, device: int, at: int = 0) -> Row | None:
        """The device's row, or None when the statement has none for it."""
        call = _Read(user, device, at, asyncio.get_running_loop().create_future())
        self._batches.add(call)
        return await call.future

    async def close(self) -> None:
        """Answer what is queued, then stop."""
        await self._batches.close()

    async def _send(self, batch: list[_Read]) -> None:
        self.statements += 1
        self.reads += len(batch)
        async with self._db.connection(self._operation, generic_plans=self._generic_plans) as conn:
            rows = await conn.fetch(
                self._statement,
                list(range(len(batch))),
                [call.user for call in batch],
                [call.device for call in batch],
                [call.at for call in batch],
            )
        found: list[Row | None] = [None] * len(batch)
        for row in rows:
            found[int(row["n"])] = row
        for call, row in zip(batch, found, strict=True):
            answer(call.future, row)
