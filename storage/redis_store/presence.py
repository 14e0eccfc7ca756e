"""Presence (`device -> node`) and the node registry in Redis, shared by every relay node.

One key per device, `prefix + "presence:" + user + ":" + device`, holding
`<node id>|<connection token>` with an expiry (PX) that the holding node refreshes (in Redis
Cluster the user is the key's hash tag). The
token makes every write conditional on the connection that made it: a connection that
closes deletes the entry only while it still holds it (compare-and-delete), so a stale
detach never removes a newer connection's entry, on this node or another.

Every presence operation is a step of one Lua script, and the calls made in one event-loop
turn go to Redis as one EVALSHA (client.ScriptBatcher): the non-local recipients of every
send in that turn are located in one round trip.

The node registry is one hash, `prefix + "nodes"`: node id -> `<connections>|<heartbeat ms>`
on the Redis server's clock; entries older than the presence expiry are dropped when read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from storage.errors import Unavailable
from storage.node_records import Holder, NodeInfo, Refresh
from storage.redis_store.client import RedisClient, Script, ScriptBatcher

__all__ = ["RedisPresence"]

_PRESENCE = Script(
    r"""
-- KEYS[i]: the presence key of call i. ARGV[1]: now (unused).
-- ARGV[2 + 3(i-1) ...]: op, value '<node>|<token>', ttl ms.
-- C claim: SET value PX ttl, reply the previous value or false.
-- R release: DEL when the value is ours; reply 1 or 0.
-- L locate: reply the value or false.
-- F refresh: ours -> PEXPIRE, reply 'K'; missing -> SET PX, reply 'R'; another's -> 'T'.
local out = {}
for i, key in ipairs(KEYS) do
    local base = 2 + (i - 1) * 3
    local op, value, ttl = ARGV[base], ARGV[base + 1], ARGV[base + 2]
    if op == 'C' then
        out[i] = redis.call('SET', key, value, 'PX', ttl, 'GET')
    elseif op == 'R' then
        if redis.call('GET', key) == value then
            redis.call('DEL', key)
            out[i] = 1
        else
            out[i] = 0
        end
    elseif op == 'L' then
        out[i] = redis.call('GET', key)
    else
        local current = redis.call('GET', key)
        if current == value then
            redis.call('PEXPIRE', key, ttl)
            out[i] = 'K'
        elseif not current then
            redis.call('SET', key, value, 'PX', ttl)
            out[i] = 'R'
        else
            out[i] = 'T'
        end
    end
end
return out
""",
    name="presence",
)

_REGISTRY = Script(
    r"""
-- KEYS[1]: the registry hash. ARGV: op, node id, connections, max age ms.
-- H heartbeat (reply 1); N list live nodes (reply node, value, node, value ...); X leave.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
if op == 'H' then
    redis.call('HSET', KEYS[1], ARGV[2], ARGV[3] .. '|' .. string.format('%.0f', now))
    return 1
elseif op == 'X' then
    redis.call('HDEL', KEYS[1], ARGV[2])
    return 1
end
local max_age = tonumber(ARGV[4])
local flat = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #flat, 2 do
    local beat = tonumber(string.match(flat[i + 1], '|(%d+)$'))
    if beat == nil or now - beat > max_age then
        redis.call('HDEL', KEYS[1], flat[i])
    else
        out[#out + 1] = flat[i]
        out[#out + 1] = flat[i + 1]
    end
end
return out
""",
    name="node_registry",
)

_REFRESH: Final = {b"K": Refresh.KEPT, b"R": Refresh.RESTORED, b"T": Refresh.TAKEN}


class RedisPresence:
    """The `Presence` of the production backend for node `node_id`."""

    def __init__(
        self, client: RedisClient, *, node_id: str, ttl_s: float, owns_client: bool = False
    ) -> None:
        self._client = client
        self._owns_client = owns_client
        self._node_id = node_id
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._batcher = ScriptBatcher(client, _PRESENCE, width=3)
        self._registry_key = client.key("nodes")

    def _key(self, user: str, device: int) -> str:
        # In a cluster a user's devices share a slot: locating them is one script.
        return self._client.key("presence", user, str(device), tag=user)

    def _value(self, token: str) -> str:
        return f"{self._node_id}|{token}"

    async def claim(self, user: str, device: int, token: str) -> Holder | None:
        reply = await self._batcher.call(
            self._key(user, device), "C", self._value(token), self._ttl_ms
        )
        return _holder(reply)

    async def release(self, user: str, device: int, token: str) -> None:
        await self._batcher.call(self._key(user, device), "R", self._value(token), 0)

    async def locate(self, devices: Sequence[tuple[str, int]]) -> list[str | None]:
        # gather queues every call in this event-loop turn: one batch, one round trip
        replies = await asyncio.gather(
            *(self._batcher.call(self._key(u, d), "L", "", 0) for u, d in devices)
        )
        holders = [_holder(reply) for reply in replies]
        return [None if h is None else h.node for h in holders]

    async def refresh(self, entries: Sequence[tuple[str, int, str]]) -> list[Refresh]:
        replies = await asyncio.gather(
            *(
                self._batcher.call(self._key(u, d), "F", self._value(t), self._ttl_ms)
                for u, d, t in entries
            )
        )
        results: list[Refresh] = []
        for reply in replies:
            if not isinstance(reply, bytes) or reply not in _REFRESH:
                raise Unavailable(f"redis: unexpected presence reply {reply!r:.60}")
            results.append(_REFRESH[reply])
        return results

    async def heartbeat(self, connections: int) -> None:
        await self._client.evalsha(
            _REGISTRY, [self._registry_key], ["H", self._node_id, connections, 0]
        )

    async def nodes(self) -> list[NodeInfo]:
        reply = await self._client.evalsha(
            _REGISTRY, [self._registry_key], ["N", "", 0, self._ttl_ms]
        )
        if not isinstance(reply, list):
            raise Unavailable(f"redis: unexpected registry reply {reply!r:.60}")
        found: list[NodeInfo] = []
        for name, value in zip(reply[::2], reply[1::2], strict=True):
            connections, _, beat = bytes(value).decode().partition("|")
            found.append(NodeInfo(bytes(name).decode(), int(connections), int(beat)))
        return sorted(found, key=lambda n: n.node_id)

    async def leave(self) -> None:
        await self._client.evalsha(_REGISTRY, [self._registry_key], ["X", self._node_id, 0, 0])

    async def close(self) -> None:
        await self._batcher.close()
        if self._owns_client:
            await self._client.close()


def _holder(reply: object) -> Holder | None:
    if not isinstance(reply, bytes):
        return None
    node, _, token = reply.decode(errors="replace").partition("|")
    return Holder(node, token)
