"""Abuse limits (docs/security.md): registrations per client address, one-time pre-keys
handed out per target device, stored messages per recipient device. Each runs on both
stores (the budgets live in the store's rate limiter, the cap in its insert)."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import connect

from .support import (
    Device,
    RelayProcess,
    decode,
    encode,
    error_of,
    link_device,
    new_user,
    offline_user,
    pq_prekey,
    prekey,
    signed_prekey,
)

WAIT = 10.0
POLICY = 1008
JSON = "relay.v1+json"


def rate_limited_within(answer: dict[str, Any], limit_ms: int) -> None:
    error_of(answer, "rate_limited")
    retry = answer.get("retry_after_ms")
    assert isinstance(retry, int) and 0 < retry <= limit_ms, answer


# -- registrations per client address


async def test_registrations_per_address(relay_factory):
    r = relay_factory(max_registrations_per_address=3)
    first = await new_user(r.url)
    await link_device(first)  # a linked device counts too
    await new_user(r.url)
    late = Device(r.url)
    answer = await late.register(expect_ok=False)
    # 3 an hour: the next token is back within 20 minutes.
    rate_limited_within(answer, 20 * 60 * 1000)
    assert await late.closed_code() == POLICY
    again = Device(r.url)
    rate_limited_within(await again.register(expect_ok=False), 20 * 60 * 1000)
    # Registered devices still authenticate, and work.
    await first.reconnect()
    assert (await first.sync())["t"] == "ok"
    await first.close()


async def test_registration_limit_off(relay_factory):
    r = relay_factory(max_registrations_per_address=0)
    users = [await new_user(r.url) for _ in range(25)]  # above the default of 20
    assert len({u.user for u in users}) == 25
    await asyncio.gather(*(u.close() for u in users))


async def register_from(relay: RelayProcess, forwarded_for: str) -> dict[str, Any]:
    """A registration through a proxy that forwards `forwarded_for`: the answer frame."""
    headers = {"X-Forwarded-For": forwarded_for}
    device = Device(relay.url)
    async with connect(
        relay.url, additional_headers=headers, subprotocols=[JSON], open_timeout=WAIT
    ) as ws:
        device.challenge, _ = decode(await asyncio.wait_for(ws.recv(), WAIT), JSON)
        await ws.send(encode(device.register_frame(), JSON))
        answer, problems = decode(await asyncio.wait_for(ws.recv(), WAIT), JSON)
        assert not problems, problems
        return answer


async def test_registrations_count_the_forwarded_address(relay_factory):
    """Behind a trusted proxy each client has its own budget; an IPv6 client's is its /64."""
    r = relay_factory(max_registrations_per_address=1, trusted_proxies="127.0.0.1/32")
    assert (await register_from(r, "198.51.100.7"))["t"] == "ok"
    rate_limited_within(await register_from(r, "198.51.100.7"), 3600 * 1000)
    assert (await register_from(r, "198.51.100.8"))["t"] == "ok"
    assert (await register_from(r, "2001:db8:1:2::1"))["t"] == "ok"
    rate_limited_within(await register_from(r, "2001:db8:1:2:ffff::9"), 3600 * 1000)
    assert (await register_from(r, "2001:db8:1:3::1"))["t"] == "ok"


async def test_untrusted_peer_cannot_pick_its_budget(relay_factory):
    """Without --trusted-proxies the header is ignored: every registration from here counts
    against 127.0.0.1."""
    r = relay_factory(max_registrations_per_address=1)
    assert (await register_from(r, "198.51.100.7"))["t"] == "ok"
    rate_limited_within(await register_from(r, "198.51.100.8"), 3600 * 1000)


# -- one-time pre-keys per target device


async def owner_with_keys(url: str, count: int) -> Device:
    owner = await new_user(url)
    answer = await owner.upload(
        signed_prekey=signed_prekey(owner.identity, 1),
        prekeys=[prekey(i) for i in range(1, count + 1)],
        pq_prekeys=[pq_prekey(owner.identity, i) for i in range(1, count + 1)],
        pq_last_resort=pq_prekey(owner.identity, 1000),
    )
    assert answer["t"] == "ok", answer
    return owner


