"""The storage interfaces the relay depends on; each backend implements all of them.

Every method may raise `storage.errors.Unavailable`; the relay answers
`unavailable` and nothing is half done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from storage.at_rest.sealing import EnvelopeSealer
from storage.node_records import BusMessage, Holder, NodeInfo, Refresh
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
    RateDecision,
    ReplayRecord,
    ReplayScope,
    Requester,
    SendOutcome,
    StoredEnvelope,
    WrappedKey,
)

BackendObserver = Callable[[str, str, float], None]
"""`observe(backend, operation, seconds)`: a backend call ("postgresql", "redis", "sqlite"),
named by a fixed operation name (never an identifier), and how long it took. Given to a
store when it opens, for the relay's metrics; it must not block."""


class DeviceDirectory(Protocol):
    async def create_user(self, user: str, device: NewDevice) -> DeviceRecord:
        """A new user whose device 1 is `device`. Raises IdentityKeyInUse or IdentityKeyRetired."""
        ...

    async def add_device(self, user: str, device: NewDevice, *, max_devices: int) -> DeviceRecord:
        """The user's next device number. Raises UnknownUser, DeviceLimitReached,
        DeviceNumbersExhausted, IdentityKeyInUse or IdentityKeyRetired."""
        ...

    async def get_device(self, user: str, device: int) -> DeviceRecord | None:
        """An active device, or None."""
        ...

    async def list_devices(self, user: str) -> list[DeviceRecord] | None:
        """The user's active devices in device order; None when the user does not exist."""
        ...

    async def remove_device(self, user: str, device: int) -> bool:
        """Retire the device and its identity key for good, deleting its keys and stored
        messages in the same transaction. False when it was not active."""
        ...

    async def touch(self, user: str, device: int, now_ms: int) -> None:
        """Record that the device was seen now."""
        ...


class KeyStore(Protocol):
    async def upload(
        self, user: str, device: int, upload: KeyUpload, *, now_ms: int, max_stored: int
    ) -> KeyCounts:
        """Store the keys all or nothing. Raises KeyIdConflict or TooManyPreKeys."""
        ...

    async def claim(
        self,
        user: str,
        device: int,
        *,
        low_water: int,
        one_time: bool = True,
        requester: Requester | None = None,
    ) -> ClaimedKeys:
        """Take one EC and one PQ one-time key (or the PQ last-resort key); each one-time key
        is handed out at most once, also under concurrent claims. A device without a signed
        pre-key has no bundle: nothing is taken and every key field is None. With
        `one_time=False` no one-time key is taken: the signed pre-key and the PQ last-resort
        key only (the per-target budget is spent). A bundle handed out is recorded in the
        audit trail with its key ids and `requester`, in the same transaction."""
        ...

    async def counts(self, user: str, device: int) -> KeyCounts: ...


class KeyAudit(Protocol):
    """The key-event audit trail (kinds and details: storage.audit_events). The directory
    and the key store write it, each event in the transaction of the change it records."""

    async def events(self, user: str, *, since_ms: int | None = None) -> list[KeyEvent]:
        """The user's events (every device), oldest first; with `since_ms`, those at or
        after it."""
        ...

    async def purge_events(self, before_ms: int) -> int:
        """Delete the events older than `before_ms` (the retention); the number deleted."""
        ...


class BackupStore(Protocol):
    """One key backup per user, replaced by compare-and-set (docs/protocol.md, key backup).
    Versions count up from 1 and never repeat for a user, also across a delete (the row
    stays, without its blob, to remember the last version). Each put and delete is recorded
    in the audit trail in its own transaction; reads are recorded by `record_read`."""

    async def put(
        self, user: str, device: int, backup: NewBackup, *, expected_version: int, now_ms: int
    ) -> int:
        """Store `backup` if `expected_version` is the current version (0: there is none);
        the new version. Raises BackupVersionConflict (nothing stored) or
        BackupAccessKeyTaken (another user's backup has this access key)."""
        ...

    async def get(self, user: str) -> Backup | None:
        """The user's backup, or None."""
        ...

    async def find(self, access_key: bytes) -> Backup | None:
        """The backup with this access key (its `user` is the stored owner), or None."""
        ...

    async def record_read(
        self, user: str, device: int, version: int, *, via: str, now_ms: int
    ) -> None:
        """A `backup_get` audit event (storage.audit_events: VIA_DEVICE or VIA_RECOVERY)."""
        ...

    async def delete(self, user: str, device: int, *, expected_version: int, now_ms: int) -> None:
        """Delete the backup if `expected_version` is current. Raises NoBackup or
        BackupVersionConflict."""
        ...

    async def count(self) -> int:
        """Users holding a backup (for /v1/stats; one cheap query, not the hot path)."""
        ...


