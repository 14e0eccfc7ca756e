"""Spec §3.5 and §5: stored delivery, queue_empty, acks, redelivery, windows, expiry."""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest
from websockets.exceptions import ConnectionClosed

from relay.server import CLOSE_TIMEOUT_S

from .support import (
    Device,
    link_device,
    new_user,
    now_ms,
    offline_user,
    queued_on_return,
    stopped_reader,
    wait_until,
)

PROTOS = ["msgpack", "json"]
CLOSE_1013_SAMPLE = re.compile(r'^relay_\w+\{[^}]*"1013"[^}]*\} ([0-9.e+]+)$', re.MULTILINE)


async def send_many(sender: Device, to: Device, n: int, **kw) -> list[bytes]:
    """N messages, one after the other (each answered before the next): a known order."""
    ids = []
    for i in range(n):
        answer = await sender.send_message(to, body=f"message {i}".encode(), **kw)
        assert answer["t"] == "ok", answer
        ids.append(answer["id"])
    return ids


@pytest.mark.parametrize("proto", PROTOS)
async def test_queue_empty_when_nothing_queued(relay, proto):
    dev = Device(relay.url, proto=proto)
    answer = await dev.register()
    assert answer["queued"] == 0
    assert (await dev.next_push("queue_empty")) == {"t": "queue_empty"}
    await dev.sync()
    assert not dev.buffered("queue_empty")
    answer = await dev.reconnect()
    assert answer["queued"] == 0
    await dev.next_push("queue_empty")
    await dev.sync()
    assert not dev.buffered("queue_empty") and not dev.buffered("deliver")
    await dev.close()


@pytest.mark.parametrize("proto", PROTOS)
async def test_stored_drain_oldest_first_then_one_queue_empty(relay, proto):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url, proto=proto)
    ids = await send_many(a, b, 6)
    auth = await b.reconnect()
    assert auth["queued"] == 6
    got = await b.drain(ack=True)
    assert [d["id"] for d in got] == ids
    assert [d["body"] for d in got] == [f"message {i}".encode() for i in range(6)]
    assert all(d["from"] == a.user and d["from_device"] == 1 for d in got)
    # Exactly one queue_empty: a live message afterwards comes with no second one.
    b.auto_ack = True
    live = await a.send_message(b)
    assert live["delivered"] == [1], live
    await b.next_push("deliver", pred=lambda f: f["id"] == live["id"])
    await b.sync()
    assert not b.buffered("queue_empty")
    await b.no_push("queue_empty", timeout=0.3)
    await a.close()
    await b.close()


async def test_queued_count_per_device(relay):
    a = await new_user(relay.url)
    b1, b2 = await offline_user(relay.url, devices=2)
    for _ in range(3):
        assert (await a.send_message(b1.user, [1, 2]))["stored"] == [1, 2]
    assert (await a.send_message(b1.user, [1, 2]))["t"] == "ok"
    assert (await b1.reconnect())["queued"] == 4
    await b1.drain(ack=True)
    await b1.sync()
    await b1.close()
    assert (await b1.reconnect())["queued"] == 0
    assert (await b2.reconnect())["queued"] == 4
    for d in (a, b1, b2):
        await d.close()


@pytest.mark.parametrize("proto", PROTOS)
async def test_acked_messages_never_delivered_again(relay, proto):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url, proto=proto)
    ids = await send_many(a, b, 3)
    await b.reconnect()
    got = await b.drain(ack=False)
    assert [d["id"] for d in got] == ids
    await b.ack(*ids)  # batched
    await b.sync()
    await b.close()
    auth = await b.reconnect()
    assert auth["queued"] == 0
    assert await b.drain() == []
    await a.close()
    await b.close()


@pytest.mark.parametrize("proto", PROTOS)
async def test_unacked_messages_redelivered_on_reconnect(relay, proto):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url, proto=proto)
    ids = await send_many(a, b, 5)
    await b.reconnect()
    got = await b.drain(ack=False)
    assert [d["id"] for d in got] == ids
    await b.ack(ids[0], ids[2])
    await b.sync()
    await b.close()
    auth = await b.reconnect()
    assert auth["queued"] == 3
    again = await b.drain(ack=False)
    assert [d["id"] for d in again] == [ids[1], ids[3], ids[4]]
    # The redelivered copy is the same message.
    assert again[0]["body"] == got[1]["body"]
    assert again[0]["ts"] == got[1]["ts"]
    assert again[0]["server_ts"] == got[1]["server_ts"]
    assert again[0]["nonce"] == got[1]["nonce"]
    await a.close()
    await b.close()


