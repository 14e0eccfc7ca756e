"""The key-event audit trail in SQLite (the KeyAudit interface), and the one helper that
writes a row of it inside the job (hence the transaction) of the change it records."""

from __future__ import annotations

import json
import sqlite3

from storage.audit_events import Detail
from storage.embedded.database import SqliteDatabase
from storage.records import KeyEvent


def record_event(
    conn: sqlite3.Connection, user: str, device: int, kind: str, detail: Detail, *, at_ms: int
) -> None:
    """One audit row, in the caller's job."""
    conn.execute(
        "INSERT INTO key_events (at_ms, user, device, kind, detail) VALUES (?, ?, ?, ?, ?)",
        (at_ms, user, device, kind, json.dumps(detail)),
    )


class SqliteKeyAudit:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def events(self, user: str, *, since_ms: int | None = None) -> list[KeyEvent]:
        def job(conn: sqlite3.Connection) -> list[KeyEvent]:
            rows = conn.execute(
                "SELECT id, at_ms, user, device, kind, detail FROM key_events"
                " WHERE user = ? AND (? IS NULL OR at_ms >= ?) ORDER BY id",
                (user, since_ms, since_ms),
            ).fetchall()
            return [
                KeyEvent(
                    id=int(row[0]),
                    at_ms=int(row[1]),
                    user=str(row[2]),
                    device=int(row[3]),
                    kind=str(row[4]),
                    detail=dict(json.loads(str(row[5]))),
                )
                for row in rows
            ]

        return await self._db.run(job)

    async def purge_events(self, before_ms: int) -> int:
        def job(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM key_events WHERE at_ms < ?", (before_ms,)).rowcount

        return await self._db.run(job)
