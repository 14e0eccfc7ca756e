"""Key backups in SQLite (the BackupStore interface).

Each call is one job on the database's single writer thread: a put's version check and its
write run with no other job in between, so two puts naming the same version cannot both
succeed. A deleted backup keeps its row without blob and access key, so the next version
still counts on from the last one.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from storage.audit_events import BACKUP_DELETE, BACKUP_GET, BACKUP_PUT, Detail
from storage.embedded.audit import record_event
from storage.embedded.database import SqliteDatabase
from storage.errors import BackupAccessKeyTaken, BackupVersionConflict, NoBackup
from storage.records import Backup, NewBackup

_COLUMNS = "owner, version, blob, updated_ms, key_id"


class SqliteBackupStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def put(
        self, user: str, device: int, backup: NewBackup, *, expected_version: int, now_ms: int
    ) -> int:
        def job(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT version, blob IS NOT NULL FROM backups WHERE user = ?", (user,)
            ).fetchone()
            last, live = (int(row[0]), bool(row[1])) if row is not None else (0, False)
            current = last if live else 0
            if expected_version != current:
                raise BackupVersionConflict(current)
            holder = conn.execute(
                "SELECT user FROM backups WHERE access_key = ?", (backup.access_key,)
            ).fetchone()
            if holder is not None and holder[0] != user:
                raise BackupAccessKeyTaken("another user's backup has this access key")
            version = last + 1
            conn.execute(
                "INSERT INTO backups (user, owner, version, access_key, key_id, blob, updated_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user) DO UPDATE SET"
                " owner = excluded.owner, version = excluded.version,"
                " access_key = excluded.access_key, key_id = excluded.key_id,"
                " blob = excluded.blob, updated_ms = excluded.updated_ms",
                (
                    user,
                    backup.owner if backup.owner is not None else user,
                    version,
                    backup.access_key,
                    backup.key_id,
                    backup.blob,
                    now_ms,
                ),
            )
            record_event(conn, user, device, BACKUP_PUT, {"version": version}, at_ms=now_ms)
            return version

        return await self._db.run(job)

    async def get(self, user: str) -> Backup | None:
        def job(conn: sqlite3.Connection) -> Backup | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM backups WHERE user = ? AND blob IS NOT NULL", (user,)
            ).fetchone()
            return None if row is None else _backup(row)

        return await self._db.run(job)

    async def find(self, access_key: bytes) -> Backup | None:
        def job(conn: sqlite3.Connection) -> Backup | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM backups WHERE access_key = ?", (access_key,)
            ).fetchone()
            return None if row is None else _backup(row)

        return await self._db.run(job)

    async def record_read(
        self, user: str, device: int, version: int, *, via: str, now_ms: int
    ) -> None:
        def job(conn: sqlite3.Connection) -> None:
            detail: Detail = {"version": version, "via": via}
            record_event(conn, user, device, BACKUP_GET, detail, at_ms=now_ms)

        await self._db.run(job)

    async def delete(self, user: str, device: int, *, expected_version: int, now_ms: int) -> None:
        def job(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT version FROM backups WHERE user = ? AND blob IS NOT NULL", (user,)
            ).fetchone()
            if row is None:
                raise NoBackup("no backup")
            if int(row[0]) != expected_version:
                raise BackupVersionConflict(int(row[0]))
            conn.execute(
                "UPDATE backups SET blob = NULL, access_key = NULL, key_id = 0, updated_ms = ?"
                " WHERE user = ?",
                (now_ms, user),
            )
            detail: Detail = {"version": expected_version}
            record_event(conn, user, device, BACKUP_DELETE, detail, at_ms=now_ms)

        await self._db.run(job)

    async def count(self) -> int:
        def job(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM backups WHERE blob IS NOT NULL"
            ).fetchone()
            return int(count)

        return await self._db.run(job)


def _backup(row: tuple[Any, ...]) -> Backup:
    owner, version, blob, updated_ms, key_id = row
    return Backup(
        user=str(owner),
        version=int(version),
        blob=bytes(blob),
        updated_ms=int(updated_ms),
        key_id=int(key_id),
    )