class MessageQueue(Protocol):
    async def store(
        self,
        envelopes: Sequence[Envelope],
        *,
        max_per_device: int | None = None,
        stored_as: Callable[[str], str] | None = None,
    ) -> None:
        """Durable (committed) when it returns. A (recipient device, id) already stored is kept
        as is, so a retried store is a no-op; envelopes for a device that is not active are
        dropped. With `max_per_device`, a call that would add a row for a device already
        holding that many (expired ones count until purged) stores nothing and raises
        QueueFull; the check is part of the insert, not another round trip. `stored_as`
        names each recipient user as the rows do (encryption at rest: its keyed hash), so
        the caller does not copy every envelope to rename it."""
        ...

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
        """Unexpired stored envelopes with seq > after_seq, oldest first; their recipient
        user is `named` when given (the real id of a keyed hash), else `user`."""
        ...

    async def ack(
        self,
        user: str,
        device: int,
        ids: Sequence[bytes],
        *,
        now_ms: int | None = None,
        named: str | None = None,
    ) -> list[Envelope]:
        """Remove acknowledged envelopes; ids not stored are ignored. In the same transaction,
        each one removed whose sender asked for a receipt (`Envelope.receipt`) leaves its
        receipt (storage.records.receipt_envelope, made at `now_ms`, the wall clock when
        None) stored for every active device of the sender's user: never lost, never made
        twice. Returns those receipts, addressed to the sender's user as the message named
        it, so the caller can have them pushed. `named` is the acknowledging user as a
        receipt names it, when `user` is only its stored name (storage.at_rest.blinded)."""
        ...

    async def queue_state(self, user: str, device: int, *, now_ms: int) -> tuple[int, int]:
        """(number of unexpired stored envelopes, highest seq present or 0)."""
        ...

    async def pending_origins(
        self, user: str, devices: Sequence[int], message_id: bytes
    ) -> list[PendingOrigin]:
        """Who sent the stored envelopes named `message_id` for these devices."""
        ...

    async def purge_expired(self, now_ms: int) -> int:
        """Delete expired envelopes; the number deleted."""
        ...

    async def stored_count(self) -> int:
        """Envelopes in the store, for every device (expired ones count until purged): the
        queue depth an operator watches. One cheap query; not for the hot path."""
        ...


class DataKeyTable(Protocol):
    """The keys of encryption at rest (storage.at_rest), kept wrapped by the master key in
    the store's `data_keys` table. Key ids are chosen by the caller (the next free one): two
    nodes creating a key at once collide on the id and one of them gets False."""

    async def wrapped_keys(self) -> list[WrappedKey]:
        """Every key, by id."""
        ...

    async def insert_key(self, key: WrappedKey, *, replacing: int | None) -> bool:
        """Store `key`. A data key (state "active") goes in only if the active data key is
        still `replacing` (None: there is none), which is retired (retired_ms = the new key's
        created_ms) in the same transaction. The index key goes in only if there is none.
        False, and nothing written, when that does not hold or the id is taken."""
        ...

    async def rewrap(self, old_master_key_id: str, keys: Sequence[WrappedKey]) -> None:
        """Replace the wrapping of every key in one transaction. Raises StorageError, and
        changes nothing, unless `keys` names exactly the keys stored and each stored one is
        wrapped under `old_master_key_id`."""
        ...

    async def usage(self) -> dict[int, int]:
        """The number of stored messages and key backups sealed with each data key (ids with
        none left out).
        Scans the messages: for `relay keys status` and the purge, not the hot path."""
        ...

    async def delete_retired(self, retired_before_ms: int) -> list[int]:
        """Delete the data keys retired before `retired_before_ms` that no stored message
        and no backup uses (checked in the same transaction); their ids."""
        ...


