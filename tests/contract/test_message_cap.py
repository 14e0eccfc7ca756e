"""MessageQueue contract, the cap of stored envelopes per device (`store(max_per_device=N)`):
oldest kept, a call that would pass it stores nothing and raises QueueFull, also when many
calls race (PostgreSQL: batched together by the group commit)."""

from __future__ import annotations

import asyncio

import pytest

from storage.errors import QueueFull
from storage.interfaces import Store

from .support import START_MS, envelope, make_user


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
