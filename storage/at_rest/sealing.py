"""A stored envelope's sender user and device, timestamp, type, nonce and body, sealed
together with a data key (XChaCha20-Poly1305). The associated data binds the recipient user
and device, the message id and the key id, so a sealed value copied to another row (another
recipient, another id) or relabelled with another key id does not open. The shared payload
of a `send.multi` frame, stored once for all its devices, is sealed alone, its associated
data binding its payload id and the key id.

The columns the queries need stay clear: recipient (a blinded user id, see keyring), id,
seq, server time and expiry. A row of a store without encryption at rest has key id 0 and
its fields in the clear columns; `ClearSealer` writes those.

Sealed layout: 24-byte nonce + ciphertext of
  sender_device u16 | ts i64 | type u32 | len u16 + sender_user (UTF-8) | len u16 + nonce | body
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import struct
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from storage.at_rest.keyring import KeyRing
from storage.at_rest.xchacha import NONCE_BYTES, XChaCha20Poly1305
from storage.records import Envelope, OpenedFields, SharedPayload

__all__ = [
    "CLEAR_KEY_ID",
    "CLEAR_RECEIPT_TAG",
    "ClearSealer",
    "EnvelopeSealer",
    "RingSealer",
    "SealedColumns",
    "receipt_column",
]

CLEAR_KEY_ID: Final = 0  # the row's fields are in the clear columns
_NONCE_BYTES: Final = NONCE_BYTES
_CONTEXT: Final = b"relay-envelope-v1\x00"
_PAYLOAD_CONTEXT: Final = b"relay-payload-v1\x00"
_PER_DEVICE_LIMIT: Final = 65_536  # devices whose row constants a sealer keeps
_ZEROS: Final = bytes(4)  # the first 4 bytes of the inner ChaCha20-Poly1305 nonce
_HEAD = struct.Struct(">HqIH")  # sender_device, ts, type, len(sender_user)
_LEN = struct.Struct(">H")
CLEAR_RECEIPT_TAG: Final = b"\x01"  # no encryption at rest: the request in the clear
RECEIPT_ROW: Final = b"\x00"  # the `receipt` column of a stored receipt
_RECEIPT_WANTED: Final = b"receipt"
_RECEIPT_NOT_WANTED: Final = b"no-receipt"

log = logging.getLogger(__name__)

SealedColumns = tuple[int, bytes | None]
"""(key id, sealed bytes); key id 0 with None: the fields go to the clear columns."""


class EnvelopeSealer(Protocol):
    def seal(self, envelope: Envelope, recipient_user: str) -> SealedColumns:
        """`recipient_user`: the recipient as the row names it (with encryption at rest, the
        keyed hash of `envelope.recipient_user`), bound into the associated data."""
        ...

    def receipt_tag(
        self, recipient_user: str, recipient_device: int, message_id: bytes, *, wanted: bool
    ) -> bytes | None:
        """The `receipt` column of a stored copy: what an ack compares to find the copies
        whose sender asked for a receipt (docs/protocol.md, delivery receipts)."""
        ...

    def store_name(self, user: str) -> str:
        """The name a user's rows are stored under: a receipt is addressed by it."""
        ...

    def open(
        self,
        recipient_user: str,
        recipient_device: int,
        message_id: bytes,
        key_id: int,
        sealed: bytes,
    ) -> OpenedFields | None:
        """The fields, or None (logged and counted) when the row does not open: it is then
        skipped, never delivered half-read."""
        ...

    def seal_payload(self, payload: SharedPayload) -> SealedColumns: ...

    def open_payload(self, payload_id: bytes, key_id: int, sealed: bytes) -> bytes | None:
        """The payload's body, or None (logged and counted) when it does not open: the
        envelopes naming it are then skipped like a row that does not open."""
        ...

    async def load(self, key_ids: Iterable[int]) -> None:
        """Make sure these data keys are at hand (a row sealed by another node with a key
        made since this node last looked). Unknown ids stay unknown; never raises."""
        ...


def receipt_column(sealer: EnvelopeSealer, envelope: Envelope, recipient_user: str) -> bytes | None:
    """What a row's `receipt` column holds: the sealer's tag for a message (bound to the
    recipient as the row names it); for a receipt, RECEIPT_ROW, so that a schema going back
    below receipts can delete them (a receipt's other columns are sealed like a message's)."""
    if envelope.is_receipt:
        return RECEIPT_ROW
    return sealer.receipt_tag(
        recipient_user, envelope.recipient_device, envelope.id, wanted=envelope.receipt
    )


