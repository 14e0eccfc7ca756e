"""MessageQueue contract, the cap of stored envelopes per device (`store(max_per_device=N)`):
oldest kept, a call that would pass it stores nothing and raises QueueFull, also when many
calls race (PostgreSQL: batched together by the group commit)."""

from __future__ import annotations

import asyncio

import pytest

from storage.errors import QueueFull
from storage.interfaces import Store
from storage.postgres.migrate import migrate

from .support import START_MS, Backend, envelope, make_user


async def stored_ids(store: Store, user: str, device: int) -> list[bytes]:
    stored = await store.messages.fetch(user, device, after_seq=0, limit=10_000, now_ms=START_MS)
    return [s.envelope.id for s in stored]


async def test_cap_keeps_the_oldest_and_refuses_the_newest(store: Store) -> None:
    user = await make_user(store, devices=2)
    kept = [envelope(user, 1) for _ in range(3)]
    for env in kept:
        await store.messages.store([env], max_per_device=3)
    newest = envelope(user, 1)
    with pytest.raises(QueueFull) as refused:
        await store.messages.store([newest, envelope(user, 2)], max_per_device=3)
    assert refused.value.devices == [(user, 1)]
    assert await stored_ids(store, user, 1) == [e.id for e in kept]
    assert await stored_ids(store, user, 2) == []  # all or nothing: the device with room too
    # A copy already stored adds nothing, so a retried store at the cap is still a no-op.
    await store.messages.store([kept[0]], max_per_device=3)
    # An ack makes room.
    await store.messages.ack(user, 1, [kept[0].id])
    await store.messages.store([newest], max_per_device=3)
    assert await stored_ids(store, user, 1) == [e.id for e in (*kept[1:], newest)]


async def test_no_cap_without_max(store: Store) -> None:
    user = await make_user(store)
    await store.messages.store([envelope(user, 1) for _ in range(5)], max_per_device=5)
    await store.messages.store([envelope(user, 1)])
    assert len(await stored_ids(store, user, 1)) == 6


async def test_cap_holds_under_concurrent_stores(store: Store) -> None:
    user = await make_user(store, devices=2)
    racing = [envelope(user, 1) for _ in range(20)]
    room = [envelope(user, 2) for _ in range(20)]
    outcomes = await asyncio.gather(
        *(store.messages.store([e], max_per_device=7) for e in (*racing, *room)),
        return_exceptions=True,
    )
    refused = [e for e, out in zip((*racing, *room), outcomes, strict=True) if out is not None]
    assert all(isinstance(out, QueueFull) for out in outcomes if out is not None), outcomes
    assert len(refused) == 13 + 13
    on_first = await stored_ids(store, user, 1)
    assert len(on_first) == 7
    assert set(on_first) == {e.id for e in racing} - {e.id for e in refused}
    assert len(await stored_ids(store, user, 2)) == 7


async def test_cap_follows_acks_purges_and_removals(backend: Backend) -> None:
    """The count the cap reads goes down with every way a stored row goes away."""
    store = await backend.open()
    user = await make_user(store, devices=2)
    soon = envelope(user, 1, expires_ms=START_MS + 1000)
    acked = envelope(user, 1)
    await store.messages.store([soon, acked, envelope(user, 1)], max_per_device=3)
    with pytest.raises(QueueFull):
        await store.messages.store([envelope(user, 1)], max_per_device=3)
    await store.messages.ack(user, 1, [acked.id])
    await store.messages.store([envelope(user, 1)], max_per_device=3)
    backend.clock.advance(2)
    assert await store.messages.purge_expired(backend.clock.now_ms()) == 1
    await store.messages.store([envelope(user, 1)], max_per_device=3)
    with pytest.raises(QueueFull):
        await store.messages.store([envelope(user, 1)], max_per_device=3)
    # A removed device's rows go with it; its numbers are never reused, so only the other
    # device is left to check: its count was never touched.
    assert await store.devices.remove_device(user, 1)
    await store.messages.store([envelope(user, 2) for _ in range(3)], max_per_device=3)
    # The same after a restart (the count is stored, not kept in memory).
    reopened = await backend.open()
    with pytest.raises(QueueFull):
        await reopened.messages.store([envelope(user, 2)], max_per_device=3)


async def test_postgres_migration_counts_stored_rows(production: Backend) -> None:
    """Migration 0003 counts the rows stored before it; down and up again gives the same."""
    store = await production.open()
    user = await make_user(store)
    await store.messages.store([envelope(user, 1) for _ in range(4)])
    assert production.database_url is not None
    assert await migrate(production.database_url, to=2) == [
        "down 0009_shared_payloads",
        "down 0008_key_backups",
        "down 0007_receipts",
        "down 0006_partitioned_messages",
        "down 0005_at_rest",
        "down 0004_key_event_kinds",
        "down 0003_queue_counts",
    ]
    assert await migrate(production.database_url) == [
        "up 0003_queue_counts",
        "up 0004_key_event_kinds",
        "up 0005_at_rest",
        "up 0006_partitioned_messages",
        "up 0007_receipts",
        "up 0008_key_backups",
        "up 0009_shared_payloads",
    ]
    fresh = await production.open()  # new connections: statements prepared anew
    await fresh.messages.store([envelope(user, 1)], max_per_device=5)
    with pytest.raises(QueueFull):
        await fresh.messages.store([envelope(user, 1)], max_per_device=5)
