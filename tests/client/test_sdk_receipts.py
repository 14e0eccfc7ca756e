"""Delivery receipts through the SDK: `send(..., receipt=True)` and `on_receipt` /
`next_receipt()`, against a real relay on both stores."""

from __future__ import annotations

import asyncio
from pathlib import Path

from protocol.client import Client, DeliveryReceipt

from .conftest import StartRelay
from .scan import scan_database
from .sdk import FAST, PASSPHRASE, WAIT, Inbox, device, distinctive
from .test_at_rest_scan import _user_forms


class Receipts:
    """Records the receipts an application is handed; waits on a condition."""

    def __init__(self) -> None:
        self.got: list[DeliveryReceipt] = []
        self._cond = asyncio.Condition()

    async def handler(self, receipt: DeliveryReceipt) -> None:
        async with self._cond:
            self.got.append(receipt)
            self._cond.notify_all()

    async def wait_for(self, count: int) -> list[DeliveryReceipt]:
        async with asyncio.timeout(WAIT), self._cond:
            await self._cond.wait_for(lambda: len(self.got) >= count)
        return list(self.got)


async def test_receipts_for_stored_messages_live_and_after_reconnect(
    relay_factory: StartRelay, tmp_path: Path
) -> None:
    relay = relay_factory()
    alice_store, bob_store = tmp_path / "alice", tmp_path / "bob"
    receipts = Receipts()
    bob_in = Inbox()
    async with Client.open(
        relay.url, alice_store, PASSPHRASE, on_receipt=receipts.handler, options=FAST
    ) as alice:
        alice_user = await alice.register()
        async with device(relay.url, bob_store, bob_in) as bob:
            await bob.register()
            bob_user = bob.user
            # Bob online: delivered at once, so no receipt follows for this one.
            live = await asyncio.wait_for(alice.send(bob_user, b"hello", receipt=True), WAIT)
            assert (live.delivered, live.stored) == ((1,), ())
            await bob_in.wait_for(1)

        # Bob offline: stored; the receipt comes when bob's device acknowledges it.
        text = distinctive("stored")
        sent = await asyncio.wait_for(alice.send(bob_user, text, receipt=True), WAIT)
        assert (sent.delivered, sent.stored) == ((), (1,))
        async with device(relay.url, bob_store, bob_in):
            await bob_in.wait_for(2)
            (receipt,) = await receipts.wait_for(1)
        assert receipt.message_id == sent.id
        assert (receipt.user, receipt.device) == (bob_user, 1)
        assert receipt.server_ts > 0

        # Without the flag nothing follows; with it, alice offline: stored for her.
        plain = await asyncio.wait_for(alice.send(bob_user, b"no receipt"), WAIT)
        flagged = await asyncio.wait_for(alice.send(bob_user, b"receipt", receipt=True), WAIT)
        assert plain.stored == flagged.stored == (1,)

    async with device(relay.url, bob_store, bob_in):
        await bob_in.wait_for(4)

    # The receipt waits in the store for alice: a copy of the database names neither user
    # (the acknowledging user is sealed in it, the sender's id blinded).
    findings, records = await scan_database(
        relay, [*_user_forms(alice_user), *_user_forms(bob_user)]
    )
    assert records > 0
    assert findings == [], findings[:5]

    async with Client.open(relay.url, alice_store, PASSPHRASE, options=FAST) as alice:
        later = await asyncio.wait_for(alice.next_receipt(), WAIT)
        assert later.message_id == flagged.id
        await asyncio.wait_for(alice.caught_up(), WAIT)
    assert receipts.got == [receipt]  # the first client saw only its own

    # Acknowledged by the SDK: not handed out again on the next connection (a receipt held
    # at connect is handed out before the client is caught up).
    again = Receipts()
    async with Client.open(
        relay.url, alice_store, PASSPHRASE, on_receipt=again.handler, options=FAST
    ) as alice:
        await asyncio.wait_for(alice.caught_up(), WAIT)
    assert again.got == []
