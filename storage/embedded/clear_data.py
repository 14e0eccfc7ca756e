"""Converting what an embedded store holds in the clear (the ClearData interface): user ids
and replay nonces become keyed hashes, a bundle requester in the audit trail is sealed, and
the stored messages move from the clear columns to sealed ones (storage.at_rest).

Each step is one job on the writer thread, hence one transaction: a crash leaves the store
as it was before the step or after it, never half converted. Two things make the bytes on
disk follow the rows:

* `PRAGMA secure_delete` is on for the writer connection (database.py), so SQLite zeroes
  the space of every old value it replaces (freed cells and pages) instead of leaving it
  in the file.
* A WAL checkpoint (TRUNCATE) follows the commit: the new pages are copied into the
  database file and the WAL, which still holds copies of pages as they were before, is
  truncated to nothing. A checkpoint kept from completing (a reader in the middle of a
  read) is logged; SQLite's own checkpoints finish the copy later.

It is on at all times, so rows deleted before the conversion (acked messages, claimed
keys) left nothing behind either. Only a file written by an older relay on an SQLite built
without secure_delete by default may still hold such bytes in free space, until it is
rebuilt (VACUUM).

Conversion runs when the store is opened, before it serves (storage.at_rest.conversion,
`relay migrate`). The embedded store keeps state in memory keyed by user ids (the device
cache) and by ids and nonces (pending replay claims): `on_blinded` is called on the event
loop once the blinding is committed, and the store drops both there, so nothing in memory
answers for a clear id afterwards.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from storage.at_rest.sealing import (
    CLEAR_KEY_ID,
    CLEAR_RECEIPT_TAG,
    EnvelopeSealer,
    receipt_column,
)
from storage.embedded.database import SqliteDatabase
from storage.errors import StorageError
from storage.records import Envelope, SharedPayload

__all__ = ["SqliteClearData"]

BLINDED: Final = "blinded"
CLEAR: Final = "clear"
EMPTY: Final = "empty"
_MARK: Final = "user_ids"

# Every column that holds a user id, but a clear message's sender: that one is sealed with
# the rest of the message by seal_clear_messages (it must come back as it was).
_USER_COLUMNS: Final = (
    ("users", "user"),
    ("devices", "user"),
    ("signed_prekeys", "user"),
    ("pq_last_resort_keys", "user"),
    ("one_time_prekeys", "user"),
    ("one_time_pq_prekeys", "user"),
    ("messages", "recipient_user"),
    ("queue_counts", "recipient_user"),
    ("replay", "sender_user"),
    ("replay", "recipient_user"),
    ("key_events", "user"),
    ("backups", "user"),
)

log = logging.getLogger(__name__)


class SqliteClearData:
    def __init__(self, db: SqliteDatabase, *, on_blinded: Callable[[], None] | None = None) -> None:
        self._db = db
        self._on_blinded = on_blinded  # on the loop, after the blinding committed

    async def user_ids_state(self) -> str:
        def job(conn: sqlite3.Connection) -> str:
            if _blinded(conn):
                return BLINDED
            return CLEAR if conn.execute("SELECT 1 FROM users LIMIT 1").fetchone() else EMPTY

        return await self._db.run(job)

    async def blind_user_ids(
        self,
        blind_user: Callable[[str], str],
        blind_nonce: Callable[[bytes], bytes],
        seal_text: Callable[[str], str],
    ) -> int:
        def job(conn: sqlite3.Connection) -> int:
            if _blinded(conn):
                return 0
            (users,) = conn.execute("SELECT COUNT(*) FROM users").fetchone()
            conn.create_function("relay_blind_user", 1, blind_user, deterministic=True)
            conn.create_function("relay_blind_nonce", 1, blind_nonce, deterministic=True)
            conn.create_function("relay_seal_text", 1, seal_text)
            try:
                with _deferred_foreign_keys(conn):
                    _blind(conn)
            finally:
                for name in ("relay_blind_user", "relay_blind_nonce", "relay_seal_text"):
                    conn.create_function(name, 1, None)
            conn.execute("INSERT INTO store_marks (name, value) VALUES (?, ?)", (_MARK, BLINDED))
            return int(users)

        def settled(committed: bool) -> None:
            if committed and self._on_blinded is not None:
                self._on_blinded()

        converted = await self._db.run(job, settled=settled)
        await self._checkpoint()
        return converted

    async def seal_clear_messages(self, sealer: EnvelopeSealer, *, limit: int) -> int:
        def job(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "SELECT seq, id, recipient_user, recipient_device, sender_user, sender_device,"
                " ts, server_ts, type, body, nonce, expires_ms, receipt FROM messages"
                " WHERE key_id = ? ORDER BY seq LIMIT ?",
                (CLEAR_KEY_ID, limit),
            ).fetchall()
            # Sealed here, on the writer thread: the rows are read and rewritten in one job.
            updates = []
            for row in rows:
                envelope = _envelope(row)
                key_id, sealed = sealer.seal(envelope, envelope.recipient_user)
                if sealed is not None:
                    # A request for a receipt becomes the sealer's tag (delivery receipts).
                    updates.append(
                        (
                            key_id,
                            sealed,
                            receipt_column(sealer, envelope, envelope.recipient_user),
                            row[0],
                        )
                    )
            conn.executemany(
                "UPDATE messages SET key_id = ?, sealed = ?, sender_user = NULL,"
                " sender_device = NULL, ts = NULL, type = NULL, body = NULL, nonce = NULL,"
                " receipt = ? WHERE seq = ?",
                updates,
            )
            # The shared payloads of send.multi frames (migration 0006), sealed apart.
            payloads = conn.execute(
                "SELECT payload_id, body FROM shared_payloads WHERE key_id = ? LIMIT ?",
                (CLEAR_KEY_ID, limit),
            ).fetchall()
            sealed_payloads = []
            for payload_id, body in payloads:
                key_id, sealed = sealer.seal_payload(
                    SharedPayload(id=bytes(payload_id), body=bytes(body))
                )
                if sealed is not None:
                    sealed_payloads.append((key_id, sealed, payload_id))
            conn.executemany(
                "UPDATE shared_payloads SET key_id = ?, sealed = ?, body = NULL"
                " WHERE payload_id = ?",
                sealed_payloads,
            )
            return len(updates) + len(sealed_payloads)

        sealed = await self._db.run(job)
        if sealed:
            await self._checkpoint()
        return sealed

    async def clear_messages(self) -> int:
        def job(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute(
                "SELECT (SELECT COUNT(*) FROM messages WHERE key_id = ?)"
                " + (SELECT COUNT(*) FROM shared_payloads WHERE key_id = ?)",
                (CLEAR_KEY_ID, CLEAR_KEY_ID),
            ).fetchone()
            return int(count)

        return await self._db.run(job)

    async def seal_clear_backups(self, seal: Callable[[str, bytes], tuple[int, bytes]]) -> int:
        def job(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "SELECT user, blob FROM backups WHERE key_id = ? AND blob IS NOT NULL",
                (CLEAR_KEY_ID,),
            ).fetchall()
            updates = []
            for user, blob in rows:
                key_id, sealed = seal(str(user), bytes(blob))
                updates.append((key_id, sealed, user))
            conn.executemany("UPDATE backups SET key_id = ?, blob = ? WHERE user = ?", updates)
            return len(updates)

        sealed = await self._db.run(job)
        if sealed:
            await self._checkpoint()
        return sealed

    async def _checkpoint(self) -> None:
        if not await self._db.checkpoint():
            log.warning(
                "the WAL checkpoint after converting clear data did not complete;"
                " older copies of converted pages stay in the WAL until the next one"
            )


def _blinded(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT value FROM store_marks WHERE name = ?", (_MARK,)).fetchone()
    return row is not None and row[0] == BLINDED


def _blind(conn: sqlite3.Connection) -> None:
    """Every user id, replay nonce and bundle requester, in place (the functions are the
    caller's, registered for this job)."""
    for table, column in _USER_COLUMNS:
        conn.execute(f"UPDATE {table} SET {column} = relay_blind_user({column})")
    conn.execute("UPDATE replay SET nonce = relay_blind_nonce(nonce)")
    # A backup's owner sealed, its access key hashed like a nonce; its blob is sealed with a
    # data key next (seal_clear_backups).
    conn.execute(
        "UPDATE backups SET owner = relay_seal_text(owner),"
        " access_key = relay_blind_nonce(access_key) WHERE access_key IS NOT NULL"
    )
    conn.execute("UPDATE backups SET owner = relay_seal_text(owner) WHERE access_key IS NULL")
    conn.execute(
        "UPDATE key_events SET detail = json_set(detail, '$.requester_user',"
        " relay_seal_text(json_extract(detail, '$.requester_user')))"
        " WHERE json_type(detail, '$.requester_user') = 'text'"
    )
    # The renames went parent and child one after the other, so the references were
    # broken in between (deferred, see _deferred_foreign_keys); they must all hold now.
    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise StorageError(f"blinding the user ids broke {len(broken)} references")


@contextmanager
def _deferred_foreign_keys(conn: sqlite3.Connection) -> Iterator[None]:
    """References checked at the end of the transaction rather than at each statement: a
    user id is renamed in `users` before `devices` follows, and so on down. Nothing in
    SQLite cascades an update of a key, and the tables cannot be renamed child first."""
    conn.execute("PRAGMA defer_foreign_keys = ON")
    try:
        yield
    finally:
        conn.execute("PRAGMA defer_foreign_keys = OFF")


def _envelope(row: tuple[Any, ...]) -> Envelope:
    _, id_, r_user, r_device, s_user, s_device, ts, server_ts, type_, body, nonce, exp = row[:12]
    return Envelope(
        id=bytes(id_),
        recipient_user=str(r_user),
        recipient_device=int(r_device),
        sender_user=str(s_user),
        sender_device=int(s_device),
        ts=int(ts),
        server_ts=int(server_ts),
        type=int(type_),
        body=bytes(body),
        nonce=bytes(nonce),
        expires_ms=int(exp),
        receipt=row[12] == CLEAR_RECEIPT_TAG,
    )
