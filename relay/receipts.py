"""Delivery receipts (docs/protocol.md): the store makes them in an ack's transaction; the
relay has them pushed, and renders a stored receipt as the `receipt` frame.

`ReceiptingQueue` is the message queue as the relay's acks use it (sessions, the cluster's
late deletes): an ack that left receipts has them announced to the sender's devices, on
this node and the others, after its commit and without the acknowledging device waiting
for it (the announcement is spawned, like a send's `announce_stored`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from protocol.frames import Receipt
from storage.interfaces import MessageQueue
from storage.records import Envelope, PendingOrigin, StoredEnvelope

ReceiptsMade = Callable[[list[Envelope]], None]


def to_receipt(env: Envelope) -> Receipt:
    """A stored receipt (storage.records.receipt_envelope) as its frame."""
    return Receipt(
        id=env.id,
        message_id=env.body,
        user=env.sender_user,
        device=env.sender_device,
        server_ts=env.server_ts,
    )


class ReceiptingQueue:
    """`inner` with acks stamped by the relay's clock and their receipts announced."""

    def __init__(
        self, inner: MessageQueue, *, now_ms: Callable[[], int], on_receipts: ReceiptsMade
    ) -> None:
        self._inner = inner
        self._now_ms = now_ms
        self._on_receipts = on_receipts

    @property
    def inner(self) -> MessageQueue:
        """The store's queue (its own counters, e.g. group commits)."""
        return self._inner

    async def ack(
        self,
        user: str,
        device: int,
        ids: Sequence[bytes],
        *,
        now_ms: int | None = None,
        named: str | None = None,
    ) -> list[Envelope]:
        receipts = await self._inner.ack(
            user, device, ids, now_ms=self._now_ms() if now_ms is None else now_ms, named=named
        )
        if receipts:
            self._on_receipts(receipts)
        return receipts

    async def store(
        self,
        envelopes: Sequence[Envelope],
        *,
        max_per_device: int | None = None,
        stored_as: Callable[[str], str] | None = None,
    ) -> None:
        await self._inner.store(envelopes, max_per_device=max_per_device, stored_as=stored_as)

    async def fetch(
        self,
        user: str,
        device: int,
        *,
        after_seq: int,
        limit: int,
        now_ms: int,
        named: str | None = None,
    ) -> list[StoredEnvelope]:
        return await self._inner.fetch(
            user, device, after_seq=after_seq, limit=limit, now_ms=now_ms, named=named
        )

    async def queue_state(self, user: str, device: int, *, now_ms: int) -> tuple[int, int]:
        return await self._inner.queue_state(user, device, now_ms=now_ms)

    async def pending_origins(
        self, user: str, devices: Sequence[int], message_id: bytes
    ) -> list[PendingOrigin]:
        return await self._inner.pending_origins(user, devices, message_id)

    async def purge_expired(self, now_ms: int) -> int:
        return await self._inner.purge_expired(now_ms)

    async def stored_count(self) -> int:
        return await self._inner.stored_count()
