"""The store as an encrypted-at-rest deployment sees it: every user id that reaches a table
is a keyed hash (KeyRing.blind_user), replay nonces too, and a bundle's requester is sealed.
Lookups work unchanged (equal ids give equal hashes), and a copied database names nobody.

The relay keeps calling the store with real user ids: this layer translates on the way in
and puts the real ids back into the records on the way out. Stored envelopes are sealed
further down, in the message queue (storage.at_rest.sealing), with their recipient's
blinded id in the associated data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from storage.at_rest.keyring import KeyRing, SealError
from storage.at_rest.sealing import EnvelopeSealer
from storage.at_rest.vault import DataKeyVault
from storage.interfaces import (
    ClearData,
    DataKeyTable,
    DeviceDirectory,
    KeyAudit,
    KeyStore,
    MessageQueue,
    RateLimiter,
    ReplayGuard,
    Store,
)
from storage.records import (
    ClaimedKeys,
    DeviceRecord,
    Envelope,
    KeyCounts,
    KeyEvent,
    KeyUpload,
    NewDevice,
    PendingOrigin,
    ReplayRecord,
    ReplayScope,
    Requester,
    SendOutcome,
    StoredEnvelope,
)

__all__ = ["UNREADABLE", "AtRestCapable", "BlindedStore"]

UNREADABLE = "(unreadable)"  # a sealed requester that does not open with this index key


class AtRestCapable(Store, Protocol):
    """A backend that can hold its data encrypted at rest."""

    @property
    def data_keys(self) -> DataKeyTable: ...

    @property
    def clear_data(self) -> ClearData: ...

    def use_sealer(self, sealer: EnvelopeSealer) -> None: ...


class BlindedDirectory:
    def __init__(self, inner: DeviceDirectory, ring: KeyRing) -> None:
        self._inner = inner
        self._blind = ring.blind_user

    async def create_user(self, user: str, device: NewDevice) -> DeviceRecord:
        return _named(await self._inner.create_user(self._blind(user), device), user)

    async def add_device(self, user: str, device: NewDevice, *, max_devices: int) -> DeviceRecord:
        record = await self._inner.add_device(self._blind(user), device, max_devices=max_devices)
        return _named(record, user)

    async def get_device(self, user: str, device: int) -> DeviceRecord | None:
        record = await self._inner.get_device(self._blind(user), device)
        return None if record is None else _named(record, user)

    async def list_devices(self, user: str) -> list[DeviceRecord] | None:
        records = await self._inner.list_devices(self._blind(user))
        return None if records is None else [_named(r, user) for r in records]

    async def remove_device(self, user: str, device: int) -> bool:
        return await self._inner.remove_device(self._blind(user), device)

    async def touch(self, user: str, device: int, now_ms: int) -> None:
        await self._inner.touch(self._blind(user), device, now_ms)


class BlindedKeys:
    def __init__(self, inner: KeyStore, ring: KeyRing) -> None:
        self._inner = inner
        self._ring = ring

    async def upload(
        self, user: str, device: int, upload: KeyUpload, *, now_ms: int, max_stored: int
    ) -> KeyCounts:
        return await self._inner.upload(
            self._ring.blind_user(user), device, upload, now_ms=now_ms, max_stored=max_stored
        )

    async def claim(
        self,
        user: str,
        device: int,
        *,
        low_water: int,
        one_time: bool = True,
        requester: Requester | None = None,
    ) -> ClaimedKeys:
        sealed = None
        if requester is not None:
            sealed = Requester(self._ring.seal_text(requester.user), requester.device)
        return await self._inner.claim(
            self._ring.blind_user(user),
            device,
            low_water=low_water,
            one_time=one_time,
            requester=sealed,
        )

    async def counts(self, user: str, device: int) -> KeyCounts:
        return await self._inner.counts(self._ring.blind_user(user), device)


class BlindedAudit:
    def __init__(self, inner: KeyAudit, ring: KeyRing) -> None:
        self._inner = inner
        self._ring = ring

    async def events(self, user: str, *, since_ms: int | None = None) -> list[KeyEvent]:
        events = await self._inner.events(self._ring.blind_user(user), since_ms=since_ms)
        return [self._readable(e, user) for e in events]

    async def purge_events(self, before_ms: int) -> int:
        return await self._inner.purge_events(before_ms)

    def _readable(self, event: KeyEvent, user: str) -> KeyEvent:
        detail = event.detail
        requester = detail.get("requester_user")
        if isinstance(requester, str):
            try:
                opened = self._ring.open_text(requester)
            except SealError:
                opened = UNREADABLE
            detail = {**detail, "requester_user": opened}
        return dataclasses.replace(event, user=user, detail=detail)


class BlindedMessages:
    def __init__(self, inner: MessageQueue, ring: KeyRing) -> None:
        self._inner = inner
        self._blind = ring.blind_user

    @property
    def inner(self) -> MessageQueue:
        """The backend's queue (its own counters, e.g. group commits)."""
        return self._inner

    async def store(
        self, envelopes: Sequence[Envelope], *, max_per_device: int | None = None
    ) -> None:
        blinded = [
            dataclasses.replace(e, recipient_user=self._blind(e.recipient_user)) for e in envelopes
        ]
        await self._inner.store(blinded, max_per_device=max_per_device)

    async def fetch(
        self, user: str, device: int, *, after_seq: int, limit: int, now_ms: int
    ) -> list[StoredEnvelope]:
        stored = await self._inner.fetch(
            self._blind(user), device, after_seq=after_seq, limit=limit, now_ms=now_ms
        )
        return [
            StoredEnvelope(s.seq, dataclasses.replace(s.envelope, recipient_user=user))
            for s in stored
        ]

    async def ack(self, user: str, device: int, ids: Sequence[bytes]) -> None:
        await self._inner.ack(self._blind(user), device, ids)

    async def queue_state(self, user: str, device: int, *, now_ms: int) -> tuple[int, int]:
        return await self._inner.queue_state(self._blind(user), device, now_ms=now_ms)

    async def pending_origins(
        self, user: str, devices: Sequence[int], message_id: bytes
    ) -> list[PendingOrigin]:
        return await self._inner.pending_origins(self._blind(user), devices, message_id)

    async def purge_expired(self, now_ms: int) -> int:
        return await self._inner.purge_expired(now_ms)

    async def stored_count(self) -> int:
        return await self._inner.stored_count()


