"""`pending_origins` for many sends in one statement: the lookups made in the same
event-loop turn (and those made while the previous statement is on the wire) share one
pooled connection and one round trip, instead of a pool checkout and a query each.

One statement is one snapshot, so each lookup in it sees what a statement of its own,
started at that moment, would see: what its caller waited for (the writes queued before
it, see messages.PostgresMessageQueue) has committed by then.

A sealed row (encryption at rest) is opened with the queue's sealer; one that does not open
is left out of the answer, as `fetch` leaves it out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from storage.at_rest.sealing import EnvelopeSealer
from storage.postgres.database import Database, Row
from storage.records import PendingOrigin
from storage.turn_batches import TurnBatches, answer

__all__ = ["OriginLookups"]

MAX_LOOKUPS: Final = 500  # lookups in one statement; more wait for the next one

# The unique index (recipient_user, recipient_device, id) answers each row of `q`.
_ORIGINS = """
SELECT q.n, m.recipient_user, m.recipient_device, m.id, m.sender_user, m.sender_device,
       m.nonce, m.key_id, m.sealed
FROM unnest($1::int[], $2::text[], $3::int[], $4::bytea[]) AS q(n, u, d, id)
JOIN messages m ON m.recipient_user = q.u AND m.recipient_device = q.d AND m.id = q.id
ORDER BY q.n, m.recipient_device
"""


@dataclass(slots=True)
class _Lookup:
    user: str
    devices: Sequence[int]
    message_id: bytes
    future: asyncio.Future[list[PendingOrigin]]


class OriginLookups:
    """Batches `pending_origins` lookups; one statement on the wire at a time."""

    def __init__(
        self, db: Database, sealer: EnvelopeSealer, *, max_lookups: int = MAX_LOOKUPS
    ) -> None:
        self._db = db
        self._sealer = sealer
        self._batches: TurnBatches[_Lookup] = TurnBatches(
            self._send,
            max_batch=max_lookups,
            name="relay-postgres-origins",
            closed_message="the message queue is closed",
        )
        self.statements = 0  # statements sent; lookups / statements is the mean batch
        self.lookups = 0

    async def lookup(
        self, user: str, devices: Sequence[int], message_id: bytes
    ) -> list[PendingOrigin]:
        """Who sent the stored envelopes named `message_id` for these devices of `user`."""
        call = _Lookup(user, devices, message_id, asyncio.get_running_loop().create_future())
        self._batches.add(call)
        return await call.future

    def use_sealer(self, sealer: EnvelopeSealer) -> None:
        self._sealer = sealer

    async def close(self) -> None:
        """Answer what is queued, then stop."""
        await self._batches.close()

    async def _send(self, batch: list[_Lookup]) -> None:
        numbers: list[int] = []
        users: list[str] = []
        devices: list[int] = []
        ids: list[bytes] = []
        for n, call in enumerate(batch):
            for device in call.devices:
                numbers.append(n)
                users.append(call.user)
                devices.append(device)
                ids.append(call.message_id)
        self.statements += 1
        self.lookups += len(batch)
        # Generic plans: planned once, not on every lookup (see database._GENERIC_PLANS).
        async with self._db.connection("pending_origins", generic_plans=True) as conn:
            rows = await conn.fetch(_ORIGINS, numbers, users, devices, ids)
        sealer = self._sealer
        key_ids = {int(row["key_id"]) for row in rows if row["key_id"] is not None}
        if key_ids:
            await sealer.load(key_ids)
        found: list[list[PendingOrigin]] = [[] for _ in batch]
        for row in rows:
            origin = _origin(row, sealer)
            if origin is not None:
                found[int(row["n"])].append(origin)
        for call, origins in zip(batch, found, strict=True):
            answer(call.future, origins)


def _origin(row: Row, sealer: EnvelopeSealer) -> PendingOrigin | None:
    device = int(row["recipient_device"])
    if row["key_id"] is None:
        return PendingOrigin(
            device=device,
            sender_user=str(row["sender_user"]),
            sender_device=int(row["sender_device"]),
            nonce=bytes(row["nonce"]),
        )
    fields = sealer.open(
        str(row["recipient_user"]),
        device,
        bytes(row["id"]),
        int(row["key_id"]),
        bytes(row["sealed"]),
    )
    if fields is None:
        return None
    return PendingOrigin(
        device=device,
        sender_user=fields.sender_user,
        sender_device=fields.sender_device,
        nonce=fields.nonce,
    )
