"""`relay keys`: the data keys and master key of encryption at rest, from the command line.

* `status`: every key (data keys and the index key), its state, age and how many stored
  messages it seals, and the master key's fingerprint (never a key).
* `rotate-data`: a new active data key now. Serving nodes seal with it from their next key
  refresh (within a minute) or at once on SIGHUP; the old key keeps opening its rows and is
  deleted by the purge once none is left.
* `rotate-master --new-key-file PATH`: every key re-wrapped under the new master key in
  one transaction, rows untouched. Serving nodes keep the keys they hold; they read the new
  key file on SIGHUP (or at their next key refresh, or restart), so put the new key where
  --master-key-file points first, then rotate, then signal.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from relay.admin import AdminError, open_existing_store
from relay.config import Settings
from storage.at_rest.blinded import BlindedStore
from storage.at_rest.master_key import LocalKeyFile, MasterKeyError, read_key_file
from storage.at_rest.vault import KeyStatus
from storage.errors import StorageError

__all__ = ["KeysReport", "keys_status", "render_status", "rotate_data", "rotate_master"]


@dataclass(frozen=True, slots=True)
class KeysReport:
    master_key_id: str
    keys: list[KeyStatus]


async def _encrypted_store(settings: Settings) -> BlindedStore:
    store, _ = await open_existing_store(settings)
    if not isinstance(store, BlindedStore):
        await store.close()
        raise AdminError("encryption at rest is off for this store (at_rest_encryption)", code=2)
    return store


async def keys_status(settings: Settings) -> KeysReport:
    store = await _encrypted_store(settings)
    try:
        vault = await store.key_access.open()
        return KeysReport(vault.master_key_id, await vault.status())
    except StorageError as exc:
        raise AdminError(f"the store did not answer: {exc}") from None
    finally:
        await store.close()


async def rotate_data(settings: Settings) -> str:
    store = await _encrypted_store(settings)
    try:
        vault = await store.key_access.open()
        before = vault.ring.active_id
        after = await vault.rotate_data()
    except StorageError as exc:
        raise AdminError(f"the store did not answer: {exc}") from None
    finally:
        await store.close()
    return (
        f"data key {after} is active (was {before}); serving nodes seal with it from their"
        " next key refresh (within a minute) or at once on SIGHUP"
    )


async def rotate_master(settings: Settings, new_key_file: Path) -> str:
    try:
        new = LocalKeyFile(read_key_file(new_key_file))
    except MasterKeyError as exc:
        raise AdminError(str(exc), code=2) from None
    store = await _encrypted_store(settings)
    try:
        vault = await store.key_access.open()
        old = vault.master_key_id
        if new.key_id == old:
            raise AdminError(f"{new_key_file} holds the master key in use ({old})", code=2)
        count = await vault.rotate_master(new)
    except StorageError as exc:
        raise AdminError(f"the store did not answer: {exc}") from None
    except MasterKeyError as exc:
        raise AdminError(str(exc), code=2) from None
    finally:
        await store.close()
    return (
        f"re-wrapped {count} keys under master key {new.key_id} (was {old}); stored messages"
        " untouched. Every node must now read the new key: make its --master-key-file hold it"
        " and send SIGHUP (or restart). Keep the old key until then."
    )


def render_status(report: KeysReport, fmt: str, *, now_ms: int | None = None) -> str:
    if fmt == "json":
        import orjson

        body = {"master_key_id": report.master_key_id, "keys": [asdict(k) for k in report.keys]}
        return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode("utf-8")
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    lines = [f"master key {report.master_key_id}"]
    header = ("ID", "PURPOSE", "STATE", "AGE", "ROWS")
    rows = [
        (
            str(k.id),
            k.purpose,
            k.state,
            _age(now - k.created_ms),
            "-" if k.purpose != "data" else str(k.rows),
        )
        for k in report.keys
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _age(ms: int) -> str:
    seconds = max(0, ms) // 1000
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds} s"
