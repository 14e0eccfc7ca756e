"""The store as an encrypted-at-rest deployment sees it: every user id that reaches a table
is a keyed hash (KeyRing.blind_user), replay nonces too, and a bundle's requester is sealed.
Lookups work unchanged (equal ids give equal hashes), and a copied database names nobody.

The relay keeps calling the store with real user ids: this layer translates on the way in
and puts the real ids back into the records on the way out. Stored envelopes are sealed
further down, in the message queue (storage.at_rest.sealing), with their recipient's
blinded id in the associated data.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Protocol, TypeVar

from storage.at_rest.backup_sealing import open_backup, seal_backup
from storage.at_rest.keyring import KeyRing, SealError
from storage.at_rest.sealing import EnvelopeSealer
from storage.at_rest.vault import DataKeyVault
from storage.errors import QueueFull, Unavailable
from storage.interfaces import (
    BackupStore,
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
    Backup,
    ClaimedKeys,
    DeviceRecord,
    Envelope,
    KeyCounts,
    KeyEvent,
    KeyUpload,
    NewBackup,
    NewDevice,
    PendingOrigin,
    ReplayRecord,
    ReplayScope,
    Requester,
    SendOutcome,
    StoredEnvelope,
)

__all__ = [
    "AT_REST_KEYS",
    "UNREADABLE",
    "AtRestCapable",
    "AtRestRefusal",
    "BlindedStore",
    "KeyAccess",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

UNREADABLE: Final = "(unreadable)"  # a sealed requester that does not open with the index key
AT_REST_KEYS: Final = "at_rest_keys"  # the readiness entry while the keys are not loaded


class AtRestCapable(Store, Protocol):
    """A backend that can hold its data encrypted at rest."""

    @property
    def data_keys(self) -> DataKeyTable: ...

    @property
    def clear_data(self) -> ClearData: ...

    def use_sealer(self, sealer: EnvelopeSealer) -> None: ...


class KeyAccess:
    """The vault, once it could be opened. A production node starts while PostgreSQL is down
    (as it does without encryption), so the vault may open later: until then every call
    answers Unavailable, retried at most every RETRY_S. A store that cannot be opened as
    configured (found out only now: a wrong master key, clear data to convert) is logged
    once and stays unavailable."""

    RETRY_S: Final = 1.0

    def __init__(
        self,
        opener: Callable[[], Awaitable[DataKeyVault]],
        vault: DataKeyVault | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opener = opener
        self._vault = vault
        # The ring when the vault is open, else None: a plain attribute, read on every store
        # call of the hot path (a vault keeps its ring object for its whole life).
        self.ring_now: KeyRing | None = None if vault is None else vault.ring
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._tried_at: float | None = None
        self._problem = "the keys of encryption at rest are not loaded yet"
        self._refused = False

    @property
    def vault(self) -> DataKeyVault | None:
        return self._vault

    @property
    def problem(self) -> str | None:
        """Why the keys are not at hand; None once they are."""
        return None if self._vault is not None else self._problem

    async def ring(self) -> KeyRing:
        vault = self._vault
        if vault is not None:
            return vault.ring
        return (await self.open()).ring

    async def after_opening(
        self, call: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`call(*args, **kwargs)` once the vault is open (opening it now if need be; raises
        Unavailable when it cannot be): the slow path of the calls that translate without
        awaiting. (Arguments, not a closure: a closure in those calls would make cells of
        their parameters on every call, the hot path's included.)"""
        await self.ring()
        return await call(*args, **kwargs)

    async def open(self) -> DataKeyVault:
        async with self._lock:
            if self._vault is not None:
                return self._vault
            now = self._monotonic()
            if self._refused or (
                self._tried_at is not None and now - self._tried_at < self.RETRY_S
            ):
                raise Unavailable(self._problem)
            self._tried_at = now
            try:
                self._vault = await self._opener()
                self.ring_now = self._vault.ring
            except Unavailable as exc:
                self._problem = f"the keys of encryption at rest are not loaded: {exc}"
                raise
            except AtRestRefusal as exc:
                self._refused = True
                self._problem = str(exc)
                log.error("%s; this node answers unavailable until restarted", exc)
                raise Unavailable(self._problem) from None
            log.info("keys of encryption at rest loaded")
            return self._vault


