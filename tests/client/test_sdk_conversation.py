"""SDK clients exchange end-to-end-encrypted messages through a live relay (both stores)."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import pytest
from e2e.support import RelayProcess

from protocol.client import ClientStopped
from protocol.codec import WireFormat
from protocol.signatures import KeyScheme

from .sdk import FAST, WAIT, Inbox, device, distinctive

JSON = dataclasses.replace(FAST, fmt=WireFormat.JSON)  # bob2 speaks relay.v1+json


async def test_alice_and_bob_with_two_devices_talk_online(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a_in, b1_in, b2_in = Inbox(), Inbox(), Inbox()
    async with (
        device(relay.url, tmp_path / "alice", a_in) as alice,
        device(relay.url, tmp_path / "bob1", b1_in, scheme=KeyScheme.XEDDSA) as bob1,
        device(relay.url, tmp_path / "bob2", b2_in, options=JSON) as bob2,
    ):
        await alice.register()
        await bob1.register()
        await bob2.register_linked(bob1.link_device(bob2.identity_key))
        assert (bob2.user, bob2.device) == (bob1.user, 2)

        sent = [distinctive(f"a->b {i}") for i in range(5)]
        for text in sent:
            receipt = await alice.send(bob1.user, text)
            assert sorted(receipt.delivered + receipt.stored) == [1, 2]
        assert [m.plaintext for m in await b1_in.wait_for(5)] == sent
        assert [m.plaintext for m in await b2_in.wait_for(5)] == sent

        reply = distinctive("b1->a")
        await bob1.send(alice.user, reply)
        got = await a_in.wait_for(1)
        assert [(m.sender_user, m.sender_device, m.plaintext) for m in got] == [
            (bob1.user, 1, reply)
        ]
        # bob2 gets a copy of what bob1 sent, naming where it went.
        copies = await b2_in.wait_for(6)
        assert copies[-1].plaintext == reply and copies[-1].sent_to == alice.user
        assert copies[-1].sender_device == 1
        await asyncio.wait_for(bob2.flush(), WAIT)


async def test_a_newer_connection_of_the_same_device_stops_the_older_client(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """Close 4001: the two would take turns replacing each other, so the older one stops."""
    async with device(relay.url, tmp_path / "alice") as alice:
        await alice.register()
        user = alice.user
    shutil.copytree(tmp_path / "alice", tmp_path / "alice-copy")
    async with device(relay.url, tmp_path / "alice") as older:
        await asyncio.wait_for(older.caught_up(), WAIT)
        async with device(relay.url, tmp_path / "alice-copy") as newer:
            await asyncio.wait_for(newer.caught_up(), WAIT)
            reason = await asyncio.wait_for(older.stopped(), WAIT)
            assert isinstance(reason, ClientStopped) and "replaced" in str(reason)
            with pytest.raises(ClientStopped):
                await older.send(user, b"from the replaced device")
            assert newer.connected and newer.user == user
