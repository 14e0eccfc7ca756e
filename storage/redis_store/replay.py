"""The replay guard in Redis, shared by every relay node.

One key per (sender, sender device, recipient, nonce) under the prefix (in Redis Cluster with
the recipient as hash tag, see client.py), holding either
    p|<deadline ms>|<message id hex>                          a pending claim, or
    d|<deadline ms>|<message id hex>|<delivered>|<stored>     the first answer,
with a Redis expiry (PX) equal to the pending TTL or the replay window. The deadline in the
value is the same expiry on the script's clock: the Redis server's clock in production (one
clock for all nodes), or an injected clock in tests, which then move time by hand.

Every operation is a step of one Lua script, and every call made in the same event-loop turn
goes to Redis as one EVALSHA (see client.ScriptBatcher): one round trip for many senders.
The device directory's versions (storage.redis_store.versions) are steps of the same script,
so a send's nonce claim and the check of its recipient's cached device list share it.
A script runs atomically, so each step's read-then-write is atomic too:
* claim: `SET key pending NX PX ttl` after dropping a record past its deadline; the first
  claim wins, every other one gets the record that holds the nonce.
* complete: writes the outcome only over its own pending claim or over nothing (the claim
  expired and nobody took it since); never over a claim or outcome of another message id,
  and never over an earlier outcome (the first answer is kept for the window).
* release: compare-and-delete: deletes only a pending claim held by that message id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from storage.records import ReplayRecord, ReplayScope, SendOutcome
from storage.redis_store.client import RedisClient, Script, ScriptBatcher

WAIT_FIRST_S: Final = 0.005  # wait_outcome polls: 5 ms, doubling, capped at 100 ms
WAIT_CAP_S: Final = 0.1

_SCRIPT = Script(
    r"""