async def test_prekeys_per_target_then_bundles_without_one_time_keys(relay_factory):
    r = relay_factory(rate_prekeys_per_target=2)
    owner = await owner_with_keys(r.url, 5)
    other = await owner_with_keys(r.url, 5)
    fetchers = [await new_user(r.url) for _ in range(4)]  # many requesters, one target
    bundles = []
    for fetcher in fetchers:
        answer = await fetcher.fetch(owner.user)
        assert answer["t"] == "ok", answer
        (bundle,) = answer["devices"]
        bundles.append(bundle)
    assert [b["prekey"]["id"] for b in bundles[:2]] == [1, 2]
    assert [b["pq_prekey"]["id"] for b in bundles[:2]] == [1, 2]
    for bundle in bundles[2:]:
        # Past the budget: the signed pre-key and the PQ last-resort key, no one-time key.
        assert "prekey" not in bundle, bundle
        assert bundle["pq_prekey"]["id"] == 1000
        assert bundle["signed_prekey"]["id"] == 1
    counts = await owner.request_ok({"t": "keys.count"})
    assert (counts["prekeys"], counts["pq_prekeys"]) == (3, 3)
    # Another target has its own budget.
    answer = await fetchers[0].fetch(other.user)
    assert answer["devices"][0]["prekey"]["id"] == 1
    for device in (owner, other, *fetchers):
        await device.close()


async def test_prekey_budget_is_per_device(relay_factory):
    r = relay_factory(rate_prekeys_per_target=1)
    owner = await owner_with_keys(r.url, 3)
    second = await link_device(owner)
    assert (await second.upload(signed_prekey=signed_prekey(second.identity, 1)))["t"] == "ok"
    assert (await second.upload(prekeys=[prekey(7), prekey(8)]))["t"] == "ok"
    fetcher = await new_user(r.url)
    first_round = (await fetcher.fetch(owner.user))["devices"]
    assert [b.get("prekey", {}).get("id") for b in first_round] == [1, 7]
    second_round = (await fetcher.fetch(owner.user))["devices"]
    assert [b.get("prekey") for b in second_round] == [None, None]
    for device in (owner, second, fetcher):
        await device.close()


# -- stored messages per recipient device


async def test_stored_messages_per_device(relay_factory):
    r = relay_factory(max_stored_messages=3)
    (target,) = await offline_user(r.url)
    sender = await new_user(r.url)
    kept = []
    for _ in range(3):
        answer = await sender.send_message(target)
        assert answer["t"] == "ok" and answer["stored"] == [target.device], answer
        kept.append(answer["id"])
    refused_frame = sender.send_frame(target)
    answer = await sender.request(refused_frame)
    error_of(answer, "too_large")
    assert answer["rid"] == refused_frame["rid"]
    # Oldest kept: the device gets the first three; the refused one was not stored.
    auth = await target.auth()
    assert auth["queued"] == 3
    got = await target.drain()
    assert [m["id"] for m in got] == kept
    await target.sync()  # the acks took effect
    await target.close()
    # The refusal did not use up the nonce: the same send now goes through.
    retry = {**refused_frame, "rid": sender.next_rid()}
    answer = await sender.request(retry)
    assert answer["t"] == "ok" and answer["stored"] == [target.device], answer
    await target.auth()
    assert [m["id"] for m in await target.drain()] == [refused_frame["id"]]
    await target.close()
    await sender.close()


async def test_a_full_device_refuses_the_whole_send(relay_factory):
    r = relay_factory(max_stored_messages=2)
    first, second = await offline_user(r.url, devices=2)
    sender = await new_user(r.url)
    for _ in range(2):
        assert (await sender.send_message(first.user, [1, 2]))["stored"] == [1, 2]
    await second.auth()
    assert len(await second.drain()) == 2  # acked: the second device has room again
    await second.sync()
    await second.close()
    answer = await sender.send_message(first.user, [1, 2])
    error_of(answer, "too_large")
    assert "1" in answer["message"], answer
    # Nothing of the refused send was stored, for the device with room either.
    assert (await second.auth())["queued"] == 0
    await second.close()
    await sender.close()


async def test_live_deliveries_do_not_count(relay_factory):
    r = relay_factory(max_stored_messages=1)
    target = await new_user(r.url, auto_ack=True)
    sender = await new_user(r.url)
    for _ in range(5):
        answer = await sender.send_message(target)
        assert answer["t"] == "ok" and answer["delivered"] == [target.device], answer
    await target.close()
    assert (await sender.send_message(target))["stored"] == [target.device]
    error_of(await sender.send_message(target), "too_large")
    await sender.close()
