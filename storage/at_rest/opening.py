"""Opening a store with encryption at rest: the master key, the vault, the sealer, the
conversion of clear data, and the blinded view the relay then uses.

Decisions (docs/security.md, "Data at rest"):
* Encryption is on by default. The embedded store makes its master key on first start
  (`DATA_DIR/master.key`, mode 0600) unless a key file is given; a production node needs
  `--master-key-file` (the same key on every node).
* A store whose keys the given master key does not open, a missing key file for a store
  that has keys, a store made with encryption that is opened without it: refused before
  serving (AtRestError, exit 2).
* Clear data (a store from before schema version 5, or one run without encryption) is
  converted where it is safe to: the embedded store at open (one process owns it); the
  production store by `relay migrate` (or `serve --migrate`), since nodes of the old release
  may still be writing clear ids. A production node refuses a store that is not converted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from storage.at_rest.backup_sealing import seal_backup
from storage.at_rest.blinded import AtRestCapable, AtRestRefusal, BlindedStore, KeyAccess
from storage.at_rest.master_key import (
    KeyWrapper,
    LocalKeyFile,
    MasterKeyError,
    create_key_file,
    read_key_file,
)
from storage.at_rest.sealing import RingSealer
from storage.at_rest.vault import DataKeyVault
from storage.errors import Unavailable
from storage.interfaces import ClearData, DataKeyTable, Store

__all__ = [
    "DEFAULT_KEY_FILE",
    "SEAL_BATCH",
    "AtRestError",
    "AtRestSettings",
    "ConversionReport",
    "convert_clear_data",
    "open_at_rest",
    "open_vault",
]

DEFAULT_KEY_FILE: Final = "master.key"
SEAL_BATCH: Final = 1000  # clear messages sealed per transaction by the conversion

log = logging.getLogger(__name__)


class AtRestError(Exception):
    """The store cannot be opened as configured; one line for the operator (exit 2)."""


@dataclass(frozen=True, slots=True)
class AtRestSettings:
    enabled: bool
    master_key_file: Path | None
    rotation_s: float
    # The embedded store's own key file, made on first start when no key file is given.
    default_key_file: Path | None = None
    # Clear data may be converted here (the embedded store's open, `relay migrate`).
    convert: bool = False


@dataclass(frozen=True, slots=True)
class ConversionReport:
    users: int
    messages: int


async def open_at_rest(
    store: AtRestCapable,
    settings: AtRestSettings,
    *,
    on_undecryptable: Callable[[str], None] | None = None,
    may_wait: bool = False,
) -> Store:
    """The store the relay uses: `store` itself without encryption, else its blinded view
    with a sealer installed. Raises AtRestError.

    `may_wait` (a production node): when the store does not answer now, the node starts
    anyway and opens the keys when it does (until then the store answers unavailable), as
    it starts while PostgreSQL is down without encryption."""
    if not settings.enabled:
        try:
            state = await store.clear_data.user_ids_state()
        except Unavailable:
            if not may_wait:
                raise
            log.warning("store unavailable: not checked whether it is encrypted at rest")
            return store
        if state == "blinded":
            raise AtRestError(
                "this store is encrypted at rest; it cannot be opened with at_rest_encryption"
                " off (give the master key with --master-key-file)"
            )
        return store
    try:
        wrapper = await _master_key(store.data_keys, settings)
    except MasterKeyError as exc:
        raise AtRestError(str(exc)) from None

    async def opener() -> DataKeyVault:
        return await _open_keys(store, wrapper, settings, on_undecryptable)

    try:
        vault = await opener()
    except AtRestRefusal as exc:
        raise AtRestError(str(exc)) from None
    except Unavailable as exc:
        if not may_wait:
            raise
        log.warning("keys of encryption at rest not loaded (store unavailable: %s)", exc)
        return BlindedStore(store, KeyAccess(opener))
    return BlindedStore(store, KeyAccess(opener, vault))


async def _open_keys(
    store: AtRestCapable,
    wrapper: KeyWrapper,
    settings: AtRestSettings,
    on_undecryptable: Callable[[str], None] | None,
) -> DataKeyVault:
    """The vault, the sealer installed, clear data converted where allowed. Raises
    AtRestRefusal (cannot serve as configured) or Unavailable."""
    state = await store.clear_data.user_ids_state()
    try:
        vault = await DataKeyVault.open(
            store.data_keys, wrapper, rotation_ms=round(settings.rotation_s * 1000)
        )
    except MasterKeyError as exc:
        raise AtRestRefusal(str(exc)) from None
    sealer = RingSealer(vault.ring, load_keys=vault.load, on_undecryptable=on_undecryptable)
    store.use_sealer(sealer)
    if state == "clear" and not settings.convert:
        raise AtRestRefusal(
            "this store holds user ids in the clear (made before encryption at rest, or run"
            " without it): run `relay migrate` with the master key to encrypt it"
        )
    if state != "blinded" or (settings.convert and await store.clear_data.clear_messages()):
        report = await convert_clear_data(store.clear_data, vault, sealer)
        if report.users or report.messages:
            log.info(
                "encrypted the store at rest: %d users blinded, %d stored messages sealed",
                report.users,
                report.messages,
            )
    return vault


async def open_vault(data_keys: DataKeyTable, settings: AtRestSettings) -> DataKeyVault:
    """The vault of a store's `data_keys` under the configured master key (creating the
    first keys of a new store). Raises AtRestError."""
    rotation_ms = round(settings.rotation_s * 1000)
    try:
        wrapper = await _master_key(data_keys, settings)
        return await DataKeyVault.open(data_keys, wrapper, rotation_ms=rotation_ms)
    except MasterKeyError as exc:
        raise AtRestError(str(exc)) from None


async def convert_clear_data(
    clear: ClearData, vault: DataKeyVault, sealer: RingSealer
) -> ConversionReport:
    """Blind every user id (one transaction), seal the key backups' blobs (one transaction),
    then seal the clear stored messages in batches; safe to run again after an
    interruption."""
    ring = vault.ring
    users = await clear.blind_user_ids(ring.blind_user, ring.blind_nonce, ring.seal_text)
    await clear.seal_clear_backups(lambda user, blob: seal_backup(ring, user, blob))
    sealed = 0
    while batch := await clear.seal_clear_messages(sealer, limit=SEAL_BATCH):
        sealed += batch
    return ConversionReport(users=users, messages=sealed)


async def _master_key(data_keys: DataKeyTable, settings: AtRestSettings) -> KeyWrapper:
    if settings.master_key_file is not None:
        return LocalKeyFile(read_key_file(settings.master_key_file))
    path = settings.default_key_file
    if path is None:
        raise MasterKeyError(
            "production mode encrypts stored data at rest: give every node the same"
            " --master-key-file (or set at_rest_encryption = false)"
        )
    if path.exists():
        return LocalKeyFile(read_key_file(path))
    if await data_keys.wrapped_keys():
        raise MasterKeyError(
            f"master key file {path} does not exist, and this store's keys need it"
        )
    log.info("created master key file %s (mode 0600): back it up apart from the data", path)
    return LocalKeyFile(create_key_file(path))
