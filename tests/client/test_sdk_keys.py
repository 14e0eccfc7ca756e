"""Pre-keys and devices through the SDK: keys.low, rotation, device-list changes, stale ids."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from e2e.support import RelayProcess, new_user, wait_until

from protocol.client import SendFailed

from .conftest import StartRelay
from .sdk import WAIT, Inbox, device, distinctive


async def test_keys_low_makes_the_device_upload_new_one_time_keys(
    relay_factory: StartRelay, tmp_path: Path
) -> None:
    relay = relay_factory(prekey_low_water=18, rate_fetch_per_target=100)
    async with device(relay.url, tmp_path / "bob") as bob:
        await bob.register()
        counts = await bob.key_counts()
        assert (counts.prekeys, counts.pq_prekeys) == (20, 20)
        held_before = set(bob.peers.keys.prekeys)
        fetcher = await new_user(relay.url)
        try:
            for _ in range(3):  # 20 -> 17: below the relay's low-water mark of 18
                answer = await fetcher.fetch(bob.user, bob.device)
                assert "prekey" in answer["devices"][0]
        finally:
            await fetcher.close()

        async def topped_up() -> bool:
            c = await bob.key_counts()
            return (c.prekeys, c.pq_prekeys) == (20, 20)

        await wait_until(topped_up, WAIT, "the upload that follows keys.low")
        # The new private halves are in the device's keys (and so in its store).
        assert len(set(bob.peers.keys.prekeys) - held_before) == 3


async def test_signed_prekey_rotation_when_the_relay_asks(
    relay_factory: StartRelay, tmp_path: Path
) -> None:
    # Ages are whole seconds: a key is due once a second old. Waiting for that polls
    # `keys.count` (real round trips), hence the generous request limit.
    relay = relay_factory(
        signed_prekey_rotation=0.5, rate_requests=100_000, rate_requests_burst=100_000
    )
    b_in = Inbox()
    async with (
        device(relay.url, tmp_path / "bob", b_in) as bob,
        device(relay.url, tmp_path / "carol") as carol,
    ):
        await bob.register()
        await carol.register()
        texts = [distinctive("before"), distinctive("new"), distinctive("after")]
        before = await asyncio.wait_for(carol.send(bob.user, texts[0]), WAIT)
        assert before.delivered + before.stored == (1,)
        old = bob.peers.keys.signed_prekey

        async def due() -> bool:
            return ((await bob.key_counts()).signed_prekey_age_s or 0) >= 1

        await wait_until(due, WAIT, "the signed pre-key to be a second old")
        bob.drop_connection()  # the next auth answer says rotate_signed_prekey

        async def rotated() -> bool:
            await bob.key_counts()
            return bob.peers.keys.signed_prekey.id != old.id

        await wait_until(rotated, WAIT, "signed pre-key rotation")
        fetcher = await new_user(relay.url)
        try:

            async def relay_has_new() -> bool:
                answer = await fetcher.fetch(bob.user, bob.device)
                return bool(answer["devices"][0]["signed_prekey"]["id"] != old.id)

            await wait_until(relay_has_new, WAIT, "the relay to hand out the new signed pre-key")
        finally:
            await fetcher.close()
        # A new correspondent uses the new signed pre-key; an old session goes on.
        async with device(relay.url, tmp_path / "dave") as dave:
            await dave.register()
            await asyncio.wait_for(dave.send(bob.user, texts[1]), WAIT)
            await asyncio.wait_for(carol.send(bob.user, texts[2]), WAIT)
            await b_in.wait_for(3)
            assert b_in.texts(carol.user) == [texts[0], texts[2]]
            assert b_in.texts(dave.user) == [texts[1]]


async def test_device_list_changes_are_followed(relay: RelayProcess, tmp_path: Path) -> None:
    """A newly linked device is `missing`, a removed one `extra`: the sender fixes the list."""
    b1_in, b2_in = Inbox(), Inbox()
    async with (
        device(relay.url, tmp_path / "alice") as alice,
        device(relay.url, tmp_path / "bob1", b1_in) as bob1,
    ):
        await alice.register()
        await bob1.register()
        first = await asyncio.wait_for(alice.send(bob1.user, distinctive("one device")), WAIT)
        assert first.delivered + first.stored == (1,)

        async with device(relay.url, tmp_path / "bob2", b2_in) as bob2:
            await bob2.register_linked(bob1.link_device(bob2.identity_key))
            text = distinctive("two devices")
            second = await asyncio.wait_for(alice.send(bob1.user, text), WAIT)
            assert sorted(second.delivered + second.stored) == [1, 2]
            assert [m.plaintext for m in await b2_in.wait_for(1)] == [text]

        await bob1.remove_device(2)
        assert [d.device for d in await bob1.devices()] == [1]
        last = distinctive("one device again")
        third = await asyncio.wait_for(alice.send(bob1.user, last), WAIT)
        assert third.delivered + third.stored == (1,)
        assert (await b1_in.wait_for(3))[-1].plaintext == last
        assert 2 not in alice.peers.devices(bob1.user)


async def test_stale_registration_id_refetches_and_starts_a_new_session(
    relay: RelayProcess, tmp_path: Path
) -> None:
    b_in = Inbox()
    async with (
        device(relay.url, tmp_path / "alice") as alice,
        device(relay.url, tmp_path / "bob", b_in) as bob,
    ):
        await alice.register()
        await bob.register()
        await asyncio.wait_for(alice.send(bob.user, distinctive("first")), WAIT)
        # Alice's record of bob's device goes wrong: the relay answers stale_devices.
        alice.peers.devices(bob.user)[1].registration_id ^= 1
        text = distinctive("after stale")
        receipt = await asyncio.wait_for(alice.send(bob.user, text), WAIT)
        assert receipt.delivered + receipt.stored == (1,)
        got = await b_in.wait_for(2)
        assert got[-1].plaintext == text
        assert alice.peers.devices(bob.user)[1].registration_id == bob.peers.keys.registration_id


async def test_unknown_recipient_fails_the_send(relay: RelayProcess, tmp_path: Path) -> None:
    async with device(relay.url, tmp_path / "alice") as alice:
        await alice.register()
        ghost = "00000000-0000-4000-8000-000000000000"
        with pytest.raises(SendFailed) as failed:
            await asyncio.wait_for(alice.send(ghost, b"nobody"), WAIT)
        assert failed.value.code == "unknown_user"
        assert alice.state.outbox == []