class ClearData(Protocol):
    """What a store holds in the clear from before encryption at rest (a store made before
    schema version 5, or run without encryption), and the steps that convert it
    (storage.at_rest.conversion drives them; `relay migrate` runs them)."""

    async def user_ids_state(self) -> str:
        """ "blinded" (converted: every user id is a keyed hash), "clear" (users exist and are
        not converted) or "empty" (no user yet and never converted)."""
        ...

    async def blind_user_ids(
        self,
        blind_user: Callable[[str], str],
        blind_nonce: Callable[[bytes], bytes],
        seal_text: Callable[[str], str],
    ) -> int:
        """In one transaction: every user id in every table becomes `blind_user(id)` (a
        replay record's nonce `blind_nonce(nonce)`, a claim event's requester user
        `seal_text(user)`), and the store is marked "blinded". Nothing happens when it is
        marked already. The number of users converted."""
        ...

    async def seal_clear_messages(self, sealer: EnvelopeSealer, *, limit: int) -> int:
        """Seal up to `limit` stored messages still in the clear columns, and up to `limit`
        clear shared payloads, in one transaction; the number sealed (0: none left)."""
        ...

    async def clear_messages(self) -> int:
        """Stored messages and shared payloads still in the clear columns."""
        ...

    async def seal_clear_backups(self, seal: Callable[[str, bytes], tuple[int, bytes]]) -> int:
        """Seal every key backup blob still kept as its client sent it (key id 0), in one
        transaction: `seal(stored user id, blob)` gives (data key id, sealed blob). Run after
        blind_user_ids (the stored user id is then the blinded one). The number sealed."""
        ...


class ReplayGuard(Protocol):
    async def lookup(self, scope: ReplayScope, nonce: bytes) -> ReplayRecord | None: ...

    async def claim(
        self, scope: ReplayScope, nonce: bytes, message_id: bytes, *, pending_ttl_s: float
    ) -> ReplayRecord | None:
        """Take the nonce for `message_id` as pending; None when taken, else the record that
        holds it. A pending claim expires after `pending_ttl_s` (its holder died)."""
        ...

    async def complete(
        self,
        scope: ReplayScope,
        nonce: bytes,
        message_id: bytes,
        outcome: SendOutcome,
        *,
        window_s: float,
    ) -> None:
        """Replace the pending claim by the outcome, kept for the replay window."""
        ...

    async def release(self, scope: ReplayScope, nonce: bytes, message_id: bytes) -> None:
        """Give a pending claim up (the send was refused after all), so the nonce is free again."""
        ...

    async def wait_outcome(
        self, scope: ReplayScope, nonce: bytes, *, timeout_s: float
    ) -> ReplayRecord | None:
        """Wait until the pending claim reaches an outcome or goes away; the record then."""
        ...


class RateLimiter(Protocol):
    async def hit(self, key: str, *, rate_per_s: float, burst: int) -> RateDecision:
        """Take one token from the bucket `key` (refilled at `rate_per_s`, holding `burst`)."""
        ...


class Presence(Protocol):
    """Which node holds each device's connection (`device -> node`), shared by every node.
    Entries expire unless refreshed, so a dead node's entries vanish by themselves."""

    async def claim(self, user: str, device: int, token: str) -> Holder | None:
        """This node's connection `token` now holds the device; the previous holder, if any."""
        ...

    async def release(self, user: str, device: int, token: str) -> None:
        """Drop the entry only if connection `token` of this node still holds it."""
        ...

    async def locate(self, devices: Sequence[tuple[str, int]]) -> list[str | None]:
        """The node holding each device (None: not connected anywhere), in one round trip."""
        ...

    async def refresh(self, entries: Sequence[tuple[str, int, str]]) -> list[Refresh]:
        """Extend this node's entries `(user, device, token)`; write back expired ones."""
        ...

    async def heartbeat(self, connections: int) -> None:
        """Record in the node registry that this node is alive with `connections`."""
        ...

    async def nodes(self) -> list[NodeInfo]:
        """The live nodes (heartbeat within the presence expiry), by node id."""
        ...

    async def leave(self) -> None:
        """Remove this node from the registry (graceful shutdown)."""
        ...

    async def close(self) -> None: ...


class NodeBus(Protocol):
    """At-most-once messages between nodes: one channel per node. Nothing relies on a
    message arriving; a lost one only delays work until a timeout or a refresh."""

    def start(
        self, on_message: Callable[[BusMessage], None], on_resync: Callable[[], None]
    ) -> None:
        """Listen on this node's channel. `on_resync` runs after the listener (re)connects:
        messages may have been lost meanwhile."""
        ...

    async def publish(self, node: str, message: BusMessage) -> bool:
        """Send to `node`; False when it was not sent or nobody listens there."""
        ...

    async def close(self) -> None: ...


class Store(Protocol):
    """All the interfaces of one backend, and its lifecycle."""

    @property
    def devices(self) -> DeviceDirectory: ...

    @property
    def keys(self) -> KeyStore: ...

    @property
    def messages(self) -> MessageQueue: ...

    @property
    def audit(self) -> KeyAudit: ...

    @property
    def backups(self) -> BackupStore: ...

    @property
    def replay(self) -> ReplayGuard: ...

    @property
    def rate_limiter(self) -> RateLimiter: ...

    async def ready(self) -> dict[str, bool]:
        """Each backend's name and whether it answers now."""
        ...

    async def close(self) -> None: ...
