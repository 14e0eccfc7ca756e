"""Pre-keys in SQLite (the KeyStore interface).

Each upload and each claim is one job on the database's single writer thread. That is the
whole concurrency argument: a claim's SELECT of the oldest one-time key and its DELETE run
with no other job in between, so no two claims can hand out the same key, and an upload's
checks and inserts see no other upload half done. The rules of an upload are
`storage.key_rules`; a refused upload raises before the job's first write (and the job's
savepoint is rolled back on any error): nothing of it is stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, Final

from storage.audit_events import claim_event, upload_events
from storage.embedded.audit import record_event
from storage.embedded.database import SqliteDatabase
from storage.key_rules import StoredKeys, fell_below_low_water, named_ids, plan_upload
from storage.records import ClaimedKeys, KeyCounts, KeyUpload, OneTimeKey, Requester, SignedKey

_EC: Final = "one_time_prekeys"
_PQ: Final = "one_time_pq_prekeys"


class SqliteKeyStore:
    def __init__(self, db: SqliteDatabase, *, now_ms: Callable[[], int]) -> None:
        self._db = db
        self._now_ms = now_ms  # dates the audit events

    async def upload(
        self, user: str, device: int, upload: KeyUpload, *, now_ms: int, max_stored: int
    ) -> KeyCounts:
        at_ms = self._now_ms()

        def job(conn: sqlite3.Connection) -> KeyCounts:
            if not _is_active(conn, user, device):
                # Removal deleted this device's keys; an upload racing it stores none.
                return KeyCounts(prekeys=0, pq_prekeys=0, signed_prekey_uploaded_ms=None)
            plan = plan_upload(upload, _stored(conn, user, device, upload), max_stored=max_stored)
            conn.executemany(
                f"INSERT INTO {_EC} (user, device, key_id, key) VALUES (?, ?, ?, ?)",
                [(user, device, k.id, k.key) for k in plan.prekeys],
            )
            conn.executemany(
                f"INSERT INTO {_PQ} (user, device, key_id, key, signature) VALUES (?, ?, ?, ?, ?)",
                [(user, device, k.id, k.key, k.signature) for k in plan.pq_prekeys],
            )
            for table, signed in (
                ("signed_prekeys", plan.signed_prekey),
                ("pq_last_resort_keys", plan.pq_last_resort),
            ):
                if signed is not None:
                    conn.execute(
                        f"INSERT OR REPLACE INTO {table}"
                        " (user, device, key_id, key, signature, uploaded_ms)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (user, device, signed.id, signed.key, signed.signature, now_ms),
                    )
            for kind, detail in upload_events(plan):
                record_event(conn, user, device, kind, detail, at_ms=at_ms)
            return _counts(conn, user, device)

        return await self._db.run(job)

    async def claim(
        self,
        user: str,
        device: int,
        *,
        low_water: int,
        one_time: bool = True,
        requester: Requester | None = None,
    ) -> ClaimedKeys:
        at_ms = self._now_ms()

        def job(conn: sqlite3.Connection) -> ClaimedKeys:
            before = _counts(conn, user, device)
            signed = _signed(conn, "signed_prekeys", user, device)
            if signed is None:
                # No bundle can be made without a signed pre-key: take nothing.
                return ClaimedKeys(None, None, None, before, False)
            ec_row = _take_oldest(conn, _EC, "key_id, key", user, device) if one_time else None
            prekey = None if ec_row is None else OneTimeKey(id=int(ec_row[0]), key=bytes(ec_row[1]))
            pq_row = (
                _take_oldest(conn, _PQ, "key_id, key, signature", user, device)
                if one_time
                else None
            )
            if pq_row is None:
                # No one-time PQ key left: the last-resort key is handed out, and kept.
                pq_prekey = _signed(conn, "pq_last_resort_keys", user, device)
            else:
                key_id, key, signature = pq_row
                pq_prekey = SignedKey(id=int(key_id), key=bytes(key), signature=bytes(signature))
            one_time_pq = None if pq_row is None else pq_prekey
            kind, detail = claim_event(
                signed, prekey, one_time_pq, one_time=one_time, requester=requester
            )
            record_event(conn, user, device, kind, detail, at_ms=at_ms)
            after = KeyCounts(
                prekeys=before.prekeys - (prekey is not None),
                pq_prekeys=before.pq_prekeys - (pq_row is not None),
                signed_prekey_uploaded_ms=before.signed_prekey_uploaded_ms,
            )
            fell = fell_below_low_water(
                low_water,
                (before.prekeys, before.pq_prekeys),
                (after.prekeys, after.pq_prekeys),
            )
            return ClaimedKeys(
                signed_prekey=signed,
                prekey=prekey,
                pq_prekey=pq_prekey,
                counts=after,
                fell_below_low_water=fell,
            )

        return await self._db.run(job)

    async def counts(self, user: str, device: int) -> KeyCounts:
        return await self._db.run(lambda conn: _counts(conn, user, device))


def _is_active(conn: sqlite3.Connection, user: str, device: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM devices WHERE user = ? AND device = ? AND removed_ms IS NULL",
        (user, device),
    ).fetchone()
    return row is not None


def _stored(conn: sqlite3.Connection, user: str, device: int, upload: KeyUpload) -> StoredKeys:
    """The stored keys of the ids `upload` names, and the device's one-time key counts."""
    ec_ids, pq_ids = named_ids(upload)
    return StoredKeys(
        prekeys=_stored_keys(conn, _EC, user, device, ec_ids),
        pq_prekeys=_stored_keys(conn, _PQ, user, device, pq_ids),
        prekey_count=_count(conn, _EC, user, device),
        pq_prekey_count=_count(conn, _PQ, user, device),
    )


