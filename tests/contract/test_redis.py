"""The Redis backend's own promises, beyond the shared contract: batched round trips, keys
under the prefix, a shared guard across nodes, and a down Redis failing fast; with one Redis
and with a Redis Cluster (conftest), where a batch is one EVALSHA per hash slot."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from storage.errors import Unavailable
from storage.production import ProductionStore
from storage.records import ReplayRecord, ReplayScope, SendOutcome
from storage.redis_store import RedisClient, RedisRateLimiter, RedisReplayGuard
from storage.redis_store.client import CrossSlot, Script, slot_of
from storage.redis_store.presence import RedisPresence
from storage.redis_store.versions import RedisDirectoryVersions

from .support import Backend, RedisTarget, new_user

TTL = 30.0
WINDOW = 600.0
OUTCOME = SendOutcome(delivered=(1,), stored=(2, 3))


def scope() -> ReplayScope:
    return ReplayScope(sender_user=new_user(), sender_device=1, recipient_user=new_user())


def most_trips(client: RedisClient, keys: list[str], batches: int) -> int:
    """The round trips `batches` batches of these keys may take: one each with one Redis;
    in a cluster one per slot each, and a script load (2 trips) on each master."""
    if not client.cluster:
        return batches
    return batches * len({slot_of(k) for k in keys}) + 2 * 3


@pytest.fixture
async def client(redis_target: RedisTarget) -> AsyncIterator[RedisClient]:
    redis = redis_target.client(f"relaytest:{secrets.token_hex(8)}:")
    try:
        yield redis
    finally:
        await redis.delete_prefixed()
        assert await redis.keys_prefixed() == []
        await redis.close()


async def test_concurrent_calls_share_round_trips(client: RedisClient) -> None:
    guard = RedisReplayGuard(client)
    try:
        # 100 scopes to 5 recipients: in a cluster, the claims of a recipient share a slot.
        recipients = [new_user() for _ in range(5)]
        calls = [
            (ReplayScope(new_user(), 1, recipients[n % 5]), os.urandom(24), os.urandom(16))
            for n in range(100)
        ]
        ids = [mid for _, _, mid in calls]
        keys = [client.key("replay", tag=s.recipient_user) for s, _, _ in calls]
        before = client.round_trips

        # 100 claims and 100 lookups of the same nonces, all issued in one turn: the claims
        # win (each is the first on its nonce) and each lookup, queued after its claim, sees it.
        results = await asyncio.gather(
            *(guard.claim(s, n, i, pending_ttl_s=TTL) for s, n, i in calls),
            *(guard.lookup(s, n) for s, n, _ in calls),
        )

        # 200 calls, not 200 round trips
        assert client.round_trips - before <= most_trips(client, keys, 4)
        assert results[:100] == [None] * 100
        assert results[100:] == [ReplayRecord(i, None) for i in ids]
        # (batches_sent counts scripts: in a cluster, one per slot of each batch)
        assert guard.batcher.calls_sent == 200
        assert guard.batcher.batches_sent <= 4 * len({slot_of(k) for k in keys})
        if client.cluster:
            assert len({slot_of(k) for k in keys}) > 1  # several slots, in parallel

        # Second round: other message ids find the nonces held.
        again = await asyncio.gather(
            *(guard.claim(s, n, os.urandom(16), pending_ttl_s=TTL) for s, n, _ in calls)
        )
        assert again == [ReplayRecord(i, None) for i in ids]
    finally:
        await guard.close()


async def test_rate_limit_hits_share_round_trips(client: RedisClient) -> None:
    limiter = RedisRateLimiter(client)
    try:
        before = client.round_trips
        decisions = await asyncio.gather(
            *(limiter.hit(f"k{n % 10}", rate_per_s=1.0, burst=15) for n in range(200))
        )
        keys = [client.key("rate", f"k{n}", tag=f"k{n}") for n in range(10)]
        assert client.round_trips - before <= most_trips(client, keys, 4)
        # 20 hits on each of 10 buckets of 15 tokens: 15 allowed, 5 refused, in call order.
        for key in range(10):
            mine = decisions[key::10]
            assert [d.allowed for d in mine] == [True] * 15 + [False] * 5
            assert all(d.retry_after_ms > 0 for d in mine[15:])
    finally:
        await limiter.close()


async def test_every_key_carries_the_prefix(client: RedisClient) -> None:
    guard = RedisReplayGuard(client)
    limiter = RedisRateLimiter(client)
    try:
        s, nonce, mid = scope(), os.urandom(24), os.urandom(16)
        assert await guard.claim(s, nonce, mid, pending_ttl_s=TTL) is None
        assert (await limiter.hit("device-1", rate_per_s=1.0, burst=1)).allowed
        keys = await client.keys_prefixed()
        assert len(keys) == 2
        assert all(k.startswith(client.prefix.encode()) for k in keys)
        assert any(nonce.hex().encode() in k for k in keys)
        assert any(k.endswith(b"rate:device-1") for k in keys)
    finally:
        await guard.close()
        await limiter.close()


async def test_complete_never_overwrites_another_holder(client: RedisClient) -> None:
    guard = RedisReplayGuard(client)
    try:
        s, nonce, holder, other = scope(), os.urandom(24), os.urandom(16), os.urandom(16)
        assert await guard.claim(s, nonce, holder, pending_ttl_s=TTL) is None
        await guard.complete(s, nonce, other, OUTCOME, window_s=WINDOW)
        assert await guard.lookup(s, nonce) == ReplayRecord(holder, None)
        await guard.complete(s, nonce, holder, OUTCOME, window_s=WINDOW)
        await guard.complete(s, nonce, other, SendOutcome((), ()), window_s=WINDOW)
        await guard.release(s, nonce, holder)  # a completed record is not released
        assert await guard.lookup(s, nonce) == ReplayRecord(holder, OUTCOME)
    finally:
        await guard.close()


async def test_two_nodes_share_the_guard(production: Backend) -> None:
    """A retry reaching another node waits for the first node's outcome."""
    first = await production.open()
    second = await production.open()
    s, nonce, mid = scope(), os.urandom(24), os.urandom(16)
    assert await first.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    assert await second.replay.claim(s, nonce, mid, pending_ttl_s=TTL) == ReplayRecord(mid, None)
    waiter = asyncio.create_task(second.replay.wait_outcome(s, nonce, timeout_s=60.0))
    assert await second.replay.lookup(s, nonce) == ReplayRecord(mid, None)
    assert not waiter.done()
    await first.replay.complete(s, nonce, mid, OUTCOME, window_s=WINDOW)
    assert await asyncio.wait_for(waiter, 10) == ReplayRecord(mid, OUTCOME)


