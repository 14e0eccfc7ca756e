"""The byte strings that identity keys sign (spec §2).

Each payload starts with a context string and a zero byte, so a signature made
for one purpose can never be replayed for another. ``user`` is the 16 raw bytes
of the account's UUID and ``device`` is 4 bytes big-endian, so every field has
a fixed width and no two payloads of one kind share their bytes.

Signed pre-keys and PQ (Kyber) pre-keys are signed over the uploaded public
key bytes exactly as sent, libsignal's convention, so they need no builder.
"""

from __future__ import annotations

import uuid
from typing import Final

__all__ = [
    "AUTH_CONTEXT",
    "BACKUP_RECOVER_CONTEXT",
    "LINK_CONTEXT",
    "REGISTER_CONTEXT",
    "auth_payload",
    "backup_recover_payload",
    "link_payload",
    "register_payload",
]

REGISTER_CONTEXT: Final = b"relay-register-v1\x00"
LINK_CONTEXT: Final = b"relay-link-v1\x00"
AUTH_CONTEXT: Final = b"relay-auth-v1\x00"
BACKUP_RECOVER_CONTEXT: Final = b"relay-backup-recover-v1\x00"


def register_payload(challenge: bytes, identity_key: bytes) -> bytes:
    """What a new account's (or newly linked device's) key signs to prove it holds the key."""
    return REGISTER_CONTEXT + bytes(challenge) + bytes(identity_key)


def link_payload(user: str, new_identity_key: bytes) -> bytes:
    """What an existing device signs to admit ``new_identity_key`` to account ``user``."""
    return LINK_CONTEXT + uuid.UUID(user).bytes + bytes(new_identity_key)


def auth_payload(challenge: bytes, user: str, device: int) -> bytes:
    """What a device signs to authenticate a connection as ``(user, device)``.

    Raises ``ValueError`` for a malformed UUID, and ``OverflowError`` for a device
    number that does not fit in 4 unsigned bytes.
    """
    return AUTH_CONTEXT + bytes(challenge) + uuid.UUID(user).bytes + device.to_bytes(4, "big")


def backup_recover_payload(challenge: bytes, access_key: bytes) -> bytes:
    """What a backup's access key signs to read the backup before any device exists
    (`backup.recover`, the key-backup extension of docs/protocol.md)."""
    return BACKUP_RECOVER_CONTEXT + bytes(challenge) + bytes(access_key)