def _stored_keys(
    conn: sqlite3.Connection, table: str, user: str, device: int, ids: list[int]
) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for key_id in dict.fromkeys(ids):
        row = conn.execute(
            f"SELECT key FROM {table} WHERE user = ? AND device = ? AND key_id = ?",
            (user, device, key_id),
        ).fetchone()
        if row is not None:
            out[key_id] = bytes(row[0])
    return out


def _take_oldest(
    conn: sqlite3.Connection, table: str, columns: str, user: str, device: int
) -> tuple[Any, ...] | None:
    """Delete and return the device's oldest one-time key of `table`.

    SELECT then DELETE is safe here only because jobs are serialised on one connection.
    """
    row = conn.execute(
        f"SELECT seq, {columns} FROM {table} WHERE user = ? AND device = ? ORDER BY seq LIMIT 1",
        (user, device),
    ).fetchone()
    if row is None:
        return None
    conn.execute(f"DELETE FROM {table} WHERE seq = ?", (row[0],))
    return tuple(row[1:])


def _signed(conn: sqlite3.Connection, table: str, user: str, device: int) -> SignedKey | None:
    row = conn.execute(
        f"SELECT key_id, key, signature FROM {table} WHERE user = ? AND device = ?",
        (user, device),
    ).fetchone()
    if row is None:
        return None
    return SignedKey(id=int(row[0]), key=bytes(row[1]), signature=bytes(row[2]))


def _count(conn: sqlite3.Connection, table: str, user: str, device: int) -> int:
    (count,) = conn.execute(
        f"SELECT COUNT(*) FROM {table} WHERE user = ? AND device = ?", (user, device)
    ).fetchone()
    return int(count)


def _counts(conn: sqlite3.Connection, user: str, device: int) -> KeyCounts:
    row = conn.execute(
        "SELECT uploaded_ms FROM signed_prekeys WHERE user = ? AND device = ?", (user, device)
    ).fetchone()
    return KeyCounts(
        prekeys=_count(conn, _EC, user, device),
        pq_prekeys=_count(conn, _PQ, user, device),
        signed_prekey_uploaded_ms=None if row is None else int(row[0]),
    )
