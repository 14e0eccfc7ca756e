"""All private key material of one device: identity, registration id and pre-keys.

The public halves are what a device uploads with ``keys.upload`` (spec §6):
EC pre-keys as libsignal serialises them (``0x05`` + X25519 key), PQ pre-keys
as ``0x08`` + an ML-KEM-1024 public key, and signed pre-key and PQ pre-key
signatures made by the identity key over those uploaded bytes exactly (spec §2).
Key ids count up from a random start within 1..2^24-1 (libsignal's range) and
wrap, skipping ids still held; EC one-time pre-keys, PQ pre-keys (one-time and
last resort share one counter, so an id names one PQ key) and signed pre-keys
each have their own counter.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Final

from protocol.crypto import primitives, state
from protocol.crypto.errors import StateError
from protocol.signatures import IdentityKeyPair, KeyScheme, verify_signature

__all__ = [
    "MAX_KEY_ID",
    "MAX_ONE_TIME_PREKEYS",
    "DeviceKeys",
    "OneTimePreKey",
    "PQPreKey",
    "SignedPreKeyPair",
]

MAX_KEY_ID: Final = 0xFFFFFF
# libsignal's registration id range.
MAX_REGISTRATION_ID: Final = 16380
# The relay keeps at most 1000 one-time pre-keys of a kind per device; so do we.
MAX_ONE_TIME_PREKEYS: Final = 1000
_STATE_VERSION: Final = 1


@dataclass(frozen=True)
class OneTimePreKey:
    """A one-time EC pre-key; ``public`` is ``0x05`` + the X25519 key."""

    id: int
    private: bytes
    public: bytes


@dataclass(frozen=True)
class SignedPreKeyPair:
    """The medium-term EC pre-key, signed by the identity key over ``public``."""

    id: int
    private: bytes
    public: bytes
    signature: bytes
    created_ms: int


@dataclass(frozen=True)
class PQPreKey:
    """An ML-KEM-1024 pre-key: ``private`` is its 64-byte seed, ``public`` is ``0x08`` + 1568."""

    id: int
    private: bytes
    public: bytes
    signature: bytes


def _make_prekey(key_id: int) -> OneTimePreKey:
    private, public = primitives.x25519_generate()
    return OneTimePreKey(key_id, private, primitives.encode_ec_public(public))


def _make_signed_prekey(identity: IdentityKeyPair, key_id: int, now_ms: int) -> SignedPreKeyPair:
    private, public = primitives.x25519_generate()
    wire = primitives.encode_ec_public(public)
    return SignedPreKeyPair(key_id, private, wire, identity.sign(wire), now_ms)


def _make_pq_prekey(identity: IdentityKeyPair, key_id: int) -> PQPreKey:
    seed, public = primitives.kem_generate()
    wire = primitives.encode_kem_public(public)
    return PQPreKey(key_id, seed, wire, identity.sign(wire))


def _random_key_id() -> int:
    return 1 + secrets.randbelow(MAX_KEY_ID)


def _following(key_id: int) -> int:
    return 1 if key_id >= MAX_KEY_ID else key_id + 1


@dataclass(eq=False)
class DeviceKeys:
    """All private key material of one device (identity, registration id, pre-keys).

    Mutable on purpose: :func:`protocol.crypto.session.accept_session` removes
    the one-time pre-keys it consumes, and the caller persists the result.
    """

    identity: IdentityKeyPair
    registration_id: int
    signed_prekey: SignedPreKeyPair
    previous_signed_prekey: SignedPreKeyPair | None
    prekeys: dict[int, OneTimePreKey]
    pq_prekeys: dict[int, PQPreKey]
    pq_last_resort: PQPreKey
    previous_pq_last_resort: PQPreKey | None = None
    next_prekey_id: int = field(default_factory=_random_key_id)
    next_pq_prekey_id: int = field(default_factory=_random_key_id)
    next_signed_prekey_id: int = field(default_factory=_random_key_id)

    def __repr__(self) -> str:
        """Public parts only, so private keys never reach a log."""
        return (
            f"DeviceKeys(identity={self.identity!r}, registration_id={self.registration_id}, "
            f"signed_prekey={self.signed_prekey.id}, prekeys={len(self.prekeys)}, "
            f"pq_prekeys={len(self.pq_prekeys)}, pq_last_resort={self.pq_last_resort.id})"
        )

    @classmethod
    def generate(
        cls, scheme: KeyScheme, *, prekeys: int = 100, pq_prekeys: int = 100, now_ms: int
    ) -> DeviceKeys:
        """A new device: fresh identity, registration id, signed, one-time and PQ pre-keys."""
        identity = IdentityKeyPair.generate(scheme)
        spk_id = _random_key_id()
        pq_id = _random_key_id()
        keys = cls(
            identity=identity,
            registration_id=1 + secrets.randbelow(MAX_REGISTRATION_ID),
            signed_prekey=_make_signed_prekey(identity, spk_id, now_ms),
            previous_signed_prekey=None,
            prekeys={},
            pq_prekeys={},
            pq_last_resort=_make_pq_prekey(identity, pq_id),
            next_pq_prekey_id=_following(pq_id),
            next_signed_prekey_id=_following(spk_id),
        )
        keys.new_prekeys(prekeys)
        keys.new_pq_prekeys(pq_prekeys)
        return keys

    def _take_id(self, counter: int, taken: set[int]) -> tuple[int, int]:
        """A free id at or after ``counter``, and the counter after it."""
        key_id = counter
        while key_id in taken:
            key_id = _following(key_id)
        return key_id, _following(key_id)

    def _check_count(self, count: int, held: int) -> None:
        if count < 0 or held + count > MAX_ONE_TIME_PREKEYS:
            raise ValueError(f"at most {MAX_ONE_TIME_PREKEYS} one-time pre-keys of a kind")

    def new_prekeys(self, count: int) -> list[OneTimePreKey]:
        """``count`` fresh one-time EC pre-keys with fresh ids, kept in :attr:`prekeys`."""
        self._check_count(count, len(self.prekeys))
        created = []
        taken = set(self.prekeys)
        for _ in range(count):
            key_id, self.next_prekey_id = self._take_id(self.next_prekey_id, taken)
            taken.add(key_id)
            key = _make_prekey(key_id)
            self.prekeys[key_id] = key
            created.append(key)
        return created

    def _pq_ids_held(self) -> set[int]:
        """Ids of every PQ key held: one-time, last resort and the previous last resort."""
        held = {*self.pq_prekeys, self.pq_last_resort.id}
        if self.previous_pq_last_resort is not None:
            held.add(self.previous_pq_last_resort.id)
        return held

    def new_pq_prekeys(self, count: int) -> list[PQPreKey]:
        """``count`` fresh one-time PQ pre-keys with fresh ids, kept in :attr:`pq_prekeys`."""
        self._check_count(count, len(self.pq_prekeys))
        created = []
        taken = self._pq_ids_held()
        for _ in range(count):
            key_id, self.next_pq_prekey_id = self._take_id(self.next_pq_prekey_id, taken)
            taken.add(key_id)
            key = _make_pq_prekey(self.identity, key_id)
            self.pq_prekeys[key_id] = key
            created.append(key)
        return created

    def rotate_signed_prekey(self, now_ms: int) -> SignedPreKeyPair:
        """A new signed pre-key; the current one is kept for type-1 messages still under way."""
        taken = {self.signed_prekey.id}
        key_id, self.next_signed_prekey_id = self._take_id(self.next_signed_prekey_id, taken)
        self.previous_signed_prekey = self.signed_prekey
        self.signed_prekey = _make_signed_prekey(self.identity, key_id, now_ms)
        return self.signed_prekey

    def rotate_pq_last_resort(self) -> PQPreKey:
        """A new last-resort PQ pre-key; the current one is kept like a previous signed pre-key."""
        taken = self._pq_ids_held()
        key_id, self.next_pq_prekey_id = self._take_id(self.next_pq_prekey_id, taken)
        self.previous_pq_last_resort = self.pq_last_resort
        self.pq_last_resort = _make_pq_prekey(self.identity, key_id)
        return self.pq_last_resort

    def find_signed_prekey(self, key_id: int) -> SignedPreKeyPair | None:
        """The current or previous signed pre-key with ``key_id``."""
        for key in (self.signed_prekey, self.previous_signed_prekey):
            if key is not None and key.id == key_id:
                return key
        return None

    def find_pq_prekey(self, key_id: int) -> PQPreKey | None:
        """The one-time, last-resort or previous last-resort PQ pre-key with ``key_id``."""
        if key_id in self.pq_prekeys:
            return self.pq_prekeys[key_id]
        for key in (self.pq_last_resort, self.previous_pq_last_resort):
            if key is not None and key.id == key_id:
                return key
        return None

    def to_bytes(self) -> bytes:
        """All of it as msgpack, for the client's encrypted local store."""
        return state.pack(
            {
                "v": _STATE_VERSION,
                "scheme": self.identity.scheme.value,
                "identity": self.identity.private_bytes,
                "registration_id": self.registration_id,
                "signed_prekey": _signed_record(self.signed_prekey),
                "previous_signed_prekey": (
                    None
                    if self.previous_signed_prekey is None
                    else _signed_record(self.previous_signed_prekey)
                ),
                "prekeys": [
                    {"id": k.id, "private": k.private, "public": k.public}
                    for k in self.prekeys.values()
                ],
                "pq_prekeys": [_pq_record(k) for k in self.pq_prekeys.values()],
                "pq_last_resort": _pq_record(self.pq_last_resort),
                "previous_pq_last_resort": (
                    None
                    if self.previous_pq_last_resort is None
                    else _pq_record(self.previous_pq_last_resort)
                ),
                "next_prekey_id": self.next_prekey_id,
                "next_pq_prekey_id": self.next_pq_prekey_id,
                "next_signed_prekey_id": self.next_signed_prekey_id,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceKeys:
        """Read back :meth:`to_bytes`; malformed data is :class:`StateError`."""
        record = state.unpack(data, kind="device keys", version=_STATE_VERSION)
        try:
            scheme = KeyScheme(record.text("scheme"))
        except ValueError as exc:
            raise StateError("device keys: unknown key scheme") from exc
        identity = IdentityKeyPair.from_private_bytes(
            scheme, record.blob("identity", length=primitives.KEY_BYTES)
        )
        previous = record.optional_record("previous_signed_prekey")
        previous_pq = record.optional_record("previous_pq_last_resort")
        prekeys = [
            _read_prekey(r) for r in record.records("prekeys", max_items=MAX_ONE_TIME_PREKEYS)
        ]
        pq_prekeys = [
            _read_pq(r) for r in record.records("pq_prekeys", max_items=MAX_ONE_TIME_PREKEYS)
        ]
        return cls(
            identity=identity,
            registration_id=record.integer("registration_id", low=1, high=MAX_REGISTRATION_ID),
            signed_prekey=_read_signed(record.record("signed_prekey"), identity),
            previous_signed_prekey=None if previous is None else _read_signed(previous, identity),
            prekeys={k.id: k for k in prekeys},
            pq_prekeys={k.id: k for k in pq_prekeys},
            pq_last_resort=_read_pq(record.record("pq_last_resort")),
            previous_pq_last_resort=None if previous_pq is None else _read_pq(previous_pq),
            next_prekey_id=record.integer("next_prekey_id", low=1, high=MAX_KEY_ID),
            next_pq_prekey_id=record.integer("next_pq_prekey_id", low=1, high=MAX_KEY_ID),
            next_signed_prekey_id=record.integer("next_signed_prekey_id", low=1, high=MAX_KEY_ID),
        )


def _signed_record(key: SignedPreKeyPair) -> dict[str, object]:
    return {
        "id": key.id,
        "private": key.private,
        "public": key.public,
        "signature": key.signature,
        "created_ms": key.created_ms,
    }


def _pq_record(key: PQPreKey) -> dict[str, object]:
    return {"id": key.id, "private": key.private, "public": key.public, "signature": key.signature}


def _read_ec_pair(record: state.Record) -> tuple[int, bytes, bytes]:
    key_id = record.integer("id", low=1, high=MAX_KEY_ID)
    private = record.blob("private", length=primitives.KEY_BYTES)
    public = record.blob("public", length=primitives.KEY_BYTES + 1)
    if public != primitives.encode_ec_public(primitives.x25519_public(private)):
        raise StateError("device keys: an EC pre-key does not match its private key")
    return key_id, private, public


def _read_prekey(record: state.Record) -> OneTimePreKey:
    return OneTimePreKey(*_read_ec_pair(record))


def _read_signed(record: state.Record, identity: IdentityKeyPair) -> SignedPreKeyPair:
    key_id, private, public = _read_ec_pair(record)
    signature = record.blob("signature", length=64)
    if not verify_signature(identity.scheme, identity.public_key, public, signature):
        raise StateError("device keys: a signed pre-key signature does not verify")
    created_ms = record.integer("created_ms", low=-(2**63), high=2**63 - 1)
    return SignedPreKeyPair(key_id, private, public, signature, created_ms)


def _read_pq(record: state.Record) -> PQPreKey:
    key_id = record.integer("id", low=1, high=MAX_KEY_ID)
    seed = record.blob("private", length=primitives.KEM_SEED_BYTES)
    public = record.blob("public", length=primitives.KEM_PUBLIC_BYTES + 1)
    if public[0] != primitives.KEM_KEY_TYPE:
        raise StateError("device keys: a PQ pre-key is not ML-KEM-1024")
    signature = record.blob("signature", length=64)
    return PQPreKey(key_id, seed, public, signature)
