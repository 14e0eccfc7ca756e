"""The client's local store: named records in one directory, encrypted at rest.

A device's identity and pre-key private keys, its sessions and its pending
messages must not be readable from a copied disk. Every record is sealed with
XChaCha20-Poly1305 under a key derived from a passphrase with Argon2id; the
record's name is the associated data, so records cannot be swapped for one
another. File names are keyed hashes of the record names, so the directory
listing does not show who the device talks to.

Layout of the directory:

    store.json     salt and Argon2id limits (not secret), format version
    store.lock     held with flock while a process has the store open
    check.rec      a sealed known value: opening it tells a wrong passphrase
    <hash>.rec     one sealed record each, replaced atomically

Writes go to a temporary file that is fsynced, renamed over the old one, and
the directory is fsynced: a crash leaves the old record or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import nacl.bindings as sodium
import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.utils

from protocol.client.errors import StoreError, StoreLocked, WrongPassphrase

__all__ = ["KdfLimits", "LocalStore"]

_FORMAT = 1
_META = "store.json"
_LOCK = "store.lock"
_CHECK_RECORD = "store-check"
_NONCE_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_KEY_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_KEYBYTES
# A record larger than this is not one we wrote (bounds what a damaged store can make us read).
MAX_RECORD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class KdfLimits:
    """Argon2id cost. The default is libsodium's "interactive" level."""

    opslimit: int = argon2id.OPSLIMIT_INTERACTIVE
    memlimit: int = argon2id.MEMLIMIT_INTERACTIVE

    @classmethod
    def minimal(cls) -> KdfLimits:
        """The cheapest limits libsodium allows: for tests only."""
        return cls(argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN)

    @classmethod
    def moderate(cls) -> KdfLimits:
        return cls(argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE)


class LocalStore:
    """Sealed records by name. Open with :meth:`create` or :meth:`open`; close when done."""

    def __init__(self, directory: Path, key: bytes, lock: IO[bytes]) -> None:
        self.directory = directory
        self._key = key
        self._name_key = hashlib.blake2b(key, digest_size=32, person=b"relay-store-name").digest()
        self._lock: IO[bytes] | None = lock

    # --- opening -------------------------------------------------------------

    @staticmethod
    def exists(directory: Path | str) -> bool:
        return (Path(directory) / _META).is_file()

    @classmethod
    def create(
        cls, directory: Path | str, passphrase: str, *, limits: KdfLimits | None = None
    ) -> LocalStore:
        """A new, empty store; refuses a directory that already holds one."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = _take_lock(path)
        try:
            if cls.exists(path):
                raise StoreError(f"{path} already holds a store")
            limits = limits or KdfLimits()
            salt = nacl.utils.random(argon2id.SALTBYTES)
            meta = {
                "format": _FORMAT,
                "kdf": "argon2id",
                "salt": salt.hex(),
                "opslimit": limits.opslimit,
                "memlimit": limits.memlimit,
            }
            key = _derive(passphrase, salt, limits)
            store = cls(path, key, lock)
            store.write(_CHECK_RECORD, b"relay-client-store")
            _atomic_write(path / _META, json.dumps(meta, indent=1).encode())
            return store
        except BaseException:
            lock.close()
            raise

    @classmethod
    def open(cls, directory: Path | str, passphrase: str) -> LocalStore:
        """An existing store; :class:`WrongPassphrase` when the passphrase does not open it."""
        path = Path(directory)
        if not cls.exists(path):
            raise StoreError(f"no store in {path}")
        lock = _take_lock(path)
        try:
            try:
                meta = json.loads((path / _META).read_text(encoding="utf-8"))
                if meta.get("format") != _FORMAT or meta.get("kdf") != "argon2id":
                    raise StoreError(f"{path}: unknown store format")
                salt = bytes.fromhex(meta["salt"])
                limits = KdfLimits(int(meta["opslimit"]), int(meta["memlimit"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"{path}/{_META} is damaged") from exc
            store = cls(path, _derive(passphrase, salt, limits), lock)
            if store.read(_CHECK_RECORD) is None:
                raise StoreError(f"{path} is damaged: its check record is missing")
            return store
        except BaseException:
            lock.close()
            raise

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- records -------------------------------------------------------------

    def _file(self, name: str) -> Path:
        if name == _CHECK_RECORD:
            return self.directory / "check.rec"  # found without the key: tells a wrong passphrase
        digest = hashlib.blake2b(name.encode(), digest_size=20, key=self._name_key).hexdigest()
        return self.directory / f"{digest}.rec"

    def read(self, name: str) -> bytes | None:
        """The record's bytes, or None when it was never written (or was deleted)."""
        self._check_open()
        path = self._file(name)
        try:
            if path.stat().st_size > MAX_RECORD_BYTES:
                raise StoreError(f"record {name!r} is larger than any record we write")
            sealed = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(sealed) < _NONCE_BYTES:
            raise StoreError(f"record {name!r} is truncated")
        nonce, box = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        try:
            plain: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                box, name.encode(), nonce, self._key
            )
        except nacl.exceptions.CryptoError:
            if name == _CHECK_RECORD:
                raise WrongPassphrase("the passphrase does not open this store") from None
            raise StoreError(f"record {name!r} does not authenticate") from None
        return plain

    def write(self, name: str, data: bytes) -> None:
        """Seal and replace the record atomically."""
        self._check_open()
        nonce = nacl.utils.random(_NONCE_BYTES)
        box = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            bytes(data), name.encode(), nonce, self._key
        )
        _atomic_write(self._file(name), nonce + box)

    def delete(self, name: str) -> None:
        self._check_open()
        with contextlib.suppress(FileNotFoundError):
            self._file(name).unlink()
            _fsync_dir(self.directory)

    def _check_open(self) -> None:
        if self._lock is None:
            raise StoreError("the store is closed")


def _derive(passphrase: str, salt: bytes, limits: KdfLimits) -> bytes:
    if not passphrase:
        raise StoreError("the passphrase is empty")
    key: bytes = argon2id.kdf(
        _KEY_BYTES,
        passphrase.encode("utf-8"),
        salt,
        opslimit=limits.opslimit,
        memlimit=limits.memlimit,
    )
    return key


def _take_lock(directory: Path) -> IO[bytes]:
    """One process at a time: two writers would lose each other's session updates."""
    handle = open(directory / _LOCK, "a+b")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreLocked(f"{directory} is open in another process") from None
    return handle


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