async def test_a_script_redis_does_not_know_is_loaded_once(client: RedisClient) -> None:
    """EVALSHA of a script Redis has not seen (first use, restart, SCRIPT FLUSH) loads it;
    later calls go by EVALSHA alone. A script of its own, so no other test is disturbed."""
    script = Script(f"return {{KEYS[1], ARGV[1]}} -- {secrets.token_hex(8)}")
    a, c = client.key("a", tag="t"), client.key("c", tag="t")  # one master in a cluster
    before = client.round_trips
    assert await client.evalsha(script, [a], ["b"]) == [a.encode(), b"b"]
    assert client.round_trips - before == 3  # EVALSHA (NOSCRIPT), SCRIPT LOAD, EVALSHA
    assert await client.evalsha(script, [c], ["d"]) == [c.encode(), b"d"]
    assert client.round_trips - before == 4


async def test_keys_that_belong_together_share_a_slot(client: RedisClient) -> None:
    """One Redis: the key layout of the single-instance mode, unchanged. A cluster: a send's
    nonce claim and its recipient's directory version share a slot (one script), and so do
    the presence entries of a user's devices."""
    guard = RedisReplayGuard(client)
    presence = RedisPresence(client, node_id="n", ttl_s=30)
    versions = RedisDirectoryVersions(client, guard.batcher)
    try:
        s, nonce = scope(), os.urandom(16)
        await asyncio.gather(
            guard.claim(s, nonce, os.urandom(16), pending_ttl_s=TTL),
            versions.current(s.recipient_user),
            presence.claim(s.sender_user, 1, "t1"),
            presence.claim(s.sender_user, 2, "t2"),
        )
        keys = sorted(k.decode() for k in await client.keys_prefixed())
        sender, recipient, p = s.sender_user, s.recipient_user, client.prefix
        if not client.cluster:
            assert keys == sorted(
                [
                    f"{p}replay:{len(sender)}:{sender}:1:{recipient}:{nonce.hex()}",
                    f"{p}dirversion:{recipient}",
                    f"{p}presence:{sender}:1",
                    f"{p}presence:{sender}:2",
                ]
            )
            return
        claim, version = (
            next(k for k in keys if f"}}{kind}:" in k) for kind in ("replay", "dirversion")
        )
        assert claim.startswith(f"{p}{{{recipient}}}replay:")
        assert slot_of(claim) == slot_of(version)
        devices = [k for k in keys if "}presence:" in k]
        assert len(devices) == 2 and slot_of(devices[0]) == slot_of(devices[1])
    finally:
        await presence.close()
        await guard.close()


