"""The Redis backend (redis.asyncio with hiredis): the replay guard and the rate limiter,
shared by every relay node. All keys live under a configurable prefix."""

from __future__ import annotations

from storage.redis_store.client import RedisClient, ScriptBatcher
from storage.redis_store.ratelimit import RedisRateLimiter
from storage.redis_store.replay import RedisReplayGuard

__all__ = ["RedisClient", "RedisRateLimiter", "RedisReplayGuard", "ScriptBatcher"]
