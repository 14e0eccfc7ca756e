"""`touch` for many devices in one statement: the handshakes and closes of the same
event-loop turn (and those made while the previous statement is on the wire) share one
pooled connection, one round trip and one commit, instead of an update and a commit each.
A reconnect storm touches every device twice (at its handshake and when its connection
closes); one update per device made that a commit per handshake.

The statement locks the rows it moves in key order before it updates them, so two nodes
touching the same devices in different orders wait for each other instead of deadlocking.
A caller returns once the statement that carries its device has committed, as before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from storage.postgres.database import Database
from storage.turn_batches import TurnBatches, answer

__all__ = ["LastSeenWrites"]

MAX_TOUCHES: Final = 1000  # devices in one statement; more wait for the next one

# GREATEST: two connections of one device may report out of order; never go back.
_TOUCH = """
WITH t AS (
    SELECT u, d, max(at) AS at
    FROM unnest($1::text[], $2::smallint[], $3::bigint[]) AS t(u, d, at)
    GROUP BY u, d
), locked AS (
    SELECT dv.user_id, dv.device, t.at
    FROM devices dv JOIN t ON dv.user_id = t.u AND dv.device = t.d
    WHERE dv.removed_ms IS NULL
    ORDER BY dv.user_id, dv.device
    FOR NO KEY UPDATE OF dv
)
UPDATE devices dv SET last_seen_ms = GREATEST(dv.last_seen_ms, locked.at)
FROM locked
WHERE dv.user_id = locked.user_id AND dv.device = locked.device
"""


@dataclass(slots=True)
class _Touch:
    user: str
    device: int
    now_ms: int
    future: asyncio.Future[None]


class LastSeenWrites:
    """Batches `touch` updates; one statement on the wire at a time."""

    def __init__(self, db: Database, *, max_touches: int = MAX_TOUCHES) -> None:
        self._db = db
        self._batches: TurnBatches[_Touch] = TurnBatches(
            self._send,
            max_batch=max_touches,
            name="relay-postgres-last-seen",
            closed_message="the device directory is closed",
        )
        self.statements = 0  # statements sent; touches / statements is the mean batch
        self.touches = 0

    async def touch(self, user: str, device: int, now_ms: int) -> None:
        """Move the device's last_seen to `now_ms` (never back); returns once committed."""
        call = _Touch(user, device, now_ms, asyncio.get_running_loop().create_future())
        self._batches.add(call)
        await call.future

    async def close(self) -> None:
        """Write what is queued, then stop."""
        await self._batches.close()

    async def _send(self, batch: list[_Touch]) -> None:
        self.statements += 1
        self.touches += len(batch)
        async with self._db.connection("touch_device") as conn:
            await conn.execute(
                _TOUCH,
                [call.user for call in batch],
                [call.device for call in batch],
                [call.now_ms for call in batch],
            )
        for call in batch:
            answer(call.future, None)
