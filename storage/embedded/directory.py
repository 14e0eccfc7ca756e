"""Users and their devices in SQLite (the DeviceDirectory interface).

Every write is one job on the database's single writer thread, so each check-then-insert
below (identity key free? device number next?) cannot interleave with another job. Reads
are answered from `DeviceCache` (committed state in memory; a miss is one read on the
reader connection), so a send's device check never waits for a commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from storage.audit_events import ADD_DEVICE, IDENTITY_KEY_RETIRED, REGISTER, REMOVE_DEVICE
from storage.embedded.audit import record_event
from storage.embedded.database import SqliteDatabase
from storage.embedded.device_cache import DeviceCache, Devices
from storage.embedded.reader import SqliteReader
from storage.errors import (
    DeviceLimitReached,
    DeviceNumbersExhausted,
    IdentityKeyInUse,
    IdentityKeyRetired,
    UnknownUser,
)
from storage.records import MAX_DEVICE_NUMBER, DeviceRecord, NewDevice

T = TypeVar("T")

_DEVICE_COLUMNS = (
    "user, device, identity_key, key_scheme, registration_id, created_ms, last_seen_ms"
)


class SqliteDeviceDirectory:
    def __init__(
        self, db: SqliteDatabase, reader: SqliteReader, *, now_ms: Callable[[], int]
    ) -> None:
        self._db = db
        self._reader = reader
        self._now_ms = now_ms  # dates removals and audit events, which are kept for the record
        self._cache = DeviceCache(self._load)

    def _write(self, user: str, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """A job that changes the user's devices: the cached entry goes when it settles."""
        return self._db.run(job, settled=lambda committed: self._cache.changed(user))

    def _load(self, user: str) -> Devices:
        def job(conn: sqlite3.Connection) -> Devices:
            if conn.execute("SELECT 1 FROM users WHERE user = ?", (user,)).fetchone() is None:
                return None
            rows = conn.execute(
                f"SELECT {_DEVICE_COLUMNS} FROM devices"
                " WHERE user = ? AND removed_ms IS NULL ORDER BY device",
                (user,),
            ).fetchall()
            return tuple(_record(row) for row in rows)

        return self._reader.read(job)

    async def create_user(self, user: str, device: NewDevice) -> DeviceRecord:
        now_ms = self._now_ms()

        def job(conn: sqlite3.Connection) -> DeviceRecord:
            _check_identity_free(conn, device.identity_x25519)
            conn.execute(
                "INSERT INTO users (user, created_ms) VALUES (?, ?)", (user, device.created_ms)
            )
            record = _insert_device(conn, user, 1, device)
            record_event(conn, user, 1, REGISTER, {}, at_ms=now_ms)
            return record

        return await self._write(user, job)

    async def add_device(self, user: str, device: NewDevice, *, max_devices: int) -> DeviceRecord:
        now_ms = self._now_ms()

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
            record = _insert_device(conn, user, highest + 1, device)
            record_event(conn, user, highest + 1, ADD_DEVICE, {}, at_ms=now_ms)
            return record

        return await self._write(user, job)

    def forget_cached(self) -> None:
        """Drop every cached user (their ids changed under the cache: ClearData)."""
        self._cache.clear()

    async def get_device(self, user: str, device: int) -> DeviceRecord | None:
        for record in self._cache.devices(user) or ():
            if record.device == device:
                return record
        return None

    async def list_devices(self, user: str) -> list[DeviceRecord] | None:
        devices = self._cache.devices(user)
        return None if devices is None else list(devices)

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
            record_event(conn, user, device, REMOVE_DEVICE, {}, at_ms=now_ms)
            record_event(conn, user, device, IDENTITY_KEY_RETIRED, {}, at_ms=now_ms)
            return True

        return await self._write(user, job)

    async def touch(self, user: str, device: int, now_ms: int) -> None:
        def job(conn: sqlite3.Connection) -> None:
            # MAX: two connections of one device may report out of order; never go back.
            conn.execute(
                "UPDATE devices SET last_seen_ms = MAX(last_seen_ms, ?)"
                " WHERE user = ? AND device = ? AND removed_ms IS NULL",
                (now_ms, user, device),
            )

        def settled(committed: bool) -> None:
            if committed:
                self._cache.seen(user, device, now_ms)
            else:
                self._cache.changed(user)

        await self._db.run(job, settled=settled)


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