-- KEYS[i]: the nonce record of call i.
-- ARGV[1]: now in ms, or '' for the server's clock.
-- ARGV[2 + 4(i-1) ...]: op (L lookup, C claim, D complete, R release; V and B read and
--   bump a directory version), message id (hex; V and B: a fresh token), ms (C: pending
--   TTL, D: replay window, V and B: the version's expiry), outcome (D: 'delivered|stored').
-- Reply per call: L and C the live record or false (C: false = claimed now); D and R 1 or 0;
--   V the version; B 1.
local now = tonumber(ARGV[1])
if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function live(key)
    local value = redis.call('GET', key)
    if not value then
        return false
    end
    local deadline = tonumber(string.match(value, '^[pd]|(%d+)|'))
    if deadline == nil or deadline <= now then
        redis.call('DEL', key)
        return false
    end
    return value
end

local function holder(value)
    return string.match(value, '^[pd]|%d+|([0-9a-f]*)')
end

local out = {}
for i, key in ipairs(KEYS) do
    local base = 2 + (i - 1) * 4
    local op, id, ms, outcome = ARGV[base], ARGV[base + 1], tonumber(ARGV[base + 2]), ARGV[base + 3]
    local value = false
    if op ~= 'V' and op ~= 'B' then
        value = live(key)
    end
    local deadline = string.format('%.0f', now + (ms or 0))
    if op == 'V' then
        -- A directory version (storage.redis_store.versions): read it, or start it with
        -- the fresh token `id` when there is none (new, expired or lost).
        local version = redis.call('GET', key)
        if not version then
            redis.call('SET', key, id, 'PX', ms)
            version = id
        end
        out[i] = version
    elseif op == 'B' then
        -- A directory change: a fresh token, never seen before, so no cache matches it.
        redis.call('SET', key, id, 'PX', ms)
        out[i] = 1
    elseif op == 'L' then
        out[i] = value
    elseif op == 'C' then
        if value then
            out[i] = value
        else
            redis.call('SET', key, 'p|' .. deadline .. '|' .. id, 'NX', 'PX', ms)
            out[i] = false
        end
    elseif op == 'D' then
        if (not value) or (string.sub(value, 1, 1) == 'p' and holder(value) == id) then
            redis.call('SET', key, 'd|' .. deadline .. '|' .. id .. '|' .. outcome, 'PX', ms)
            out[i] = 1
        elseif string.sub(value, 1, 1) == 'd' and holder(value) == id then
            -- Its own outcome, written by an attempt whose answer was lost: written again
            -- as it is, so that a replicated call (client.py) waits for this write too.
            redis.call('SET', key, value, 'KEEPTTL')
            out[i] = 0
        else
            out[i] = 0
        end
    elseif op == 'R' then
        if value and string.sub(value, 1, 1) == 'p' and holder(value) == id then
            redis.call('DEL', key)
            out[i] = 1
        else
            out[i] = 0
        end
    else
        return redis.error_reply('unknown replay op ' .. tostring(op))
    end
end
return out
""",
    name="replay",
)


class RedisReplayGuard:
    def __init__(
        self,
        client: RedisClient,
        *,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        """`now_ms` replaces the Redis server's clock (tests); leave it None in production."""
        self._client = client
        # Replicated: in a cluster a claim or an outcome counts once a replica holds it, so
        # a master's failover never reopens a nonce.
        self._batcher = ScriptBatcher(client, _SCRIPT, width=4, now_ms=now_ms, replicated=True)

    @property
    def batcher(self) -> ScriptBatcher:
        """Its counters tell how many calls shared each round trip."""
        return self._batcher

    async def lookup(self, scope: ReplayScope, nonce: bytes) -> ReplayRecord | None:
        return _record(await self._batcher.call(self._key(scope, nonce), "L", "", 0, ""))

    async def claim(
        self, scope: ReplayScope, nonce: bytes, message_id: bytes, *, pending_ttl_s: float
    ) -> ReplayRecord | None:
        reply = await self._batcher.call(
            self._key(scope, nonce), "C", message_id.hex(), _ms(pending_ttl_s), ""
        )
        return _record(reply)

    async def complete(
        self,
        scope: ReplayScope,
        nonce: bytes,
        message_id: bytes,
        outcome: SendOutcome,
        *,
        window_s: float,
    ) -> None:
        encoded = _devices(outcome.delivered) + "|" + _devices(outcome.stored)
        await self._batcher.call(
            self._key(scope, nonce), "D", message_id.hex(), _ms(window_s), encoded
        )

    async def release(self, scope: ReplayScope, nonce: bytes, message_id: bytes) -> None:
        await self._batcher.call(self._key(scope, nonce), "R", message_id.hex(), 0, "")

    async def wait_outcome(
        self, scope: ReplayScope, nonce: bytes, *, timeout_s: float
    ) -> ReplayRecord | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = WAIT_FIRST_S
        while True:
            record = await self.lookup(scope, nonce)
            if record is None or record.outcome is not None:
                return record
            remaining = deadline - loop.time()
            if remaining <= 0:
                return record
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, WAIT_CAP_S)

    async def close(self) -> None:
        await self._batcher.close()

    def _key(self, scope: ReplayScope, nonce: bytes) -> str:
        # The sender's length first: user strings may hold ':' without making keys ambiguous.
        # In a cluster the recipient is the hash tag: the claim shares a slot (and a batch)
        # with the recipient's directory version (versions.py), read in the same turn.
        sender = scope.sender_user
        return self._client.key(
            "replay",
            f"{len(sender)}",
            sender,
            str(scope.sender_device),
            scope.recipient_user,
            nonce.hex(),
            tag=scope.recipient_user,
        )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _devices(devices: tuple[int, ...]) -> str:
    return ",".join(str(int(d)) for d in devices)


def _parse_devices(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split(",") if d)


def _record(reply: object) -> ReplayRecord | None:
    """The record from its stored form; None for no record (false / nil)."""
    if not isinstance(reply, bytes):
        return None
    fields = reply.decode("ascii").split("|")
    message_id = bytes.fromhex(fields[2])
    if fields[0] == "p":
        return ReplayRecord(message_id=message_id, outcome=None)
    outcome = SendOutcome(delivered=_parse_devices(fields[3]), stored=_parse_devices(fields[4]))
    return ReplayRecord(message_id=message_id, outcome=outcome)