class AtRestRefusal(Exception):
    """The store cannot be served as configured (raised by an opener; one line)."""


class _RenamedRecords:
    """Device records renamed from the stored (hashed) user back to the real one, kept per
    stored record: the stores' device caches hand out the same record objects on every
    send to a user, and renaming them anew cost about 2 µs a device per send. Keyed by the
    record's identity (the entry holds the record, so the identity is not reused while it
    is kept); bounded by starting over when full."""

    LIMIT: Final = 65_536

    def __init__(self) -> None:
        self._renamed: dict[int, tuple[DeviceRecord, DeviceRecord]] = {}

    def __call__(self, record: DeviceRecord, user: str) -> DeviceRecord:
        kept = self._renamed.get(id(record))
        if kept is not None and kept[0] is record and kept[1].user == user:
            return kept[1]
        renamed = _named(record, user)
        if len(self._renamed) >= self.LIMIT:
            self._renamed.clear()
        self._renamed[id(record)] = (record, renamed)
        return renamed


class BlindedDirectory:
    def __init__(self, inner: DeviceDirectory, keys: KeyAccess) -> None:
        self._inner = inner
        self._keys = keys
        self._renamed = _RenamedRecords()

    async def _blind(self, user: str) -> str:
        return (self._keys.ring_now or await self._keys.ring()).blind_user(user)

    async def create_user(self, user: str, device: NewDevice) -> DeviceRecord:
        return _named(await self._inner.create_user(await self._blind(user), device), user)

    async def add_device(self, user: str, device: NewDevice, *, max_devices: int) -> DeviceRecord:
        record = await self._inner.add_device(
            await self._blind(user), device, max_devices=max_devices
        )
        return _named(record, user)

    async def get_device(self, user: str, device: int) -> DeviceRecord | None:
        record = await self._inner.get_device(await self._blind(user), device)
        return None if record is None else _named(record, user)

    async def list_devices(self, user: str) -> list[DeviceRecord] | None:
        ring = self._keys.ring_now or await self._keys.ring()
        records = await self._inner.list_devices(ring.blind_user(user))
        if records is None:
            return None
        renamed = self._renamed
        return [renamed(r, user) for r in records]

    async def remove_device(self, user: str, device: int) -> bool:
        return await self._inner.remove_device(await self._blind(user), device)

    async def touch(self, user: str, device: int, now_ms: int) -> None:
        await self._inner.touch(await self._blind(user), device, now_ms)


