"""The wrapped keys of encryption at rest in PostgreSQL (the DataKeyTable interface): the
`data_keys` table of migration 0005, which stored messages reference by `key_id`."""

from __future__ import annotations

from collections.abc import Sequence

from storage.errors import StorageError
from storage.postgres.database import Database, ForeignKeyViolation, Row
from storage.records import WrappedKey

__all__ = ["PostgresDataKeyTable"]

_KEY_COLUMNS = "id, purpose, state, created_ms, retired_ms, master_key_id, wrapped"

# ON CONFLICT without a target: a taken id (primary key) and a second active key of one
# purpose (data_keys_one_active, which also allows one index key only) both leave it out.
_INSERT = f"""
INSERT INTO data_keys ({_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING id
"""

# Concurrency argument of the deletion of a retired key (its other side is the foreign key
# messages.key_id -> data_keys, migration 0005):
# * Every insert of a sealed message checks the foreign key, which takes FOR KEY SHARE on
#   the key's row until the insert commits. The DELETE below takes the row's FOR UPDATE
#   lock, which conflicts with it.
# * The scan for keys in use (before the DELETE) settles the common case, rows committed
#   long before, without an error. It cannot see an insert that has not committed yet.
# * An insert that got its lock first: the DELETE waits for its commit, and the foreign
#   key's check on delete (run after the wait, with a new snapshot: READ COMMITTED) finds
#   the new message and raises; the savepoint undoes that one deletion and the key stays.
# * A DELETE that got the lock first: the insert's check waits for its commit, finds no
#   key row, and raises; the store is refused (Unavailable) rather than left holding a
#   row that no key opens. Only a node sealing with a key retired for longer than the
#   grace period (one that has not refreshed its keys for that long) can get there.
# Rotation (UPDATE of `state`) and re-wrapping take FOR NO KEY UPDATE, which does not
# conflict with FOR KEY SHARE: neither ever waits for a store.
_DELETE = """
DELETE FROM data_keys
WHERE id = $1 AND purpose = 'data' AND state = 'retired' AND retired_ms < $2
RETURNING id
"""


class _NotInserted(Exception):
    """Rolls back insert_key's transaction (the retirement it made) when the insert lost."""


class _InUse(Exception):
    """Undoes the savepoint of a deletion that a concurrent insert made wrong."""


class PostgresDataKeyTable:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def wrapped_keys(self) -> list[WrappedKey]:
        async with self._db.connection("data_keys") as conn:
            rows = await conn.fetch(f"SELECT {_KEY_COLUMNS} FROM data_keys ORDER BY id")
        return [_wrapped_key(row) for row in rows]

    async def insert_key(self, key: WrappedKey, *, replacing: int | None) -> bool:
        row = (
            key.id,
            key.purpose,
            key.state,
            key.created_ms,
            key.retired_ms,
            key.master_key_id,
            key.wrapped,
        )
        try:
            async with self._db.transaction("insert_data_key") as conn:
                if key.purpose == "data" and key.state == "active":
                    # FOR UPDATE: of two rotations replacing the same key, the second waits,
                    # then finds it retired (the row re-checked) and no active key it can see.
                    active = await conn.fetchval(
                        "SELECT id FROM data_keys WHERE purpose = 'data' AND state = 'active'"
                        " FOR UPDATE"
                    )
                    if active != replacing:
                        return False
                    if replacing is not None:
                        await conn.execute(
                            "UPDATE data_keys SET state = 'retired', retired_ms = $2 WHERE id = $1",
                            replacing,
                            key.created_ms,
                        )
                if await conn.fetchval(_INSERT, *row) is None:
                    raise _NotInserted
        except _NotInserted:
            return False
        return True

    async def rewrap(self, old_master_key_id: str, keys: Sequence[WrappedKey]) -> None:
        async with self._db.transaction("rewrap_data_keys") as conn:
            # No key may be added or deleted meanwhile (inserts and deletes wait); stores of
            # messages take only row locks and go on.
            await conn.execute("LOCK TABLE data_keys IN SHARE ROW EXCLUSIVE MODE")
            stored = await conn.fetch("SELECT id, master_key_id FROM data_keys ORDER BY id")
            stored_ids = [int(r["id"]) for r in stored]
            given_ids = sorted(k.id for k in keys)
            if given_ids != stored_ids:
                raise StorageError(
                    f"re-wrapping keys {given_ids}, but the store holds keys {stored_ids}"
                )
            others = sorted({str(r["master_key_id"]) for r in stored} - {old_master_key_id})
            if others:
                raise StorageError(
                    f"keys are wrapped by master key {', '.join(others)},"
                    f" not by {old_master_key_id}"
                )
            await conn.executemany(
                "UPDATE data_keys SET master_key_id = $2, wrapped = $3 WHERE id = $1",
                [(k.id, k.master_key_id, k.wrapped) for k in keys],
            )

    async def usage(self) -> dict[int, int]:
        async with self._db.connection("data_key_usage") as conn:
            rows = await conn.fetch(
                "SELECT key_id, count(*) AS n FROM (SELECT key_id FROM messages"
                " UNION ALL SELECT key_id FROM backups"
                " UNION ALL SELECT key_id FROM shared_payloads) AS sealed"
                " WHERE key_id IS NOT NULL GROUP BY key_id"
            )
        return {int(r["key_id"]): int(r["n"]) for r in rows}

    async def delete_retired(self, retired_before_ms: int) -> list[int]:
        deleted: list[int] = []
        async with self._db.transaction("delete_retired_keys") as conn:
            candidates = await conn.fetch(
                "SELECT id FROM data_keys"
                " WHERE purpose = 'data' AND state = 'retired' AND retired_ms < $1 ORDER BY id",
                retired_before_ms,
            )
            if not candidates:
                return []
            # One scan for every candidate (there is no index on key_id). Backups reference
            # their key too (a foreign key, as messages do).
            used = await conn.fetch(
                "SELECT key_id FROM messages WHERE key_id = ANY($1::int[])"
                " UNION SELECT key_id FROM backups WHERE key_id = ANY($1::int[])"
                " UNION SELECT key_id FROM shared_payloads WHERE key_id = ANY($1::int[])",
                [int(r["id"]) for r in candidates],
            )
            in_use = {int(r["key_id"]) for r in used}
            for key_id in (int(r["id"]) for r in candidates):
                if key_id in in_use:
                    continue
                try:
                    async with conn.transaction():
                        try:
                            gone = await conn.fetchval(_DELETE, key_id, retired_before_ms)
                        except ForeignKeyViolation as exc:
                            raise _InUse from exc
                except _InUse:
                    continue  # a message stored meanwhile uses it
                if gone is not None:
                    deleted.append(key_id)
        return deleted


def _wrapped_key(row: Row) -> WrappedKey:
    return WrappedKey(
        id=int(row["id"]),
        purpose=str(row["purpose"]),
        state=str(row["state"]),
        created_ms=int(row["created_ms"]),
        retired_ms=None if row["retired_ms"] is None else int(row["retired_ms"]),
        master_key_id=str(row["master_key_id"]),
        wrapped=bytes(row["wrapped"]),
    )