async def test_a_script_never_gets_keys_of_two_slots(client: RedisClient) -> None:
    """In a cluster, keys of two slots are refused before anything is sent (a CROSSSLOT
    error cannot happen), and the batcher splits a batch per slot. A tag holding a brace is
    replaced by its digest, so the hash tag is always the whole tag."""
    if not client.cluster:
        assert client.key("a", "b", tag="t") == client.prefix + "a:b"  # tags are cluster-only
        return
    assert slot_of(client.key("x", tag="}u")) == slot_of(client.key("y", tag="}u"))
    assert slot_of(client.key("x", tag="{u")) == slot_of(client.key("y", tag="{u"))
    spread = [client.key("replay", tag=str(n)) for n in range(20)]
    assert len({slot_of(k) for k in spread}) > 1
    before = client.round_trips
    with pytest.raises(CrossSlot):
        await client.evalsha(Script("return #KEYS"), spread, [])
    assert client.round_trips == before  # never sent
    guard = RedisReplayGuard(client)
    try:
        results = await asyncio.gather(
            *(
                guard.claim(ReplayScope("s", 1, str(n)), b"n" * 16, b"m" * 16, pending_ttl_s=TTL)
                for n in range(20)
            )
        )
        assert results == [None] * 20
        # One batch, one script per slot
        assert guard.batcher.calls_sent == 20
        assert guard.batcher.batches_sent == len({slot_of(k) for k in spread})
    finally:
        await guard.close()


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "redis://10.255.255.1:6379/0"])
async def test_a_down_redis_is_unavailable_fast(url: str, cluster: bool) -> None:
    """A closed port (refused at once) and an address that never answers (socket timeout)."""
    client = RedisClient(url, prefix="relaytest:down:", timeout_s=0.5, cluster=cluster)
    guard = RedisReplayGuard(client)
    limiter = RedisRateLimiter(client)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            guard.claim(scope(), os.urandom(24), os.urandom(16), pending_ttl_s=TTL),
            guard.lookup(scope(), os.urandom(24)),
            limiter.hit("k", rate_per_s=1.0, burst=1),
            return_exceptions=True,
        )
        assert time.monotonic() - started < 1.2
        assert all(isinstance(r, Unavailable) for r in results), results
        assert not await client.ping(0.5)
    finally:
        await guard.close()
        await limiter.close()
        await client.close()


async def test_a_store_opens_and_reports_a_down_redis() -> None:
    store = await ProductionStore.open(
        database_url="postgresql://postgres@127.0.0.1:5432/postgres",
        redis_url="redis://127.0.0.1:1/0",
        timeout_s=0.5,
    )
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await store.replay.lookup(scope(), os.urandom(24))
        with pytest.raises(Unavailable):
            await store.rate_limiter.hit("k", rate_per_s=1.0, burst=1)
        assert time.monotonic() - started < 1.2
        assert await store.ready() == {"postgresql": True, "redis": False}
    finally:
        await store.close()
