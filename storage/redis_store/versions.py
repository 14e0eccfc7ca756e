"""Directory versions in Redis: one token per user, replaced at every change to the user's
devices, so each node may keep device lists in memory and tell, in the round trip a send
makes anyway, whether its copy is current (see storage.directory_cache).

A version is a fresh token, never a counter: a version that Redis lost (restart, expiry,
eviction) starts again as a new token that no cached copy holds, so a loss costs reloads,
never a stale match. The reads and bumps are steps of the replay guard's batched script
(storage.redis_store.replay), so they share its EVALSHA with the nonce claims of the same
event-loop turn.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Final

from storage.errors import Unavailable
from storage.redis_store.client import RedisClient, ScriptBatcher

__all__ = ["RedisDirectoryVersions"]

VERSION_TTL_MS: Final = 24 * 3600 * 1000  # an idle user's version lapses; reads start anew


class RedisDirectoryVersions:
    def __init__(self, client: RedisClient, batcher: ScriptBatcher) -> None:
        """`batcher` runs the replay guard's script (RedisReplayGuard.batcher)."""
        self._client = client
        self._batcher = batcher
        # Tokens unique across nodes and restarts: a random part per process, then a count.
        self._origin = secrets.token_hex(8)
        self._counter = itertools.count()

    async def current(self, user: str) -> bytes:
        """The user's version now (started when there is none)."""
        reply = await self._batcher.call(self._key(user), "V", self._token(), VERSION_TTL_MS, "")
        if not isinstance(reply, bytes):
            raise Unavailable(f"redis: unexpected directory version {reply!r:.50}")
        return reply

    async def bump(self, user: str) -> None:
        """Replace the user's version by a fresh token: every cached copy is out of date."""
        await self._batcher.call(self._key(user), "B", self._token(), VERSION_TTL_MS, "")

    def _token(self) -> str:
        return f"{self._origin}.{next(self._counter)}"

    def _key(self, user: str) -> str:
        return self._client.key("dirversion", user, tag=user)
