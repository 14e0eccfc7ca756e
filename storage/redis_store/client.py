"""A typed face on redis.asyncio: one client, Lua scripts by EVALSHA, errors turned into ours.

Every Redis error or timeout becomes `storage.errors.Unavailable`. Socket timeouts (connect
and read) bound each call, and an overall `asyncio.timeout` bounds the whole call, so an
unreachable Redis fails within `timeout_s`. The client does not retry by itself: a script
whose answer was lost may have run, and running it twice would change its answer (a
claim would find its own pending record); the caller hears `unavailable` and retries.

`ScriptBatcher` is the batching: the calls of one script made in the same event-loop turn
(and those made while the previous batch is on the wire) go to Redis as ONE EVALSHA, one
key per call, applied by the script one after the other in the order of the calls.

Redis Cluster (`cluster=True`, the URL names any seed node): redis-py's cluster client
routes each EVALSHA to the master of its keys' slot. A script may only touch keys of one
slot, so a batch is split per slot (`key_slot`) and the parts go out side by side, and
`evalsha` refuses keys of two slots before anything is sent: a CROSSSLOT error cannot
happen. Keys carry a hash tag (`key(..., tag=...)`) so that the calls that belong together
(a send's nonce claim and its recipient's directory version) share a slot and a batch. With
one Redis the tag is left out: the keys are exactly those of the single-instance layout.
A batcher made with `replicated=True` (the replay guard's) has each script's writes held by
a replica before its reply counts (storage.redis_store.replicated): a failover then cannot
take back a nonce claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from storage.errors import Unavailable
from storage.interfaces import BackendObserver
from storage.redis_store.replicated import ReplicatedScripts
from storage.turn_batches import TurnBatches, answer, fail

__all__ = ["Arg", "CrossSlot", "RedisClient", "Script", "ScriptBatcher", "slot_of"]

log = logging.getLogger(__name__)

MAX_CALLS_PER_SCRIPT: Final = 512  # bounds how long one script blocks the Redis server

Arg = str | bytes | int | float
Reply = object


class CrossSlot(ValueError):
    """A script was given keys of two hash slots: a bug in the caller, never sent."""


def slot_of(key: str) -> int:
    """The Redis Cluster hash slot of `key` (its hash tag's, when it has one)."""
    return key_slot(key.encode())


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except (RedisError, RedisClusterException) as exc:  # the latter: no node reachable
        raise Unavailable(f"redis: {type(exc).__name__}: {exc}") from exc
    except (OSError, TimeoutError) as exc:
        raise Unavailable(f"redis: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1, which is how EVALSHA names it; `name` labels its calls in
    the metrics."""

    source: str
    name: str = "script"
    # Computed once: every call names the script by it (hashing 3 KB of Lua took 3.9 us).
    sha: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


class RedisClient:
    """One redis.asyncio client (a connection pool, or a cluster client and a pool per
    node) and the key prefix."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout_s: float = 2.0,
        observe: BackendObserver | None = None,
        cluster: bool = False,
    ) -> None:
        if cluster and ("{" in prefix or "}" in prefix):
            raise ValueError("a Redis Cluster key prefix must not hold '{' or '}'")
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.cluster = cluster
        self._observe = observe
        self.round_trips = 0  # commands sent (a batch is one)
        # Logged on each change, not on each failed call; in a cluster per hash slot range
        # owner, so one master failing over does not flap against the others.
        self._unreachable: set[str] = set()
        # No socket_timeout: redis-py bounds each write with asyncio.wait_for when it is set,
        # and on Python 3.11 wait_for drops a cancellation that arrives as the write ends, so
        # a task cancelled there went on running. Every call is bounded by asyncio.timeout
        # in `_evalsha` and `ping` instead, which keeps the cancellation.
        self._redis: redis_asyncio.Redis | RedisCluster
        self._replicated: ReplicatedScripts | None = None
        if cluster:
            # No retry either: a connection error marks the slot map stale and the next call
            # reloads it; a MOVED reply (the script did not run) is followed at once.
            self._redis = RedisCluster.from_url(
                url,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=30,
                decode_responses=False,
            )
            # WAIT within half the call's bound, so the whole call still fits in it.
            self._replicated = ReplicatedScripts(self._redis, wait_ms=max(1, int(timeout_s * 500)))
        else:
            self._redis = redis_asyncio.Redis.from_url(
                url,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=30,
                decode_responses=False,
            )

    def key(self, *parts: str, tag: str | None = None) -> str:
        """`prefix + parts joined by ':'`; in a cluster, `{tag}` after the prefix puts every
        key of the same tag in one slot. A tag holding a brace is replaced by its digest, so
        the hash tag is always the whole tag."""
        if not self.cluster or tag is None:
            return self.prefix + ":".join(parts)
        if "{" in tag or "}" in tag or not tag:
            tag = hashlib.sha1(tag.encode(), usedforsecurity=False).hexdigest()[:16]
        return self.prefix + "{" + tag + "}" + ":".join(parts)

    async def evalsha(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Arg],
        *,
        replicated: bool = False,
    ) -> Reply:
        """Run the script by its SHA1, loading it once when Redis does not know it (first
        use, or Redis restarted or flushed its script cache). `replicated`: in a cluster, the
        reply only once a replica holds the writes (see replicated.py)."""
        started = time.perf_counter()
        where = self._server_of(keys[0]) if keys else ""
        try:
            reply = await self._evalsha(script, keys, args, replicated)
        except Unavailable as exc:
            self._observed(script.name, started)
            if where not in self._unreachable:
                self._unreachable.add(where)
                log.warning(
                    "redis%s is unavailable; sends fail closed until it returns: %s",
                    f" (slots of {where})" if where else "",
                    exc,
                )
            raise
        self._observed(script.name, started)
        if where in self._unreachable:
            self._unreachable.discard(where)
            log.warning("redis%s is reachable again", f" (slots of {where})" if where else "")
        return reply

    def _server_of(self, key: str) -> str:
        """The empty string for one Redis; in a cluster the master the slot map names for
        `key` now."""
        if not isinstance(self._redis, RedisCluster):
            return ""
        try:
            node = self._redis.get_node_from_key(key)
        except (RedisError, RedisClusterException):
            return "?"
        return "?" if node is None else node.name

    def _observed(self, operation: str, started: float) -> None:
        if self._observe is not None:
            self._observe("redis", operation, time.perf_counter() - started)

    async def _evalsha(
        self, script: Script, keys: Sequence[str], args: Sequence[Arg], replicated: bool
    ) -> Reply:
        if self.cluster and len({slot_of(k) for k in keys}) > 1:
            raise CrossSlot(f"script {script.name} was given keys of several slots")
        with translated():
            async with asyncio.timeout(self.timeout_s):
                self.round_trips += 1
                if replicated and self._replicated is not None:
                    return await self._replicated.evalsha(script.sha, script.source, keys, args)
                try:
                    return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
                except NoScriptError:
                    self.round_trips += 2
                    await self._load(script, keys)
                    return await self._redis.evalsha(script.sha, len(keys), *keys, *args)

    async def _load(self, script: Script, keys: Sequence[str]) -> None:
        if isinstance(self._redis, RedisCluster):
            # On the master of the keys alone: a promoted replica has an empty script cache,
            # and a master that is down must not stop the others from loading.
            node = self._redis.get_node_from_key(keys[0])
            await self._redis.execute_command("SCRIPT LOAD", script.source, target_nodes=node)
        else:
            await self._redis.script_load(script.source)

    async def node_of(self, key: str, *, refresh: bool) -> tuple[str, int]:
        """Host and port of the master serving `key`'s slot (cluster mode); `refresh` reloads
        the slot map first (after a failover or a MOVED reply)."""
        if not isinstance(self._redis, RedisCluster):
            raise TypeError("node_of is for Redis Cluster")
        with translated():
            async with asyncio.timeout(self.timeout_s):
                if refresh:
                    await self._redis.nodes_manager.initialize()
                else:
                    await self._redis.initialize()
                node = self._redis.get_node_from_key(key)
                if node is None:
                    raise Unavailable(f"redis: no node serves slot {slot_of(key)}")
                return node.host, int(node.port)

    async def ping(self, timeout_s: float) -> bool:
        """One round trip. In a cluster to one node picked at random, not to all (redis-py's
        default for PING): a dead replica must not make every relay node unready."""
        try:
            with translated():
                async with asyncio.timeout(timeout_s):
                    if isinstance(self._redis, RedisCluster):
                        return bool(
                            await self._redis.execute_command(
                                "PING", target_nodes=RedisCluster.RANDOM
                            )
                        )
                    return bool(await self._redis.ping())
        except Unavailable:
            return False

    async def delete_prefixed(self) -> int:
        """Delete every key under the prefix (SCAN + DEL). For tests and teardown."""
        deleted = 0
        if isinstance(self._redis, RedisCluster):
            with translated():
                for key in await self.keys_prefixed():
                    deleted += int(await self._redis.delete(key))
            return deleted
        with translated():
            batch: list[bytes] = []
            async for key in self._redis.scan_iter(
                match=_glob_escape(self.prefix) + "*", count=500
            ):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += int(await self._redis.delete(*batch))
                    batch = []
            if batch:
                deleted += int(await self._redis.delete(*batch))
        return deleted

    async def keys_prefixed(self) -> list[bytes]:
        """Every key under the prefix (SCAN). For tests."""
        with translated():
            found = [k async for k in self._redis.scan_iter(match=_glob_escape(self.prefix) + "*")]
        return sorted(set(found))

    async def close(self) -> None:
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await self._redis.aclose()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass(slots=True)
class _Call:
    key: str
    args: tuple[Arg, ...]
    future: asyncio.Future[Reply]


