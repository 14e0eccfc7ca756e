"""Stored envelopes in SQLite (the MessageQueue interface).

Durability: `store` returns once its job is committed (group commit, synchronous=FULL).
Ordering: `seq` is AUTOINCREMENT and jobs run in submission order on one writer thread, so
a device's messages are fetched in the order they were stored, and an ack submitted before
a fetch is applied before it: `fetch` and `queue_state` stay on the writer for that.
`pending_origins` (the `conflict` check of every stored send) reads on the reader
connection, at once: it sees every store and ack answered before it was asked, which is all
a caller can rely on (a send whose store is still unanswered has no `ok` yet).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from storage.embedded.database import SqliteDatabase
from storage.embedded.reader import SqliteReader
from storage.records import Envelope, PendingOrigin, StoredEnvelope

ACK_CHUNK: Final = 500  # ids per DELETE: well under SQLite's bound-parameter limit
PURGE_CHUNK: Final = 5000  # expired rows per job, so a big purge never stalls the writer

_COLUMNS = (
    "id, recipient_user, recipient_device, sender_user, sender_device,"
    " ts, server_ts, type, body, nonce, expires_ms"
)

# The recipient must be an active device: removal deletes a device's messages, and a
# store racing a removal (they are serialised jobs) must not leave any behind. A
# (device, id) already stored is kept as is, so a retried store is a no-op; only that
# uniqueness conflict is ignored, any other violation is an error.
_INSERT = f"""
INSERT INTO messages ({_COLUMNS})
SELECT :id, :recipient_user, :recipient_device, :sender_user, :sender_device,
       :ts, :server_ts, :type, :body, :nonce, :expires_ms
WHERE EXISTS (
    SELECT 1 FROM devices
    WHERE user = :recipient_user AND device = :recipient_device AND removed_ms IS NULL
)
ON CONFLICT (recipient_user, recipient_device, id) DO NOTHING
"""


class SqliteMessageQueue:
    def __init__(self, db: SqliteDatabase, reader: SqliteReader) -> None:
        self._db = db
        self._reader = reader

    async def store(self, envelopes: Sequence[Envelope]) -> None:
        if not envelopes:
            return
        rows = [
            {
                "id": e.id,
                "recipient_user": e.recipient_user,
                "recipient_device": e.recipient_device,
                "sender_user": e.sender_user,
                "sender_device": e.sender_device,
                "ts": e.ts,
                "server_ts": e.server_ts,
                "type": e.type,
                "body": e.body,
                "nonce": e.nonce,
                "expires_ms": e.expires_ms,
            }
            for e in envelopes
        ]

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT, rows)

        await self._db.run(job)

    async def fetch(
        self, user: str, device: int, *, after_seq: int, limit: int, now_ms: int
    ) -> list[StoredEnvelope]:
        def job(conn: sqlite3.Connection) -> list[StoredEnvelope]:
            rows = conn.execute(
                f"SELECT seq, {_COLUMNS} FROM messages"
                " WHERE recipient_user = ? AND recipient_device = ? AND seq > ?"
                " AND expires_ms > ? ORDER BY seq LIMIT ?",
                (user, device, after_seq, now_ms, limit),
            ).fetchall()
            return [_stored(row) for row in rows]

        return await self._db.run(job)

    async def ack(self, user: str, device: int, ids: Sequence[bytes]) -> None:
        if not ids:
            return
        unique = list(dict.fromkeys(ids))

        def job(conn: sqlite3.Connection) -> None:
            for start in range(0, len(unique), ACK_CHUNK):
                chunk = unique[start : start + ACK_CHUNK]
                marks = ", ".join("?" * len(chunk))
                conn.execute(
                    "DELETE FROM messages WHERE recipient_user = ? AND recipient_device = ?"
                    f" AND id IN ({marks})",
                    (user, device, *chunk),
                )

        await self._db.run(job)

    async def queue_state(self, user: str, device: int, *, now_ms: int) -> tuple[int, int]:
        def job(conn: sqlite3.Connection) -> tuple[int, int]:
            count, highest = conn.execute(
                "SELECT COUNT(*) FILTER (WHERE expires_ms > ?), COALESCE(MAX(seq), 0)"
                " FROM messages WHERE recipient_user = ? AND recipient_device = ?",
                (now_ms, user, device),
            ).fetchone()
            return int(count), int(highest)

        return await self._db.run(job)

    async def pending_origins(
        self, user: str, devices: Sequence[int], message_id: bytes
    ) -> list[PendingOrigin]:
        if not devices:
            return []
        wanted = sorted(set(devices))

        def job(conn: sqlite3.Connection) -> list[PendingOrigin]:
            marks = ", ".join("?" * len(wanted))
            rows = conn.execute(
                "SELECT recipient_device, sender_user, sender_device, nonce FROM messages"
                f" WHERE recipient_user = ? AND id = ? AND recipient_device IN ({marks})"
                " ORDER BY recipient_device",
                (user, message_id, *wanted),
            ).fetchall()
            return [
                PendingOrigin(
                    device=int(device),
                    sender_user=str(sender_user),
                    sender_device=int(sender_device),
                    nonce=bytes(nonce),
                )
                for device, sender_user, sender_device, nonce in rows
            ]

        return self._reader.read(job)

    async def purge_expired(self, now_ms: int) -> int:
        def job(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM messages WHERE seq IN"
                " (SELECT seq FROM messages WHERE expires_ms <= ? LIMIT ?)",
                (now_ms, PURGE_CHUNK),
            ).rowcount

        # Chunks as separate jobs: other connections' jobs run in between.
        total = 0
        while True:
            deleted = await self._db.run(job)
            total += deleted
            if deleted < PURGE_CHUNK:
                return total

    async def stored_count(self) -> int:
        def job(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
            return int(count)

        return await self._db.run(job)


def _stored(row: tuple[Any, ...]) -> StoredEnvelope:
    seq, id_, r_user, r_device, s_user, s_device, ts, server_ts, type_, body, nonce, exp = row
    return StoredEnvelope(
        seq=int(seq),
        envelope=Envelope(
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
        ),
    )
