"""MessageQueue contract, delivery receipts (docs/protocol.md): an ack that removes a stored
copy whose sender asked for a receipt leaves the receipt, in the same transaction, for every
active device of the sender; never twice, never for a copy that asked for none.

Run against every backend, with the rows in the clear and sealed at rest (a real vault over
the store's own key table, the store seen through BlindedStore as the relay sees it)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from storage.at_rest.blinded import BlindedStore, KeyAccess
from storage.at_rest.sealing import RingSealer
from storage.at_rest.vault import DataKeyVault
from storage.embedded import EmbeddedStore
from storage.interfaces import Store
from storage.production import ProductionStore
from storage.records import RECEIPT_TYPE, Envelope

from .support import START_MS, Backend, envelope, make_user, seal_from_now

ACK_MS = START_MS + 60_000


async def sealed_view(inner: Store, backend: Backend) -> BlindedStore:
    """`inner` encrypted at rest from now on, seen as the relay sees it."""
    vault, _ = await seal_from_now(inner, backend)

    async def opener() -> DataKeyVault:
        return vault

    return BlindedStore(inner, KeyAccess(opener, vault))


@pytest.fixture(params=["clear", "at_rest"])
async def queue_store(request: pytest.FixtureRequest, backend: Backend) -> Store:
    inner = await backend.open()
    return inner if request.param == "clear" else await sealed_view(inner, backend)


def asking(env: Envelope) -> Envelope:
    return dataclasses.replace(env, receipt=True)


async def stored(store: Store, user: str, device: int) -> list[Envelope]:
    found = await store.messages.fetch(user, device, after_seq=0, limit=100, now_ms=START_MS)
    return [s.envelope for s in found]


async def test_an_acked_copy_that_asked_leaves_a_receipt_for_each_sender_device(
    queue_store: Store,
) -> None:
    store = queue_store
    sender = await make_user(store, devices=3)
    recipient = await make_user(store, devices=2)
    await store.devices.remove_device(sender, 3)  # a removed device gets none
    message = asking(envelope(recipient, 2, sender_user=sender, sender_device=1))
    await store.messages.store([message])

    made = await store.messages.ack(recipient, 2, [message.id], now_ms=ACK_MS)

    assert sorted((r.recipient_user, r.recipient_device) for r in made) == [
        (sender, 1),
        (sender, 2),
    ]
    for device in (1, 2):
        (receipt,) = await stored(store, sender, device)
        assert receipt.is_receipt and receipt.type == RECEIPT_TYPE
        assert receipt.id == made[0].id  # one id for every copy of the receipt
        assert len(receipt.id) == 16 and receipt.id != message.id
        assert receipt.body == message.id
        assert (receipt.sender_user, receipt.sender_device) == (recipient, 2)
        assert receipt.server_ts == ACK_MS
        assert receipt.expires_ms == message.expires_ms  # expires with the message
        assert receipt in made
    assert await stored(store, recipient, 2) == []  # the copy itself is gone
    assert (await store.messages.queue_state(sender, 1, now_ms=START_MS))[0] == 1


async def test_no_receipt_without_the_request(queue_store: Store) -> None:
    store = queue_store
    sender = await make_user(store)
    recipient = await make_user(store)
    plain = envelope(recipient, 1, sender_user=sender)
    wanted = asking(envelope(recipient, 1, sender_user=sender))
    await store.messages.store([plain, wanted])

    assert await store.messages.ack(recipient, 1, [plain.id], now_ms=ACK_MS) == []
    assert await stored(store, sender, 1) == []
    # Ids never stored, and an empty ack, make none either.
    assert await store.messages.ack(recipient, 1, [os.urandom(16)], now_ms=ACK_MS) == []
    assert await store.messages.ack(recipient, 1, [], now_ms=ACK_MS) == []
    assert [e.id for e in await stored(store, recipient, 1)] == [wanted.id]


async def test_a_receipt_is_made_once_and_acked_like_a_message(queue_store: Store) -> None:
    store = queue_store
    sender = await make_user(store)
    recipient = await make_user(store)
    message = asking(envelope(recipient, 1, sender_user=sender))
    await store.messages.store([message])
    # The same id acked twice (two batches, a replaced connection): one receipt.
    first = await store.messages.ack(recipient, 1, [message.id, message.id], now_ms=ACK_MS)
    again = await store.messages.ack(recipient, 1, [message.id], now_ms=ACK_MS + 1)
    assert len(first) == 1 and again == []
    (receipt,) = await stored(store, sender, 1)
    # The sender's ack removes it and makes nothing further.
    assert await store.messages.ack(sender, 1, [receipt.id], now_ms=ACK_MS + 2) == []
    assert await stored(store, sender, 1) == []
    assert await stored(store, recipient, 1) == []


async def test_receipts_keep_the_senders_stored_order(queue_store: Store) -> None:
    store = queue_store
    sender = await make_user(store)
    recipient = await make_user(store)
    message = asking(envelope(recipient, 1, sender_user=sender))
    before = envelope(sender, 1, sender_user=recipient)
    await store.messages.store([message, before])
    (receipt,) = await store.messages.ack(recipient, 1, [message.id], now_ms=ACK_MS)
    after = envelope(sender, 1, sender_user=recipient)
    await store.messages.store([after])
    found = await stored(store, sender, 1)
    assert [e.id for e in found] == [before.id, receipt.id, after.id]
    # A receipt expires with its message: not fetched after that, and purged.
    late = await store.messages.fetch(sender, 1, after_seq=0, limit=10, now_ms=message.expires_ms)
    assert receipt.id not in [s.envelope.id for s in late]


async def test_a_receipt_does_not_wait_for_room_in_the_senders_queue(queue_store: Store) -> None:
    store = queue_store
    sender = await make_user(store)
    recipient = await make_user(store)
    await store.messages.store([envelope(sender, 1, sender_user=recipient)], max_per_device=1)
    message = asking(envelope(recipient, 1, sender_user=sender))
    await store.messages.store([message], max_per_device=1)
    made = await store.messages.ack(recipient, 1, [message.id], now_ms=ACK_MS)
    assert len(made) == 1  # the sender's queue is at the cap: the receipt goes in anyway
    assert (await store.messages.queue_state(sender, 1, now_ms=START_MS))[0] == 2


async def test_a_copy_removed_with_its_device_makes_no_receipt(queue_store: Store) -> None:
    store = queue_store
    sender = await make_user(store)
    recipient = await make_user(store, devices=2)
    message = asking(envelope(recipient, 2, sender_user=sender))
    await store.messages.store([message])
    assert await store.devices.remove_device(recipient, 2)
    assert await store.messages.ack(recipient, 2, [message.id], now_ms=ACK_MS) == []
    assert await stored(store, sender, 1) == []


async def test_a_request_survives_the_conversion_to_encryption_at_rest(backend: Backend) -> None:
    """A store run without encryption at rest, then converted (`relay migrate`): a stored
    copy's request for a receipt becomes the sealer's tag with the rest of the row."""
    inner = await backend.open()
    sender = await make_user(inner)
    recipient = await make_user(inner)
    message = asking(envelope(recipient, 1, sender_user=sender))
    plain = envelope(recipient, 1, sender_user=sender)
    await inner.messages.store([message, plain])

    store = await sealed_view(inner, backend)
    assert isinstance(inner, EmbeddedStore | ProductionStore)
    vault = store.vault
    assert vault is not None
    ring = vault.ring
    await inner.clear_data.blind_user_ids(ring.blind_user, ring.blind_nonce, ring.seal_text)
    sealer = RingSealer(ring, load_keys=vault.load)
    assert await inner.clear_data.seal_clear_messages(sealer, limit=10) == 2
    assert await inner.clear_data.clear_messages() == 0

    assert await store.messages.ack(recipient, 1, [plain.id], now_ms=ACK_MS) == []
    (receipt,) = await store.messages.ack(recipient, 1, [message.id], now_ms=ACK_MS)
    assert (receipt.recipient_user, receipt.body) == (sender, message.id)
    assert [e.id for e in await stored(store, sender, 1)] == [receipt.id]
