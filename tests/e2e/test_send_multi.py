"""`send.multi` (docs/protocol.md, Multi-recipient send), black box, on both stores; with the
production store across two nodes sharing it (the embedded store serves one node, so there
both "nodes" are the same relay).

A group of 100 users with 3 devices each, some offline, spread over the nodes: every device
gets its body once, the offline ones on reconnect, and a retry after a lost answer delivers
nothing twice; a stale member device fails the whole frame with per-user details; and the
frame's validation and limit errors."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from .stores import StoreProvisioner
from .support import (
    Device,
    RelayProcess,
    error_of,
    new_id,
    new_nonce,
    now_ms,
    offline_user,
    stop_relays,
)

GROUP_USERS = 100
DEVICES_PER_USER = 3
MAX_USERS = 100  # the relay's defaults: 100 users, 1000 device entries
QUIET_S = 0.5  # how long "no second delivery" is watched for


@pytest.fixture(scope="module")
def nodes(
    stores: StoreProvisioner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RelayProcess]]:
    """Two nodes sharing one store (production), or one relay named twice (embedded)."""
    root: Path = tmp_path_factory.mktemp("multi")
    env = stores.new_store_env()
    options: dict[str, Any] = {"max_registrations_per_address": 0}
    names = ["a", "b"] if stores.mode != "embedded" else ["a"]
    relays = [
        RelayProcess(root / f"node-{name}", {**options, "node_id": name}, env=env) for name in names
    ]
    for relay in relays:
        relay.start()
    yield relays if len(relays) == 2 else [relays[0], relays[0]]
    problems = stop_relays(relays)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@dataclass
class Member:
    """A recipient user of the group and its devices (connected or not)."""

    user: str
    devices: list[Device]


async def _member(urls: list[str], index: int) -> Member:
    """A user with DEVICES_PER_USER devices, alternating between the nodes."""
    first = Device(urls[index % 2], registration_id=1000 + index)
    await first.register()
    devices = [first]
    for n in range(1, DEVICES_PER_USER):
        linked = Device(urls[(index + n) % 2], registration_id=2000 + index * 10 + n)
        await linked.register(link_by=first)
        devices.append(linked)
    assert first.user is not None
    return Member(first.user, devices)


@pytest_asyncio.fixture
async def group(nodes: list[RelayProcess]) -> AsyncIterator[list[Member]]:
    urls = [n.url for n in nodes]
    members: list[Member] = []
    for start in range(0, GROUP_USERS, 20):  # registered in batches, not 300 at once
        members += await asyncio.gather(*(_member(urls, i) for i in range(start, start + 20)))
    yield members
    await asyncio.gather(*(d.close() for m in members for d in m.devices))


def _frame(
    to: list[dict[str, Any]], *, payload: bytes | None = None, **fields: Any
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "t": "send.multi",
        "id": new_id(),
        "ts": now_ms(),
        "nonce": new_nonce(),
        "to": to,
        **fields,
    }
    if payload is not None:
        frame["payload"] = payload
    return frame


def _entry(device: Device, body: bytes, *, registration_id: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {"device": device.device, "type": 3, "body": body}
    if registration_id:
        entry["registration_id"] = device.registration_id
    return entry


def _header(device: Device) -> bytes:
    return f"hdr:{device.user}:{device.device}:".encode() + secrets.token_bytes(8)


async def _exactly_once(device: Device, message_id: bytes, body: bytes) -> None:
    """One deliver of `message_id` with `body`, acked; no second one on this connection."""
    got = await device.next_push("deliver", pred=lambda f: f["id"] == message_id)
    assert got["body"] == body
    assert got["type"] == 3
    await device.ack(message_id)
    await device.no_push("deliver", timeout=QUIET_S, pred=lambda f: f["id"] == message_id)


@pytest.mark.asyncio
async def test_group_of_100_users_with_offline_devices_and_a_retried_frame(
    nodes: list[RelayProcess], group: list[Member]
) -> None:
    sender = Device(nodes[0].url)
    await sender.register()
    # Offline: device 3 of every user, and every device of each tenth user.
    offline = {
        (m.user, d.device)
        for i, m in enumerate(group)
        for d in m.devices
        if d.device == DEVICES_PER_USER or i % 10 == 0
    }
    for m in group:
        for d in m.devices:
            if (m.user, d.device) in offline:
                await d.close()
    payload = secrets.token_bytes(1500)
    headers = {(m.user, d.device): _header(d) for m in group for d in m.devices}
    to = [
        {"user": m.user, "devices": [_entry(d, headers[(m.user, d.device)]) for d in m.devices]}
        for m in group
    ]
    frame = _frame(to, payload=payload)
    frame["rid"] = sender.next_rid()

    async def acking(device: Device) -> None:
        got = await device.next_push("deliver", pred=lambda f: f["id"] == frame["id"])
        assert got["body"] == headers[(device.user, device.device)] + payload
        assert got["from"] == sender.user and got["from_device"] == sender.device
        assert got["nonce"] == frame["nonce"] and got["ts"] == frame["ts"]
        await device.ack(frame["id"])

    online_devices = [d for m in group for d in m.devices if (m.user, d.device) not in offline]
    acks = [asyncio.ensure_future(acking(d)) for d in online_devices]
    answer = await sender.request(frame, timeout=30)
    await asyncio.gather(*acks)
    assert answer["t"] == "ok", answer
    assert answer["id"] == frame["id"]
    assert [u["user"] for u in answer["users"]] == [m.user for m in group]
    for m, result in zip(group, answer["users"], strict=True):
        expected_stored = sorted(d.device for d in m.devices if (m.user, d.device) in offline)
        expected_delivered = sorted(
            d.device for d in m.devices if (m.user, d.device) not in offline
        )
        assert result["stored"] == expected_stored, (m.user, result)
        assert result["delivered"] == expected_delivered, (m.user, result)

    # The answer was lost: the same frame again is answered the same, and delivers nothing.
    again = await sender.request(dict(frame, rid=sender.next_rid()), timeout=30)
    assert again["t"] == "ok" and again["users"] == answer["users"]
    await asyncio.gather(
        *(
            d.no_push("deliver", timeout=QUIET_S, pred=lambda f: f["id"] == frame["id"])
            for d in online_devices
        )
    )

    # The offline devices get it on reconnect, once, on whichever node.
    async def reconnecting(device: Device) -> None:
        await device.reconnect()
        got = await device.drain()
        mine = [f for f in got if f["id"] == frame["id"]]
        assert len(mine) == 1, mine
        assert mine[0]["body"] == headers[(device.user, device.device)] + payload

    returning = [d for m in group for d in m.devices if (m.user, d.device) in offline]
    for start in range(0, len(returning), 25):
        await asyncio.gather(*(reconnecting(d) for d in returning[start : start + 25]))
    # Acknowledged everywhere: a retry now still stores and delivers nothing.
    third = await sender.request(dict(frame, rid=sender.next_rid()), timeout=30)
    assert third["t"] == "ok" and third["users"] == answer["users"]
    for d in returning[:10]:
        await d.reconnect()
        assert await d.drain() == []
    await sender.close()


@pytest.mark.asyncio
async def test_per_device_bodies_reach_each_device(nodes: list[RelayProcess]) -> None:
    sender = Device(nodes[0].url)
    await sender.register()
    members = [await _member([n.url for n in nodes], i) for i in range(3)]
    bodies = {(m.user, d.device): secrets.token_bytes(40) for m in members for d in m.devices}
    # The sender's own other device is addressed too (in the sender's own entry).
    own = Device(nodes[1].url)
    await own.register(link_by=sender)
    to = [
        {"user": m.user, "devices": [_entry(d, bodies[(m.user, d.device)]) for d in m.devices]}
        for m in members
    ]
    to.append({"user": sender.user, "devices": [_entry(own, b"to-myself", registration_id=False)]})
    for d in [d for m in members for d in m.devices]:
        d.auto_ack = True
    own.auto_ack = True
    frame = _frame(to)
    before = await _multi_stats(nodes[0])
    answer = await sender.request(frame, timeout=30)
    assert answer["t"] == "ok", answer
    after = await _multi_stats(nodes[0])
    assert after["frames"] == before["frames"] + 1
    assert after["shared"] == before["shared"]
    assert after["devices"] == before["devices"] + 3 * DEVICES_PER_USER + 1
    status, _, metrics = await nodes[0].ahttp_get("/metrics")
    assert status == 200
    assert b'relay_multi_sends_total{form="per_device"}' in metrics
    assert b'relay_frames_received_total{type="send.multi"}' in metrics
    assert answer["users"][-1] == {"user": sender.user, "delivered": [own.device], "stored": []}
    for m in members:
        for d in m.devices:
            got = await d.next_push("deliver", pred=lambda f: f["id"] == frame["id"])
            assert got["body"] == bodies[(m.user, d.device)]
    got = await own.next_push("deliver", pred=lambda f: f["id"] == frame["id"])
    assert got["body"] == b"to-myself"
    await asyncio.gather(
        sender.close(), own.close(), *(d.close() for m in members for d in m.devices)
    )


@pytest.mark.asyncio
async def test_device_set_errors_name_every_user_and_fail_the_whole_frame(
    nodes: list[RelayProcess],
) -> None:
    sender = Device(nodes[0].url)
    await sender.register()
    members = [await _member([n.url for n in nodes], i) for i in range(4)]
    right = {m.user: [_entry(d, _header(d)) for d in m.devices] for m in members}
    wrong = {user: list(entries) for user, entries in right.items()}
    a, b, c, _ = members
    wrong[a.user] = right[a.user][:-1]  # a device missing
    wrong[b.user] = [*right[b.user], {"device": 99, "type": 3, "body": b"x"}]  # one extra
    stale_entry = dict(right[c.user][0], registration_id=4242)  # a stale member device
    wrong[c.user] = [stale_entry, *right[c.user][1:]]
    frame = _frame([{"user": m.user, "devices": wrong[m.user]} for m in members], payload=b"shared")
    answer = await sender.request(frame)
    error_of(answer, "mismatched_devices")
    assert "missing" not in answer and "extra" not in answer and "stale" not in answer
    assert answer["users"] == [
        {"user": a.user, "missing": [a.devices[-1].device], "extra": [], "stale": []},
        {"user": b.user, "missing": [], "extra": [99], "stale": []},
        {"user": c.user, "missing": [], "extra": [], "stale": [c.devices[0].device]},
    ]
    # Nothing went anywhere.
    await asyncio.gather(
        *(d.no_push("deliver", timeout=QUIET_S) for m in members for d in m.devices)
    )
    # Only the stale one left: stale_devices, with that user alone.
    wrong[a.user], wrong[b.user] = right[a.user], right[b.user]
    frame["to"] = [{"user": m.user, "devices": wrong[m.user]} for m in members]
    answer = await sender.request(frame)
    error_of(answer, "stale_devices")
    assert answer["users"] == [
        {"user": c.user, "missing": [], "extra": [], "stale": [c.devices[0].device]}
    ]
    # Fixed, with the same id and nonce: the nonce was never used up.
    frame["to"] = [{"user": m.user, "devices": right[m.user]} for m in members]
    for m in members:
        for d in m.devices:
            d.auto_ack = True
    answer = await sender.request(frame, timeout=30)
    assert answer["t"] == "ok", answer
    for m in members:
        for d in m.devices:
            got = await d.next_push("deliver", pred=lambda f: f["id"] == frame["id"])
            assert (
                got["body"]
                == next(e["body"] for e in right[m.user] if e["device"] == d.device) + b"shared"
            )
    await asyncio.gather(sender.close(), *(d.close() for m in members for d in m.devices))


@pytest.mark.asyncio
async def test_validation_and_limits(nodes: list[RelayProcess]) -> None:
    sender = Device(nodes[0].url)
    await sender.register()
    member = await _member([n.url for n in nodes], 0)
    entries = [_entry(d, b"h") for d in member.devices]
    one = {"user": member.user, "devices": entries}

    error_of(await sender.request(_frame([])), "bad_frame")
    error_of(await sender.request(_frame([one, one])), "bad_frame")
    twice = {"user": member.user, "devices": [entries[0], entries[0]]}
    error_of(await sender.request(_frame([twice])), "bad_frame")
    many = [{"user": _uuid(), "devices": []} for _ in range(MAX_USERS + 1)]
    error_of(await sender.request(_frame(many)), "too_large")
    big_header = [dict(entries[0], body=b"h" * 4097), *entries[1:]]
    error_of(
        await sender.request(_frame([{"user": member.user, "devices": big_header}], payload=b"p")),
        "too_large",
    )
    over = [dict(entries[0], body=b"h" * 100), *entries[1:]]
    error_of(
        await sender.request(
            _frame([{"user": member.user, "devices": over}], payload=b"p" * (256 * 1024 - 50))
        ),
        "too_large",
    )
    strangers = [_uuid(), _uuid()]
    answer = await sender.request(_frame([one, *({"user": u, "devices": []} for u in strangers)]))
    error_of(answer, "unknown_user")
    assert answer["unknown_users"] == strangers
    error_of(await sender.request(_frame([one], ts=now_ms() - 3_600_000)), "stale_timestamp")

    # The nonce scope is the sending device's: another id with a used nonce is `replay`,
    # as is a copy with other recipients; a `send` with that nonce is not.
    for d in member.devices:
        d.auto_ack = True
    first = _frame([one])
    assert (await sender.request(first, timeout=30))["t"] == "ok"
    error_of(await sender.request(dict(first, id=new_id())), "replay")
    fewer = {"user": member.user, "devices": entries[:2]}
    error_of(await sender.request(dict(first, to=[fewer])), "replay")
    plain = await sender.send_message(
        member.devices[0].user, [d.device for d in member.devices], nonce=first["nonce"]
    )
    assert plain["t"] == "ok", plain
    await asyncio.gather(sender.close(), *(d.close() for d in member.devices))


async def _multi_stats(node: RelayProcess) -> dict[str, int]:
    status, _, body = await node.ahttp_get("/v1/stats")
    assert status == 200
    counts: dict[str, int] = json.loads(body)["multi_sends"]
    return counts


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


@pytest.mark.asyncio
async def test_conflict_with_a_pending_id_from_another_sender(nodes: list[RelayProcess]) -> None:
    sender, other = Device(nodes[0].url), Device(nodes[1].url)
    await sender.register()
    await other.register()
    member = await _member([n.url for n in nodes], 0)
    for d in member.devices:
        await d.close()
    message_id = new_id()
    stored = await other.send_message(
        member.user, [d.device for d in member.devices], id=message_id
    )
    assert stored["t"] == "ok" and len(stored["stored"]) == DEVICES_PER_USER
    frame = _frame(
        [{"user": member.user, "devices": [_entry(d, b"h") for d in member.devices]}],
        id=message_id,
    )
    error_of(await sender.request(frame), "conflict")
    # The refused frame stored nothing: the device finds the other sender's message alone.
    device = member.devices[0]
    await device.reconnect()
    got = await device.drain()
    assert [(f["id"], f["from"]) for f in got] == [(message_id, other.user)]
    await asyncio.gather(sender.close(), other.close(), device.close())


@pytest.mark.asyncio
async def test_a_copy_sent_while_the_first_is_in_flight_gets_its_answer(
    nodes: list[RelayProcess],
) -> None:
    """The members do not ack: the first frame waits out the ack timeout, the copy waits
    for its outcome, and each device has the message once."""
    sender = Device(nodes[0].url)
    await sender.register()
    member = await _member([n.url for n in nodes], 0)
    frame = _frame([{"user": member.user, "devices": [_entry(d, b"h") for d in member.devices]}])
    first, copy = await asyncio.gather(
        sender.request(dict(frame, rid=sender.next_rid()), timeout=30),
        sender.request(dict(frame, rid=sender.next_rid()), timeout=30),
    )
    assert first["t"] == copy["t"] == "ok", (first, copy)
    assert first["users"] == copy["users"]
    (result,) = first["users"]
    assert sorted(result["delivered"] + result["stored"]) == [d.device for d in member.devices]
    for d in member.devices:
        got = await d.next_push("deliver", pred=lambda f: f["id"] == frame["id"])
        assert got["body"] == b"h"
        await d.ack(frame["id"])
        await d.no_push("deliver", timeout=QUIET_S, pred=lambda f: f["id"] == frame["id"])
    await asyncio.gather(sender.close(), *(d.close() for d in member.devices))


@pytest.mark.asyncio
async def test_receipts_follow_the_stored_copies_of_a_group_message(
    nodes: list[RelayProcess],
) -> None:
    """`receipt: true` on `send.multi` (docs/protocol.md, Delivery receipts): each device
    the answer lists as `stored` brings the sender a receipt once it acknowledges its copy;
    a device that acknowledged it live brings none; with `online` the flag is `bad_frame`."""
    sender = Device(nodes[0].url)
    await sender.register()
    (away,) = await offline_user(nodes[-1].url)
    live = Device(nodes[-1].url)
    await live.register()
    live.auto_ack = True
    frame = _frame(
        [
            {
                "user": away.user,
                "devices": [_entry(away, b"to the one away", registration_id=False)],
            },
            {
                "user": live.user,
                "devices": [_entry(live, b"to the one here", registration_id=False)],
            },
        ],
        receipt=True,
    )
    answer = await sender.request(frame, timeout=30)
    assert answer["t"] == "ok", answer
    assert answer["users"] == [
        {"user": away.user, "delivered": [], "stored": [away.device]},
        {"user": live.user, "delivered": [live.device], "stored": []},
    ]
    await away.reconnect()
    (got,) = await away.drain(ack=True)
    assert got["id"] == frame["id"] and got["body"] == b"to the one away"
    receipt = await sender.next_push("receipt")
    assert receipt["message_id"] == frame["id"]
    assert (receipt["user"], receipt["device"]) == (away.user, away.device)
    await sender.ack(receipt["id"])
    await sender.no_push("receipt", timeout=QUIET_S)  # none for the live copy

    typing = _frame(
        [{"user": live.user, "devices": [_entry(live, b"typing", registration_id=False)]}],
        online=True,
        receipt=True,
    )
    error_of(await sender.request(typing, timeout=30), "bad_frame")
    await asyncio.gather(sender.close(), away.close(), live.close())


@pytest.mark.asyncio
async def test_an_online_frame_reaches_connected_devices_only(nodes: list[RelayProcess]) -> None:
    sender = Device(nodes[0].url)
    await sender.register()
    member = await _member([n.url for n in nodes], 0)
    away = member.devices[-1]
    await away.close()
    for d in member.devices[:-1]:
        d.auto_ack = True
    frame = _frame(
        [{"user": member.user, "devices": [_entry(d, b"typing") for d in member.devices]}],
        online=True,
    )
    answer = await sender.request(frame, timeout=30)
    assert answer["t"] == "ok", answer
    assert answer["users"] == [
        {
            "user": member.user,
            "delivered": sorted(d.device for d in member.devices[:-1]),
            "stored": [],
        }
    ]
    for d in member.devices[:-1]:
        got = await d.next_push("deliver", pred=lambda f: f["id"] == frame["id"])
        assert got["online"] is True
    await away.reconnect()
    assert await away.drain() == []  # never stored
    await asyncio.gather(sender.close(), *(d.close() for d in member.devices))


@pytest.mark.asyncio
async def test_a_full_queue_refuses_the_whole_frame(relay_factory: Any) -> None:
    relay = relay_factory(max_stored_messages=1, max_registrations_per_address=0)
    sender = Device(relay.url)
    await sender.register()
    full, roomy = await _member([relay.url, relay.url], 0), await _member([relay.url] * 2, 1)
    for d in (*full.devices, *roomy.devices):
        await d.close()
    filler = await sender.send_message(full.user, [d.device for d in full.devices])
    assert filler["t"] == "ok"
    to = [{"user": m.user, "devices": [_entry(d, b"h") for d in m.devices]} for m in (roomy, full)]
    frame = _frame(to, payload=b"shared")
    answer = await sender.request(frame, timeout=30)
    error_of(answer, "too_large")
    assert full.user in answer["message"]
    # Nothing of it was stored for the device with room; the nonce is free again.
    first = roomy.devices[0]
    await first.reconnect()
    assert await first.drain() == []
    await first.close()
    frame["to"] = to[:1]
    assert (await sender.request(frame, timeout=30))["t"] == "ok"
    await first.reconnect()
    got = await first.drain()
    assert [f["body"] for f in got] == [b"h" + b"shared"]
    await asyncio.gather(sender.close(), first.close())
