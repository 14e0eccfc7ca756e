"""The master key: 32 random bytes in a file, wrapping every data key (XChaCha20-Poly1305).

`KeyWrapper` is the whole contract a key-wrapping service must meet, so a cloud KMS
(AWS KMS Encrypt/Decrypt, GCP KMS, Vault transit) is one more implementation of it: the
stores only ever see `key_id` and the wrapped bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path
from typing import Final, Protocol

import nacl.bindings
import nacl.exceptions
import nacl.utils

__all__ = [
    "KEY_BYTES",
    "KeyWrapper",
    "LocalKeyFile",
    "MasterKeyError",
    "create_key_file",
    "fingerprint",
    "read_key_file",
]

KEY_BYTES: Final = 32
_NONCE_BYTES: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_WRAP_CONTEXT: Final = b"relay-data-key-v1\x00"
_MAX_FILE_BYTES: Final = 256  # a key file is 32 raw bytes or 64 hex / 44 base64 characters


class MasterKeyError(Exception):
    """The master key is missing, unreadable, malformed or not the one the store needs.
    The message is one line for the operator."""


class KeyWrapper(Protocol):
    """Wraps and unwraps data keys. `key_id` names the master key (never derived so that it
    reveals anything about it); `context` is bound to the wrapped key (its id and purpose),
    so a wrapped key cannot be moved to another row."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, key: bytes, *, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        """Raises MasterKeyError when `wrapped` was not made by this master key for `context`."""
        ...


def fingerprint(key: bytes) -> str:
    """A public name for a master key: 16 hex digits of a keyed BLAKE2b of a fixed label.
    It identifies the key without helping to guess it."""
    return hashlib.blake2b(b"relay master key fingerprint", key=key, digest_size=8).hexdigest()


class LocalKeyFile:
    """A master key held in this process, read from a key file."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise MasterKeyError(f"a master key is {KEY_BYTES} bytes, not {len(key)}")
        self._key = key
        self._key_id = fingerprint(key)

    @classmethod
    def from_file(cls, path: Path) -> LocalKeyFile:
        return cls(read_key_file(path))

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, key: bytes, *, context: bytes) -> bytes:
        nonce = nacl.utils.random(_NONCE_BYTES)
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            key, _WRAP_CONTEXT + context, nonce, self._key
        )
        return nonce + sealed

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        try:
            return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                wrapped[_NONCE_BYTES:], _WRAP_CONTEXT + context, wrapped[:_NONCE_BYTES], self._key
            )
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise MasterKeyError(
                f"a data key does not open with master key {self._key_id}"
            ) from exc


def read_key_file(path: Path) -> bytes:
    """The 32-byte key in `path`: raw bytes, or 64 hex digits, or base64 (a trailing newline
    is fine). Raises MasterKeyError with one line."""
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise MasterKeyError(f"master key file {path} does not exist") from None
    except OSError as exc:
        raise MasterKeyError(f"cannot read master key file {path}: {exc.strerror}") from None
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_BYTES:
        return decoded
    raise MasterKeyError(
        f"master key file {path} holds no {KEY_BYTES}-byte key"
        f" (raw bytes, {2 * KEY_BYTES} hex digits or base64)"
    )


def create_key_file(path: Path) -> bytes:
    """Write a new random key to `path` (64 hex digits, mode 0600), refusing to replace a
    file. The new key."""
    key = nacl.utils.random(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    except FileExistsError:
        raise MasterKeyError(f"{path} exists already; not replacing a key file") from None
    except OSError as exc:
        raise MasterKeyError(f"cannot create master key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key