async def test_acks_read_before_close_take_effect(relay):
    """No request after the acks: the close alone must not lose them."""
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    ids = await send_many(a, b, 4)
    await b.reconnect()
    got = await b.drain(ack=True)
    assert [d["id"] for d in got] == ids
    await b.close()  # the acks went out before the close frame
    auth = await b.reconnect()
    assert await b.drain() == [], "acked messages delivered again"
    # `queued` counts stored messages waiting: acked ones are not waiting any more.
    assert auth["queued"] == 0, "queued counts messages whose acks the server already read"
    await a.close()
    await b.close()


async def test_ack_applies_before_delivery_on_new_connection(relay):
    """An ack the server has received is applied before any later delivery, on any connection."""
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    ids = await send_many(a, b, 3)
    await b.reconnect()
    got = await b.drain(ack=False)
    await b.ack(*(d["id"] for d in got))
    await b.sync()
    # A second connection of the same device replaces the first.
    copy = Device(relay.url, identity=b.identity, user=b.user, device=b.device)
    auth = await copy.auth()
    assert auth["queued"] == 0
    assert await copy.drain() == []
    assert await b.closed_code() == 4001
    assert len(ids) == 3
    await a.close()
    await copy.close()


async def test_ack_of_unknown_or_foreign_id_is_harmless(relay):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    (c,) = await offline_user(relay.url)
    to_b = await a.send_message(b)
    to_c = await a.send_message(c)
    await b.reconnect()
    await b.drain(ack=False)
    # b acks c's message id and a random one: c's message stays.
    await b.ack(to_c["id"], b"\x42" * 16)
    await b.sync()
    assert not b.buffered("error")
    auth = await c.reconnect()
    assert auth["queued"] == 1
    (got,) = await c.drain()
    assert got["id"] == to_c["id"]
    assert to_b["stored"] == [1]
    for d in (a, b, c):
        await d.close()


async def test_ack_is_per_device(relay):
    a = await new_user(relay.url)
    b1, b2 = await offline_user(relay.url, devices=2)
    answer = await a.send_message(b1.user, [1, 2])
    await b1.reconnect()
    (got,) = await b1.drain(ack=True)
    assert got["id"] == answer["id"]
    await b1.sync()
    auth = await b2.reconnect()
    assert auth["queued"] == 1
    (got2,) = await b2.drain()
    assert got2["id"] == answer["id"]
    for d in (a, b1, b2):
        await d.close()


async def test_each_device_gets_its_own_body(relay):
    a = await new_user(relay.url)
    b1, b2 = await offline_user(relay.url, devices=2)
    frame = a.send_frame(
        b1.user,
        [{"device": 1, "type": 1, "body": b"one"}, {"device": 2, "type": 2, "body": b"two"}],
    )
    assert (await a.request(frame))["stored"] == [1, 2]
    await b1.reconnect()
    await b2.reconnect()
    (m1,) = await b1.drain()
    (m2,) = await b2.drain()
    assert (m1["body"], m1["type"]) == (b"one", 1)
    assert (m2["body"], m2["type"]) == (b"two", 2)
    assert m1["id"] == m2["id"] == frame["id"]
    for d in (a, b1, b2):
        await d.close()


# --------------------------------------------------------------------------- ack timeout


@pytest.mark.parametrize("proto", PROTOS)
async def test_ack_timeout_stores_and_still_delivers(relay_factory, proto):
    r = relay_factory(ack_timeout=0.5)
    a = await new_user(r.url)
    b = await new_user(r.url, proto=proto)  # connected, does not ack
    await b.next_push("queue_empty")
    started = asyncio.get_running_loop().time()
    answer = await a.send_message(b)
    assert answer["t"] == "ok", answer
    assert answer["delivered"] == [] and answer["stored"] == [1], answer
    assert asyncio.get_running_loop().time() - started < 10
    got = await b.next_push("deliver")
    assert got["id"] == answer["id"]
    # Acked now: gone for good.
    await b.ack(got["id"])
    await b.sync()
    await b.close()
    auth = await b.reconnect()
    assert auth["queued"] == 0
    assert await b.drain() == []
    await a.close()
    await b.close()


