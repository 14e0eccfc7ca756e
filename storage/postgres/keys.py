"""Pre-keys in PostgreSQL (the KeyStore interface).

Uploads of one device are serialised by a lock on its device row; claims are not: each
claim is one statement that deletes the oldest one-time key nobody else is taking
(FOR UPDATE SKIP LOCKED), so claims of one device run side by side and never hand one key
out twice, in one process or in many.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from storage.errors import KeyIdConflict, TooManyPreKeys
from storage.postgres.database import Connection, Database, Row
from storage.postgres.directory import record_event
from storage.records import ClaimedKeys, KeyCounts, KeyUpload, OneTimeKey, SignedKey

_EC: Final = "one_time_prekeys"
_PQ: Final = "one_time_pq_prekeys"

_NO_KEYS: Final = KeyCounts(prekeys=0, pq_prekeys=0, signed_prekey_uploaded_ms=None)

# Concurrency argument of the claim, one statement (one snapshot, one implicit transaction):
#
# * `ec` and `pq` each delete the device's oldest one-time key that no other transaction
#   has locked. The inner SELECT locks the row it returns (FOR UPDATE); SKIP LOCKED passes
#   over rows that concurrent claims have locked, and a row deleted by a claim that
#   committed after our snapshot fails to lock and is skipped too, the LIMIT taking the next
#   one. A row is deleted only by the transaction holding its lock, so each key is returned
#   by exactly one claim, whatever the number of claimers or processes. (A claim may find
#   every remaining row locked by claims in flight and take none: those claims take them.)
# * No signed pre-key, no bundle: the EXISTS makes both deletes take nothing.
# * `counted` decrements the device's counts by what was taken. Its row lock orders the
#   claims of one device (each waits for the previous one's commit and re-reads the row),
#   so "before" (after + taken) and "after" are exact and exactly one claim sees a count go
#   from the low-water mark to below it. The count row is the last lock a claim takes, and
#   uploads and removals take it after their key rows too: no lock cycle, no deadlock.
# * `audit` records a bundle handed out without a one-time EC key (ids only).
_CLAIM = f"""
WITH signed AS (
    SELECT key_id, key, signature, uploaded_ms FROM signed_prekeys
    WHERE user_id = $1 AND device = $2
), ec AS (
    DELETE FROM {_EC} WHERE seq = (
        SELECT seq FROM {_EC}
        WHERE user_id = $1 AND device = $2 AND EXISTS (SELECT 1 FROM signed)
        ORDER BY seq LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING key_id, key
), pq AS (
    DELETE FROM {_PQ} WHERE seq = (
        SELECT seq FROM {_PQ}
        WHERE user_id = $1 AND device = $2 AND EXISTS (SELECT 1 FROM signed)
        ORDER BY seq LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING key_id, key, signature
), taken AS (
    SELECT (SELECT count(*) FROM ec) AS ec_n, (SELECT count(*) FROM pq) AS pq_n
), counted AS (
    UPDATE prekey_counts c
    SET prekeys = c.prekeys - t.ec_n, pq_prekeys = c.pq_prekeys - t.pq_n
    FROM taken t
    WHERE c.user_id = $1 AND c.device = $2 AND t.ec_n + t.pq_n > 0
    RETURNING c.prekeys, c.pq_prekeys
), audit AS (
    INSERT INTO key_events (user_id, device, kind, detail)
    SELECT $1, $2, 'claim_without_prekey',
           jsonb_build_object('signed_prekey_id', s.key_id,
                              'pq_prekey_id', (SELECT key_id FROM pq),
                              'pq_last_resort', t.pq_n = 0)
    FROM taken t, signed s
    WHERE t.ec_n = 0
)
SELECT s.key_id AS s_id, s.key AS s_key, s.signature AS s_sig, s.uploaded_ms,
       ec.key_id AS ec_id, ec.key AS ec_key,
       pq.key_id AS pq_id, pq.key AS pq_key, pq.signature AS pq_sig,
       lr.key_id AS lr_id, lr.key AS lr_key, lr.signature AS lr_sig,
       t.ec_n, t.pq_n,
       COALESCE(cd.prekeys, c.prekeys, 0) AS prekeys,
       COALESCE(cd.pq_prekeys, c.pq_prekeys, 0) AS pq_prekeys
FROM taken t
LEFT JOIN signed s ON true
LEFT JOIN ec ON true
LEFT JOIN pq ON true
LEFT JOIN counted cd ON true
LEFT JOIN prekey_counts c ON c.user_id = $1 AND c.device = $2
LEFT JOIN pq_last_resort_keys lr ON lr.user_id = $1 AND lr.device = $2
"""

_COUNTS = """
SELECT c.prekeys, c.pq_prekeys, s.uploaded_ms
FROM (SELECT 1) AS one
LEFT JOIN prekey_counts c ON c.user_id = $1 AND c.device = $2
LEFT JOIN signed_prekeys s ON s.user_id = $1 AND s.device = $2
"""


class PostgresKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def upload(
        self, user: str, device: int, upload: KeyUpload, *, now_ms: int, max_stored: int
    ) -> KeyCounts:
        async with self._db.transaction("upload_keys") as conn:
            # Concurrency: the device row lock serialises the uploads of one device (the
            # "already stored?" and cap checks below see no other upload half done), and
            # orders uploads with removal (see PostgresDeviceDirectory.remove_device): an
            # upload that comes after a removal finds no active row and stores nothing.
            # NO KEY UPDATE does not block the KEY SHARE locks of message stores.
            active = await conn.fetchval(
                "SELECT 1 FROM devices WHERE user_id = $1 AND device = $2"
                " AND removed_ms IS NULL FOR NO KEY UPDATE",
                user,
                device,
            )
            if active is None:
                return _NO_KEYS
            new_ec = await _new_keys(
                conn, _EC, user, device, ((k.id, k.key, b"") for k in upload.prekeys)
            )
            new_pq = await _new_keys(
                conn, _PQ, user, device, ((k.id, k.key, k.signature) for k in upload.pq_prekeys)
            )
            # Claims may lower these counts meanwhile, never raise them: the check is safe.
            stored = await conn.fetchrow(
                "SELECT prekeys, pq_prekeys FROM prekey_counts WHERE user_id = $1 AND device = $2",
                user,
                device,
            )
            have_ec, have_pq = (
                (0, 0) if stored is None else (stored["prekeys"], stored["pq_prekeys"])
            )
            for table, have, new in ((_EC, have_ec, new_ec), (_PQ, have_pq, new_pq)):
                if int(have) + len(new) > max_stored:
                    raise TooManyPreKeys(f"more than {max_stored} keys in {table}")
            # WITH ORDINALITY ... ORDER BY: seq follows the order of the upload, which is the
            # order claims hand the keys out.
            if new_ec:
                await conn.execute(
                    f"INSERT INTO {_EC} (user_id, device, key_id, key)"
                    " SELECT $1, $2, k.key_id, k.key"
                    " FROM unnest($3::bigint[], $4::bytea[]) WITH ORDINALITY AS k(key_id, key, n)"
                    " ORDER BY k.n",
                    user,
                    device,
                    [key_id for key_id, _, _ in new_ec],
                    [key for _, key, _ in new_ec],
                )
            if new_pq:
                await conn.execute(
                    f"INSERT INTO {_PQ} (user_id, device, key_id, key, signature)"
                    " SELECT $1, $2, k.key_id, k.key, k.signature"
                    " FROM unnest($3::bigint[], $4::bytea[], $5::bytea[])"
                    " WITH ORDINALITY AS k(key_id, key, signature, n) ORDER BY k.n",
                    user,
                    device,
                    [key_id for key_id, _, _ in new_pq],
                    [key for _, key, _ in new_pq],
                    [signature for _, _, signature in new_pq],
                )
            for table, signed in (
                ("signed_prekeys", upload.signed_prekey),
                ("pq_last_resort_keys", upload.pq_last_resort),
            ):
                if signed is not None:
                    # Rotation: the new key replaces the previous one.
                    await conn.execute(
                        f"INSERT INTO {table}"
                        " (user_id, device, key_id, key, signature, uploaded_ms)"
                        " VALUES ($1, $2, $3, $4, $5, $6)"
                        " ON CONFLICT (user_id, device) DO UPDATE SET key_id = excluded.key_id,"
                        " key = excluded.key, signature = excluded.signature,"
                        " uploaded_ms = excluded.uploaded_ms",
                        user,
                        device,
                        signed.id,
                        signed.key,
                        signed.signature,
                        now_ms,
                    )
            if upload.signed_prekey is not None:
                await record_event(
                    conn, user, device, "signed_prekey_rotated", {"key_id": upload.signed_prekey.id}
                )
            if new_ec or new_pq or upload.pq_last_resort is not None:
                detail: dict[str, object] = {
                    "prekey_ids": [key_id for key_id, _, _ in new_ec],
                    "pq_prekey_ids": [key_id for key_id, _, _ in new_pq],
                }
                if upload.pq_last_resort is not None:
                    detail["pq_last_resort_id"] = upload.pq_last_resort.id
                await record_event(conn, user, device, "prekeys_uploaded", detail)
            # Last: the count row is the last lock taken (the claim's lock order).
            row = await conn.fetchrow(
                "UPDATE prekey_counts SET prekeys = prekeys + $3, pq_prekeys = pq_prekeys + $4"
                " WHERE user_id = $1 AND device = $2 RETURNING prekeys, pq_prekeys",
                user,
                device,
                len(new_ec),
                len(new_pq),
            )
            uploaded_ms = await conn.fetchval(
                "SELECT uploaded_ms FROM signed_prekeys WHERE user_id = $1 AND device = $2",
                user,
                device,
            )
            return KeyCounts(
                prekeys=0 if row is None else int(row["prekeys"]),
                pq_prekeys=0 if row is None else int(row["pq_prekeys"]),
                signed_prekey_uploaded_ms=_optional_int(uploaded_ms),
            )

    async def claim(self, user: str, device: int, *, low_water: int) -> ClaimedKeys:
        async with self._db.connection("claim_prekeys") as conn:
            row = await conn.fetchrow(_CLAIM, user, device)
        assert row is not None  # `taken` always has its one row
        after = KeyCounts(
            prekeys=int(row["prekeys"]),
            pq_prekeys=int(row["pq_prekeys"]),
            signed_prekey_uploaded_ms=_optional_int(row["uploaded_ms"]),
        )
        if row["s_id"] is None:
            # No bundle can be made without a signed pre-key: nothing was taken.
            return ClaimedKeys(None, None, None, after, False)
        signed = SignedKey(int(row["s_id"]), bytes(row["s_key"]), bytes(row["s_sig"]))
        prekey = (
            None if row["ec_id"] is None else OneTimeKey(int(row["ec_id"]), bytes(row["ec_key"]))
        )
        pq_prekey = _signed(row, "pq")
        if pq_prekey is None:
            # No one-time PQ key left: the last-resort key is handed out, and kept.
            pq_prekey = _signed(row, "lr")
        before = (after.prekeys + int(row["ec_n"]), after.pq_prekeys + int(row["pq_n"]))
        fell = low_water > 0 and any(
            old == low_water and new < low_water
            for old, new in zip(before, (after.prekeys, after.pq_prekeys), strict=True)
        )
        return ClaimedKeys(
            signed_prekey=signed,
            prekey=prekey,
            pq_prekey=pq_prekey,
            counts=after,
            fell_below_low_water=fell,
        )

    async def counts(self, user: str, device: int) -> KeyCounts:
        async with self._db.connection("key_counts") as conn:
            row = await conn.fetchrow(_COUNTS, user, device)
        assert row is not None
        return KeyCounts(
            prekeys=int(row["prekeys"] or 0),
            pq_prekeys=int(row["pq_prekeys"] or 0),
            signed_prekey_uploaded_ms=_optional_int(row["uploaded_ms"]),
        )


def _optional_int(value: object) -> int | None:
    return None if value is None else int(str(value))


def _signed(row: Row, prefix: str) -> SignedKey | None:
    if row[f"{prefix}_id"] is None:
        return None
    return SignedKey(
        int(row[f"{prefix}_id"]), bytes(row[f"{prefix}_key"]), bytes(row[f"{prefix}_sig"])
    )


async def _new_keys(
    conn: Connection,
    table: str,
    user: str,
    device: int,
    keys: Iterable[tuple[int, bytes, bytes]],
) -> list[tuple[int, bytes, bytes]]:
    """The keys of one list of an upload that are not stored yet, in upload order.

    An id stored (or earlier in the same list) with the same key is a no-op; with another
    key it is a conflict. Keys are compared, signatures are not: the first one is kept.
    """
    listed: dict[int, tuple[int, bytes, bytes]] = {}
    for key_id, key, signature in keys:
        seen = listed.get(key_id)
        if seen is None:
            listed[key_id] = (key_id, key, signature)
        elif seen[1] != key:
            raise KeyIdConflict(f"key id {key_id} is named twice with different keys")
    if not listed:
        return []
    rows = await conn.fetch(
        f"SELECT key_id, key FROM {table}"
        " WHERE user_id = $1 AND device = $2 AND key_id = ANY($3::bigint[])",
        user,
        device,
        list(listed),
    )
    for row in rows:
        key_id = int(row["key_id"])
        if bytes(row["key"]) != listed[key_id][1]:
            raise KeyIdConflict(f"key id {key_id} is stored with another key")
        del listed[key_id]
    return list(listed.values())
