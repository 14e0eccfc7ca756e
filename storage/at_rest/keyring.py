"""The unwrapped keys one node holds: the data keys by id (one of them active, the one new
rows are sealed with) and the index key, which turns user ids and nonces into keyed hashes
for the columns that are looked up by them.

The index key is never rotated: rotating it would mean rewriting every row that names a
user. The master key that wraps it is rotated like the one that wraps the data keys.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.utils

__all__ = ["BLIND_PREFIX", "KeyRing", "SealError"]

BLIND_PREFIX: Final = "b:"  # a blinded user id: "b:" + 32 hex digits (a keyed hash)
_BLIND_BYTES: Final = 16
_NONCE_BYTES: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_TEXT_CONTEXT: Final = b"relay-sealed-text-v1\x00"
_SEALED_TEXT_PREFIX: Final = "s:"
_BLIND_CACHE: Final = 65_536


class SealError(Exception):
    """Sealed data did not open: wrong key, or changed."""


class KeyRing:
    """Keys in memory. Cheap to read on the hot path; the vault installs new ones."""

    def __init__(self, *, index_key: bytes, data_keys: dict[int, bytes], active_id: int) -> None:
        if active_id not in data_keys:
            raise ValueError(f"active data key {active_id} is not among the keys")
        self._index_key = index_key
        self._keyed: dict[bytes, hashlib.blake2b] = {}
        self._nonce_keyed = self.keyed(b"nonce")
        self._data_keys = dict(data_keys)
        self._active_id = active_id
        self.blind_user = lru_cache(maxsize=_BLIND_CACHE)(self._blind_user)

    @property
    def active_id(self) -> int:
        return self._active_id

    @property
    def active_key(self) -> bytes:
        return self._data_keys[self._active_id]

    def data_key(self, key_id: int) -> bytes | None:
        return self._data_keys.get(key_id)

    def known_ids(self) -> set[int]:
        return set(self._data_keys)

    def install(self, key_id: int, key: bytes, *, active: bool) -> None:
        self._data_keys[key_id] = key
        if active:
            self._active_id = key_id

    def activate(self, key_id: int) -> None:
        """Seal with this known key from now on (another node made it active)."""
        if key_id in self._data_keys:
            self._active_id = key_id

    def forget(self, key_id: int) -> None:
        """A data key deleted from the store (no row uses it any more)."""
        if key_id != self._active_id:
            self._data_keys.pop(key_id, None)

    def _blind_user(self, user: str) -> str:
        return BLIND_PREFIX + self.blind(b"user", user.encode()).hex()

    def blind(self, label: bytes, value: bytes) -> bytes:
        """A keyed hash of `value` (BLAKE2b keyed with the index key, personalised with
        `label`, 16 bytes): equal values give equal hashes, so lookups work, and nothing about
        the value shows. (Keyed BLAKE2b is a PRF, and a third of HMAC-SHA-256's cost here.)"""
        hashed = self.keyed(label).copy()
        hashed.update(value)
        return hashed.digest()

    def keyed(self, label: bytes) -> hashlib.blake2b:
        """The keyed hash of `label` with nothing absorbed yet, to be copied, never updated:
        `blind(label, v)` is a copy of it that absorbs v. A caller that hashes many values
        with a common start keeps a copy that has absorbed the start (sealing.RingSealer's
        receipt tags). The key schedule is made once per label."""
        keyed = self._keyed.get(label)
        if keyed is None:
            keyed = hashlib.blake2b(key=self._index_key, person=label, digest_size=_BLIND_BYTES)
            self._keyed[label] = keyed
        return keyed

    def blind_nonce(self, nonce: bytes) -> bytes:
        """A replay nonce as the replay records keep it (`blind(b"nonce", nonce)`)."""
        hashed = self._nonce_keyed.copy()
        hashed.update(nonce)
        return hashed.digest()

    def seal_text(self, text: str) -> str:
        """`text` sealed under the index key (random nonce), as printable text: for the few
        stored values that are read back but never looked up (a bundle's requester)."""
        nonce = nacl.utils.random(_NONCE_BYTES)
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            text.encode(), _TEXT_CONTEXT, nonce, self._index_key
        )
        return _SEALED_TEXT_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open_text(self, sealed: str) -> str:
        """The text `seal_text` sealed; a value that was never sealed comes back as it is.
        Raises SealError."""
        if not sealed.startswith(_SEALED_TEXT_PREFIX):
            return sealed
        try:
            raw = base64.b64decode(sealed[len(_SEALED_TEXT_PREFIX) :], validate=True)
            return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                raw[_NONCE_BYTES:], _TEXT_CONTEXT, raw[:_NONCE_BYTES], self._index_key
            ).decode()
        except (ValueError, nacl.exceptions.CryptoError, UnicodeDecodeError) as exc:
            raise SealError("a sealed value does not open with the index key") from exc