async def test_ack_timeout_unacked_is_redelivered(relay_factory):
    r = relay_factory(ack_timeout=0.5)
    a = await new_user(r.url)
    b = await new_user(r.url)
    await b.next_push("queue_empty")
    answer = await a.send_message(b)
    assert answer["stored"] == [1], answer
    await b.next_push("deliver")
    await b.close()
    auth = await b.reconnect()
    assert auth["queued"] == 1
    (got,) = await b.drain()
    assert got["id"] == answer["id"]
    await a.close()
    await b.close()


async def test_late_ack_after_store_is_applied(relay_factory):
    """The ack arrives after the timeout stored the message: the stored copy goes away."""
    r = relay_factory(ack_timeout=0.5)
    a = await new_user(r.url)
    b = await new_user(r.url)
    await b.next_push("queue_empty")
    task = asyncio.create_task(a.send_message(b))
    got = await b.next_push("deliver")
    answer = await task
    assert answer["stored"] == [1]
    await b.ack(got["id"])
    await b.sync()
    await b.close()
    assert (await b.reconnect())["queued"] == 0
    assert await b.drain() == []
    await a.close()
    await b.close()


async def test_replaced_connection_gets_unacked_message(relay):
    a = await new_user(relay.url)
    b = await new_user(relay.url)
    await b.next_push("queue_empty")
    task = asyncio.create_task(a.send_message(b))
    first = await b.next_push("deliver")
    copy = Device(relay.url, identity=b.identity, user=b.user, device=b.device, auto_ack=True)
    await copy.auth()
    assert await b.closed_code() == 4001
    again = await copy.next_push("deliver", pred=lambda f: f["id"] == first["id"])
    assert again["body"] == first["body"]
    answer = await task
    assert answer["t"] == "ok", answer
    assert sorted(answer["delivered"] + answer["stored"]) == [1], answer
    await copy.sync()
    await copy.close()
    assert (await copy.reconnect())["queued"] == 0
    await a.close()
    await copy.close()


# --------------------------------------------------------------------------- delivery window


async def test_delivery_window(relay_factory):
    r = relay_factory(delivery_window=4)
    a = await new_user(r.url)
    (b,) = await offline_user(r.url)
    ids = await send_many(a, b, 10)
    auth = await b.reconnect()
    assert auth["queued"] == 10
    first = [await b.next_push("deliver") for _ in range(4)]
    assert [d["id"] for d in first] == ids[:4]
    await b.no_push("deliver", timeout=0.7)
    assert not b.buffered("queue_empty"), "queue_empty only after the window advanced"
    # One ack lets one more through.
    await b.ack(ids[0])
    fifth = await b.next_push("deliver")
    assert fifth["id"] == ids[4]
    await b.no_push("deliver", timeout=0.5)
    # Ack everything as it comes: the rest, then one queue_empty.
    await b.ack(*ids[1:5])
    rest = await b.drain(ack=True)
    assert [d["id"] for d in rest] == ids[5:]
    await b.sync()
    await b.close()
    assert (await b.reconnect())["queued"] == 0
    await a.close()
    await b.close()


async def test_delivery_window_applies_to_live_messages_too(relay_factory):
    r = relay_factory(delivery_window=2, ack_timeout=0.3)
    a = await new_user(r.url)
    b = await new_user(r.url)
    await b.next_push("queue_empty")
    answers = await asyncio.gather(*(a.send_message(b) for _ in range(5)))
    assert all(x["t"] == "ok" for x in answers), answers
    # Never more than two unacked deliveries on the connection at once.
    first = [await b.next_push("deliver") for _ in range(2)]
    await b.no_push("deliver", timeout=0.5)
    await b.ack(*(d["id"] for d in first))
    seen = {d["id"] for d in first}
    while len(seen) < 5:
        d = await b.next_push("deliver")
        seen.add(d["id"])
        await b.ack(d["id"])
    assert seen == {x["id"] for x in answers}
    await a.close()
    await b.close()


# --------------------------------------------------------------------------- persistence


async def test_stored_messages_survive_graceful_restart(relay_factory):
    r = relay_factory()
    a = await new_user(r.url)
    (b,) = await offline_user(r.url)
    ids = await send_many(a, b, 3)
    await a.close()
    assert await r.astop() == 0, "SIGTERM stops the relay gracefully"
    await r.arestart()
    b.url = r.url
    auth = await b.reconnect()
    assert auth["queued"] == 3
    got = await b.drain()
    assert [d["id"] for d in got] == ids
    await b.close()


async def test_sigterm_closes_clients_and_exits_zero(relay_factory):
    r = relay_factory()
    a = await new_user(r.url)
    code = await r.astop()
    assert code == 0, r.stderr_tail()
    assert await a.closed_code() is not None


