"""Script calls in Redis Cluster that a failover cannot undo: EVALSHA, then WAIT for a replica,
on the same connection to the master of the keys' slot (one round trip, pipelined).

Redis replicates asynchronously: a master killed a moment after answering may take writes
its replica never saw, and the promoted replica then serves the slot without them. For the
replay guard that would reopen a nonce that was already answered `ok`. So its scripts wait
until a replica holds the write (`WAIT 1`) before the caller hears the reply. When no
replica acknowledges in time although the master has one connected (ROLE, read in the same
pipeline), the call fails as `Unavailable` (the sender retries); a master without any
replica (the one just promoted, until a replica joins it) cannot lose a write to a failover,
so its replies count as they are.

The slot map (which master, how many replicas) is redis-py's; it is reloaded after an error
or a WAIT that found no replica, and at least every TOPOLOGY_MAX_AGE_S, so a replica that
joins a master is waited for again soon after.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Final

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import NoScriptError

from storage.errors import Unavailable

__all__ = ["ReplicatedScripts"]

TOPOLOGY_MAX_AGE_S: Final = 5.0
TOPOLOGY_MIN_INTERVAL_S: Final = 0.2  # reloads after errors, at most this often
MIN_REPLICAS: Final = 1


class ReplicatedScripts:
    """Runs script calls on one cluster client so that each reply is replicated first."""

    def __init__(self, cluster: RedisCluster, *, wait_ms: int) -> None:
        self._cluster = cluster
        self._wait_ms = wait_ms
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
        master, replicas = nodes[0], len(nodes) - 1
        commands = await self._run(master, sha, keys, args, replicas)
        reply = commands[0].result
        if isinstance(reply, NoScriptError):
            await master.execute_command("SCRIPT", "LOAD", source)
            commands = await self._run(master, sha, keys, args, replicas)
            reply = commands[0].result
        for command in commands:
            if isinstance(command.result, BaseException):
                self._stale = True  # MOVED, CLUSTERDOWN, a lost connection: reload the map
                raise command.result
        if replicas > 0:
            acked, role = commands[1].result, commands[2].result
            connected = role[2] if isinstance(role, list) and len(role) > 2 else []
            if not isinstance(acked, int) or acked < MIN_REPLICAS:
                self._stale = True
                if connected:
                    self.unreplicated += 1
                    raise Unavailable(
                        f"redis: no replica of {master.name} acknowledged a write within "
                        f"{self._wait_ms} ms"
                    )
        return reply

    async def _run(
        self,
        master: ClusterNode,
        sha: str,
        keys: Sequence[str],
        args: Sequence[object],
        replicas: int,
    ) -> list[PipelineCommand]:
        commands = [PipelineCommand(0, "EVALSHA", sha, len(keys), *keys, *args)]
        if replicas > 0:
            self.waits += 1
            commands.append(PipelineCommand(1, "WAIT", MIN_REPLICAS, self._wait_ms))
            commands.append(PipelineCommand(2, "ROLE"))
        try:
            await master.execute_pipeline(commands)
        except BaseException:
            self._stale = True
            raise
        return commands

    async def _fresh_topology(self) -> None:
        await self._cluster.initialize()  # the first call loads the map; later ones return
        age = time.monotonic() - self._refreshed_at
        due = (self._stale and age >= TOPOLOGY_MIN_INTERVAL_S) or age >= TOPOLOGY_MAX_AGE_S
        if not due or self._lock.locked():
            return
        async with self._lock:
            try:
                await self._cluster.nodes_manager.initialize()
            finally:
                self._refreshed_at = time.monotonic()
            self._stale = False
