"""What a PostgreSQL store holds in the clear from before encryption at rest, and its
conversion (the ClearData interface): user ids blinded in every table at once, then the
clear messages sealed a batch at a time.

PostgreSQL keeps no replay records (Redis does), so there are no nonces to blind here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from storage.at_rest.sealing import CLEAR_RECEIPT_TAG, EnvelopeSealer, receipt_column
from storage.postgres.database import Connection, Database
from storage.records import Envelope, SharedPayload

__all__ = ["PostgresClearData"]

# Every column that holds a user id, by table. messages.sender_user is not among them: it
# is sealed with the rest of the message's fields (seal_clear_messages).
USER_COLUMNS: Final = (
    ("users", "user_id"),
    ("devices", "user_id"),
    ("signed_prekeys", "user_id"),
    ("pq_last_resort_keys", "user_id"),
    ("one_time_prekeys", "user_id"),
    ("one_time_pq_prekeys", "user_id"),
    ("prekey_counts", "user_id"),
    ("messages", "recipient_user"),
    ("queue_counts", "recipient_user"),
    ("key_events", "user_id"),
    ("backups", "user_id"),
)

# Writers wait (readers do not) while the ids change, so no row with a clear id can be
# written behind the conversion. One fixed order: two conversions take turns.
_LOCK = "LOCK TABLE at_rest, {} IN EXCLUSIVE MODE".format(
    ", ".join(dict.fromkeys(table for table, _ in USER_COLUMNS))
)

_CLEAR_ROWS = """
SELECT seq, id, recipient_user, recipient_device, sender_user, sender_device, ts, server_ts,
       type, body, nonce, expires_ms, receipt
FROM messages
WHERE key_id IS NULL AND seq > $1
ORDER BY seq
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

_SEAL_ROW = """
UPDATE messages
SET key_id = $3, sealed = $4, sender_user = NULL, sender_device = NULL, ts = NULL,
    type = NULL, body = NULL, nonce = NULL, receipt = $5
WHERE recipient_user = $1 AND seq = $2
"""


class PostgresClearData:
    def __init__(self, db: Database, *, now_ms: Callable[[], int]) -> None:
        self._db = db
        self._now_ms = now_ms
        # Every clear row up to this seq was sealed by this object: the next batch starts
        # after it, instead of walking the sealed rows again.
        self._sealed_up_to = 0

    async def user_ids_state(self) -> str:
        async with self._db.connection("user_ids_state") as conn:
            row = await conn.fetchrow(
                "SELECT EXISTS (SELECT 1 FROM at_rest) AS blinded,"
                " EXISTS (SELECT 1 FROM users) AS users"
            )
        assert row is not None
        if row["blinded"]:
            return "blinded"
        return "clear" if row["users"] else "empty"

    async def blind_user_ids(
        self,
        blind_user: Callable[[str], str],
        blind_nonce: Callable[[bytes], bytes],
        seal_text: Callable[[str], str],
    ) -> int:
        async with self._db.transaction("blind_user_ids") as conn:
            await conn.execute(_LOCK)
            if await conn.fetchval("SELECT 1 FROM at_rest") is not None:
                return 0
            users = await conn.fetchval("SELECT count(*) FROM users")
            assert isinstance(users, int)
            await _blind_ids(conn, blind_user)
            await _seal_requesters(conn, seal_text)
            await _blind_backups(conn, blind_nonce, seal_text)
            await conn.execute(
                "INSERT INTO at_rest (id, blinded_ms) VALUES (1, $1)", self._now_ms()
            )
        return users

    async def seal_clear_messages(self, sealer: EnvelopeSealer, *, limit: int) -> int:
        async with self._db.transaction("seal_clear_messages") as conn:
            # SKIP LOCKED: a row locked now is being deleted (ack, purge) or sealed by another
            # conversion; waiting for it could deadlock with a batch of acks. Once nothing is
            # found after the rows sealed before, one more look from the start makes sure no
            # skipped row was left clear.
            rows = await conn.fetch(_CLEAR_ROWS, self._sealed_up_to, limit)
            if not rows and self._sealed_up_to > 0:
                self._sealed_up_to = 0
                rows = await conn.fetch(_CLEAR_ROWS, 0, limit)
            updates = []
            for row in rows:
                envelope = Envelope(
                    id=bytes(row["id"]),
                    recipient_user=str(row["recipient_user"]),
                    recipient_device=int(row["recipient_device"]),
                    sender_user=str(row["sender_user"]),
                    sender_device=int(row["sender_device"]),
                    ts=int(row["ts"]),
                    server_ts=int(row["server_ts"]),
                    type=int(row["type"]),
                    body=bytes(row["body"]),
                    nonce=bytes(row["nonce"]),
                    expires_ms=int(row["expires_ms"]),
                    receipt=row["receipt"] == CLEAR_RECEIPT_TAG,
                )
                key_id, sealed = sealer.seal(envelope, envelope.recipient_user)
                if sealed is None:
                    raise ValueError("the sealer leaves messages in the clear")
                # A request for a receipt becomes the sealer's tag (delivery receipts).
                receipt = receipt_column(sealer, envelope, envelope.recipient_user)
                updates.append((envelope.recipient_user, int(row["seq"]), key_id, sealed, receipt))
            if updates:
                await conn.executemany(_SEAL_ROW, updates)
            payloads = await _seal_clear_payloads(conn, sealer, limit)
        if updates:
            self._sealed_up_to = max(self._sealed_up_to, updates[-1][1])
        return len(updates) + payloads

    async def seal_clear_backups(self, seal: Callable[[str, bytes], tuple[int, bytes]]) -> int:
        async with self._db.transaction("seal_clear_backups") as conn:
            rows = await conn.fetch(
                "SELECT user_id, blob FROM backups"
                " WHERE key_id IS NULL AND blob IS NOT NULL FOR UPDATE"
            )
            updates = []
            for row in rows:
                key_id, sealed = seal(str(row["user_id"]), bytes(row["blob"]))
                updates.append((str(row["user_id"]), key_id, sealed))
            if updates:
                await conn.executemany(
                    "UPDATE backups SET key_id = $2, blob = $3 WHERE user_id = $1", updates
                )
        return len(updates)

    async def clear_messages(self) -> int:
        async with self._db.connection("clear_messages") as conn:
            count = await conn.fetchval(
                "SELECT (SELECT count(*) FROM messages WHERE key_id IS NULL)"
                " + (SELECT count(*) FROM shared_payloads WHERE key_id IS NULL)"
            )
        assert isinstance(count, int)
        return count