async def test_retention_expires_stored_messages(relay_factory):
    r = relay_factory(retention=1)
    a = await new_user(r.url)
    (b,) = await offline_user(r.url)
    sent_at = now_ms()
    answer = await a.send_message(b)
    assert answer["stored"] == [1]

    async def gone() -> bool:
        auth = await b.reconnect()
        delivered = await b.drain(ack=False)
        await b.close()
        return now_ms() - sent_at > 1000 and auth["queued"] == 0 and delivered == []

    await wait_until(gone, timeout=15, what="the stored message to expire")
    await a.close()


async def _stopped_reader(r) -> tuple[Device, Device, set[bytes]]:
    """A sender, and a reader that stops reading while 64 messages of 200 KB come for it.
    With the ids of those messages."""
    a = await new_user(r.url)
    b = await stopped_reader(r.url)
    body = b"\x00" * 200_000
    answers = []
    for _ in range(8):
        batch = await asyncio.gather(*(a.send_message(b, body=body) for _ in range(8)))
        assert all(x["t"] == "ok" for x in batch), batch
        answers += batch
    assert all(x["stored"] == [1] for x in answers), "nothing was acked"
    return a, b, {x["id"] for x in answers}


async def _closed_1013(r) -> bool:
    # Without reading, the close cannot be seen on the socket itself; /metrics (Prometheus
    # text) counts it.
    _, _, body = await r.ahttp_get("/metrics")
    return any(float(m.group(1)) >= 1 for m in CLOSE_1013_SAMPLE.finditer(body.decode()))


async def test_slow_reader_closed_1013_and_messages_stay_stored(relay_factory):
    r = relay_factory(outbound_buffer_bytes=65536, ack_timeout=0.2)
    a, b, ids = await _stopped_reader(r)
    # The server may give a stalled reader some grace before closing it.
    await wait_until(lambda: _closed_1013(r), timeout=30, what="a 1013 close counted in /metrics")
    # Read again (within the close timeout): the buffered frames, then the close.
    with contextlib.suppress(ConnectionClosed):
        async for _ in b.ws:
            pass
    assert b.ws.close_code == 1013, (b.ws.close_code, b.ws.close_reason)
    # Nothing was lost: every message is stored (acked ones were none).
    assert await queued_on_return(b) == len(ids)
    await a.close()


async def test_slow_reader_that_never_reads_again_is_dropped(relay_factory):
    # Its close frame waits behind what it never took. The relay held such a connection until
    # the keepalive's next ping (websockets drains before its close timeout starts); now the
    # close timeout bounds the whole close, then the TCP connection is dropped.
    r = relay_factory(outbound_buffer_bytes=65536, ack_timeout=0.2, slow_reader_timeout=1)
    a, b, ids = await _stopped_reader(r)
    await wait_until(lambda: _closed_1013(r), timeout=30, what="a 1013 close counted in /metrics")

    async def dropped() -> bool:
        _, _, body = await r.ahttp_get("/metrics")
        return "\nrelay_connections 1.0\n" in body.decode()  # the sender's alone

    await wait_until(dropped, timeout=CLOSE_TIMEOUT_S + 15, what="the reader's connection dropped")
    assert await queued_on_return(b) == len(ids)  # stored for its next connection
    await a.close()
    assert b.conn is not None
    b.conn.abort()  # dropped by the relay already: no closing handshake to wait for


async def test_reading_client_with_large_backlog_is_not_disconnected(relay_factory):
    """Only a client that stops reading is closed with 1013; one that reads gets everything.

    Default limits: 40 stored messages of 200 KB (8 MB) against a 4 MiB outbound buffer.
    """
    r = relay_factory()
    a = await new_user(r.url)
    (b,) = await offline_user(r.url)
    body = b"\x01" * 200_000
    answers = await asyncio.gather(*(a.send_message(b, body=body) for _ in range(40)))
    assert all(x["stored"] == [1] for x in answers), answers
    auth = await b.reconnect()
    assert auth["queued"] == 40
    got = await b.drain(ack=True, timeout=30)
    assert {d["id"] for d in got} == {x["id"] for x in answers}
    await a.close()
    await b.close()


async def test_link_after_messages_new_device_gets_only_new(relay):
    a = await new_user(relay.url)
    b1 = await new_user(relay.url)
    await b1.close()
    await a.send_message(b1)
    b2 = await link_device(b1)
    auth = b2.auth_answer
    assert auth["queued"] == 0
    assert await b2.drain() == []
    await a.close()
    await b2.close()
