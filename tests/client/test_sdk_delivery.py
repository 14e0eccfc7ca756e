"""Exactly once, in order, through everything: offline devices, a relay restart, dropped sockets.

One conversation per store: alice, and bob with two devices (bob2 linked by
bob1). At the end every application inbox must equal, per sender, exactly the
list of messages that sender sent, and no byte of any plaintext may be found
anywhere in the relay's store.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

from protocol.client import Client, SendReceipt
from protocol.signatures import KeyScheme

from .conftest import StartRelay
from .scan import scan_directory, scan_relay
from .sdk import WAIT, Inbox, device, distinctive


class Log:
    """What each device sent, in order: the expected inbox of every other device."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, int], list[tuple[str, bytes]]] = defaultdict(list)

    def all(self) -> list[bytes]:
        return [text for msgs in self.sent.values() for _, text in msgs]

    def queue(self, sender: Client, to: str, label: str) -> bytes:
        text = distinctive(label)
        self.sent[(sender.user, sender.device)].append((to, text))
        sender.queue(to, text)
        return text

    async def send(self, sender: Client, to: str, label: str) -> SendReceipt:
        text = distinctive(label)
        self.sent[(sender.user, sender.device)].append((to, text))
        return await asyncio.wait_for(sender.send(to, text), WAIT)

    def expected(self, user: str, device: int) -> dict[tuple[str, int], list[bytes]]:
        """Per sending device, what (user, device) must have been handed, in order:
        what was sent to its user, and the copies of what its user's other devices sent."""
        out: dict[tuple[str, int], list[bytes]] = {}
        for (s_user, s_device), msgs in self.sent.items():
            if (s_user, s_device) == (user, device):
                continue
            texts = [t for to, t in msgs if to == user or s_user == user]
            if texts:
                out[(s_user, s_device)] = texts
        return out


def by_sender(inbox: Inbox) -> dict[tuple[str, int], list[bytes]]:
    out: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    for m in inbox.messages:
        out[(m.sender_user, m.sender_device)].append(m.plaintext)
    return dict(out)


async def wait_expected(inbox: Inbox, expected: dict[tuple[str, int], list[bytes]]) -> None:
    """Wait for as many messages as expected, then compare: a duplicate or a reordering fails."""
    await inbox.wait_for(sum(len(v) for v in expected.values()))
    assert by_sender(inbox) == expected


async def flush(*clients: Client) -> None:
    await asyncio.wait_for(asyncio.gather(*(c.flush() for c in clients)), WAIT)


async def test_exactly_once_in_order_through_offline_restart_and_drops(
    relay_factory: StartRelay, tmp_path: Path
) -> None:
    relay = relay_factory()
    log = Log()
    a_in, b1_in, b2_in = Inbox(), Inbox(), Inbox()
    alice_store, bob1_store, bob2_store = (tmp_path / n for n in ("alice", "bob1", "bob2"))

    async def check_all(alice: Client, bob: str) -> None:
        await wait_expected(a_in, log.expected(alice.user, 1))
        await wait_expected(b1_in, log.expected(bob, 1))
        await wait_expected(b2_in, log.expected(bob, 2))

    async with device(relay.url, alice_store, a_in) as alice:
        await alice.register()
        async with (
            device(relay.url, bob1_store, b1_in, scheme=KeyScheme.XEDDSA) as bob1,
            device(relay.url, bob2_store, b2_in) as bob2,
        ):
            await bob1.register()
            await bob2.register_linked(bob1.link_device(bob2.identity_key))
            bob = bob1.user
            # Online, both ways (bob2 also gets copies of what bob1 sends, and back).
            for i in range(3):
                await log.send(alice, bob, f"online a{i}")
            await log.send(bob1, alice.user, "online b1")
            await log.send(bob2, alice.user, "online b2")
            await check_all(alice, bob)

        # Offline: bob's devices are closed, alice's messages are stored by the relay.
        for i in range(4):
            receipt = await log.send(alice, bob, f"offline a{i}")
            assert (receipt.delivered, receipt.stored) == ((), (1, 2))

        async with (
            device(relay.url, bob1_store, b1_in) as bob1,
            device(relay.url, bob2_store, b2_in) as bob2,
        ):
            await check_all(alice, bob)

            # A relay restart, with messages written on both sides while it is down.
            await relay.astop()
            for i in range(3):
                log.queue(alice, bob, f"restart a{i}")
            log.queue(bob1, alice.user, "restart b1")
            log.queue(bob2, alice.user, "restart b2")
            await relay.astart()
            await flush(alice, bob1, bob2)
            await check_all(alice, bob)

            # Dropped sockets (no closing handshake) in the middle of a burst.
            before = len(b1_in.messages)
            for i in range(12):
                log.queue(alice, bob, f"drop a{i}")
            log.queue(bob2, alice.user, "drop b2")
            await b1_in.wait_for(before + 3)
            alice.drop_connection()
            bob1.drop_connection()
            await b2_in.wait_for(before + 6)
            bob2.drop_connection()
            await flush(alice, bob1, bob2)
            await check_all(alice, bob)

    findings, records = await scan_relay(relay, log.all())
    assert records > 0
    assert findings == []
    # The devices' own stores are encrypted at rest: no plaintext there either.
    for store in (alice_store, bob1_store, bob2_store):
        local, files = scan_directory(store, log.all())
        assert files > 3 and local == []