class ClearSealer:
    """No encryption at rest: every row in the clear columns."""

    def seal(self, envelope: Envelope, recipient_user: str) -> SealedColumns:
        return CLEAR_KEY_ID, None

    def receipt_tag(
        self, recipient_user: str, recipient_device: int, message_id: bytes, *, wanted: bool
    ) -> bytes | None:
        return CLEAR_RECEIPT_TAG if wanted else None

    def store_name(self, user: str) -> str:
        return user

    def open(
        self,
        recipient_user: str,
        recipient_device: int,
        message_id: bytes,
        key_id: int,
        sealed: bytes,
    ) -> OpenedFields | None:
        log.error("stored message sealed with data key %d, but encryption at rest is off", key_id)
        return None

    def seal_payload(self, payload: SharedPayload) -> SealedColumns:
        return CLEAR_KEY_ID, None

    def open_payload(self, payload_id: bytes, key_id: int, sealed: bytes) -> bytes | None:
        log.error("shared payload sealed with data key %d, but encryption at rest is off", key_id)
        return None

    async def load(self, key_ids: Iterable[int]) -> None:
        return None


class NonceSequence:
    """XChaCha20 nonces without a system call per row: a random 16-byte prefix drawn once
    per sealer, then an 8-byte counter. Unique under one key: the counter never repeats in
    a process, and two processes (nodes, restarts) share a prefix with probability 2^-128
    per pair. (A random nonce per row cost a system call, and the GIL hand-off around it, on
    the stored path.)"""

    def __init__(self) -> None:
        self.prefix: Final = os.urandom(16)
        self._counter = itertools.count()

    def next_counter(self) -> bytes:
        """The next nonce's last 8 bytes (the nonce is `prefix` + these)."""
        return next(self._counter).to_bytes(8, "big")

    def next(self) -> bytes:
        return self.prefix + self.next_counter()