class BlindedKeys:
    def __init__(self, inner: KeyStore, keys: KeyAccess) -> None:
        self._inner = inner
        self._keys = keys

    async def upload(
        self, user: str, device: int, upload: KeyUpload, *, now_ms: int, max_stored: int
    ) -> KeyCounts:
        ring = self._keys.ring_now or await self._keys.ring()
        return await self._inner.upload(
            ring.blind_user(user), device, upload, now_ms=now_ms, max_stored=max_stored
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
        ring = self._keys.ring_now or await self._keys.ring()
        sealed = None
        if requester is not None:
            sealed = Requester(ring.seal_text(requester.user), requester.device)
        return await self._inner.claim(
            ring.blind_user(user),
            device,
            low_water=low_water,
            one_time=one_time,
            requester=sealed,
        )

    async def counts(self, user: str, device: int) -> KeyCounts:
        return await self._inner.counts(
            (self._keys.ring_now or await self._keys.ring()).blind_user(user), device
        )


class BlindedAudit:
    def __init__(self, inner: KeyAudit, keys: KeyAccess) -> None:
        self._inner = inner
        self._keys = keys

    async def events(self, user: str, *, since_ms: int | None = None) -> list[KeyEvent]:
        ring = self._keys.ring_now or await self._keys.ring()
        events = await self._inner.events(ring.blind_user(user), since_ms=since_ms)
        return [_readable(ring, e, user) for e in events]

    async def purge_events(self, before_ms: int) -> int:
        return await self._inner.purge_events(before_ms)


def _readable(ring: KeyRing, event: KeyEvent, user: str) -> KeyEvent:
    detail = event.detail
    requester = detail.get("requester_user")
    if isinstance(requester, str):
        try:
            opened = ring.open_text(requester)
        except SealError:
            opened = UNREADABLE
        detail = {**detail, "requester_user": opened}
    return dataclasses.replace(event, user=user, detail=detail)


class BlindedBackups:
    """The user id blinded; the owner sealed under the index key (a recovery finds the row by
    its access key and must name the user); the access key hashed like a nonce (the same
    keyed hash the conversion of a clear store applies); the blob sealed with the active
    data key, bound to the blinded user and the key id."""

    def __init__(self, inner: BackupStore, keys: KeyAccess) -> None:
        self._inner = inner
        self._keys = keys

    async def _ring(self) -> KeyRing:
        return self._keys.ring_now or await self._keys.ring()

    async def put(
        self, user: str, device: int, backup: NewBackup, *, expected_version: int, now_ms: int
    ) -> int:
        ring = await self._ring()
        blinded = ring.blind_user(user)
        key_id, sealed = seal_backup(ring, blinded, backup.blob)
        stored = NewBackup(
            blob=sealed,
            access_key=ring.blind_nonce(backup.access_key),
            key_id=key_id,
            owner=ring.seal_text(user),
        )
        return await self._inner.put(
            blinded, device, stored, expected_version=expected_version, now_ms=now_ms
        )

    async def get(self, user: str) -> Backup | None:
        ring = await self._ring()
        blinded = ring.blind_user(user)
        stored = await self._inner.get(blinded)
        return None if stored is None else await self._opened(ring, blinded, user, stored)

    async def find(self, access_key: bytes) -> Backup | None:
        ring = await self._ring()
        stored = await self._inner.find(ring.blind_nonce(access_key))
        if stored is None:
            return None
        try:
            user = ring.open_text(stored.user)
        except SealError:
            log.error("a key backup's owner does not open with the index key")
            return None
        return await self._opened(ring, ring.blind_user(user), user, stored)

    async def record_read(
        self, user: str, device: int, version: int, *, via: str, now_ms: int
    ) -> None:
        ring = await self._ring()
        await self._inner.record_read(
            ring.blind_user(user), device, version, via=via, now_ms=now_ms
        )

    async def delete(self, user: str, device: int, *, expected_version: int, now_ms: int) -> None:
        ring = await self._ring()
        await self._inner.delete(
            ring.blind_user(user), device, expected_version=expected_version, now_ms=now_ms
        )

    async def count(self) -> int:
        return await self._inner.count()

    async def _opened(
        self, ring: KeyRing, blinded: str, user: str, stored: Backup
    ) -> Backup | None:
        """The backup with its blob opened; None when it does not open (logged). A data key
        made by another node since this one looked is loaded first."""
        vault = self._keys.vault
        if stored.key_id not in ring.known_ids() and vault is not None:
            await vault.load({stored.key_id} - {0})
        blob = open_backup(ring, blinded, stored.key_id, stored.blob)
        if blob is None:
            return None
        return Backup(
            user=user, version=stored.version, blob=blob, updated_ms=stored.updated_ms, key_id=0
        )


class BlindedMessages:
    def __init__(self, inner: MessageQueue, keys: KeyAccess) -> None:
        self._inner = inner
        self._keys = keys

    async def _blind(self, user: str) -> str:
        return (self._keys.ring_now or await self._keys.ring()).blind_user(user)

    @property
    def inner(self) -> MessageQueue:
        """The backend's queue (its own counters, e.g. group commits)."""
        return self._inner

    async def store(
        self,
        envelopes: Sequence[Envelope],
        *,
        max_per_device: int | None = None,
        stored_as: Callable[[str], str] | None = None,
    ) -> None:
        if stored_as is not None:
            raise ValueError("the blinded view names the stored recipients itself")
        blind = (self._keys.ring_now or await self._keys.ring()).blind_user
        try:
            await self._inner.store(envelopes, max_per_device=max_per_device, stored_as=blind)
        except QueueFull as exc:  # the full devices named by their real users again
            real = {blind(e.recipient_user): e.recipient_user for e in envelopes}
            raise QueueFull([(real.get(u, u), d) for u, d in exc.devices]) from exc

    # The calls of the hot paths translate and hand the backend's coroutine back, without a
    # coroutine of their own in between (until the vault is open: KeyAccess.after_opening).

    def fetch(
        self,
        user: str,
        device: int,
        *,
        after_seq: int,
        limit: int,
        now_ms: int,
        named: str | None = None,
    ) -> Coroutine[Any, Any, list[StoredEnvelope]]:
        ring = self._keys.ring_now
        if ring is None:
            return self._keys.after_opening(
                self.fetch,
                user,
                device,
                after_seq=after_seq,
                limit=limit,
                now_ms=now_ms,
                named=named,
            )
        return self._inner.fetch(
            ring.blind_user(user),
            device,
            after_seq=after_seq,
            limit=limit,
            now_ms=now_ms,
            named=user if named is None else named,
        )

    def ack(
        self,
        user: str,
        device: int,
        ids: Sequence[bytes],
        *,
        now_ms: int | None = None,
        named: str | None = None,
    ) -> Coroutine[Any, Any, list[Envelope]]:
        ring = self._keys.ring_now
        if ring is None:
            return self._keys.after_opening(self.ack, user, device, ids, now_ms=now_ms, named=named)
        # The receipts come back addressed to the sender's real id: it is sealed in the row.
        return self._inner.ack(
            ring.blind_user(user), device, ids, now_ms=now_ms, named=named or user
        )

    async def queue_state(self, user: str, device: int, *, now_ms: int) -> tuple[int, int]:
        return await self._inner.queue_state(await self._blind(user), device, now_ms=now_ms)

    def pending_origins(
        self, user: str, devices: Sequence[int], message_id: bytes
    ) -> Coroutine[Any, Any, list[PendingOrigin]]:
        ring = self._keys.ring_now
        if ring is None:
            return self._keys.after_opening(self.pending_origins, user, devices, message_id)
        return self._inner.pending_origins(ring.blind_user(user), devices, message_id)

    async def purge_expired(self, now_ms: int) -> int:
        return await self._inner.purge_expired(now_ms)

    async def stored_count(self) -> int:
        return await self._inner.stored_count()


class BlindedReplay:
    """Scopes and nonces as the replay records keep them. A send asks twice (its claim, then
    its outcome), and a sender keeps sending to the same users: both hashes are kept for a
    while (per ring: the index key is the ring's), so each is computed once.

    A nonce is asked for again within one send (claim, then outcome, milliseconds apart), so
    its hash is kept in two small generations: the last NONCES nonces at least, a few hundred
    kilobytes, instead of a table that would hold every nonce of the last minute."""

    SCOPES: Final = 65_536
    NONCES: Final = 4096

    def __init__(self, inner: ReplayGuard, keys: KeyAccess) -> None:
        self._inner = inner
        self._keys = keys
        self._ring: KeyRing | None = None
        # Keyed by the scope's fields: a tuple hashes in C, the dataclass in Python.
        self._scopes: dict[tuple[str, int, str], ReplayScope] = {}
        self._nonces: dict[bytes, bytes] = {}
        self._older_nonces: dict[bytes, bytes] = {}

    def _blinded(
        self, ring: KeyRing, scope: ReplayScope, nonce: bytes
    ) -> tuple[ReplayScope, bytes]:
        if ring is not self._ring:
            self._ring = ring
            self._scopes.clear()
            self._nonces = {}
            self._older_nonces = {}
        fields = (scope.sender_user, scope.sender_device, scope.recipient_user)
        blinded = self._scopes.get(fields)
        if blinded is None:
            blind = ring.blind_user
            blinded = ReplayScope(
                blind(scope.sender_user), scope.sender_device, blind(scope.recipient_user)
            )
            if len(self._scopes) >= self.SCOPES:
                self._scopes.clear()
            self._scopes[fields] = blinded
        nonces = self._nonces
        hashed = nonces.get(nonce)
        if hashed is None:
            hashed = self._older_nonces.get(nonce) or ring.blind_nonce(nonce)
            if len(nonces) >= self.NONCES:
                self._older_nonces = nonces
                nonces = self._nonces = {}
            nonces[nonce] = hashed
        return blinded, hashed

    # Hot path: each call hands the backend's coroutine back (see BlindedMessages.fetch).

    def lookup(self, scope: ReplayScope, nonce: bytes) -> Coroutine[Any, Any, ReplayRecord | None]:
        ring = self._keys.ring_now
        if ring is None:
            return self._keys.after_opening(self.lookup, scope, nonce)
        return self._inner.lookup(*self._blinded(ring, scope, nonce))

    def claim(
        self, scope: ReplayScope, nonce: bytes, message_id: bytes, *, pending_ttl_s: float
    ) -> Coroutine[Any, Any, ReplayRecord | None]:
        ring = self._keys.ring_now
        if ring is None:
            return self._keys.after_opening(
                self.claim, scope, nonce, message_id, pending_ttl_s=pending_ttl_s
            )
        blinded, hashed = self._blinded(ring, scope, nonce)
        return self._inner.claim(blinded, hashed, message_id, pending_ttl_s=pending_ttl_s)

    def complete(
        self,
        scope: ReplayScope,
        nonce: bytes,
        message_id: bytes,
        outcome: SendOutcome,
        *,
        window_s: float,
    ) -> Coroutine[Any, Any, None]:
        ring = self._keys.ring_now
        if ring is None:
            return self._keys.after_opening(
                self.complete, scope, nonce, message_id, outcome, window_s=window_s
            )
        blinded, hashed = self._blinded(ring, scope, nonce)
        return self._inner.complete(blinded, hashed, message_id, outcome, window_s=window_s)

    def release(
        self, scope: ReplayScope, nonce: bytes, message_id: bytes
    ) -> Coroutine[Any, Any, None]:
        ring = self._keys.ring_now
        if ring is None:
            return self._keys.after_opening(self.release, scope, nonce, message_id)
        blinded, hashed = self._blinded(ring, scope, nonce)
        return self._inner.release(blinded, hashed, message_id)

    def wait_outcome(
        self, scope: ReplayScope, nonce: bytes, *, timeout_s: float
    ) -> Coroutine[Any, Any, ReplayRecord | None]:
        ring = self._keys.ring_now
        if ring is None:
            return self._keys.after_opening(self.wait_outcome, scope, nonce, timeout_s=timeout_s)
        blinded, hashed = self._blinded(ring, scope, nonce)
        return self._inner.wait_outcome(blinded, hashed, timeout_s=timeout_s)


class BlindedStore:
    """`inner` seen through the key ring of its vault (opened now, or later through
    `keys`). The rate limiter's buckets live in memory or Redis, never on disk, and keep
    their keys as they are."""

    def __init__(self, inner: AtRestCapable, keys: KeyAccess) -> None:
        self._inner = inner
        self._keys = keys
        # Plain attributes, not properties: `messages` and `replay` are read several times
        # per send.
        self.devices: Final = BlindedDirectory(inner.devices, keys)
        self.keys: Final = BlindedKeys(inner.keys, keys)
        self.audit: Final = BlindedAudit(inner.audit, keys)
        self.messages: Final = BlindedMessages(inner.messages, keys)
        self.replay: Final = BlindedReplay(inner.replay, keys)
        self.backups: Final = BlindedBackups(inner.backups, keys)

    @property
    def inner(self) -> AtRestCapable:
        return self._inner

    @property
    def key_access(self) -> KeyAccess:
        return self._keys

    @property
    def vault(self) -> DataKeyVault | None:
        """None until the vault could be opened (see KeyAccess)."""
        return self._keys.vault

    @property
    def rate_limiter(self) -> RateLimiter:
        return self._inner.rate_limiter

    async def ready(self) -> dict[str, bool]:
        """The backends; and `at_rest_keys: False` while the keys are not at hand (a first
        try is made here, so a node whose backends came back becomes ready by itself)."""
        backends = await self._inner.ready()
        if self._keys.vault is None and all(backends.values()):
            with contextlib.suppress(Unavailable):
                await self._keys.open()
        if self._keys.vault is None:
            return {**backends, AT_REST_KEYS: False}
        return backends

    async def close(self) -> None:
        await self._inner.close()


# Records rebuilt field by field: dataclasses.replace costs several times as much, and these
# run once per device listed and per envelope stored or fetched.


def _named(record: DeviceRecord, user: str) -> DeviceRecord:
    return DeviceRecord(
        user,
        record.device,
        record.identity_key,
        record.key_scheme,
        record.registration_id,
        record.created_ms,
        record.last_seen_ms,
    )


if TYPE_CHECKING:

    def _is_a_store(store: BlindedStore) -> Store:
        """mypy checks here that BlindedStore implements every interface."""
        return store
