"""Presence and the node bus in Redis: compare-and-delete by connection token, refresh and
expiry, one round trip for many lookups, the node registry, and typed bus messages between
two nodes (the embedded loopback too)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest
from e2e.support import wait_until

from storage.embedded.single_node import LoopbackBus
from storage.node_records import (
    BusAcked,
    BusClose,
    BusClosed,
    BusDeliver,
    BusKeysLow,
    BusMessage,
    BusStored,
    Holder,
    Refresh,
)
from storage.records import Envelope
from storage.redis_store import RedisClient
from storage.redis_store.bus import BadMessage, RedisNodeBus, decode_message, encode_message
from storage.redis_store.client import slot_of
from storage.redis_store.presence import RedisPresence

from .support import RedisTarget, new_user

ENVELOPE = Envelope(
    id=b"i" * 16,
    recipient_user=new_user(),
    recipient_device=2,
    sender_user=new_user(),
    sender_device=1,
    ts=1,
    server_ts=2,
    type=3,
    body=b"ciphertext",
    nonce=b"n" * 24,
    expires_ms=4,
)
MESSAGES: list[BusMessage] = [
    BusDeliver("a", 7, ENVELOPE, False),
    BusAcked((1, 2, 3), True),
    BusStored(ENVELOPE.recipient_user, 2, (b"x" * 16, b"y" * 16)),
    BusClose(ENVELOPE.recipient_user, 2, 4001, "replaced", "tok", "b", 9),
    BusClose(ENVELOPE.recipient_user, 2, 4002, "removed", None, None, 0),
    BusClosed(9, (b"z" * 16,)),
    BusKeysLow(ENVELOPE.recipient_user, 2, 9, 0),
]


@pytest.fixture
async def client(redis_target: RedisTarget) -> AsyncIterator[RedisClient]:
    redis = redis_target.client(f"relaytest:{secrets.token_hex(8)}:")
    try:
        yield redis
    finally:
        await redis.delete_prefixed()
        assert await redis.keys_prefixed() == []
        await redis.close()


async def test_claim_release_and_locate(client: RedisClient) -> None:
    a = RedisPresence(client, node_id="a", ttl_s=30)
    b = RedisPresence(client, node_id="b", ttl_s=30)
    user = new_user()
    assert await a.claim(user, 1, "t1") is None
    assert await b.claim(user, 1, "t2") == Holder("a", "t1")  # the newer connection wins
    await a.release(user, 1, "t1")  # a stale detach: b's entry stays
    assert await a.locate([(user, 1), (user, 2)]) == ["b", None]
    await b.release(user, 1, "t2")
    assert await a.locate([(user, 1)]) == [None]
    await a.close()
    await b.close()


async def test_many_lookups_share_one_round_trip(client: RedisClient) -> None:
    presence = RedisPresence(client, node_id="a", ttl_s=30)
    devices = [(new_user(), 1) for _ in range(100)]
    for user, device in devices[:50]:
        await presence.claim(user, device, "t")
    before = client.round_trips
    nodes = await presence.locate(devices)
    # One batch: one script with one Redis; in a cluster one script per slot (a user's
    # devices share one), side by side.
    slots = {slot_of(client.key("presence", u, "1", tag=u)) for u, _ in devices}
    assert client.round_trips - before == (len(slots) if client.cluster else 1)
    assert nodes == ["a"] * 50 + [None] * 50
    await presence.close()


async def test_refresh_keeps_restores_and_reports_taken(client: RedisClient) -> None:
    a = RedisPresence(client, node_id="a", ttl_s=30)
    b = RedisPresence(client, node_id="b", ttl_s=30)
    kept, gone, taken = new_user(), new_user(), new_user()
    await a.claim(kept, 1, "k")
    await a.claim(taken, 1, "t")
    await b.claim(taken, 1, "newer")
    results = await a.refresh([(kept, 1, "k"), (gone, 1, "g"), (taken, 1, "t")])
    assert results == [Refresh.KEPT, Refresh.RESTORED, Refresh.TAKEN]
    assert await b.locate([(kept, 1), (gone, 1), (taken, 1)]) == ["a", "a", "b"]
    await a.close()
    await b.close()


async def _located(presence: RedisPresence, user: str) -> str | None:
    (node,) = await presence.locate([(user, 1)])
    return node


async def test_entries_expire_unless_refreshed(
    client: RedisClient, redis_target: RedisTarget
) -> None:
    ttl_s = 1.0
    presence = RedisPresence(client, node_id="a", ttl_s=ttl_s)
    kept, left = new_user(), new_user()
    claimed = time.monotonic()
    await presence.claim(kept, 1, "k")
    await presence.claim(left, 1, "l")
    raw = redis_target.raw()

    async def refreshed_until_left_expires() -> bool:
        assert await presence.refresh([(kept, 1, "k")]) == [Refresh.KEPT]
        return await _located(presence, left) is None

    async def kept_expired() -> bool:
        return not await raw.exists(client.key("presence", kept, "1", tag=kept))

    try:
        assert 0 < await raw.pttl(client.key("presence", left, "1", tag=left)) <= ttl_s * 1000
        await wait_until(refreshed_until_left_expires, 10 * ttl_s, "the unrefreshed entry")
        assert time.monotonic() - claimed >= ttl_s * 0.9  # it lived about its expiry...
        assert await _located(presence, kept) == "a"  # ...which `kept` outlived, refreshed
        assert await raw.pttl(client.key("presence", kept, "1", tag=kept)) > ttl_s * 1000 * 0.5
        # Unrefreshed, `kept` expires too; a refresh then puts the entry back.
        await wait_until(kept_expired, 10 * ttl_s, "the entry no longer refreshed")
        assert await _located(presence, kept) is None
        assert await presence.refresh([(kept, 1, "k")]) == [Refresh.RESTORED]
        assert await _located(presence, kept) == "a"
    finally:
        await raw.aclose()
        await presence.close()


async def test_node_registry(client: RedisClient) -> None:
    a = RedisPresence(client, node_id="a", ttl_s=30)
    b = RedisPresence(client, node_id="b", ttl_s=30)
    await a.heartbeat(3)
    await b.heartbeat(0)
    listed = await a.nodes()
    assert [(n.node_id, n.connections) for n in listed] == [("a", 3), ("b", 0)]
    assert all(n.heartbeat_ms > 0 for n in listed)
    await b.leave()
    assert [n.node_id for n in await a.nodes()] == ["a"]
    await a.close()
    await b.close()


def test_messages_round_trip_through_the_encoding() -> None:
    for message in MESSAGES:
        assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x90", b"\x92\xa5acked\x01", b"\x91\xa4nope", b"\x93\xa6closed\x01\x05"],
)
def test_bad_messages_are_refused(data: bytes) -> None:
    with pytest.raises(BadMessage):
        decode_message(data)


async def test_bus_between_two_nodes(client: RedisClient) -> None:
    a = RedisNodeBus(client, client.url, node_id="a")
    b = RedisNodeBus(client, client.url, node_id="b")
    received: asyncio.Queue[BusMessage] = asyncio.Queue()
    resynced = asyncio.Event()
    a.start(lambda m: None, lambda: None)
    b.start(received.put_nowait, resynced.set)
    try:
        async with asyncio.timeout(10):
            # Each publish is a round trip that reports the subscribers: repeat until b's
            # listener has subscribed.
            while not await a.publish("b", MESSAGES[0]):
                pass
            assert await received.get() == MESSAGES[0]
            for message in MESSAGES[1:]:
                assert await a.publish("b", message)
            assert [await received.get() for _ in MESSAGES[1:]] == MESSAGES[1:]
        assert not await a.publish("nobody", MESSAGES[1]), "no node listens there"
        assert not resynced.is_set()
    finally:
        await a.close()
        await b.close()


async def test_loopback_bus_reaches_only_itself() -> None:
    bus = LoopbackBus(node_id="only")
    received: asyncio.Queue[BusMessage] = asyncio.Queue()
    bus.start(received.put_nowait, lambda: None)
    assert await bus.publish("only", MESSAGES[1])
    assert await asyncio.wait_for(received.get(), 5) == MESSAGES[1]
    assert not await bus.publish("other", MESSAGES[1])
    await bus.close()
