"""The key-event audit trail in PostgreSQL (the KeyAudit interface), and the one helper
that writes a row of it inside the transaction of the change it records.

Rows are dated by the store's clock (`now_ms`), not the server's, as in the embedded
store: the same clock dates device removals and decides what the purge deletes.
"""

from __future__ import annotations

import json
from typing import Final

from storage.audit_events import Detail
from storage.postgres.database import Connection, Database
from storage.postgres.read_replica import LagTolerantReads
from storage.records import KeyEvent

PURGE_CHUNK: Final = 5000

# `at` is a timestamptz; ms since the epoch go in and out through these two expressions.
AT_FROM_MS = "to_timestamp({} / 1000.0)"
_AT_MS = "(extract(epoch FROM at) * 1000)::bigint"


async def record_event(
    conn: Connection, user: str, device: int, kind: str, detail: Detail, *, at_ms: int
) -> None:
    """One audit row, in the caller's transaction."""
    await conn.execute(
        "INSERT INTO key_events (user_id, device, kind, detail, at)"
        f" VALUES ($1, $2, $3, $4::jsonb, {AT_FROM_MS.format('$5::bigint')})",
        user,
        device,
        kind,
        json.dumps(detail),
        at_ms,
    )


class PostgresKeyAudit:
    def __init__(self, db: Database, *, reads: LagTolerantReads | None = None) -> None:
        self._db = db
        # The trail is read for operators (`relay audit`): a replica's lag is tolerable.
        self._reads = reads or LagTolerantReads(db)

    async def events(self, user: str, *, since_ms: int | None = None) -> list[KeyEvent]:
        rows = await self._reads.run(
            "key_events",
            lambda conn: conn.fetch(
                f"SELECT id, {_AT_MS} AS at_ms, user_id, device, kind, detail::text AS detail"
                " FROM key_events WHERE user_id = $1"
                f" AND ($2::bigint IS NULL OR at >= {AT_FROM_MS.format('$2::bigint')})"
                " ORDER BY id",
                user,
                since_ms,
            ),
        )
        return [
            KeyEvent(
                id=int(row["id"]),
                at_ms=int(row["at_ms"]),
                user=str(row["user_id"]),
                device=int(row["device"]),
                kind=str(row["kind"]),
                detail=dict(json.loads(str(row["detail"]))),
            )
            for row in rows
        ]

    async def purge_events(self, before_ms: int) -> int:
        # In chunks, each its own statement: a long backlog never holds one long lock.
        total = 0
        while True:
            async with self._db.connection("purge_key_events") as conn:
                status = await conn.execute(
                    "DELETE FROM key_events WHERE id = ANY(ARRAY(SELECT id FROM key_events"
                    f" WHERE at < {AT_FROM_MS.format('$1::bigint')} LIMIT $2))",
                    before_ms,
                    PURGE_CHUNK,
                )
            deleted = int(status.rsplit(" ", 1)[-1])
            total += deleted
            if deleted < PURGE_CHUNK:
                return total
