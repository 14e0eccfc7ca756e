"""The replay guard in a Redis Cluster answers only once a replica holds its writes (EVALSHA
then WAIT on the slot's master, storage/redis_store/replicated.py): a failover cannot take
back a claim. And the node bus follows its shard channel to a new master. Against a cluster
of its own (a replica is paused here, a master handed over)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from e2e.redis_cluster import RedisClusterServers, redis_cluster
from e2e.support import wait_until

from storage.errors import Unavailable
from storage.node_records import BusMessage, BusStored
from storage.records import ReplayRecord, ReplayScope
from storage.redis_store import RedisClient, RedisReplayGuard
from storage.redis_store.bus import RedisNodeBus

from .support import new_user

TTL = 30.0
TIMEOUT_S = 1.0  # the client's bound; WAIT gets half of it
# A replica that is up but starved of CPU (a loaded 2-core machine) may take longer than
# TIMEOUT_S / 2 to acknowledge: the tests of what a returned claim promises give it time.
PATIENT_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def servers() -> Iterator[RedisClusterServers]:
    with redis_cluster() as started:
        yield started


@contextlib.asynccontextmanager
async def cluster_client(
    servers: RedisClusterServers, timeout_s: float
) -> AsyncIterator[RedisClient]:
    redis = RedisClient(
        servers.url, prefix=f"relaytest:{secrets.token_hex(8)}:", timeout_s=timeout_s, cluster=True
    )
    try:
        yield redis
    finally:
        await redis.delete_prefixed()
        await redis.close()


@pytest.fixture
async def client(servers: RedisClusterServers) -> AsyncIterator[RedisClient]:
    async with cluster_client(servers, TIMEOUT_S) as redis:
        yield redis


@pytest.fixture
async def patient_client(servers: RedisClusterServers) -> AsyncIterator[RedisClient]:
    async with cluster_client(servers, PATIENT_TIMEOUT_S) as redis:
        yield redis


async def test_a_claim_is_on_a_replica_when_it_returns(
    patient_client: RedisClient, servers: RedisClusterServers
) -> None:
    client = patient_client
    guard = RedisReplayGuard(client)
    try:
        scopes = [ReplayScope(new_user(), 1, new_user()) for _ in range(30)]
        claims = await asyncio.gather(
            *(guard.claim(s, os.urandom(16), os.urandom(16), pending_ttl_s=TTL) for s in scopes)
        )
        assert claims == [None] * 30
        keys = [k.decode() for k in await client.keys_prefixed()]
        assert len(keys) == 30
        # Read at once from each key's replica, with no wait of our own.
        for key in keys:
            master = servers.master_of(key)
            (replica,) = servers.replicas_of(master)
            with replica.client() as c:
                c.execute_command("READONLY")
                assert c.get(key) is not None, f"{key} not on the replica {replica.port}"
    finally:
        await guard.close()


async def test_a_replica_that_does_not_acknowledge_fails_the_claim_closed(
    client: RedisClient, servers: RedisClusterServers
) -> None:
    guard = RedisReplayGuard(client)
    scope, nonce, message_id = ReplayScope(new_user(), 1, new_user()), os.urandom(16), b"m" * 16
    master = servers.master_of(client.key("replay", tag=scope.recipient_user))
    (replica,) = servers.replicas_of(master)
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="acknowledged"):
            await guard.claim(scope, nonce, message_id, pending_ttl_s=TTL)
        assert time.monotonic() - started < TIMEOUT_S * 1.5
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    try:
        # The claim did run on the master: its retry finds it held by the same message id
        # (the relay then waits for that send's outcome), never a nonce free to take twice.
        async def answered() -> ReplayRecord | None:
            try:
                return await guard.claim(scope, nonce, message_id, pending_ttl_s=TTL)
            except Unavailable:
                return None

        held = await wait_until(answered, 30, "the claim answered once the replica is back")
        assert held == ReplayRecord(message_id, None)
    finally:
        await guard.close()


async def test_the_bus_follows_its_channel_to_a_new_master(
    client: RedisClient, servers: RedisClusterServers, caplog: pytest.LogCaptureFixture
) -> None:
    """A manual failover (CLUSTER FAILOVER on the replica): the old master ends the shard
    subscription (`sunsubscribe`), and the listener subscribes again at the new master and
    asks for a resync."""
    a = RedisNodeBus(client, client.url, node_id="a")
    b = RedisNodeBus(client, client.url, node_id="b")
    received: asyncio.Queue[BusMessage] = asyncio.Queue()
    resynced = asyncio.Event()
    a.start(lambda m: None, lambda: None)
    b.start(received.put_nowait, resynced.set)
    message = BusStored(new_user(), 1, (b"x" * 16,))

    async def delivered() -> bool:
        return await a.publish("b", message)

    try:
        await wait_until(delivered, 10, "b listening")
        assert await asyncio.wait_for(received.get(), 5) == message
        old = servers.master_of(b.channel("b"))
        (replica,) = servers.replicas_of(old)
        with replica.client() as c:
            c.execute_command("CLUSTER", "FAILOVER")
        await asyncio.to_thread(servers.wait_promoted, old)
        await asyncio.wait_for(resynced.wait(), 15)
        await wait_until(delivered, 15, "b listening at the new master")
        assert await asyncio.wait_for(received.get(), 5) == message
        assert servers.master_of(b.channel("b")).port == replica.port
        assert "redis ended the subscription" in caplog.text  # the sunsubscribe path
    finally:
        await a.close()
        await b.close()
