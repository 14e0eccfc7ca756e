"""Users and their devices in SQLite (the DeviceDirectory interface).

Every method is one job on the database's single writer thread, so each check-then-insert
below (identity key free? device number next?) cannot interleave with another job.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from storage.embedded.database import SqliteDatabase
from storage.errors import (
    DeviceLimitReached,
    DeviceNumbersExhausted,
    IdentityKeyInUse,
    IdentityKeyRetired,
    UnknownUser,
)
from storage.records import MAX_DEVICE_NUMBER, DeviceRecord, NewDevice

_DEVICE_COLUMNS = (
    "user, device, identity_key, key_scheme, registration_id, created_ms, last_seen_ms"
)


class SqliteDeviceDirectory:
    def __init__(self, db: SqliteDatabase, *, now_ms: Callable[[], int]) -> None:
        self._db = db
        self._now_ms = now_ms  # only for the removal time, which is kept for the record

    async def create_user(self, user: str, device: NewDevice) -> DeviceRecord:
        def job(conn: sqlite3.Connection) -> DeviceRecord:
            _check_identity_free(conn, device.identity_x25519)
            conn.execute(
                "INSERT INTO users (user, created_ms) VALUES (?, ?)", (user, device.created_ms)
            )
            return _insert_device(conn, user, 1, device)

        return await self._db.run(job)

    async def add_device(self, user: str, device: NewDevice, *, max_devices: int) -> DeviceRecord:
        def job(conn: sqlite3.Connection) -> DeviceRecord:
            if conn.execute("SELECT 1 FROM users WHERE user = ?", (user,)).fetchone() is None:
                raise UnknownUser(user)
            # Removed devices keep their rows, so MAX(device) is the highest number ever
            # assigned: numbers are never reused. One job, so no concurrent add can take
            # the same number (the primary key would refuse it anyway).
            active, highest = conn.execute(
                "SELECT COUNT(*) FILTER (WHERE removed_ms IS NULL), COALESCE(MAX(device), 0)"
                " FROM devices WHERE user = ?",
                (user,),
            ).fetchone()
            if active >= max_devices:
                raise DeviceLimitReached(f"{user} has {active} active devices")
            if highest >= MAX_DEVICE_NUMBER:
                raise DeviceNumbersExhausted(user)
            _check_identity_free(conn, device.identity_x25519)
            return _insert_device(conn, user, highest + 1, device)

        return await self._db.run(job)

    async def get_device(self, user: str, device: int) -> DeviceRecord | None:
        def job(conn: sqlite3.Connection) -> DeviceRecord | None:
            row = conn.execute(
                f"SELECT {_DEVICE_COLUMNS} FROM devices"
                " WHERE user = ? AND device = ? AND removed_ms IS NULL",
                (user, device),
            ).fetchone()
            return None if row is None else _record(row)

        return await self._db.run(job)

    async def list_devices(self, user: str) -> list[DeviceRecord] | None:
        def job(conn: sqlite3.Connection) -> list[DeviceRecord] | None:
            if conn.execute("SELECT 1 FROM users WHERE user = ?", (user,)).fetchone() is None:
                return None
            rows = conn.execute(
                f"SELECT {_DEVICE_COLUMNS} FROM devices"
                " WHERE user = ? AND removed_ms IS NULL ORDER BY device",
                (user,),
            ).fetchall()
            return [_record(row) for row in rows]

        return await self._db.run(job)

    async def remove_device(self, user: str, device: int) -> bool:
        now_ms = self._now_ms()

        def job(conn: sqlite3.Connection) -> bool:
            # Marking the row removed retires its identity key for good (the key stays in
            # the row). Keys and messages go in the same job, hence the same transaction:
            # nobody sees a removed device that still has keys or messages.
            removed = conn.execute(
                "UPDATE devices SET removed_ms = ?"
                " WHERE user = ? AND device = ? AND removed_ms IS NULL",
                (now_ms, user, device),
            ).rowcount
            if removed == 0:
                return False
            for table in (
                "signed_prekeys",
                "pq_last_resort_keys",
                "one_time_prekeys",
                "one_time_pq_prekeys",
            ):
                conn.execute(f"DELETE FROM {table} WHERE user = ? AND device = ?", (user, device))
            conn.execute(
                "DELETE FROM messages WHERE recipient_user = ? AND recipient_device = ?",
                (user, device),
            )
            return True

        return await self._db.run(job)

    async def touch(self, user: str, device: int, now_ms: int) -> None:
        def job(conn: sqlite3.Connection) -> None:
            # MAX: two connections of one device may report out of order; never go back.
            conn.execute(
                "UPDATE devices SET last_seen_ms = MAX(last_seen_ms, ?)"
                " WHERE user = ? AND device = ? AND removed_ms IS NULL",
                (now_ms, user, device),
            )

        await self._db.run(job)


def _check_identity_free(conn: sqlite3.Connection, identity_x25519: bytes) -> None:
    """Retired first: a removed device's key may never come back, whoever asks."""
    rows = conn.execute(
        "SELECT removed_ms IS NOT NULL FROM devices WHERE identity_x25519 = ?",
        (identity_x25519,),
    ).fetchall()
    if any(retired for (retired,) in rows):
        raise IdentityKeyRetired("the identity key belonged to a removed device")
    if rows:
        raise IdentityKeyInUse("the identity key belongs to an active device")


def _insert_device(
    conn: sqlite3.Connection, user: str, number: int, device: NewDevice
) -> DeviceRecord:
    conn.execute(
        "INSERT INTO devices (user, device, identity_key, key_scheme, identity_x25519,"
        " registration_id, created_ms, last_seen_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            user,
            number,
            device.identity_key,
            device.key_scheme,
            device.identity_x25519,
            device.registration_id,
            device.created_ms,
            device.created_ms,
        ),
    )
    return DeviceRecord(
        user=user,
        device=number,
        identity_key=device.identity_key,
        key_scheme=device.key_scheme,
        registration_id=device.registration_id,
        created_ms=device.created_ms,
        last_seen_ms=device.created_ms,
    )


def _record(row: tuple[Any, ...]) -> DeviceRecord:
    user, device, identity_key, key_scheme, registration_id, created_ms, last_seen_ms = row
    return DeviceRecord(
        user=str(user),
        device=int(device),
        identity_key=bytes(identity_key),
        key_scheme=str(key_scheme),
        registration_id=int(registration_id),
        created_ms=int(created_ms),
        last_seen_ms=int(last_seen_ms),
    )
