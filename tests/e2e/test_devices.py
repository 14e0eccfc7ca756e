"""Spec §6: devices.list and devices.remove; retired identity keys."""

from __future__ import annotations

import pytest

from protocol.signatures import IdentityKeyPair, KeyScheme

from .support import (
    Device,
    error_of,
    link_device,
    new_user,
    now_ms,
    prekey,
    signed_prekey,
)

PROTOS = ["msgpack", "json"]


@pytest.mark.parametrize("proto", PROTOS)
async def test_devices_list(relay, proto):
    before = now_ms()
    first = await new_user(relay.url, proto=proto, scheme=KeyScheme.XEDDSA)
    second = await link_device(first, proto=proto, scheme=KeyScheme.ED25519)
    other = await new_user(relay.url)  # another user's devices are not listed
    answer = await second.request_ok({"t": "devices.list"})
    devices = sorted(answer["devices"], key=lambda d: d["device"])
    assert [d["device"] for d in devices] == [1, 2]
    assert [d["key_scheme"] for d in devices] == ["xeddsa", "ed25519"]
    for d in devices:
        assert set(d) >= {"device", "key_scheme", "created", "last_seen"}
        assert before - 5_000 <= d["created"] <= now_ms() + 5_000, d
        assert before - 5_000 <= d["last_seen"] <= now_ms() + 5_000, d
        assert d["created"] <= d["last_seen"] + 1_000
    for d in (first, second, other):
        await d.close()


@pytest.mark.parametrize("proto", PROTOS)
async def test_device_1_removes_another_device(relay, proto):
    first = await new_user(relay.url, proto=proto)
    second = await link_device(first, proto=proto)
    await second.upload(signed_prekey=signed_prekey(second.identity, 1), prekeys=[prekey(1)])
    answer = await first.request({"t": "devices.remove", "device": 2})
    assert answer["t"] == "ok", answer
    assert set(answer) == {"t", "rid"}, "an empty answer"
    assert await second.closed_code() == 4002
    listed = await first.request_ok({"t": "devices.list"})
    assert [d["device"] for d in listed["devices"]] == [1]
    # Gone for authentication too.
    await second.connect()
    error_of(await second.request(second.auth_frame()), "auth_failed")
    assert await second.closed_code() == 1008
    # Its keys are gone.
    fetcher = await new_user(relay.url)
    error_of(await fetcher.fetch(first.user, 2), "unknown_device")
    await first.close()
    await fetcher.close()


async def test_device_removes_itself(relay):
    first = await new_user(relay.url)
    second = await link_device(first)
    answer = await second.request({"t": "devices.remove", "device": 2})
    assert answer["t"] == "ok", answer
    assert await second.closed_code() == 4002
    listed = await first.request_ok({"t": "devices.list"})
    assert [d["device"] for d in listed["devices"]] == [1]
    await first.close()


async def test_device_1_removes_itself(relay):
    first = await new_user(relay.url)
    second = await link_device(first)
    answer = await first.request({"t": "devices.remove", "device": 1})
    assert answer["t"] == "ok", answer
    assert await first.closed_code() == 4002
    listed = await second.request_ok({"t": "devices.list"})
    assert [d["device"] for d in listed["devices"]] == [2]
    await second.close()


async def test_other_device_may_not_remove(relay):
    first = await new_user(relay.url)
    second = await link_device(first)
    third = await link_device(first)
    error_of(await second.request({"t": "devices.remove", "device": 3}), "forbidden")
    error_of(await third.request({"t": "devices.remove", "device": 1}), "forbidden")
    assert not third.is_closed and not first.is_closed
    listed = await first.request_ok({"t": "devices.list"})
    assert sorted(d["device"] for d in listed["devices"]) == [1, 2, 3]
    for d in (first, second, third):
        await d.close()


async def test_remove_inactive_device_is_unknown_device(relay):
    first = await new_user(relay.url)
    error_of(await first.request({"t": "devices.remove", "device": 9}), "unknown_device")
    second = await link_device(first)
    assert (await first.request({"t": "devices.remove", "device": 2}))["t"] == "ok"
    assert await second.closed_code() == 4002
    error_of(await first.request({"t": "devices.remove", "device": 2}), "unknown_device")
    await first.close()


async def test_remove_offline_device(relay):
    first = await new_user(relay.url)
    second = await link_device(first)
    await second.close()
    sender = await new_user(relay.url)
    assert (await sender.send_message(first.user, [1, 2]))["t"] == "ok"
    assert (await first.request({"t": "devices.remove", "device": 2}))["t"] == "ok"
    await second.connect()
    error_of(await second.request(second.auth_frame()), "auth_failed")
    # The user's device list no longer has it.
    answer = await sender.send_message(first.user, [1, 2])
    error_of(answer, "mismatched_devices")
    assert answer["extra"] == [2]
    await first.close()
    await sender.close()


async def test_remove_bad_frame(relay):
    first = await new_user(relay.url)
    error_of(await first.request({"t": "devices.remove"}), "bad_frame")
    error_of(await first.request({"t": "devices.remove", "device": "2"}), "bad_frame")
    error_of(await first.request({"t": "devices.remove", "device": -2}), "bad_frame")
    await first.close()


@pytest.mark.parametrize("scheme", [KeyScheme.ED25519, KeyScheme.XEDDSA])
async def test_retired_identity_key_cannot_register_again(relay, scheme):
    first = await new_user(relay.url)
    second = await link_device(first, scheme=scheme)
    assert (await first.request({"t": "devices.remove", "device": 2}))["t"] == "ok"
    assert await second.closed_code() == 4002
    # As a new user.
    again = Device(relay.url, identity=second.identity, scheme=scheme)
    await again.connect()
    error_of(await again.request(again.register_frame()), "forbidden")
    assert await again.closed_code() == 1008
    # As a linked device of the same user.
    again = Device(relay.url, identity=second.identity, scheme=scheme)
    await again.connect()
    error_of(await again.request(again.register_frame(link_by=first)), "forbidden")
    assert await again.closed_code() == 1008
    # Other keys still link fine, under a new number.
    third = await link_device(first)
    assert third.device == 3
    await first.close()
    await third.close()


async def test_retired_identity_key_in_other_scheme(relay):
    ed = IdentityKeyPair.generate(KeyScheme.ED25519)
    first = await new_user(relay.url)
    second = Device(relay.url, identity=ed, scheme=KeyScheme.ED25519)
    await second.register(link_by=first)
    assert (await second.request({"t": "devices.remove", "device": second.device}))["t"] == "ok"
    assert await second.closed_code() == 4002
    twin = IdentityKeyPair.from_private_bytes(KeyScheme.XEDDSA, ed.x25519_private())
    again = Device(relay.url, identity=twin, scheme=KeyScheme.XEDDSA)
    await again.connect()
    error_of(await again.request(again.register_frame()), "forbidden")
    assert await again.closed_code() == 1008
    await first.close()
