"""Delivery receipts for stored messages (docs/protocol.md, the extension): black-box, from
the document alone. A `send` with `receipt: true` whose copy was stored leaves, when that
copy is acknowledged, a `receipt` frame for every device of the sender: live to those
connected (on any node), stored for the others and pushed on connect, acked like a message.
Both stores; the cluster tests below run two production nodes."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .stores import StoreProvisioner
from .support import (
    RelayProcess,
    error_of,
    link_device,
    new_user,
    now_ms,
    offline_user,
    stop_relays,
)

RECEIPT = {"receipt": True}


def receipt_for(message_id: bytes) -> Any:
    return lambda frame: frame.get("message_id") == message_id


async def receipt_stats(relay: RelayProcess) -> dict[str, int]:
    status, _, body = await relay.ahttp_get("/v1/stats")
    assert status == 200
    counts: dict[str, int] = json.loads(body)["receipts"]
    return counts


async def receipts_metric(relay: RelayProcess, event: str) -> float:
    status, _, body = await relay.ahttp_get("/metrics")
    assert status == 200
    line = f'relay_receipts_total{{event="{event}"}} '
    values = [float(x[len(line) :]) for x in body.decode().splitlines() if x.startswith(line)]
    return values[0] if values else 0.0


async def test_a_receipt_reaches_an_offline_sender_later(relay):
    stats_before = await receipt_stats(relay)
    created_before = await receipts_metric(relay, "created")
    alice = await new_user(relay.url)
    (bob,) = await offline_user(relay.url)
    nonce = os.urandom(24)
    message_id = os.urandom(16)
    answer = await alice.send_message(bob, id=message_id, nonce=nonce, extra=RECEIPT)
    assert answer["t"] == "ok" and answer["stored"] == [1] and answer["delivered"] == []
    # A retry after a lost answer gets the same answer and makes no second copy.
    again = await alice.send_message(bob, id=message_id, nonce=nonce, extra=RECEIPT)
    assert again == {**answer, "rid": again["rid"]}
    await alice.close()

    before_ack = now_ms()
    await bob.reconnect()
    (delivered,) = await bob.drain(ack=True)
    assert delivered["id"] == message_id
    await bob.sync()  # the ack took effect
    after_ack = now_ms()

    auth = await alice.reconnect()
    assert auth["queued"] == 1  # the receipt waits like a message
    receipt = await alice.next_push("receipt")
    assert set(receipt) == {"t", "id", "message_id", "user", "device", "server_ts"}
    assert receipt["message_id"] == message_id
    assert (receipt["user"], receipt["device"]) == (bob.user, bob.device)
    assert before_ack <= receipt["server_ts"] <= after_ack
    assert len(receipt["id"]) == 16 and receipt["id"] != message_id
    await alice.next_push("queue_empty")  # after the receipt held at the handshake
    await alice.ack(receipt["id"])
    await alice.sync()

    # Acknowledged: never pushed again, and only one was made for the two sends.
    auth = await alice.reconnect()
    assert auth["queued"] == 0
    await alice.next_push("queue_empty")
    assert alice.buffered("receipt") == []
    await alice.close()
    await bob.close()

    # Counted once each: the retry was answered from the replay record.
    stats_after = await receipt_stats(relay)
    assert {k: stats_after[k] - stats_before[k] for k in stats_after} == {
        "requested": 1,
        "created": 1,
        "pushed": 1,
    }
    assert await receipts_metric(relay, "created") == created_before + 1


async def test_online_sender_devices_get_the_receipt_live(relay):
    alice = await new_user(relay.url)
    alice2 = await link_device(alice)
    (bob,) = await offline_user(relay.url)
    answer = await alice.send_message(bob, extra=RECEIPT)
    assert answer["stored"] == [1]
    await bob.reconnect()
    (delivered,) = await bob.drain(ack=True)

    first = await alice.next_push("receipt", pred=receipt_for(delivered["id"]))
    second = await alice2.next_push("receipt", pred=receipt_for(delivered["id"]))
    assert first == second  # one receipt, the same id on every device of the sender
    assert (first["user"], first["device"]) == (bob.user, 1)
    for device in (alice, alice2):
        await device.ack(first["id"])
        await device.sync()
        assert (await device.reconnect())["queued"] == 0
        await device.close()
    await bob.close()


async def test_no_receipt_without_the_flag_or_for_a_live_delivery(relay):
    alice = await new_user(relay.url)
    bob = await new_user(relay.url, auto_ack=True)
    await bob.next_push("queue_empty")
    live = await alice.send_message(bob, extra=RECEIPT)
    assert live["delivered"] == [1]  # the ok is the receipt: none follows
    await bob.close()
    unflagged = await alice.send_message(bob)
    assert unflagged["stored"] == [1]
    marker = await alice.send_message(bob, extra=RECEIPT)
    assert marker["stored"] == [1]
    await bob.reconnect()
    got = await bob.drain(ack=True)
    assert [d["id"] for d in got] == [unflagged["id"], marker["id"]]

    # Receipts come in the order they were made: the marker's is the first and only one.
    receipt = await alice.next_push("receipt")
    assert receipt["message_id"] == marker["id"]
    await alice.ack(receipt["id"])
    await alice.sync()
    assert alice.buffered("receipt") == []
    assert (await alice.reconnect())["queued"] == 0
    await alice.close()
    await bob.close()


async def test_receipt_with_online_is_a_bad_frame_and_false_is_v1(relay):
    alice = await new_user(relay.url)
    bob = await new_user(relay.url)
    refused = await alice.send_message(bob, online=True, extra=RECEIPT)
    error_of(refused, "bad_frame")
    assert refused["rid"] is not None
    # `receipt: false` is the same as no key: stored, and no receipt is ever made.
    await bob.close()
    plain = await alice.send_message(bob, extra={"receipt": False})
    assert plain["stored"] == [1]
    marker = await alice.send_message(bob, extra=RECEIPT)
    await bob.reconnect()
    await bob.drain(ack=True)
    receipt = await alice.next_push("receipt")
    assert receipt["message_id"] == marker["id"]
    await alice.close()
    await bob.close()


async def test_a_receipt_for_a_late_ack_of_a_live_push(relay_factory):
    relay = relay_factory(ack_timeout=0.3)
    alice = await new_user(relay.url)
    bob = await new_user(relay.url)  # connected, but does not ack in time
    await bob.next_push("queue_empty")
    answer = await alice.send_message(bob, extra=RECEIPT)
    assert answer["stored"] == [1]  # the ack did not come within the ack timeout
    pushed = await bob.next_push("deliver")
    await bob.ack(pushed["id"])  # late: removes the stored copy, which leaves the receipt
    receipt = await alice.next_push("receipt", pred=receipt_for(pushed["id"]))
    assert (receipt["user"], receipt["device"]) == (bob.user, 1)
    await alice.close()
    await bob.close()


# --------------------------------------------------------------------------- two nodes


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    provisioner = StoreProvisioner("production")
    env = provisioner.new_store_env()
    nodes = [RelayProcess(tmp_path / f"node-{name}", {"node_id": name}, env=env) for name in "ab"]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            if node.running():
                os.kill(node.pid, signal.SIGCONT)
        problems = stop_relays(nodes)
        provisioner.cleanup()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


async def test_receipts_cross_nodes_live_and_stored(two_nodes):
    a, b = two_nodes
    alice = await new_user(a.url)
    alice2 = await link_device(alice)
    await alice2.close()  # offline: gets it on connect, on the other node
    (bob,) = await offline_user(b.url)
    answer = await alice.send_message(bob, extra=RECEIPT)
    assert answer["stored"] == [1]
    await bob.reconnect()  # on node b
    (delivered,) = await bob.drain(ack=True)

    live = await alice.next_push("receipt", pred=receipt_for(delivered["id"]))
    assert (live["user"], live["device"]) == (bob.user, 1)
    alice2.url = b.url
    assert (await alice2.reconnect())["queued"] == 1
    stored = await alice2.next_push("receipt")
    assert stored == live
    await alice2.ack(stored["id"])
    await alice2.sync()
    assert (await alice2.reconnect())["queued"] == 0
    for device in (alice, alice2, bob):
        await device.close()


async def test_the_recipients_ack_does_not_wait_for_the_senders_node(two_nodes):
    a, b = two_nodes
    alice = await new_user(a.url)
    (bob,) = await offline_user(b.url)
    answer = await alice.send_message(bob, extra=RECEIPT)
    assert answer["stored"] == [1]
    os.kill(a.pid, signal.SIGSTOP)  # the sender's node cannot be told
    try:
        await bob.reconnect()
        (delivered,) = await bob.drain(ack=True)
        await bob.sync()  # answered at once: the ack took effect without the receipt's push
        assert (await bob.reconnect())["queued"] == 0
    finally:
        os.kill(a.pid, signal.SIGCONT)
    receipt = await alice.next_push("receipt", pred=receipt_for(delivered["id"]), timeout=40)
    assert (receipt["user"], receipt["device"]) == (bob.user, 1)
    await alice.close()
    await bob.close()