class BlindedReplay:
    def __init__(self, inner: ReplayGuard, ring: KeyRing) -> None:
        self._inner = inner
        self._ring = ring

    def _scope(self, scope: ReplayScope) -> ReplayScope:
        blind = self._ring.blind_user
        return ReplayScope(
            blind(scope.sender_user), scope.sender_device, blind(scope.recipient_user)
        )

    async def lookup(self, scope: ReplayScope, nonce: bytes) -> ReplayRecord | None:
        return await self._inner.lookup(self._scope(scope), self._ring.blind_nonce(nonce))

    async def claim(
        self, scope: ReplayScope, nonce: bytes, message_id: bytes, *, pending_ttl_s: float
    ) -> ReplayRecord | None:
        return await self._inner.claim(
            self._scope(scope),
            self._ring.blind_nonce(nonce),
            message_id,
            pending_ttl_s=pending_ttl_s,
        )

    async def complete(
        self,
        scope: ReplayScope,
        nonce: bytes,
        message_id: bytes,
        outcome: SendOutcome,
        *,
        window_s: float,
    ) -> None:
        await self._inner.complete(
            self._scope(scope),
            self._ring.blind_nonce(nonce),
            message_id,
            outcome,
            window_s=window_s,
        )

    async def release(self, scope: ReplayScope, nonce: bytes, message_id: bytes) -> None:
        await self._inner.release(self._scope(scope), self._ring.blind_nonce(nonce), message_id)

    async def wait_outcome(
        self, scope: ReplayScope, nonce: bytes, *, timeout_s: float
    ) -> ReplayRecord | None:
        return await self._inner.wait_outcome(
            self._scope(scope), self._ring.blind_nonce(nonce), timeout_s=timeout_s
        )


class BlindedStore:
    """`inner` seen through the vault's key ring. The rate limiter's buckets live in memory
    or Redis, never on disk, and keep their keys as they are."""

    def __init__(self, inner: AtRestCapable, vault: DataKeyVault) -> None:
        ring = vault.ring
        self._inner = inner
        self._vault = vault
        self._devices = BlindedDirectory(inner.devices, ring)
        self._keys = BlindedKeys(inner.keys, ring)
        self._audit = BlindedAudit(inner.audit, ring)
        self._messages = BlindedMessages(inner.messages, ring)
        self._replay = BlindedReplay(inner.replay, ring)

    @property
    def inner(self) -> AtRestCapable:
        return self._inner

    @property
    def vault(self) -> DataKeyVault:
        return self._vault

    @property
    def devices(self) -> BlindedDirectory:
        return self._devices

    @property
    def keys(self) -> BlindedKeys:
        return self._keys

    @property
    def messages(self) -> BlindedMessages:
        return self._messages

    @property
    def audit(self) -> BlindedAudit:
        return self._audit

    @property
    def replay(self) -> BlindedReplay:
        return self._replay

    @property
    def rate_limiter(self) -> RateLimiter:
        return self._inner.rate_limiter

    async def ready(self) -> dict[str, bool]:
        return await self._inner.ready()

    async def close(self) -> None:
        await self._inner.close()


def _named(record: DeviceRecord, user: str) -> DeviceRecord:
    return dataclasses.replace(record, user=user)


if TYPE_CHECKING:

    def _is_a_store(store: BlindedStore) -> Store:
        """mypy checks here that BlindedStore implements every interface."""
        return store
