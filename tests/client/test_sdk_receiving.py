"""The receive path: order per sender, holding back, duplicates, handler failures, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from e2e.support import Device, RelayProcess

from protocol.client import IncomingMessage, LocalStore
from protocol.client.content import Kind
from protocol.client.peers import Peers
from protocol.client.state import Account, ClientState, PreparedCopy
from protocol.client.store import KdfLimits
from protocol.crypto.device_keys import DeviceKeys
from protocol.frames import Bundle, PqPreKey, PreKey, SignedPreKey
from protocol.signatures import KeyScheme

from .conftest import StartRelay
from .sdk import FAST, PASSPHRASE, WAIT, Inbox, device, distinctive


def bundle_of(entry: dict[str, Any]) -> Bundle:
    """A `keys.fetch` entry of the raw client as the typed frame the SDK reads."""
    return Bundle(
        device=entry["device"],
        registration_id=entry["registration_id"],
        identity_key=entry["identity_key"],
        key_scheme=KeyScheme(entry["key_scheme"]),
        signed_prekey=SignedPreKey(**entry["signed_prekey"]),
        prekey=PreKey(**entry["prekey"]) if "prekey" in entry else None,
        pq_prekey=PqPreKey(**entry["pq_prekey"]) if "pq_prekey" in entry else None,
    )


class HandEncrypter:
    """A sender built from the SDK's parts but sending with the raw protocol client,
    so a test decides in which order the relay sees the messages."""

    def __init__(self, raw: Device, peers: Peers, store: LocalStore) -> None:
        self.raw, self.peers, self.store = raw, peers, store

    @classmethod
    async def create(cls, url: str, directory: Path) -> HandEncrypter:
        keys = DeviceKeys.generate(KeyScheme.ED25519, prekeys=1, pq_prekeys=1, now_ms=0)
        raw = Device(url, identity=keys.identity, registration_id=keys.registration_id)
        await raw.register()
        store = LocalStore.create(directory, PASSPHRASE, limits=KdfLimits.minimal())
        state = ClientState(store, seen_capacity=10)
        assert raw.user is not None and raw.device is not None
        state.save_account(Account(raw.user, raw.device))
        return cls(raw, Peers(state, keys, lambda change: None), store)

    async def start(self, user: str) -> None:
        answer = await self.raw.fetch(user, 1)
        self.peers.add_bundle(user, bundle_of(answer["devices"][0]))

    def encrypt(self, user: str, text: bytes) -> PreparedCopy:
        return self.peers.encrypt(user, 1, Kind.MESSAGE, text, None)

    async def send(self, user: str, copy: PreparedCopy) -> None:
        entry = {"device": copy.device, "type": copy.type, "body": copy.body}
        await self.raw.request_ok(self.raw.send_frame(user, [entry]))

    async def close(self) -> None:
        await self.raw.close()
        self.store.close()


async def test_messages_overtaken_on_the_wire_reach_the_app_in_order(
    relay_factory: StartRelay, tmp_path: Path
) -> None:
    relay = relay_factory(ack_timeout=0.2)
    b_in = Inbox()
    options = dataclasses.replace(FAST, reorder_timeout=5.0)
    alice = await HandEncrypter.create(relay.url, tmp_path / "alice")
    try:
        async with device(relay.url, tmp_path / "bob", b_in, options=options) as bob:
            await bob.register()
            await alice.start(bob.user)
            texts = [distinctive(f"m{i}") for i in range(1, 6)]
            m1, m2, m3, m4, m5 = (alice.encrypt(bob.user, t) for t in texts)
            # m3 overtakes m1 and m2: it is held, unacknowledged, until they arrived.
            await alice.send(bob.user, m3)
            await alice.send(bob.user, m1)
            assert [m.plaintext for m in await b_in.wait_for(1)] == texts[:1]
            assert [h.seq for h in bob.state.held] == [3]
        # Held messages survive a restart of the client (the relay delivers m3 again too).
        async with device(relay.url, tmp_path / "bob", b_in, options=options) as bob:
            assert [h.seq for h in bob.state.held] == [3]
            await asyncio.wait_for(bob.caught_up(), WAIT)
            await alice.send(bob.user, m2)
            assert [m.plaintext for m in await b_in.wait_for(3)] == texts[:3]
            assert bob.state.held == []
            # m4 never comes: m5 goes on after the reorder timeout.
            del m4
            await alice.send(bob.user, m5)
            got = await b_in.wait_for(4)
            assert [m.plaintext for m in got] == texts[:3] + texts[4:]
            assert bob.state.held == []
            assert (bob.stats.held, bob.stats.released_late) == (1, 1)
    finally:
        await alice.close()


async def test_a_message_whose_ack_was_lost_is_not_handed_over_twice(
    relay: RelayProcess, tmp_path: Path
) -> None:
    b_in = Inbox()
    dropped = asyncio.Event()
    holder: dict[str, Any] = {}

    async def handler(message: IncomingMessage) -> None:
        await b_in.handler(message)
        if not dropped.is_set():
            dropped.set()
            holder["bob"].drop_connection()  # the ack that follows is lost with the socket

    async with (
        device(relay.url, tmp_path / "alice") as alice,
        device(relay.url, tmp_path / "bob", on_message=handler) as bob,
    ):
        holder["bob"] = bob
        await alice.register()
        await bob.register()
        texts = [distinctive(f"d{i}") for i in range(3)]
        for text in texts:
            await asyncio.wait_for(alice.send(bob.user, text), WAIT)
        await b_in.wait_for(3)
        await asyncio.wait_for(bob.caught_up(), WAIT)  # the redelivery came and was dropped
        assert [m.plaintext for m in b_in.messages] == texts
        assert bob.stats.duplicates >= 1 and bob.stats.connects >= 2


async def test_a_failing_handler_gets_the_message_again(
    relay: RelayProcess, tmp_path: Path
) -> None:
    b_in = Inbox()
    attempts: list[bytes] = []

    async def flaky(message: IncomingMessage) -> None:
        attempts.append(message.plaintext)
        if attempts.count(message.plaintext) == 1 and len(attempts) == 2:
            raise RuntimeError("the application failed on this one")
        await b_in.handler(message)

    async with (
        device(relay.url, tmp_path / "alice") as alice,
        device(relay.url, tmp_path / "bob", on_message=flaky) as bob,
    ):
        await alice.register()
        await bob.register()
        texts = [distinctive(f"f{i}") for i in range(3)]
        for text in texts:
            await asyncio.wait_for(alice.send(bob.user, text), WAIT)
        assert [m.plaintext for m in await b_in.wait_for(3)] == texts
        assert attempts.count(texts[1]) == 2


async def test_the_outbox_survives_a_client_restart(
    relay_factory: StartRelay, tmp_path: Path
) -> None:
    relay = relay_factory()
    b_in = Inbox()
    text = distinctive("written offline")
    async with device(relay.url, tmp_path / "bob", b_in) as bob:
        await bob.register()
        async with device(relay.url, tmp_path / "alice") as alice:
            await alice.register()
            await relay.astop()
            alice.queue(bob.user, text)
        assert not any(text in p.read_bytes() for p in (tmp_path / "alice").iterdir())
        await relay.astart()
        async with device(relay.url, tmp_path / "alice") as alice:
            assert len(alice.state.outbox) == 2  # the message, and the copy for alice's devices
            await asyncio.wait_for(alice.flush(), WAIT)
        assert [m.plaintext for m in await b_in.wait_for(1)] == [text]
