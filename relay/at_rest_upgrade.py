"""The data step of `relay migrate`: a production store holding clear data (made before
schema version 5, or run without encryption at rest) is encrypted, with the master key
given, before the nodes of the new release serve it (docs/security.md, "Upgrading a store
made without encryption at rest"). `relay migrate --check` reports it as pending."""

from __future__ import annotations

import time

from relay.config import Settings
from storage.at_rest.opening import AtRestSettings, convert_clear_data, open_vault
from storage.at_rest.sealing import RingSealer
from storage.postgres import Database
from storage.postgres.clear_data import PostgresClearData
from storage.postgres.data_keys import PostgresDataKeyTable

__all__ = ["encrypt_clear_data", "pending_encryption"]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def pending_encryption(database_url: str) -> str | None:
    """What is still in the clear, in words; None when nothing is."""
    db = await Database.open(database_url)
    try:
        return await _pending(PostgresClearData(db, now_ms=_wall_ms))
    finally:
        await db.close()


async def _pending(clear: PostgresClearData) -> str | None:
    parts = []
    if await clear.user_ids_state() == "clear":
        parts.append("user ids in the clear")
    messages = await clear.clear_messages()
    if messages:
        parts.append(f"{messages} stored messages in the clear")
    return None if not parts else " and ".join(parts)


async def encrypt_clear_data(database_url: str, settings: Settings) -> str | None:
    """Hash the user ids and seal the clear stored messages; a line saying what was done, or
    None when there was nothing to do. Raises AtRestError (no or a wrong master key)."""
    db = await Database.open(database_url)
    try:
        clear = PostgresClearData(db, now_ms=_wall_ms)
        if await _pending(clear) is None:
            return None
        vault = await open_vault(
            PostgresDataKeyTable(db),
            AtRestSettings(
                enabled=True,
                master_key_file=settings.master_key_file,
                rotation_s=settings.data_key_rotation,
            ),
        )
        report = await convert_clear_data(
            clear, vault, RingSealer(vault.ring, load_keys=vault.load)
        )
    finally:
        await db.close()
    return (
        f"encrypted at rest: {report.users} users' ids hashed,"
        f" {report.messages} stored messages sealed"
    )