class ScriptBatcher:
    """Collects calls of one batch script and sends them as one EVALSHA.

    The script gets KEYS = one key per call and ARGV = [now, then `width` arguments per
    call], and returns one reply per call, in order. `now` is the injected clock in ms, or
    "" to let the script read the Redis server's clock (one clock for every node).
    One batch is on the wire at a time: calls made meanwhile form the next one, so the calls
    reach Redis in the order they were made.
    """

    def __init__(
        self,
        client: RedisClient,
        script: Script,
        *,
        width: int,
        now_ms: Callable[[], int] | None = None,
        max_calls: int = MAX_CALLS_PER_SCRIPT,
        replicated: bool = False,
    ) -> None:
        self._client = client
        self._script = script
        self._replicated = replicated
        self._width = width
        self._now_ms = now_ms
        self._batches: TurnBatches[_Call] = TurnBatches(
            self._send,
            max_batch=max_calls,
            name="relay-redis-batcher",
            closed_message="the redis store is closed",
        )
        self.batches_sent = 0
        self.calls_sent = 0

    async def call(self, key: str, *args: Arg) -> Reply:
        if len(args) != self._width:
            raise ValueError(f"expected {self._width} arguments, got {len(args)}")
        call = _Call(key, args, asyncio.get_running_loop().create_future())
        self._batches.add(call)
        return await call.future

    async def close(self) -> None:
        """Send what is queued, then stop."""
        await self._batches.close()

    async def _send(self, batch: list[_Call]) -> None:
        now = "" if self._now_ms is None else str(int(self._now_ms()))
        if not self._client.cluster:
            await self._send_one(batch, now)
            return
        # One EVALSHA per slot, all on the wire at once; each keeps its calls' order.
        by_slot: dict[int, list[_Call]] = {}
        for call in batch:
            by_slot.setdefault(slot_of(call.key), []).append(call)
        if len(by_slot) == 1:
            await self._send_one(batch, now)
            return
        await asyncio.gather(*(self._send_slot(calls, now) for calls in by_slot.values()))

    async def _send_slot(self, calls: list[_Call], now: str) -> None:
        """One slot's EVALSHA among several: its master failing fails its own calls only,
        not those another slot's master answered (TurnBatches would fail the whole batch)."""
        try:
            await self._send_one(calls, now)
        except Unavailable as exc:
            for call in calls:
                fail(call.future, exc)

    async def _send_one(self, batch: list[_Call], now: str) -> None:
        """Raises Unavailable; TurnBatches (or `_send_slot`) then fails the calls."""
        args: list[Arg] = [now]
        for call in batch:
            args.extend(call.args)
        self.batches_sent += 1
        self.calls_sent += len(batch)
        replies = await self._client.evalsha(
            self._script, [c.key for c in batch], args, replicated=self._replicated
        )
        if not isinstance(replies, list) or len(replies) != len(batch):
            raise Unavailable(f"redis: unexpected script reply {replies!r:.100}")
        for call, reply in zip(batch, replies, strict=True):
            answer(call.future, reply)
