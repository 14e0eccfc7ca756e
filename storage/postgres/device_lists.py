"""Whole device lists of many users, read for the node's cache of them
(storage.directory_cache) in two statements per batch: the cache misses of one event-loop
turn (a burst of first sends to users this node has not seen, a node started cold) share
one pooled connection and two round trips, instead of a pool checkout and two statements
each, queued behind the pool's connections.

A read waits for every change to its user's devices in progress when the batch is sent
(`add_device` and `remove_device` hold the user's row lock until they end) and sees it
committed or rolled back, as `list_devices_settled` promises. A change in progress holds up
the whole batch, and the next one behind it: each change is one short transaction.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from storage.postgres.database import Database, Row
from storage.turn_batches import TurnBatches, answer

__all__ = ["DeviceLists"]

MAX_USERS: Final = 500  # users in one batch; more wait for the next one

# Concurrency: FOR SHARE waits for the FOR NO KEY UPDATE lock that add_device and
# remove_device hold on the user's row until they end, for each user of the batch; in user
# order, and each change locks one user's row only, so no two waits form a cycle. Autocommit:
# the locks are released at once, and the next statement reads a new snapshot, which holds
# their commits.
_LOCK_USERS = "SELECT user_id FROM users WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR SHARE"


@dataclass(slots=True)
class _ListRead:
    user: str
    future: asyncio.Future[list[Row] | None]


class DeviceLists:
    """Batches settled reads of whole device lists; one batch on the wire at a time."""

    def __init__(self, db: Database, columns: str, *, max_users: int = MAX_USERS) -> None:
        """`columns`: what each device's row holds (of table `devices`)."""
        self._db = db
        self._devices = (
            f"SELECT {columns} FROM devices WHERE user_id = ANY($1::text[])"
            " AND removed_ms IS NULL ORDER BY user_id, device"
        )
        self._batches: TurnBatches[_ListRead] = TurnBatches(
            self._send,
            max_batch=max_users,
            name="relay-postgres-list_devices",
            closed_message="the store is closed",
        )
        self.batches = 0  # batches sent (two statements each); reads / batches is the mean
        self.reads = 0

    async def read(self, user: str) -> list[Row] | None:
        """The rows of the user's active devices, in device order; None for no such user."""
        call = _ListRead(user, asyncio.get_running_loop().create_future())
        self._batches.add(call)
        return await call.future

    async def close(self) -> None:
        """Answer what is queued, then stop."""
        await self._batches.close()

    async def _send(self, batch: list[_ListRead]) -> None:
        self.batches += 1
        self.reads += len(batch)
        users = sorted({call.user for call in batch})
        async with self._db.connection("list_devices") as conn:
            known = [str(row["user_id"]) for row in await conn.fetch(_LOCK_USERS, users)]
            rows = await conn.fetch(self._devices, known) if known else []
        lists: dict[str, list[Row]] = {user: [] for user in known}
        for row in rows:
            lists[str(row["user_id"])].append(row)
        for call in batch:
            found = lists.get(call.user)
            answer(call.future, None if found is None else list(found))