async def _seal_clear_payloads(conn: Connection, sealer: EnvelopeSealer, limit: int) -> int:
    """Up to `limit` clear shared payloads (send.multi, migration 0007) sealed in place.
    SKIP LOCKED as for the messages: a payload locked now is being deleted (its last ack)."""
    rows = await conn.fetch(
        "SELECT payload_id, body FROM shared_payloads WHERE key_id IS NULL"
        " LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    updates = []
    for row in rows:
        key_id, sealed = sealer.seal_payload(
            SharedPayload(id=bytes(row["payload_id"]), body=bytes(row["body"]))
        )
        if sealed is None:
            raise ValueError("the sealer leaves shared payloads in the clear")
        updates.append((bytes(row["payload_id"]), key_id, sealed))
    if updates:
        await conn.executemany(
            "UPDATE shared_payloads SET key_id = $2, sealed = $3, body = NULL"
            " WHERE payload_id = $1",
            updates,
        )
    return len(updates)


async def _blind_ids(conn: Connection, blind_user: Callable[[str], str]) -> None:
    """Every user id of every table replaced by its blinded form, one UPDATE a table. The
    foreign keys between them (DEFERRABLE since migration 0005) are checked at commit."""
    clear = await conn.fetch(
        " UNION ".join(f"SELECT {column} AS u FROM {table}" for table, column in USER_COLUMNS)
    )
    ids = [str(row["u"]) for row in clear]
    await conn.execute(
        "CREATE TEMP TABLE blind_map (clear text PRIMARY KEY, blinded text NOT NULL) ON COMMIT DROP"
    )
    await conn.execute(
        "INSERT INTO blind_map (clear, blinded) SELECT * FROM unnest($1::text[], $2::text[])",
        ids,
        [blind_user(user) for user in ids],
    )
    await conn.execute("ANALYZE blind_map")
    await conn.execute("SET CONSTRAINTS ALL DEFERRED")
    for table, column in USER_COLUMNS:
        if table == "queue_counts":
            continue
        await conn.execute(
            f"UPDATE {table} t SET {column} = m.blinded FROM blind_map m WHERE t.{column} = m.clear"
        )
    # Counted again rather than renamed: messages is partitioned by recipient_user (migration
    # 0006), so a row whose blinded id hashes to another partition moves, which fires the
    # count triggers (a delete under the clear id, an insert under the blinded one), and a
    # row that stays does not. Writers are locked out (_LOCK), so the count is exact; a
    # device with no stored message gets its counter back at its next store.
    await conn.execute("DELETE FROM queue_counts")
    await conn.execute(
        "INSERT INTO queue_counts (recipient_user, recipient_device, stored)"
        " SELECT recipient_user, recipient_device, count(*) FROM messages"
        " GROUP BY recipient_user, recipient_device"
    )


async def _seal_requesters(conn: Connection, seal_text: Callable[[str], str]) -> None:
    """The requester of every bundle handed out (claim events), sealed in its detail."""
    rows = await conn.fetch(
        "SELECT id, detail->>'requester_user' AS requester FROM key_events"
        " WHERE jsonb_typeof(detail->'requester_user') = 'string'"
    )
    if not rows:
        return
    await conn.execute(
        "UPDATE key_events k"
        " SET detail = jsonb_set(k.detail, '{requester_user}', to_jsonb(s.sealed))"
        " FROM unnest($1::bigint[], $2::text[]) AS s(id, sealed) WHERE k.id = s.id",
        [int(row["id"]) for row in rows],
        [seal_text(str(row["requester"])) for row in rows],
    )


async def _blind_backups(
    conn: Connection, blind_nonce: Callable[[bytes], bytes], seal_text: Callable[[str], str]
) -> None:
    """A backup's owner sealed, its access key hashed like a nonce. Its blob is sealed with a
    data key next (seal_clear_backups)."""
    rows = await conn.fetch("SELECT user_id, owner, access_key FROM backups")
    if not rows:
        return
    await conn.execute(
        "UPDATE backups b SET owner = s.owner, access_key = s.access_key"
        " FROM unnest($1::text[], $2::text[], $3::bytea[]) AS s(user_id, owner, access_key)"
        " WHERE b.user_id = s.user_id",
        [str(row["user_id"]) for row in rows],
        [seal_text(str(row["owner"])) for row in rows],
        [
            None if row["access_key"] is None else blind_nonce(bytes(row["access_key"]))
            for row in rows
        ],
    )


def _blinded_key(key: object, blind_nonce: Callable[[bytes], bytes]) -> bytes | None:
    return None if key is None else blind_nonce(bytes(key))  # type: ignore[call-overload]
