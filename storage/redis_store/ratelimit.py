"""The rate limiter in Redis, shared by every relay node: GCRA in one Lua script.

GCRA (the generic cell rate algorithm) is a token bucket kept as one number per key: the
theoretical arrival time (TAT) of the next request, in ms. With T = 1000 / rate (ms per
token) a hit is allowed when TAT + T - burst * T <= now, and then TAT becomes
max(TAT, now) + T; a refused hit changes nothing and learns how long to wait. That is
exactly a bucket of `burst` tokens refilled at `rate` per second, read and written
atomically by the script. The key expires once the bucket is full again (a missing key is a
full bucket), with a floor so that a slow test clock cannot outlive it.

Hits made in the same event-loop turn share one EVALSHA (client.ScriptBatcher).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from storage.errors import Unavailable
from storage.records import RateDecision
from storage.redis_store.client import RedisClient, Script, ScriptBatcher

_SCRIPT = Script(
    r"""
-- KEYS[i]: the bucket of call i. ARGV[1]: now in ms, or '' for the server's clock.
-- ARGV[2 + 2(i-1)]: T, ms per token; ARGV[3 + 2(i-1)]: burst.
-- Reply per call: 0 when allowed, else the ms to wait (at least 1).
local EPSILON = 0.01     -- ms: float drift must not refuse a token due exactly now
local MIN_TTL = 60000    -- ms: full buckets linger a little; a missing key is a full bucket
local now = tonumber(ARGV[1])
if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local out = {}
for i, key in ipairs(KEYS) do
    local interval = tonumber(ARGV[2 + (i - 1) * 2])
    local burst = tonumber(ARGV[3 + (i - 1) * 2])
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then
        tat = now
    end
    local new_tat = tat + interval
    local wait = new_tat - burst * interval - now
    if wait <= EPSILON then
        local ttl = math.max(MIN_TTL, math.ceil(new_tat - now))
        redis.call('SET', key, string.format('%.17g', new_tat), 'PX', ttl)
        out[i] = 0
    else
        out[i] = math.max(1, math.ceil(wait - EPSILON))
    end
end
return out
""",
    name="rate_limit",
)


class RedisRateLimiter:
    def __init__(self, client: RedisClient, *, now_ms: Callable[[], int] | None = None) -> None:
        """`now_ms` replaces the Redis server's clock (tests); leave it None in production."""
        self._client = client
        self._batcher = ScriptBatcher(client, _SCRIPT, width=2, now_ms=now_ms)

    @property
    def batcher(self) -> ScriptBatcher:
        return self._batcher

    async def hit(self, key: str, *, rate_per_s: float, burst: int) -> RateDecision:
        if not rate_per_s > 0 or not math.isfinite(rate_per_s):
            raise ValueError(f"rate_per_s must be a positive number, not {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        interval_ms = 1000.0 / rate_per_s
        reply = await self._batcher.call(
            self._client.key("rate", key, tag=key), repr(interval_ms), burst
        )
        if not isinstance(reply, int):
            raise Unavailable(f"redis: unexpected rate-limit reply {reply!r:.100}")
        wait_ms = reply
        if wait_ms == 0:
            return RateDecision(allowed=True, retry_after_ms=0)
        return RateDecision(allowed=False, retry_after_ms=wait_ms)

    async def close(self) -> None:
        await self._batcher.close()
