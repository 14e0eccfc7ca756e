"""Pre-keys in PostgreSQL (the KeyStore interface).

Uploads of one device are serialised by a lock on its device row; claims are not: each
claim is one statement that deletes the oldest one-time key nobody else is taking
(FOR UPDATE SKIP LOCKED), so claims of one device run side by side and never hand one key
out twice, in one process or in many. What an upload writes, or why it is refused, is
decided by `storage.key_rules`; this module does the reading and writing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from storage.audit_events import NONE_LEFT, WITHHELD, upload_events
from storage.key_rules import (
    StoredKeys,
    UploadPlan,
    fell_below_low_water,
    named_ids,
    plan_upload,
)
from storage.postgres.audit import AT_FROM_MS, record_event
from storage.postgres.database import Connection, Database, Row
from storage.postgres.device_reads import DEVICE_KEYS, DeviceReads
from storage.records import ClaimedKeys, KeyCounts, KeyUpload, OneTimeKey, Requester, SignedKey

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
# * No signed pre-key, no bundle: the EXISTS makes both deletes take nothing; $3 false
#   (the target's one-time budget is spent) does the same, the bundle keeping the rest.
# * `counted` decrements the device's counts by what was taken. Its row lock orders the
#   claims of one device (each waits for the previous one's commit and re-reads the row),
#   so "before" (after + taken) and "after" are exact and exactly one claim sees a count go
#   from the low-water mark to below it. The count row is the last lock a claim takes, and
#   uploads and removals take it after their key rows too: no lock cycle, no deadlock.
# * `audit` records the bundle handed out, in the same statement: the detail of
#   storage.audit_events.claim_event, built here in SQL (ids and the requester only).
_CLAIM = f"""
WITH signed AS (
    SELECT key_id, key, signature, uploaded_ms FROM signed_prekeys
    WHERE user_id = $1 AND device = $2
), ec AS (
    DELETE FROM {_EC} WHERE seq = (
        SELECT seq FROM {_EC}
        WHERE user_id = $1 AND device = $2 AND $3 AND EXISTS (SELECT 1 FROM signed)
        ORDER BY seq LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING key_id, key
), pq AS (
    DELETE FROM {_PQ} WHERE seq = (
        SELECT seq FROM {_PQ}
        WHERE user_id = $1 AND device = $2 AND $3 AND EXISTS (SELECT 1 FROM signed)
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
    INSERT INTO key_events (user_id, device, kind, detail, at)
    SELECT $1, $2,
           CASE WHEN t.ec_n = 0 THEN 'claim_without_prekey' ELSE 'prekey_claimed' END,
           jsonb_build_object('signed_prekey_id', s.key_id,
                              'pq_prekey_id', (SELECT key_id FROM pq),
                              'pq_last_resort', t.pq_n = 0,
                              'requester_user', $4::text,
                              'requester_device', $5::integer)
           || CASE WHEN t.ec_n = 0
                   THEN jsonb_build_object('reason', CASE WHEN $3 THEN '{NONE_LEFT}'
                                                          ELSE '{WITHHELD}' END)
                   ELSE jsonb_build_object('prekey_id', (SELECT key_id FROM ec))
              END,
           {AT_FROM_MS.format("$6::bigint")}
    FROM taken t, signed s
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

_COUNTS = f"""
SELECT q.n, c.prekeys, c.pq_prekeys, s.uploaded_ms
FROM {DEVICE_KEYS}
LEFT JOIN prekey_counts c ON c.user_id = q.u AND c.device = q.d
LEFT JOIN signed_prekeys s ON s.user_id = q.u AND s.device = q.d
"""


class PostgresKeyStore:
    def __init__(self, db: Database, *, now_ms: Callable[[], int]) -> None:
        self._db = db
        self._now_ms = now_ms  # dates the audit events
        self._counts = DeviceReads(db, _COUNTS, "key_counts")

    @property
    def count_reads(self) -> DeviceReads:
        """The batched `counts` reads (their statement counts)."""
        return self._counts

    async def close(self) -> None:
        """Answer the queued reads, then stop."""
        await self._counts.close()

    async def upload(
        self, user: str, device: int, upload: KeyUpload, *, now_ms: int, max_stored: int
    ) -> KeyCounts:
        async with self._db.transaction("upload_keys") as conn:
            # Concurrency: the device row lock serialises the uploads of one device (the
            # "already stored?" and cap checks of the plan see no other upload half done),
            # and orders uploads with removal (see PostgresDeviceDirectory.remove_device): an
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
            stored = await _stored(conn, user, device, upload)
            plan = plan_upload(upload, stored, max_stored=max_stored)
            await _insert_one_time(conn, user, device, plan)
            await _replace_signed(conn, user, device, plan, now_ms)
            for kind, detail in upload_events(plan):
                await record_event(conn, user, device, kind, detail, at_ms=self._now_ms())
            return await _add_counts(conn, user, device, plan)

    async def claim(
        self,
        user: str,
        device: int,
        *,
        low_water: int,
        one_time: bool = True,
        requester: Requester | None = None,
    ) -> ClaimedKeys:
        async with self._db.connection("claim_prekeys") as conn:
            row = await conn.fetchrow(
                _CLAIM,
                user,
                device,
                one_time,
                None if requester is None else requester.user,
                None if requester is None else requester.device,
                self._now_ms(),
            )
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
        fell = fell_below_low_water(low_water, before, (after.prekeys, after.pq_prekeys))
        return ClaimedKeys(
            signed_prekey=signed,
            prekey=prekey,
            pq_prekey=pq_prekey,
            counts=after,
            fell_below_low_water=fell,
        )

    async def counts(self, user: str, device: int) -> KeyCounts:
        # Batched with the other reads of this event-loop turn (device_reads.DeviceReads).
        row = await self._counts.read(user, device)
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


async def _stored(conn: Connection, user: str, device: int, upload: KeyUpload) -> StoredKeys:
    """The stored keys of the ids `upload` names, and the device's one-time key counts."""
    ec_ids, pq_ids = named_ids(upload)
    # Claims may lower these counts meanwhile, never raise them: the cap check is safe.
    counts = await conn.fetchrow(
        "SELECT prekeys, pq_prekeys FROM prekey_counts WHERE user_id = $1 AND device = $2",
        user,
        device,
    )
    return StoredKeys(
        prekeys=await _stored_keys(conn, _EC, user, device, ec_ids),
        pq_prekeys=await _stored_keys(conn, _PQ, user, device, pq_ids),
        prekey_count=0 if counts is None else int(counts["prekeys"]),
        pq_prekey_count=0 if counts is None else int(counts["pq_prekeys"]),
    )


async def _stored_keys(
    conn: Connection, table: str, user: str, device: int, ids: list[int]
) -> dict[int, bytes]:
    if not ids:
        return {}
    rows = await conn.fetch(
        f"SELECT key_id, key FROM {table}"
        " WHERE user_id = $1 AND device = $2 AND key_id = ANY($3::bigint[])",
        user,
        device,
        ids,
    )
    return {int(row["key_id"]): bytes(row["key"]) for row in rows}


async def _insert_one_time(conn: Connection, user: str, device: int, plan: UploadPlan) -> None:
    # WITH ORDINALITY ... ORDER BY: seq follows the order of the upload, which is the
    # order claims hand the keys out.
    if plan.prekeys:
        await conn.execute(
            f"INSERT INTO {_EC} (user_id, device, key_id, key)"
            " SELECT $1, $2, k.key_id, k.key"
            " FROM unnest($3::bigint[], $4::bytea[]) WITH ORDINALITY AS k(key_id, key, n)"
            " ORDER BY k.n",
            user,
            device,
            [k.id for k in plan.prekeys],
            [k.key for k in plan.prekeys],
        )
    if plan.pq_prekeys:
        await conn.execute(
            f"INSERT INTO {_PQ} (user_id, device, key_id, key, signature)"
            " SELECT $1, $2, k.key_id, k.key, k.signature"
            " FROM unnest($3::bigint[], $4::bytea[], $5::bytea[])"
            " WITH ORDINALITY AS k(key_id, key, signature, n) ORDER BY k.n",
            user,
            device,
            [k.id for k in plan.pq_prekeys],
            [k.key for k in plan.pq_prekeys],
            [k.signature for k in plan.pq_prekeys],
        )


async def _replace_signed(
    conn: Connection, user: str, device: int, plan: UploadPlan, now_ms: int
) -> None:
    for table, signed in (
        ("signed_prekeys", plan.signed_prekey),
        ("pq_last_resort_keys", plan.pq_last_resort),
    ):
        if signed is not None:
            await conn.execute(
                f"INSERT INTO {table} (user_id, device, key_id, key, signature, uploaded_ms)"
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


async def _add_counts(conn: Connection, user: str, device: int, plan: UploadPlan) -> KeyCounts:
    # Last: the count row is the last lock taken (the claim's lock order).
    row = await conn.fetchrow(
        "UPDATE prekey_counts SET prekeys = prekeys + $3, pq_prekeys = pq_prekeys + $4"
        " WHERE user_id = $1 AND device = $2 RETURNING prekeys, pq_prekeys",
        user,
        device,
        len(plan.prekeys),
        len(plan.pq_prekeys),
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
