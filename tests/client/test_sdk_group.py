"""`Client.send_group`: one `send.multi` frame to several users' devices through a live relay
(both stores), with the shared payload and with a ciphertext per device; offline members
get it when they come back, and a device added behind the sender's back is fixed for."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from e2e.support import RelayProcess

from protocol.client import SendFailed

from .sdk import WAIT, Inbox, device, distinctive


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-device"])
async def test_a_group_message_reaches_every_member_device(
    relay: RelayProcess, tmp_path: Path, shared: bool
) -> None:
    b1_in, b2_in, c_in, a2_in = Inbox(), Inbox(), Inbox(), Inbox()
    async with (
        device(relay.url, tmp_path / "alice") as alice,
        device(relay.url, tmp_path / "alice2", a2_in) as alice2,
        device(relay.url, tmp_path / "bob1", b1_in) as bob1,
        device(relay.url, tmp_path / "bob2", b2_in) as bob2,
    ):
        await alice.register()
        await alice2.register_linked(alice.link_device(alice2.identity_key))
        await bob1.register()
        await bob2.register_linked(bob1.link_device(bob2.identity_key))
        async with device(relay.url, tmp_path / "carol", c_in) as carol:
            await carol.register()
            carol_user = carol.user
        # Carol is offline now: her copy is stored. Alice's other device is a member too.
        text = distinctive("to the group")
        receipt = await alice.send_group([bob1.user, carol_user, alice.user], text, shared=shared)
        assert sorted(receipt.delivered[bob1.user] + receipt.stored[bob1.user]) == [1, 2]
        assert receipt.stored[carol_user] == (1,) and receipt.delivered[carol_user] == ()
        assert sorted(receipt.delivered[alice.user] + receipt.stored[alice.user]) == [2]
        for inbox in (b1_in, b2_in, a2_in):
            (got,) = await inbox.wait_for(1)
            assert (got.sender_user, got.sender_device, got.plaintext) == (alice.user, 1, text)
            assert got.id == receipt.id
        async with device(relay.url, tmp_path / "carol", c_in) as carol:
            (got,) = await c_in.wait_for(1)
            assert got.plaintext == text and got.id == receipt.id

        # A second message in the same sessions (type 2 headers this time) still opens.
        again = distinctive("again")
        await alice.send_group([bob1.user], again, shared=shared)
        assert [m.plaintext for m in await b2_in.wait_for(2)] == [text, again]


async def test_a_device_the_sender_did_not_know_is_fetched_and_sent_to(
    relay: RelayProcess, tmp_path: Path
) -> None:
    b3_in = Inbox()
    async with (
        device(relay.url, tmp_path / "alice") as alice,
        device(relay.url, tmp_path / "bob1") as bob1,
    ):
        await alice.register()
        await bob1.register()
        await alice.send_group([bob1.user], distinctive("first"))
        async with device(relay.url, tmp_path / "bob3", b3_in) as bob3:
            await bob3.register_linked(bob1.link_device(bob3.identity_key))
            text = distinctive("after the new device")
            receipt = await alice.send_group([bob1.user], text)  # mismatched_devices, fixed
            assert sorted(receipt.delivered[bob1.user] + receipt.stored[bob1.user]) == [1, 2]
            (got,) = await b3_in.wait_for(1)
            assert got.plaintext == text


async def test_an_unknown_member_fails_the_message(relay: RelayProcess, tmp_path: Path) -> None:
    async with device(relay.url, tmp_path / "alice") as alice:
        await alice.register()
        with pytest.raises(SendFailed) as refused:
            await asyncio.wait_for(
                alice.send_group(["00000000-0000-4000-8000-00000000dead"], b"x"), WAIT
            )
        assert refused.value.error.code == "unknown_user"


async def test_a_group_message_with_receipts_brings_one_for_each_stored_copy(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """`send_group(..., receipt=True)`: a member device that was offline acknowledges its
    stored copy later, and the sender's application is handed that receipt."""
    c_in = Inbox()
    async with (
        device(relay.url, tmp_path / "alice") as alice,
        device(relay.url, tmp_path / "carol", c_in) as carol,
    ):
        await alice.register()
        await carol.register()
        carol_user = carol.user
    async with device(relay.url, tmp_path / "alice") as alice:
        sent = await alice.send_group([carol_user], distinctive("with a receipt"), receipt=True)
        assert sent.stored[carol_user] == (1,)
        async with device(relay.url, tmp_path / "carol", c_in):
            (got,) = await c_in.wait_for(1)
            assert got.id == sent.id
            receipt = await asyncio.wait_for(alice.next_receipt(), WAIT)
        assert (receipt.message_id, receipt.user, receipt.device) == (sent.id, carol_user, 1)
