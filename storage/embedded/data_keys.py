"""The wrapped keys of encryption at rest in SQLite (the DataKeyTable interface; the table is
made by migration 0005).

Every call is one job on the writer thread, so each check-then-write below (is the active
data key still the one being replaced? is the id free?) cannot interleave with another
job; the unique index on the active key of each purpose is the second line of defence.
None of it is on the hot path: the vault reads the table at start, at each refresh (every
minute) and when a row names a key it has not seen.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from storage.at_rest.sealing import CLEAR_KEY_ID
from storage.embedded.database import SqliteDatabase
from storage.errors import StorageError
from storage.records import WrappedKey

_DATA: Final = "data"
_INDEX: Final = "index"
_ACTIVE: Final = "active"
_RETIRED: Final = "retired"

_KEY_COLUMNS = "id, purpose, state, created_ms, retired_ms, master_key_id, wrapped"


class SqliteDataKeyTable:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def wrapped_keys(self) -> list[WrappedKey]:
        def job(conn: sqlite3.Connection) -> list[WrappedKey]:
            return _all_keys(conn)

        return await self._db.run(job)

    async def insert_key(self, key: WrappedKey, *, replacing: int | None) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM data_keys WHERE id = ?", (key.id,)).fetchone():
                return False  # another node took the id first
            if key.purpose == _INDEX:
                if conn.execute("SELECT 1 FROM data_keys WHERE purpose = ?", (_INDEX,)).fetchone():
                    return False  # the index key is made once, never replaced
            elif key.purpose == _DATA and key.state == _ACTIVE:
                row = conn.execute(
                    "SELECT id FROM data_keys WHERE purpose = ? AND state = ?", (_DATA, _ACTIVE)
                ).fetchone()
                if (None if row is None else int(row[0])) != replacing:
                    return False  # another node rotated first
                if row is not None:
                    conn.execute(
                        "UPDATE data_keys SET state = ?, retired_ms = ? WHERE id = ?",
                        (_RETIRED, key.created_ms, replacing),
                    )
            conn.execute(
                f"INSERT INTO data_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.purpose,
                    key.state,
                    key.created_ms,
                    key.retired_ms,
                    key.master_key_id,
                    key.wrapped,
                ),
            )
            return True

        return await self._db.run(job)

    async def rewrap(self, old_master_key_id: str, keys: Sequence[WrappedKey]) -> None:
        new = {k.id: k for k in keys}

        def job(conn: sqlite3.Connection) -> None:
            stored = _all_keys(conn)
            if len(new) != len(keys) or {k.id for k in stored} != set(new):
                raise StorageError("the keys to re-wrap are not the keys stored")
            wrong = sorted({k.master_key_id for k in stored} - {old_master_key_id})
            if wrong:
                raise StorageError(
                    f"stored keys are wrapped by {', '.join(wrong)}, not {old_master_key_id}"
                )
            # Only the wrapping changes: id, purpose, state and dates stay as stored.
            conn.executemany(
                "UPDATE data_keys SET master_key_id = ?, wrapped = ? WHERE id = ?",
                [(k.master_key_id, k.wrapped, k.id) for k in keys],
            )

        await self._db.run(job)

    async def usage(self) -> dict[int, int]:
        def job(conn: sqlite3.Connection) -> dict[int, int]:
            # Messages and the shared payloads of send.multi frames (migration 0006).
            rows = conn.execute(
                "SELECT key_id, COUNT(*) FROM (SELECT key_id FROM messages"
                " UNION ALL SELECT key_id FROM backups WHERE blob IS NOT NULL"
                " UNION ALL SELECT key_id FROM shared_payloads)"
                " WHERE key_id <> ? GROUP BY key_id",
                (CLEAR_KEY_ID,),
            ).fetchall()
            return {int(key_id): int(count) for key_id, count in rows}

        return await self._db.run(job)

    async def delete_retired(self, retired_before_ms: int) -> list[int]:
        def job(conn: sqlite3.Connection) -> list[int]:
            candidates = [
                int(key_id)
                for (key_id,) in conn.execute(
                    "SELECT id FROM data_keys WHERE purpose = ? AND state = ?"
                    " AND retired_ms < ? ORDER BY id",
                    (_DATA, _RETIRED, retired_before_ms),
                ).fetchall()
            ]
            if not candidates:
                return []  # the usual case: no scan of the messages
            # One scan of the messages (no index on key_id: it would cost every store).
            # In the same job as the delete, so no committed row can appear between. Nor can
            # a row sealed with a deleted key come later: a store seals and queues its job in
            # one step (messages.py), jobs run in FIFO order, and this process sealed with
            # the key's successor from the rotation on; another process sharing the file
            # (`relay keys`) is covered by the grace period (vault.RETIRED_GRACE_MS). Backups
            # sealed with a key keep it too (few rows: one per user at most).
            marks = ", ".join("?" * len(candidates))
            used = {
                int(key_id)
                for (key_id,) in conn.execute(
                    f"SELECT DISTINCT key_id FROM messages WHERE key_id IN ({marks})"
                    f" UNION SELECT key_id FROM backups WHERE key_id IN ({marks})"
                    f" UNION SELECT key_id FROM shared_payloads WHERE key_id IN ({marks})",
                    candidates * 3,
                ).fetchall()
            }
            gone = [key_id for key_id in candidates if key_id not in used]
            conn.executemany("DELETE FROM data_keys WHERE id = ?", [(k,) for k in gone])
            return gone

        return await self._db.run(job)


def _all_keys(conn: sqlite3.Connection) -> list[WrappedKey]:
    rows = conn.execute(f"SELECT {_KEY_COLUMNS} FROM data_keys ORDER BY id").fetchall()
    return [_key(row) for row in rows]


def _key(row: tuple[Any, ...]) -> WrappedKey:
    key_id, purpose, state, created_ms, retired_ms, master_key_id, wrapped = row
    return WrappedKey(
        id=int(key_id),
        purpose=str(purpose),
        state=str(state),
        created_ms=int(created_ms),
        retired_ms=None if retired_ms is None else int(retired_ms),
        master_key_id=str(master_key_id),
        wrapped=bytes(wrapped),
    )
