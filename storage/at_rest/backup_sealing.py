"""A key backup's blob sealed with a data key (XChaCha20-Poly1305), so a copy of the
database shows nothing of it, not even the client's own ciphertext. The associated data
binds the blinded user and the key id: a sealed blob copied to another user's row does not
open. A blob kept with key id 0 (stored while encryption at rest was off, before the
store's conversion sealed it) comes back as it is.

Sealed layout: 24-byte nonce + ciphertext.
"""

from __future__ import annotations

import logging
import struct
from typing import Final

import nacl.utils

from storage.at_rest.keyring import KeyRing
from storage.at_rest.sealing import CLEAR_KEY_ID
from storage.at_rest.xchacha import NONCE_BYTES, XChaCha20Poly1305

__all__ = ["open_backup", "seal_backup"]

_CONTEXT: Final = b"relay-backup-v1\x00"

log = logging.getLogger(__name__)


def seal_backup(ring: KeyRing, blinded_user: str, blob: bytes) -> tuple[int, bytes]:
    """(key id, sealed blob) under the ring's active data key."""
    key_id = ring.active_id
    nonce = nacl.utils.random(NONCE_BYTES)
    sealed = XChaCha20Poly1305().encrypt(
        ring.active_key, nonce, blob, _associated(blinded_user, key_id)
    )
    return key_id, nonce + sealed


def open_backup(ring: KeyRing, blinded_user: str, key_id: int, sealed: bytes) -> bytes | None:
    """The blob, or None (logged) when it does not open: a backup is never handed out
    half-read."""
    if key_id == CLEAR_KEY_ID:
        return sealed
    key = ring.data_key(key_id)
    if key is None:
        log.error("a key backup is sealed with data key %d, which is not at hand", key_id)
        return None
    try:
        return XChaCha20Poly1305().decrypt(
            key, sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _associated(blinded_user, key_id)
        )
    except (ValueError, TypeError):
        log.error("a key backup sealed with data key %d does not open", key_id)
        return None


def _associated(blinded_user: str, key_id: int) -> bytes:
    encoded = blinded_user.encode()
    return _CONTEXT + struct.pack(">IH", key_id, len(encoded)) + encoded
