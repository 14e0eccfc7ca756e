"""The Double Ratchet (Signal's specification, with header keys left out).

    KDF_RK(rk, dh)  = HKDF-SHA256(salt = rk, ikm = dh, info = ROOT_INFO, 64) -> (rk', ck)
    KDF_CK(ck)      = (HMAC-SHA256(ck, 0x02) -> ck', HMAC-SHA256(ck, 0x01) -> mk)
    message keys    = HKDF-SHA256(salt = 32 zero bytes, ikm = mk, info = MESSAGE_INFO, 56)
                      -> XChaCha20-Poly1305 key (32) || nonce (24)
    AD of a message = session AD || [type-1 preamble] || ratchet header bytes

Every message key encrypts one message, so its nonce can be derived with it.
A :class:`RatchetState` is changed in place; :class:`protocol.crypto.session.Session`
decrypts on a copy and keeps it only on success, so a failure changes nothing.

Skipped message keys are bounded: a message more than :data:`MAX_SKIP` ahead
of its chain is refused, and at most :data:`MAX_SKIPPED_KEYS` are kept in all,
the oldest dropped first (a message whose key was dropped no longer decrypts).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final

from protocol.crypto import primitives, state
from protocol.crypto.errors import CryptoError, DecryptError, StateError
from protocol.crypto.wire import RatchetHeader, RatchetMessage, encode_ratchet_header

__all__ = ["MAX_SKIP", "MAX_SKIPPED_KEYS", "RatchetState"]

MAX_SKIP: Final = 1000
MAX_SKIPPED_KEYS: Final = 2000
ROOT_INFO: Final = b"RelayRatchet_RootKey"
MESSAGE_INFO: Final = b"RelayRatchet_MessageKeys"
_MESSAGE_KEY_SEED: Final = b"\x01"
_CHAIN_KEY_SEED: Final = b"\x02"
_ZERO_SALT: Final = bytes(32)
_MAX_NUMBER: Final = 2**32 - 1
_KEY: Final = primitives.KEY_BYTES


def _kdf_root(root_key: bytes, dh_output: bytes) -> tuple[bytes, bytes]:
    out = primitives.hkdf_sha256(dh_output, salt=root_key, info=ROOT_INFO, length=64)
    return out[:32], out[32:]


def _kdf_chain(chain_key: bytes) -> tuple[bytes, bytes]:
    """``(next chain key, message key)``."""
    return (
        primitives.hmac_sha256(chain_key, _CHAIN_KEY_SEED),
        primitives.hmac_sha256(chain_key, _MESSAGE_KEY_SEED),
    )


def _message_cipher(message_key: bytes) -> tuple[bytes, bytes]:
    """The AEAD key and nonce of one message key."""
    out = primitives.hkdf_sha256(message_key, salt=_ZERO_SALT, info=MESSAGE_INFO, length=56)
    return out[:32], out[32:]


@dataclass
class RatchetState:
    """One side's state: the spec's DHs, DHr, RK, CKs, CKr, Ns, Nr, PN and MKSKIPPED."""

    root_key: bytes
    sending_private: bytes
    sending_public: bytes
    receiving_key: bytes | None
    sending_chain: bytes | None
    receiving_chain: bytes | None
    sent: int = 0
    received: int = 0
    previous_sent: int = 0
    # (ratchet key, number) -> message key, oldest first.
    skipped: dict[tuple[bytes, int], bytes] = field(default_factory=dict)

    @classmethod
    def initiator(cls, secret: bytes, remote_ratchet_key: bytes) -> RatchetState:
        """Alice: her first sending chain starts from DH(new key, Bob's signed pre-key)."""
        private, public = primitives.x25519_generate()
        root_key, chain = _kdf_root(secret, primitives.x25519(private, remote_ratchet_key))
        return cls(root_key, private, public, remote_ratchet_key, chain, None)

    @classmethod
    def responder(cls, secret: bytes, private: bytes, public: bytes) -> RatchetState:
        """Bob: his signed pre-key is his first ratchet key; chains start on receipt."""
        return cls(secret, private, public, None, None, None)

    def copy(self) -> RatchetState:
        """An independent copy to try a decryption on."""
        return replace(self, skipped=dict(self.skipped))

    @property
    def skipped_count(self) -> int:
        """How many skipped message keys are held."""
        return len(self.skipped)

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """A type-2 body; ``associated_data`` is what precedes the header in the AD."""
        if self.sending_chain is None:
            raise CryptoError("no sending chain yet: a responder must receive first")
        if self.sent >= _MAX_NUMBER:
            raise CryptoError("sending chain exhausted")
        header = encode_ratchet_header(
            RatchetHeader(self.sending_public, self.previous_sent, self.sent)
        )
        self.sending_chain, message_key = _kdf_chain(self.sending_chain)
        self.sent += 1
        key, nonce = _message_cipher(message_key)
        return header + primitives.aead_encrypt(key, nonce, plaintext, associated_data + header)

    def decrypt(self, message: RatchetMessage, associated_data: bytes) -> bytes:
        """Open a parsed type-2 body, moving this state forward (use on a copy)."""
        header = message.header
        ad = associated_data + message.header_bytes
        skipped_key = self.skipped.pop((header.ratchet_key, header.number), None)
        if skipped_key is not None:
            return _open(skipped_key, message.ciphertext, ad)
        if header.ratchet_key != self.receiving_key:
            self._skip_until(header.previous_length)
            self._step(header.ratchet_key)
        elif header.number < self.received:
            raise DecryptError("message already decrypted, or its key was dropped")
        self._skip_until(header.number)
        if self.receiving_chain is None:
            raise DecryptError("no receiving chain")
        self.receiving_chain, message_key = _kdf_chain(self.receiving_chain)
        self.received += 1
        return _open(message_key, message.ciphertext, ad)

    def _skip_until(self, until: int) -> None:
        chain, ratchet_key = self.receiving_chain, self.receiving_key
        if chain is None or ratchet_key is None:
            return
        if until > self.received + MAX_SKIP:
            raise DecryptError("too many skipped messages")
        while self.received < until:
            chain, message_key = _kdf_chain(chain)
            self.skipped[(ratchet_key, self.received)] = message_key
            self.received += 1
        self.receiving_chain = chain
        while len(self.skipped) > MAX_SKIPPED_KEYS:
            del self.skipped[next(iter(self.skipped))]

    def _step(self, remote_ratchet_key: bytes) -> None:
        """A DH ratchet step on a new remote ratchet key."""
        self.previous_sent = self.sent
        self.sent = 0
        self.received = 0
        self.receiving_key = remote_ratchet_key
        try:
            dh_receive = primitives.x25519(self.sending_private, remote_ratchet_key)
            self.root_key, self.receiving_chain = _kdf_root(self.root_key, dh_receive)
            self.sending_private, self.sending_public = primitives.x25519_generate()
            dh_send = primitives.x25519(self.sending_private, remote_ratchet_key)
        except ValueError as exc:
            raise DecryptError("bad ratchet key") from exc
        self.root_key, self.sending_chain = _kdf_root(self.root_key, dh_send)

    def to_record(self) -> dict[str, object]:
        """The state as a msgpack-ready map."""
        return {
            "root_key": self.root_key,
            "sending_private": self.sending_private,
            "sending_public": self.sending_public,
            "receiving_key": self.receiving_key,
            "sending_chain": self.sending_chain,
            "receiving_chain": self.receiving_chain,
            "sent": self.sent,
            "received": self.received,
            "previous_sent": self.previous_sent,
            "skipped": [{"key": k, "n": n, "mk": mk} for (k, n), mk in self.skipped.items()],
        }

    @classmethod
    def from_record(cls, record: state.Record) -> RatchetState:
        """Read back :meth:`to_record`."""
        skipped = {
            (item.blob("key", length=_KEY), item.integer("n")): item.blob("mk", length=_KEY)
            for item in record.records("skipped", max_items=MAX_SKIPPED_KEYS)
        }
        sending_private = record.blob("sending_private", length=_KEY)
        sending_public = record.blob("sending_public", length=_KEY)
        if primitives.x25519_public(sending_private) != sending_public:
            raise StateError("session: ratchet key pair does not match")
        return cls(
            root_key=record.blob("root_key", length=_KEY),
            sending_private=sending_private,
            sending_public=sending_public,
            receiving_key=record.optional_blob("receiving_key", length=_KEY),
            sending_chain=record.optional_blob("sending_chain", length=_KEY),
            receiving_chain=record.optional_blob("receiving_chain", length=_KEY),
            sent=record.integer("sent"),
            received=record.integer("received"),
            previous_sent=record.integer("previous_sent"),
            skipped=skipped,
        )


def _open(message_key: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    key, nonce = _message_cipher(message_key)
    try:
        return primitives.aead_decrypt(key, nonce, ciphertext, associated_data)
    except ValueError as exc:
        raise DecryptError("message does not authenticate") from exc
