"""Spec §4: sending; checks and their order, replay, retries, conflicts, online messages."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from .support import (
    Device,
    entries,
    error_of,
    link_device,
    new_id,
    new_nonce,
    new_user,
    now_ms,
    offline_user,
    wait_until,
)

PROTOS = ["msgpack", "json"]


async def close_all(*devs: Device) -> None:
    for d in devs:
        await d.close()


# --------------------------------------------------------------------------- basic delivery


@pytest.mark.parametrize("sender_proto", PROTOS)
@pytest.mark.parametrize("recipient_proto", PROTOS)
async def test_send_to_online_device_is_delivered(relay, sender_proto, recipient_proto):
    a = await new_user(relay.url, proto=sender_proto)
    b = await new_user(relay.url, proto=recipient_proto)
    await b.next_push("queue_empty")
    body = bytes(range(256)) * 3
    ts = now_ms() - 1234
    frame = a.send_frame(b, [1], body=body, type_=1, ts=ts)
    task = asyncio.create_task(a.request(frame))
    deliver = await b.next_push("deliver")
    assert deliver["id"] == frame["id"]
    assert deliver["from"] == a.user
    assert deliver["from_device"] == 1
    assert deliver["ts"] == ts, "ts is the sender's value unchanged"
    assert isinstance(deliver["server_ts"], int)
    assert abs(deliver["server_ts"] - now_ms()) < 60_000
    assert deliver["type"] == 1
    assert deliver["body"] == body
    assert deliver["nonce"] == frame["nonce"]
    assert "online" not in deliver, "online is only on online messages"
    assert "rid" not in deliver
    await b.ack(deliver["id"])
    answer = await task
    assert answer["t"] == "ok", answer
    assert answer["rid"] == frame["rid"]
    assert answer["id"] == frame["id"]
    assert answer["delivered"] == [1] and answer["stored"] == [], answer
    await close_all(a, b)


@pytest.mark.parametrize("proto", PROTOS)
async def test_send_to_offline_device_is_stored(relay, proto):
    a = await new_user(relay.url, proto=proto)
    (b,) = await offline_user(relay.url, proto=proto)
    answer = await a.send_message(b, [1])
    assert answer["t"] == "ok", answer
    assert answer["delivered"] == [] and answer["stored"] == [1]
    auth = await b.reconnect()
    assert auth["queued"] == 1
    deliver = await b.next_push("deliver")
    assert deliver["id"] == answer["id"] and deliver["from"] == a.user
    assert "online" not in deliver
    await close_all(a, b)


async def test_send_to_mixed_devices(relay):
    a = await new_user(relay.url)
    b1 = await new_user(relay.url, auto_ack=True)
    b2 = await link_device(b1)
    await b2.close()
    b3 = await link_device(b1, auto_ack=True)
    bodies = {1: b"for one", 2: b"for two", 3: b"for three"}
    answer = await a.send_message(b1, entries(bodies))
    assert answer["t"] == "ok", answer
    assert answer["delivered"] == [1, 3]
    assert answer["stored"] == [2]
    assert (await b1.next_push("deliver"))["body"] == b"for one"
    assert (await b3.next_push("deliver"))["body"] == b"for three"
    await b2.reconnect()
    assert (await b2.next_push("deliver"))["body"] == b"for two"
    await close_all(a, b1, b2, b3)


async def test_device_lists_sorted(relay):
    a = await new_user(relay.url)
    devs = await offline_user(relay.url, devices=4)
    b = devs[0]
    answer = await a.send_message(b.user, entries([4, 2, 3, 1]))
    assert answer["t"] == "ok", answer
    assert answer["stored"] == [1, 2, 3, 4]
    assert answer["delivered"] == []
    await a.close()


# --------------------------------------------------------------------------- own devices


async def test_send_to_own_other_devices(relay):
    first = await new_user(relay.url)
    second = await link_device(first, auto_ack=True)
    answer = await first.send_message(first.user, [2])
    assert answer["t"] == "ok", answer
    assert answer["delivered"] == [2] and answer["stored"] == []
    deliver = await second.next_push("deliver")
    assert deliver["from"] == first.user and deliver["from_device"] == 1
    # Naming the sending device itself is extra.
    answer = await first.send_message(first.user, [1, 2])
    error_of(answer, "mismatched_devices")
    assert answer["missing"] == [] and answer["extra"] == [1]
    # Leaving out the other device is missing.
    answer = await first.send_message(first.user, [])
    error_of(answer, "mismatched_devices")
    assert answer["missing"] == [2] and answer["extra"] == []
    await close_all(first, second)


async def test_send_to_self_from_only_device_with_empty_list(relay):
    a = await new_user(relay.url)
    await a.next_push("queue_empty")
    answer = await a.send_message(a.user, [])
    assert answer["t"] == "ok", answer
    assert answer["delivered"] == [] and answer["stored"] == []
    await a.no_push("deliver", timeout=0.3)
    await a.close()


async def test_empty_devices_list_to_another_user_is_mismatched(relay):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    answer = await a.send_message(b.user, [])
    error_of(answer, "mismatched_devices")
    assert answer["missing"] == [1] and answer["extra"] == []
    await a.close()


# --------------------------------------------------------------------------- checks


async def test_unknown_user(relay):
    a = await new_user(relay.url)
    answer = await a.send_message(str(uuid.uuid4()), [1])
    error_of(answer, "unknown_user")
    await a.close()


@pytest.mark.parametrize("offset_s", [-301, 301, -3600, 86400])
async def test_stale_timestamp(relay, offset_s):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    answer = await a.send_message(b, ts=now_ms() + offset_s * 1000)
    error_of(answer, "stale_timestamp")
    await a.close()


async def test_timestamp_within_skew_is_fine(relay):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    for offset_s in (-250, 250):
        answer = await a.send_message(b, ts=now_ms() + offset_s * 1000)
        assert answer["t"] == "ok", answer
    await a.close()


async def test_clock_skew_configurable(relay_factory):
    r = relay_factory(clock_skew=5)
    a = await new_user(r.url)
    (b,) = await offline_user(r.url)
    error_of(await a.send_message(b, ts=now_ms() - 30_000), "stale_timestamp")
    assert (await a.send_message(b, ts=now_ms() - 1_000))["t"] == "ok"
    await a.close()


async def test_mismatched_devices_sorted(relay):
    a = await new_user(relay.url)
    devs = await offline_user(relay.url, devices=3)
    b = devs[0]
    answer = await a.send_message(b.user, entries([9, 3, 7, 5]))
    error_of(answer, "mismatched_devices")
    assert answer["missing"] == [1, 2]
    assert answer["extra"] == [5, 7, 9]
    answer = await a.send_message(b.user, entries([2]))
    error_of(answer, "mismatched_devices")
    assert answer["missing"] == [1, 3] and answer["extra"] == []
    answer = await a.send_message(b.user, entries([1, 2, 3, 4]))
    error_of(answer, "mismatched_devices")
    assert answer["missing"] == [] and answer["extra"] == [4]
    await a.close()


async def test_removed_device_is_extra(relay):
    a = await new_user(relay.url)
    b1 = await new_user(relay.url)
    b2 = await link_device(b1)
    assert (await b1.request({"t": "devices.remove", "device": 2}))["t"] == "ok"
    assert await b2.closed_code() == 4002
    answer = await a.send_message(b1.user, [1, 2])
    error_of(answer, "mismatched_devices")
    assert answer["missing"] == [] and answer["extra"] == [2]
    await close_all(a, b1)


async def test_stale_devices(relay):
    a = await new_user(relay.url)
    b1 = Device(relay.url, registration_id=1111)
    await b1.register()
    b2 = Device(relay.url, registration_id=2222)
    await b2.register(link_by=b1)
    b3 = Device(relay.url)  # registered without one: registration_id 0
    await b3.register(link_by=b1)
    await close_all(b1, b2, b3)
    answer = await a.send_message(b1.user, [1, 2, 3], registration_ids={1: 1111, 2: 9, 3: 5})
    error_of(answer, "stale_devices")
    assert answer["stale"] == [2, 3]
    answer = await a.send_message(b1.user, [1, 2, 3], registration_ids={1: 7, 2: 2222, 3: 0})
    error_of(answer, "stale_devices")
    assert answer["stale"] == [1]
    # Entries without registration_id are never stale; matching ones pass.
    answer = await a.send_message(b1.user, [1, 2, 3], registration_ids={1: 1111, 3: 0})
    assert answer["t"] == "ok", answer
    assert answer["stored"] == [1, 2, 3]
    await a.close()


async def test_mismatched_checked_before_stale(relay):
    a = await new_user(relay.url)
    b = Device(relay.url, registration_id=1)
    await b.register()
    await b.close()
    answer = await a.send_message(b.user, [1, 2], registration_ids={1: 99})
    error_of(answer, "mismatched_devices")
    assert answer["extra"] == [2] and answer["missing"] == []
    await a.close()


async def test_duplicate_device_is_bad_frame(relay):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    error_of(await a.send_message(b.user, entries([1, 1])), "bad_frame")
    await a.close()


async def test_check_order(relay):
    """frame, then unknown_user, stale_timestamp, ..., mismatched, stale: the first fails."""
    a = await new_user(relay.url)
    b = Device(relay.url, registration_id=5)
    await b.register()
    await b.close()
    stranger = str(uuid.uuid4())
    old = now_ms() - 3_600_000
    # bad_frame beats everything.
    error_of(
        await a.send_message(stranger, [1, 1], ts=old),
        "bad_frame",
    )
    # too_large beats unknown_user.
    error_of(await a.send_message(stranger, [1], body=b"x" * 262145, ts=old), "too_large")
    # unknown_user beats stale_timestamp.
    error_of(await a.send_message(stranger, [1], ts=old), "unknown_user")
    # stale_timestamp beats mismatched_devices.
    error_of(await a.send_message(b.user, [3], ts=old), "stale_timestamp")
    # stale_timestamp beats stale_devices.
    error_of(await a.send_message(b.user, [1], ts=old, registration_ids={1: 6}), "stale_timestamp")
    await a.close()


# --------------------------------------------------------------------------- replay


async def test_replay_same_nonce_other_id(relay):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    nonce = new_nonce()
    assert (await a.send_message(b, nonce=nonce))["t"] == "ok"
    answer = await a.send_message(b, nonce=nonce, id=new_id())
    error_of(answer, "replay")
    await a.close()


async def test_replay_scope_is_sender_device_and_recipient(relay):
    a1 = await new_user(relay.url)
    a2 = await link_device(a1)
    (b,) = await offline_user(relay.url)
    (c,) = await offline_user(relay.url)
    nonce = new_nonce()
    assert (await a1.send_message(b, nonce=nonce))["t"] == "ok"
    # Same nonce to another recipient user: another scope.
    assert (await a1.send_message(c, nonce=nonce))["t"] == "ok"
    # Same nonce from another device of the same sender: another scope.
    assert (await a2.send_message(b, nonce=nonce))["t"] == "ok"
    # Same nonce from another sender user: another scope.
    x = await new_user(relay.url)
    assert (await x.send_message(b, nonce=nonce))["t"] == "ok"
    # Same scope again: replay.
    error_of(await a2.send_message(b, nonce=nonce), "replay")
    await close_all(a1, a2, x)


async def test_replay_checked_before_other_checks(relay):
    """The replay record comes right after the frame checks."""
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    nonce = new_nonce()
    assert (await a.send_message(b, nonce=nonce))["t"] == "ok"
    # Another id with the used nonce, and a ts that is also stale: replay wins.
    error_of(await a.send_message(b, nonce=nonce, ts=now_ms() - 3_600_000), "replay")
    # And with a device list that is also wrong.
    error_of(await a.send_message(b.user, [1, 2], nonce=nonce), "replay")
    await a.close()


@pytest.mark.parametrize(
    ("broken", "code"),
    [
        ({"ts": -3_600_000}, "stale_timestamp"),
        ({"devices": [1, 2]}, "mismatched_devices"),
        ({"registration_ids": {1: 77}}, "stale_devices"),
    ],
)
async def test_refused_send_does_not_use_up_nonce(relay, broken, code):
    a = await new_user(relay.url)
    b = Device(relay.url, registration_id=3)
    await b.register()
    await b.close()
    msg_id, nonce = new_id(), new_nonce()
    kwargs: dict = {"id": msg_id, "nonce": nonce}
    bad = dict(kwargs)
    if "ts" in broken:
        bad["ts"] = now_ms() + broken["ts"]
    if "registration_ids" in broken:
        bad["registration_ids"] = broken["registration_ids"]
    devices = broken.get("devices", [1])
    error_of(await a.send_message(b.user, devices, **bad), code)
    # Fixed, with the same id and nonce: accepted.
    answer = await a.send_message(b.user, [1], **kwargs)
    assert answer["t"] == "ok", answer
    assert answer["id"] == msg_id
    await a.close()


async def test_retry_of_refused_send_with_unknown_user_then_valid(relay):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    nonce = new_nonce()
    error_of(await a.send_message(str(uuid.uuid4()), [1], nonce=nonce), "unknown_user")
    assert (await a.send_message(b, nonce=nonce))["t"] == "ok"
    await a.close()


# --------------------------------------------------------------------------- idempotent retry


@pytest.mark.parametrize("proto", PROTOS)
async def test_retry_same_id_and_nonce_stored(relay, proto):
    a = await new_user(relay.url, proto=proto)
    (b,) = await offline_user(relay.url)
    frame = a.send_frame(b)
    first = await a.request(frame)
    assert first["t"] == "ok" and first["stored"] == [1], first
    retry = dict(frame, rid=a.next_rid())
    second = await a.request(retry)
    assert second["t"] == "ok", second
    assert second["rid"] == retry["rid"]
    assert second["id"] == first["id"]
    assert second["delivered"] == first["delivered"]
    assert second["stored"] == first["stored"]
    # And a third time, on another connection.
    await a.reconnect()
    third = await a.request(dict(frame, rid=a.next_rid()))
    assert (third["t"], third["delivered"], third["stored"]) == ("ok", [], [1]), third
    # Delivered once.
    auth = await b.reconnect()
    assert auth["queued"] == 1
    got = await b.drain(ack=False)
    assert [d["id"] for d in got] == [frame["id"]]
    await close_all(a, b)


async def test_retry_same_id_and_nonce_delivered_live(relay):
    a = await new_user(relay.url)
    b = await new_user(relay.url, auto_ack=True)
    await b.next_push("queue_empty")
    frame = a.send_frame(b)
    first = await a.request(frame)
    assert first["delivered"] == [1] and first["stored"] == [], first
    await b.next_push("deliver")
    second = await a.request(dict(frame, rid=a.next_rid()))
    assert (second["t"], second["id"], second["delivered"], second["stored"]) == (
        "ok",
        frame["id"],
        [1],
        [],
    ), second
    await b.sync()
    await b.no_push("deliver", timeout=0.5)
    # Not stored either.
    auth = await b.reconnect()
    assert auth["queued"] == 0
    assert await b.drain() == []
    await close_all(a, b)


async def test_retry_even_after_recipient_changed_answer_stays(relay):
    """The relay answers a retry from the replay record, even when things changed since."""
    a = await new_user(relay.url)
    b1 = await new_user(relay.url)
    await b1.close()
    frame = a.send_frame(b1)
    first = await a.request(frame)
    assert first["stored"] == [1]
    b2 = await link_device(b1)  # b now has devices 1 and 2
    second = await a.request(dict(frame, rid=a.next_rid()))
    assert (second["t"], second["delivered"], second["stored"]) == ("ok", [], [1]), second
    await close_all(a, b2)


async def test_concurrent_copies_of_one_send(relay):
    """A copy arriving while the first is in flight waits for its outcome: same answer."""
    a = await new_user(relay.url)
    b = await new_user(relay.url)  # connected, does not ack: the send waits
    await b.next_push("queue_empty")
    frame = a.send_frame(b)
    copies = [dict(frame, rid=a.next_rid()) for _ in range(3)]
    tasks = [asyncio.create_task(a.request(c)) for c in copies]
    deliver = await b.next_push("deliver")
    await b.ack(deliver["id"])
    answers = await asyncio.gather(*tasks)
    outcomes = {
        (x["t"], bytes(x["id"]), tuple(x["delivered"]), tuple(x["stored"])) for x in answers
    }
    assert len(outcomes) == 1, answers
    assert answers[0]["t"] == "ok"
    await b.sync()
    await b.no_push("deliver", timeout=0.5)
    await close_all(a, b)


async def test_other_id_waits_for_the_send_holding_the_nonce(relay):
    """Another id with the nonce of a send still in flight is judged once that send is
    answered: `replay`, as that send was accepted."""
    a = await new_user(relay.url)
    b = await new_user(relay.url)  # connected, acks by hand: the first send waits
    await b.next_push("queue_empty")
    nonce = new_nonce()
    first = asyncio.create_task(a.request(a.send_frame(b, nonce=nonce)))
    deliver = await b.next_push("deliver")
    copy = dict(a.send_frame(b, nonce=nonce, id=new_id()), rid=a.next_rid())
    other = asyncio.create_task(a.request(copy))
    await a.sync()  # answered after every earlier frame took effect: the copy is waiting
    assert [f for f in a.received if f.get("rid") == copy["rid"]] == []
    await b.ack(deliver["id"])
    assert (await first)["delivered"] == [1]
    error_of(await other, "replay")
    await b.sync()
    await b.no_push("deliver", timeout=0.5)
    await close_all(a, b)


# --------------------------------------------------------------------------- conflict


async def test_conflict_same_id_pending_from_another_sender(relay):
    a = await new_user(relay.url)
    x = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    msg_id = new_id()
    assert (await a.send_message(b, id=msg_id))["stored"] == [1]
    error_of(await x.send_message(b, id=msg_id), "conflict")
    await close_all(a, x)


async def test_conflict_same_id_same_sender_other_nonce(relay):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    msg_id = new_id()
    assert (await a.send_message(b, id=msg_id))["stored"] == [1]
    error_of(await a.send_message(b, id=msg_id, nonce=new_nonce()), "conflict")
    await a.close()


async def test_conflict_same_id_other_device_of_sender(relay):
    a1 = await new_user(relay.url)
    a2 = await link_device(a1)
    (b,) = await offline_user(relay.url)
    msg_id, nonce = new_id(), new_nonce()
    assert (await a1.send_message(b, id=msg_id, nonce=nonce))["stored"] == [1]
    error_of(await a2.send_message(b, id=msg_id, nonce=nonce), "conflict")
    await close_all(a1, a2)


async def test_conflict_gone_after_ack(relay):
    a = await new_user(relay.url)
    x = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    msg_id = new_id()
    assert (await a.send_message(b, id=msg_id))["stored"] == [1]
    await b.reconnect()
    (got,) = await b.drain(ack=True)
    assert got["id"] == msg_id
    await b.sync()
    await b.close()
    answer = await x.send_message(b, id=msg_id)
    assert answer["t"] == "ok" and answer["stored"] == [1], answer
    await close_all(a, x)


async def test_conflict_is_per_target_device(relay):
    a = await new_user(relay.url)
    x = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    (c,) = await offline_user(relay.url)
    msg_id = new_id()
    assert (await a.send_message(b, id=msg_id))["t"] == "ok"
    # The same id to another device is no conflict.
    assert (await x.send_message(c, id=msg_id))["t"] == "ok"
    await close_all(a, x)


async def test_conflict_checked_before_mismatched(relay):
    a = await new_user(relay.url)
    x = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    msg_id = new_id()
    assert (await a.send_message(b, id=msg_id))["t"] == "ok"
    error_of(await x.send_message(b.user, [1, 2], id=msg_id), "conflict")
    await close_all(a, x)


# --------------------------------------------------------------------------- online


@pytest.mark.parametrize("proto", PROTOS)
async def test_online_message_to_connected_device(relay, proto):
    a = await new_user(relay.url, proto=proto)
    b = await new_user(relay.url, proto=proto, auto_ack=True)
    await b.next_push("queue_empty")
    answer = await a.send_message(b, online=True, type_=7)
    assert answer["t"] == "ok", answer
    assert answer["delivered"] == [1] and answer["stored"] == []
    deliver = await b.next_push("deliver")
    assert deliver["id"] == answer["id"]
    assert deliver["online"] is True
    assert deliver["type"] == 7
    await close_all(a, b)


async def test_online_message_never_stored(relay):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    answer = await a.send_message(b, online=True)
    assert answer["t"] == "ok", answer
    assert answer["delivered"] == [] and answer["stored"] == [], answer
    auth = await b.reconnect()
    assert auth["queued"] == 0
    assert await b.drain() == []
    await close_all(a, b)


async def test_online_message_not_acked_is_not_stored(relay_factory):
    r = relay_factory(ack_timeout=0.5)
    a = await new_user(r.url)
    b = await new_user(r.url)  # connected, does not ack
    await b.next_push("queue_empty")
    answer = await a.send_message(b, online=True)
    assert answer["t"] == "ok", answer
    assert answer["delivered"] == [] and answer["stored"] == [], answer
    got = await b.next_push("deliver")
    assert got["online"] is True
    auth = await b.reconnect()
    assert auth["queued"] == 0
    assert await b.drain() == []
    await close_all(a, b)


async def test_online_message_mixed_devices(relay):
    a = await new_user(relay.url)
    b1 = await new_user(relay.url, auto_ack=True)
    b2 = await link_device(b1)
    await b2.close()
    answer = await a.send_message(b1.user, [1, 2], online=True)
    assert answer["t"] == "ok", answer
    assert answer["delivered"] == [1] and answer["stored"] == [], answer
    auth = await b2.reconnect()
    assert auth["queued"] == 0
    await close_all(a, b1, b2)


async def test_online_false_is_a_normal_message(relay):
    a = await new_user(relay.url)
    (b,) = await offline_user(relay.url)
    answer = await a.send_message(b, online=False)
    assert answer["stored"] == [1]
    await b.reconnect()
    (got,) = await b.drain()
    assert "online" not in got
    await close_all(a, b)


async def test_online_message_goes_through_every_check(relay):
    a = await new_user(relay.url)
    b = Device(relay.url, registration_id=12, auto_ack=True)
    await b.register()
    answer = await a.send_message(b.user, [1, 2], online=True)
    error_of(answer, "mismatched_devices")
    assert answer["missing"] == [] and answer["extra"] == [2]
    error_of(await a.send_message(b, online=True, registration_ids={1: 13}), "stale_devices")
    error_of(await a.send_message(b, online=True, ts=now_ms() - 3_600_000), "stale_timestamp")
    error_of(await a.send_message(str(uuid.uuid4()), [1], online=True), "unknown_user")
    nonce = new_nonce()
    assert (await a.send_message(b, online=True, nonce=nonce))["t"] == "ok"
    error_of(await a.send_message(b, online=True, nonce=nonce), "replay")
    await close_all(a, b)


# --------------------------------------------------------------------------- concurrency


async def test_many_senders_ledger(relay):
    """Concurrent senders, one online and one offline device: every `ok` is honoured."""
    recipient = await new_user(relay.url, auto_ack=True)
    offline = await link_device(recipient)
    await offline.close()
    await recipient.next_push("queue_empty")
    senders = await asyncio.gather(*(new_user(relay.url, proto=p) for p in PROTOS * 3))

    async def burst(sender: Device, n: int) -> list[dict]:
        return await asyncio.gather(
            *(
                sender.send_message(recipient.user, [1, 2], body=f"{sender.user}/{i}".encode())
                for i in range(n)
            )
        )

    results = await asyncio.gather(*(burst(s, 30) for s in senders))
    answers = [a for batch in results for a in batch]
    assert all(a["t"] == "ok" for a in answers), [a for a in answers if a["t"] != "ok"][:3]
    for a in answers:
        assert sorted(a["delivered"] + a["stored"]) == [1, 2], a
        assert 2 in a["stored"], a
    want = {a["id"] for a in answers}
    # The online device received every one (acked as it came).
    seen: set[bytes] = set()
    while not want <= seen:
        seen.add((await recipient.next_push("deliver"))["id"])
    # The offline device finds every one stored.
    auth = await offline.reconnect()
    assert auth["queued"] == len(want)
    got = await offline.drain(ack=True, timeout=30)
    assert {d["id"] for d in got} == want
    await close_all(recipient, offline, *senders)


async def test_nonce_reusable_after_replay_window(relay_factory):
    r = relay_factory(replay_window=1, rate_requests=100000, rate_requests_burst=100000)
    a = await new_user(r.url)
    (b,) = await offline_user(r.url)
    nonce = new_nonce()
    assert (await a.send_message(b, nonce=nonce))["t"] == "ok"
    error_of(await a.send_message(b, nonce=nonce), "replay")

    async def accepted() -> bool:
        answer = await a.send_message(b, nonce=nonce)
        assert answer["t"] == "ok" or answer.get("code") == "replay", answer
        return answer["t"] == "ok"

    await wait_until(accepted, timeout=20, what="the nonce to leave the replay window")
    await a.close()


async def test_frame_and_body_limits_configurable(relay_factory):
    r = relay_factory(max_body_bytes=1024, max_frame_bytes=65536)
    a = await new_user(r.url)
    (b,) = await offline_user(r.url)
    assert (await a.send_message(b, body=b"x" * 1024))["t"] == "ok"
    error_of(await a.send_message(b, body=b"x" * 1025), "too_large")
    # Many devices times small bodies can still exceed the frame limit: 1009.
    await a.send_raw(a.send_frame(b, [1], body=b"x" * 70_000))
    assert await a.closed_code() == 1009
