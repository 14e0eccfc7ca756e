"""Script calls in Redis Cluster that a failover cannot undo: EVALSHA, then WAIT for a replica,
on the same connection to the master of the keys' slot.

Redis replicates asynchronously: a master killed a moment after answering may take writes
its replica never saw, and the promoted replica then serves the slot without them. For the
replay guard that would reopen a nonce that was already answered `ok`. So its scripts wait
until a replica holds the write (`WAIT 1`) before the caller hears the reply. Each script
call also reads the master's ROLE (its connected replicas), pipelined:
* a master known to have a replica gets EVALSHA, WAIT 1, ROLE in one round trip;
* otherwise EVALSHA, ROLE, and, when ROLE lists a replica after all, WAIT 1 in a second one.
When no replica acknowledges in time although the master has one connected, the call fails
as `Unavailable` (the sender retries); a master without any replica (the one just promoted,
until a replica joins it) cannot lose a write to a failover, so its replies count as they
are. The slot map is redis-py's (the cluster client reloads it after errors); it is reloaded
here too after an error, at most every TOPOLOGY_MIN_INTERVAL_S.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Final

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, ResponseError

from storage.errors import Unavailable

__all__ = ["ReplicatedScripts"]

TOPOLOGY_MIN_INTERVAL_S: Final = 0.2  # reloads after errors, at most this often
MIN_REPLICAS: Final = 1


class ReplicatedScripts:
    """Runs script calls on one cluster client so that each reply is replicated first."""

    def __init__(self, cluster: RedisCluster, *, wait_ms: int) -> None:
        self._cluster = cluster
        self._wait_ms = wait_ms
        self._has_replica: dict[str, bool] = {}  # master name -> its last ROLE listed one
        self._refreshed_at = time.monotonic()
        self._stale = False
        self._lock = asyncio.Lock()
        self.waits = 0  # WAITs sent
        self.unreplicated = 0  # replies refused: no replica acknowledged in time

    async def evalsha(
        self, sha: str, source: str, keys: Sequence[str], args: Sequence[object]
    ) -> object:
        """The script's reply once a replica holds its writes. Raises RedisError (or
        Unavailable) when it cannot tell; the caller translates."""
        await self._fresh_topology()
        slot = self._cluster.keyslot(keys[0])
        nodes = self._cluster.nodes_manager.slots_cache.get(slot)
        if not nodes:
            self._stale = True
            raise Unavailable(f"redis: no master serves slot {slot}")
        master = nodes[0]
        evalsha: tuple[object, ...] = ("EVALSHA", sha, len(keys), *keys, *args)
        try:
            reply = await self._replicated(master, evalsha)
            if isinstance(reply, NoScriptError):
                await master.execute_command("SCRIPT", "LOAD", source)
                reply = await self._replicated(master, evalsha)
        except BaseException:
            self._stale = True  # a lost connection, MOVED, CLUSTERDOWN: reload the map
            raise
        if isinstance(reply, BaseException):  # MOVED, CLUSTERDOWN, a script error
            self._stale = True
            raise reply
        return reply

    async def _replicated(self, master: ClusterNode, evalsha: tuple[object, ...]) -> object:
        """EVALSHA's reply (or its error reply, as an exception object) after WAIT."""
        waiting = self._has_replica.get(master.name, False)
        first: list[tuple[object, ...]] = [evalsha]
        if waiting:
            first.append(("WAIT", MIN_REPLICAS, self._wait_ms))
        first.append(("ROLE",))
        connection = master.acquire_connection()
        try:
            replies = await _exchange(connection, first)
            reply, role = replies[0], replies[-1]
            acked = replies[1] if waiting else None
            replicas = _connected_replicas(role)
            self._has_replica[master.name] = replicas > 0
            if replicas > 0 and not waiting and not isinstance(reply, BaseException):
                (acked,) = await _exchange(connection, [("WAIT", MIN_REPLICAS, self._wait_ms)])
                waiting = True
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            master.release(connection)
        if waiting:
            self.waits += 1
        if isinstance(reply, BaseException) or replicas == 0:
            return reply  # an error reply; or no replica to lose the write to
        if not isinstance(acked, int) or acked < MIN_REPLICAS:
            self.unreplicated += 1
            raise Unavailable(
                f"redis: no replica of {master.name} acknowledged a write within {self._wait_ms} ms"
            )
        return reply

    async def _fresh_topology(self) -> None:
        await self._cluster.initialize()  # the first call loads the map; later ones return
        age = time.monotonic() - self._refreshed_at
        if not (self._stale and age >= TOPOLOGY_MIN_INTERVAL_S) or self._lock.locked():
            return
        async with self._lock:
            try:
                await self._cluster.nodes_manager.initialize()
            finally:
                self._refreshed_at = time.monotonic()
            self._stale = False


async def _exchange(connection: Connection, commands: list[tuple[object, ...]]) -> list[object]:
    """Sends the commands in one write and reads every reply; an error reply is returned as
    its exception (the replies after it still have to be read)."""
    await connection.send_packed_command(connection.pack_commands(commands))  # type: ignore[arg-type]
    replies: list[object] = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


def _connected_replicas(role: object) -> int:
    """How many replicas a master's ROLE reply lists (0 for anything else)."""
    if isinstance(role, list) and len(role) > 2 and isinstance(role[2], list):
        return len(role[2])
    return 0