class RingSealer:
    """Seals with the ring's active data key; opens with whichever key a row names.

    Used from the event loop and from the embedded store's writer thread (an ack's job seals
    the receipts it leaves): its caches are dicts and counters changed by single operations
    under the GIL, and a key is read with its id (_active_key)."""

    def __init__(
        self,
        ring: KeyRing,
        *,
        load_keys: Callable[[set[int]], Awaitable[None]] | None = None,
        on_undecryptable: Callable[[str], None] | None = None,
    ) -> None:
        self._ring = ring
        self._load_keys = load_keys
        self._on_undecryptable = on_undecryptable
        self._nonces = NonceSequence()
        self._aead = XChaCha20Poly1305()
        # (active key id, the cipher of its subkey for this sealer's nonce prefix): one
        # ChaCha20-Poly1305 call per row, no lookup; made again when the active key changes.
        self._active: tuple[int, ChaCha20Poly1305] | None = None
        # What stays the same from row to row of one device's queue, made once per device:
        # the associated data up to the message id, and the receipt tags' hashes with the
        # recipient absorbed (see receipt_tag). Bounded by starting over when full.
        self._heads: dict[tuple[str, int, int], bytes] = {}
        self._tags: dict[tuple[str, int, bool], hashlib.blake2b] = {}

    def _active_cipher(self) -> tuple[int, ChaCha20Poly1305]:
        # The key and its id are read together (_active_key): the embedded store seals the
        # receipts an ack leaves in its job, on the writer thread, while the event loop may
        # activate another key, and a row must never name one key and be sealed with another.
        active = self._active
        if active is None or active[0] != self._ring.active_id:
            key_id, key = self._active_key()
            active = self._active = (key_id, self._aead.subkey_cipher(key, self._nonces.prefix))
        return active

    def _active_key(self) -> tuple[int, bytes]:
        """The active key and its id, read together."""
        ring = self._ring
        key_id = ring.active_id
        key = ring.data_key(key_id)
        if key is None:  # retired and forgotten in between: the one active now
            key_id = ring.active_id
            key = ring.active_key
        return key_id, key

    def seal(self, envelope: Envelope, recipient_user: str) -> SealedColumns:
        key_id, cipher = self._active_cipher()
        user = envelope.sender_user.encode()
        plain = b"".join(
            (
                _HEAD.pack(envelope.sender_device, envelope.ts, envelope.type, len(user)),
                user,
                _LEN.pack(len(envelope.nonce)),
                envelope.nonce,
                envelope.body,  # a shared payload is sealed apart (seal_payload)
            )
        )
        counter = self._nonces.next_counter()
        aad = self._associated(recipient_user, envelope.recipient_device, key_id) + envelope.id
        sealed = cipher.encrypt(_ZEROS + counter, plain, aad)  # see xchacha.subkey_cipher
        return key_id, self._nonces.prefix + counter + sealed

    def receipt_tag(
        self, recipient_user: str, recipient_device: int, message_id: bytes, *, wanted: bool
    ) -> bytes | None:
        """Every row has a tag, keyed by the index key and bound to its recipient and id: a
        copied database cannot tell which copies asked for a receipt (no row's tag repeats),
        and an ack, which knows the ids it removes, computes the tags it looks for."""
        # blind(label, recipient_user || recipient_device (4 bytes) || message_id), from a
        # copy of the hash that has absorbed the recipient.
        place = (recipient_user, recipient_device, wanted)
        absorbed = self._tags.get(place)
        if absorbed is None:
            label = _RECEIPT_WANTED if wanted else _RECEIPT_NOT_WANTED
            absorbed = self._ring.keyed(label).copy()
            absorbed.update(recipient_user.encode() + recipient_device.to_bytes(4, "big"))
            if len(self._tags) >= _PER_DEVICE_LIMIT:
                self._tags.clear()
            self._tags[place] = absorbed
        hashed = absorbed.copy()
        hashed.update(message_id)
        return hashed.digest()

    def store_name(self, user: str) -> str:
        return self._ring.blind_user(user)

    def open(
        self,
        recipient_user: str,
        recipient_device: int,
        message_id: bytes,
        key_id: int,
        sealed: bytes,
    ) -> OpenedFields | None:
        key = self._ring.data_key(key_id)
        if key is None:
            self._undecryptable("unknown_key", key_id, message_id)
            return None
        aad = self._associated(recipient_user, recipient_device, key_id) + message_id
        try:
            plain = self._aead.decrypt(key, sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad)
            return _fields(plain)
        except (ValueError, TypeError, struct.error):
            self._undecryptable("does_not_open", key_id, message_id)
            return None

    def seal_payload(self, payload: SharedPayload) -> SealedColumns:
        key_id, key = self._active_key()
        nonce = self._nonces.next()
        aad = _payload_associated(payload.id, key_id)
        sealed = self._aead.encrypt(key, nonce, payload.body, aad)
        return key_id, nonce + sealed

    def open_payload(self, payload_id: bytes, key_id: int, sealed: bytes) -> bytes | None:
        key = self._ring.data_key(key_id)
        if key is None:
            self._undecryptable("unknown_key", key_id, payload_id)
            return None
        aad = _payload_associated(payload_id, key_id)
        try:
            return bytes(self._aead.decrypt(key, sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad))
        except (ValueError, TypeError):
            self._undecryptable("does_not_open", key_id, payload_id)
            return None

    async def load(self, key_ids: Iterable[int]) -> None:
        missing = set(key_ids) - self._ring.known_ids()
        missing.discard(CLEAR_KEY_ID)
        if missing and self._load_keys is not None:
            await self._load_keys(missing)

    def _associated(self, user: str, device: int, key_id: int) -> bytes:
        """A row's associated data up to its message id (which follows it)."""
        place = (user, device, key_id)
        head = self._heads.get(place)
        if head is None:
            head = _associated(user, device, b"", key_id)
            if len(self._heads) >= _PER_DEVICE_LIMIT:
                self._heads.clear()
            self._heads[place] = head
        return head

    def _undecryptable(self, reason: str, key_id: int, message_id: bytes) -> None:
        log.error(
            "stored message %s (data key %d) skipped: %s",
            message_id.hex(),
            key_id,
            reason.replace("_", " "),
        )
        if self._on_undecryptable is not None:
            self._on_undecryptable(reason)


def _associated(user: str, device: int, message_id: bytes, key_id: int) -> bytes:
    encoded = user.encode()
    return b"".join(
        (
            _CONTEXT,
            struct.pack(">IHH", key_id, device, len(encoded)),
            encoded,
            message_id,
        )
    )


def _payload_associated(payload_id: bytes, key_id: int) -> bytes:
    return b"".join((_PAYLOAD_CONTEXT, struct.pack(">I", key_id), payload_id))


def _fields(plain: bytes) -> OpenedFields:
    sender_device, ts, type_, user_len = _HEAD.unpack_from(plain)
    at = _HEAD.size
    user = plain[at : at + user_len].decode()
    at += user_len
    (nonce_len,) = _LEN.unpack_from(plain, at)
    at += _LEN.size
    nonce = plain[at : at + nonce_len]
    if len(nonce) != nonce_len:
        raise ValueError("truncated")
    return OpenedFields(user, sender_device, ts, type_, nonce, plain[at + nonce_len :])
