"""Key backups in PostgreSQL (the BackupStore interface).

Concurrency of a put: the row's current version is read FOR UPDATE, so two puts of one user
take turns and the second sees the first's version (and gets a conflict if it named the
same one). A user's first put has no row to lock: two such puts race on the primary key,
and the loser's upsert finds the winner's row with a version it did not read, updates
nothing and is answered with a conflict. The access key is UNIQUE across users. A put or
delete writes its audit event in its own transaction.
"""

from __future__ import annotations

from storage.audit_events import BACKUP_DELETE, BACKUP_GET, BACKUP_PUT, Detail
from storage.errors import BackupAccessKeyTaken, BackupVersionConflict, NoBackup
from storage.postgres.audit import record_event
from storage.postgres.database import Database, Row, UniqueViolation
from storage.postgres.read_replica import LagTolerantReads
from storage.records import Backup, NewBackup

_COLUMNS = "owner, version, blob, updated_ms, key_id"

# The first put inserts version 1; a later one (its row locked FOR UPDATE before, $7 its
# version) counts on. A first put ($7 = 0) that finds the row inserted meanwhile by another
# one updates nothing (the row's version is not 0) and returns no row.
_PUT = """
INSERT INTO backups AS b (user_id, owner, access_key, key_id, blob, updated_ms, version)
VALUES ($1, $2, $3, $4, $5, $6, 1)
ON CONFLICT (user_id) DO UPDATE SET owner = excluded.owner, access_key = excluded.access_key,
    key_id = excluded.key_id, blob = excluded.blob, updated_ms = excluded.updated_ms,
    version = b.version + 1
WHERE b.version = $7
RETURNING version
"""


class PostgresBackupStore:
    def __init__(self, db: Database, *, reads: LagTolerantReads | None = None) -> None:
        self._db = db
        self._reads = reads or LagTolerantReads(db)

    async def put(
        self, user: str, device: int, backup: NewBackup, *, expected_version: int, now_ms: int
    ) -> int:
        values = (
            backup.owner if backup.owner is not None else user,
            backup.access_key,
            backup.key_id or None,
            backup.blob,
            now_ms,
        )
        async with self._db.transaction("backup_put") as conn:
            row = await conn.fetchrow(
                "SELECT version, blob IS NOT NULL AS live FROM backups"
                " WHERE user_id = $1 FOR UPDATE",
                user,
            )
            current = 0 if row is None or not row["live"] else int(row["version"])
            row_version = 0 if row is None else int(row["version"])
            if expected_version != current:
                raise BackupVersionConflict(current)
            try:
                async with conn.transaction():  # a savepoint: the access key may be taken
                    version = await conn.fetchval(_PUT, user, *values, row_version)
            except UniqueViolation as exc:
                raise BackupAccessKeyTaken("another user's backup has this access key") from exc
            if version is None:  # another device's first put won the race for the row
                raise BackupVersionConflict(await self._current(user))
            assert isinstance(version, int)
            await record_event(conn, user, device, BACKUP_PUT, {"version": version}, at_ms=now_ms)
            return version

    async def _current(self, user: str) -> int:
        async with self._db.connection("backup_version") as conn:
            row = await conn.fetchrow(
                "SELECT version FROM backups WHERE user_id = $1 AND blob IS NOT NULL", user
            )
        return 0 if row is None else int(row["version"])

    async def get(self, user: str) -> Backup | None:
        # The primary: a device reads the backup it may have just written.
        async with self._db.connection("backup_get") as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM backups WHERE user_id = $1 AND blob IS NOT NULL", user
            )
        return None if row is None else _backup(row)

    async def find(self, access_key: bytes) -> Backup | None:
        async with self._db.connection("backup_find") as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM backups WHERE access_key = $1", access_key
            )
        return None if row is None else _backup(row)

    async def record_read(
        self, user: str, device: int, version: int, *, via: str, now_ms: int
    ) -> None:
        async with self._db.connection("backup_read_event") as conn:
            detail: Detail = {"version": version, "via": via}
            await record_event(conn, user, device, BACKUP_GET, detail, at_ms=now_ms)

    async def delete(self, user: str, device: int, *, expected_version: int, now_ms: int) -> None:
        async with self._db.transaction("backup_delete") as conn:
            row = await conn.fetchrow(
                "SELECT version FROM backups WHERE user_id = $1 AND blob IS NOT NULL FOR UPDATE",
                user,
            )
            if row is None:
                raise NoBackup("no backup")
            if int(row["version"]) != expected_version:
                raise BackupVersionConflict(int(row["version"]))
            await conn.execute(
                "UPDATE backups SET blob = NULL, access_key = NULL, key_id = NULL,"
                " updated_ms = $2 WHERE user_id = $1",
                user,
                now_ms,
            )
            detail: Detail = {"version": expected_version}
            await record_event(conn, user, device, BACKUP_DELETE, detail, at_ms=now_ms)

    async def count(self) -> int:
        count = await self._reads.run(
            "backups",
            lambda conn: conn.fetchval("SELECT count(*) FROM backups WHERE blob IS NOT NULL"),
        )
        assert isinstance(count, int)
        return count


def _backup(row: Row) -> Backup:
    return Backup(
        user=str(row["owner"]),
        version=int(row["version"]),
        blob=bytes(row["blob"]),
        updated_ms=int(row["updated_ms"]),
        key_id=0 if row["key_id"] is None else int(row["key_id"]),
    )
