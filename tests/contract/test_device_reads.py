"""The production store's per-device reads of a handshake (`get_device`, `queue_state`,
key `counts`): those made in the same event-loop turn share one statement each, and each
caller gets its own device's answer, as a statement of its own would give it."""

from __future__ import annotations

import asyncio

from storage.production import ProductionStore
from storage.records import KeyCounts, KeyUpload, OneTimeKey, SignedKey

from .support import DAY_MS, START_MS, Backend, envelope, make_user

SIG = b"g" * 64


async def test_reads_of_one_turn_share_one_statement_each(production: Backend) -> None:
    store = await production.open()
    assert isinstance(store, ProductionStore)
    users = [await make_user(store, devices=2) for _ in range(8)]
    assert await store.devices.remove_device(users[0], 2)
    for i, user in enumerate(users):
        # User i holds i messages for device 1, one of them expired for i > 1.
        await store.messages.store(
            [
                envelope(user, 1, expires_ms=START_MS + (1 if n == 0 and i > 1 else DAY_MS))
                for n in range(i)
            ]
        )
        if i % 2:
            signed = SignedKey(i, b"\x05" + i.to_bytes(32, "big"), SIG)
            prekeys = tuple(OneTimeKey(k, bytes(31) + k.to_bytes(1, "big")) for k in range(i))
            upload = KeyUpload(signed_prekey=signed, prekeys=prekeys)
            await store.keys.upload(user, 1, upload, now_ms=START_MS + i, max_stored=100)
    now = START_MS + 2

    directory, keys, queues = (
        store.devices.stored.device_reads,
        store.keys.count_reads,
        store.messages.queue_state_reads,
    )
    before = directory.statements, keys.statements, queues.statements
    asked = [(u, d) for u in users for d in (1, 2, 3)]
    devices, states, counts = await asyncio.gather(
        asyncio.gather(*(store.devices.get_device(u, d) for u, d in asked)),
        asyncio.gather(*(store.messages.queue_state(u, d, now_ms=now) for u, d in asked)),
        asyncio.gather(*(store.keys.counts(u, d) for u, d in asked)),
    )
    after = directory.statements, keys.statements, queues.statements
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]

    for (user, device), record, state, count in zip(asked, devices, states, counts, strict=True):
        i = users.index(user)
        if device == 3 or (i == 0 and device == 2):
            assert record is None  # never added, or removed
        else:
            assert record is not None and (record.user, record.device) == (user, device)
        live = (i - 1 if i > 1 else i) if device == 1 else 0
        assert state[0] == live
        assert (state[1] > 0) == (device == 1 and i > 0)
        if device == 1 and i % 2:
            assert count == KeyCounts(
                prekeys=i, pq_prekeys=0, signed_prekey_uploaded_ms=START_MS + i
            )
        else:
            assert count == KeyCounts(prekeys=0, pq_prekeys=0, signed_prekey_uploaded_ms=None)
    # Each answer is what a read of its own gives.
    for (user, device), state in zip(asked, states, strict=True):
        assert await store.messages.queue_state(user, device, now_ms=now) == state
