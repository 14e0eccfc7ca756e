"""The key backup's contents and their sealing, without I/O (docs/client.md, "Key backup").

A backup holds what a user needs to get an account back on a new device when every other
one is lost: the identity key pair of the device that saved it (so the new device can link
itself into the account, spec §3 link, in that device's name) and the contact list (each
contact's devices and the identity keys this user trusted). Never message history, never
sessions or pre-keys.

It is sealed with a key derived from a **recovery key**: 32 random bytes shown to the user
once as a 64-character code. Two keys come from it with HKDF-SHA256 (different `info`):

- the sealing key (XChaCha20-Poly1305; the associated data binds the user id, so a relay
  that hands out another user's blob is found out), and
- the access key pair (Ed25519), whose public half the relay keeps to authorise
  `backup.recover` before any device exists; the relay cannot go back from it to the
  recovery key.

No passphrase: a passphrase has little entropy, and whoever holds the sealed blob (the
relay, or a thief of its database) could guess it offline at any speed Argon2id allows.
A 256-bit random key cannot be guessed, so a stolen blob gives nothing.

Sealed layout: version byte 1 | 24-byte nonce | ciphertext of the padded JSON contents.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

from protocol.client.errors import BackupUnreadable
from protocol.crypto import primitives
from protocol.signatures import IdentityKeyPair, KeyScheme

__all__ = [
    "RECOVERY_CODE_CHARS",
    "BackupContents",
    "BackupUnreadable",
    "RecoveryKey",
    "open_backup",
    "seal_backup",
]

RECOVERY_KEY_BYTES: Final = 32
RECOVERY_CODE_CHARS: Final = 2 * RECOVERY_KEY_BYTES
_FORMAT: Final = 1
_SEAL_INFO: Final = b"relay-backup-seal-v1"
_ACCESS_INFO: Final = b"relay-backup-access-v1"
_AAD_CONTEXT: Final = b"relay-backup-v1\x00"
_PAD_TO: Final = 512  # contents are padded to a multiple: the size shows little of the list


@dataclass(frozen=True, slots=True)
class RecoveryKey:
    """32 random bytes; :attr:`code` is how the user writes it down (64 hex characters)."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != RECOVERY_KEY_BYTES:
            raise ValueError(f"a recovery key is {RECOVERY_KEY_BYTES} bytes")

    @classmethod
    def generate(cls) -> RecoveryKey:
        return cls(secrets.token_bytes(RECOVERY_KEY_BYTES))

    @classmethod
    def from_code(cls, code: str) -> RecoveryKey:
        """The key of a code as the user typed it: spaces and dashes are ignored, any case."""
        compact = "".join(c for c in code if c not in " -\t\n").lower()
        if len(compact) != RECOVERY_CODE_CHARS or any(c not in "0123456789abcdef" for c in compact):
            raise ValueError(f"a recovery code is {RECOVERY_CODE_CHARS} hexadecimal characters")
        return cls(bytes.fromhex(compact))

    @property
    def code(self) -> str:
        """The 64-character code to show the user once."""
        return self.key.hex()

    def grouped(self) -> str:
        """The code in 16 groups of 4, easier to copy by hand."""
        code = self.code
        return " ".join(code[i : i + 4] for i in range(0, len(code), 4))

    def sealing_key(self) -> bytes:
        return primitives.hkdf_sha256(self.key, salt=b"", info=_SEAL_INFO, length=32)

    def access_key_pair(self) -> IdentityKeyPair:
        seed = primitives.hkdf_sha256(self.key, salt=b"", info=_ACCESS_INFO, length=32)
        return IdentityKeyPair.from_private_bytes(KeyScheme.ED25519, seed)


@dataclass(frozen=True, slots=True)
class BackupContents:
    """What a backup restores. `contacts`: user -> device -> the identity key trusted."""

    user: str
    device: int  # the device that saved it: the restored device links in its name
    identity: IdentityKeyPair = field(repr=False)
    contacts: dict[str, dict[int, bytes]]
    saved_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "user": self.user,
            "device": self.device,
            "scheme": self.identity.scheme.value,
            "identity_private": _b(self.identity.private_bytes),
            "contacts": {
                user: {str(d): _b(key) for d, key in sorted(devices.items())}
                for user, devices in sorted(self.contacts.items())
            },
            "saved_ms": self.saved_ms,
        }

    @classmethod
    def from_json(cls, raw: Any) -> BackupContents:
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
            raise BackupUnreadable("not a backup of a format this client reads")
        try:
            identity = IdentityKeyPair.from_private_bytes(
                KeyScheme(raw["scheme"]), _unb(raw["identity_private"])
            )
            return cls(
                user=str(uuid.UUID(str(raw["user"]))),
                device=int(raw["device"]),
                identity=identity,
                contacts={
                    str(user): {int(d): _unb(key) for d, key in devices.items()}
                    for user, devices in raw["contacts"].items()
                },
                saved_ms=int(raw["saved_ms"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BackupUnreadable(f"the backup's contents are damaged: {exc!r}") from exc


def seal_backup(recovery_key: RecoveryKey, contents: BackupContents) -> bytes:
    """The blob `backup.put` sends."""
    plain = json.dumps(contents.to_json(), separators=(",", ":")).encode()
    # Padding: a 0x80 byte, then zeros to the next multiple of _PAD_TO (ISO/IEC 7816-4).
    padded = plain + b"\x80" + b"\x00" * (-(len(plain) + 1) % _PAD_TO)
    nonce = primitives.random_bytes(primitives.AEAD_NONCE_BYTES)
    sealed = primitives.aead_encrypt(
        recovery_key.sealing_key(), nonce, padded, _associated(contents.user)
    )
    return bytes([_FORMAT]) + nonce + sealed


def open_backup(recovery_key: RecoveryKey, user: str, blob: bytes) -> BackupContents:
    """The contents of `user`'s blob; raises BackupUnreadable."""
    header = 1 + primitives.AEAD_NONCE_BYTES
    if len(blob) < header or blob[0] != _FORMAT:
        raise BackupUnreadable("not a backup of a format this client reads")
    try:
        padded = primitives.aead_decrypt(
            recovery_key.sealing_key(), blob[1:header], blob[header:], _associated(user)
        )
    except ValueError as exc:
        raise BackupUnreadable("the backup does not open with this recovery key") from exc
    end = padded.rstrip(b"\x00")
    if not end.endswith(b"\x80"):
        raise BackupUnreadable("the backup's padding is damaged")
    try:
        raw = json.loads(end[:-1])
    except ValueError as exc:
        raise BackupUnreadable("the backup's contents are damaged") from exc
    contents = BackupContents.from_json(raw)
    if contents.user != user:
        raise BackupUnreadable("the backup names another user")
    return contents


def _associated(user: str) -> bytes:
    return _AAD_CONTEXT + uuid.UUID(user).bytes


def _b(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("a byte string in the backup is not text")
    return base64.b64decode(text, validate=True)
