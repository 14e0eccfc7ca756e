"""Domain records that cross the storage boundary. Times are milliseconds since the epoch."""

from __future__ import annotations

from typing import Final, NamedTuple

from protocol.records import record

MAX_DEVICE_NUMBER = 127  # libsignal's device id range is 1..127

# A stored receipt (docs/protocol.md, delivery receipts) is an envelope of this type, outside
# the wire's 0-255, so no message can be taken for one: `sender_*` name the device that
# acknowledged, `body` the message's id, `ts` and `server_ts` the time of the ack.
RECEIPT_TYPE: Final = 0x100


@record
class NewDevice:
    identity_key: bytes
    key_scheme: str
    # The key's canonical X25519 form (spec §3.3): one key pair is one identity in any encoding.
    identity_x25519: bytes
    registration_id: int
    created_ms: int


@record
class DeviceRecord:
    user: str
    device: int
    identity_key: bytes
    key_scheme: str
    registration_id: int
    created_ms: int
    last_seen_ms: int


@record
class OneTimeKey:
    id: int
    key: bytes


@record
class SignedKey:
    """A signed pre-key, PQ one-time key or PQ last-resort key, byte for byte as uploaded."""

    id: int
    key: bytes
    signature: bytes


@record
class KeyUpload:
    signed_prekey: SignedKey | None = None
    prekeys: tuple[OneTimeKey, ...] = ()
    pq_prekeys: tuple[SignedKey, ...] = ()
    pq_last_resort: SignedKey | None = None


@record
class KeyCounts:
    prekeys: int
    pq_prekeys: int
    signed_prekey_uploaded_ms: int | None


@record
class ClaimedKeys:
    """What one bundle fetch took from a device: the one-time keys are gone from the store."""

    signed_prekey: SignedKey | None
    prekey: OneTimeKey | None
    pq_prekey: SignedKey | None  # a one-time PQ key, else the last-resort key
    counts: KeyCounts  # after the claim
    fell_below_low_water: bool  # a count just went from the low-water mark to below it


@record
class SharedPayload:
    """The ciphertext one `send.multi` shares between its devices: each device's envelope
    holds only its header and names this, and a store keeps it once."""

    id: bytes  # 16 random bytes naming the stored copy
    body: bytes


@record
class Envelope:
    """One device's copy of a message, as stored and as delivered. With `payload`, `body` is
    the device's header and the delivered body is the header followed by the payload."""

    id: bytes
    recipient_user: str
    recipient_device: int
    sender_user: str
    sender_device: int
    ts: int
    server_ts: int
    type: int
    body: bytes
    nonce: bytes
    expires_ms: int
    receipt: bool = False  # the sender asked for a receipt when this stored copy is acked
    payload: SharedPayload | None = None

    @property
    def is_receipt(self) -> bool:
        return self.type == RECEIPT_TYPE

    @property
    def delivered_body(self) -> bytes:
        return self.body if self.payload is None else self.body + self.payload.body


def receipt_envelope(
    acked: Envelope, *, receipt_id: bytes, to_user: str, to_device: int, acked_by: str, now_ms: int
) -> Envelope:
    """The receipt `receipt_id` for `acked` (acknowledged by device `acked.recipient_device`
    of `acked_by`, the user's real id) held for device `to_device` of `to_user` (the sender's
    user as the store names it); it expires with the message.

    `receipt_id` is random, one for all the sender's devices, drawn in the ack's transaction:
    the ack removes the copy once, so the receipt is made once. (An id derived from the
    message and the recipient would let a copy of the database test guesses of user ids.)"""
    return Envelope(
        id=receipt_id,
        recipient_user=to_user,
        recipient_device=to_device,
        sender_user=acked_by,
        sender_device=acked.recipient_device,
        ts=now_ms,
        server_ts=now_ms,
        type=RECEIPT_TYPE,
        body=acked.id,
        nonce=b"",
        expires_ms=acked.expires_ms,
    )


@record
class StoredEnvelope:
    seq: int  # order of storage for this device; drains go by it
    envelope: Envelope


@record
class PendingOrigin:
    """Who sent a message that is pending (stored, unacknowledged) for a device."""

    device: int
    sender_user: str
    sender_device: int
    nonce: bytes


@record
class ReplayScope:
    """A nonce is used once per (sender user, sender device, recipient user)."""

    sender_user: str
    sender_device: int
    recipient_user: str


@record
class SendOutcome:
    """The first answer to a send, kept for the replay window so a retry gets it again."""

    delivered: tuple[int, ...]
    stored: tuple[int, ...]


@record
class ReplayRecord:
    """The nonce is taken by `message_id`; `outcome` is None while that send is in flight."""

    message_id: bytes
    outcome: SendOutcome | None


@record
class RateDecision:
    allowed: bool
    retry_after_ms: int


@record
class Requester:
    """The device that fetched a bundle: recorded with the one-time keys it was given."""

    user: str
    device: int


@record
class KeyEvent:
    """One row of the key-event audit trail (storage.audit_events names the kinds).

    `detail` holds public key ids, counts and the requester of a claim, never key material
    and never anything about messages."""

    id: int
    at_ms: int
    user: str
    device: int
    kind: str
    detail: dict[str, object]


class OpenedFields(NamedTuple):
    """What a stored envelope keeps sealed (storage.at_rest.sealing), once opened. A named
    tuple, not a frozen dataclass: one is made per stored envelope read, and a tuple is
    built several times faster."""

    sender_user: str
    sender_device: int
    ts: int
    type: int
    nonce: bytes
    body: bytes


@record
class WrappedKey:
    """A data key or the index key as the store keeps it: wrapped by the master key
    `master_key_id`. `state` is "active" (the data key new rows are sealed with; the index
    key is always active) or "retired" (still opens the rows sealed with it)."""

    id: int
    purpose: str  # "data" | "index"
    state: str
    created_ms: int
    retired_ms: int | None
    master_key_id: str
    wrapped: bytes


@record
class NewBackup:
    """A user's backup as it is to be stored. `blob` is opaque (sealed by the client with its
    recovery key); a store encrypted at rest seals it once more with a data key (`key_id`,
    0: stored as given) and keeps the user's id readable only in `owner` (sealed; None: the
    user id itself). `access_key` authorises `backup.recover` (kept as a keyed hash at rest)."""

    blob: bytes
    access_key: bytes
    key_id: int = 0
    owner: str | None = None


@record
class Backup:
    """A user's current backup. `user` is its owner as the caller knows it."""

    user: str
    version: int
    blob: bytes
    updated_ms: int
    key_id: int = 0
