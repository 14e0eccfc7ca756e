"""MessageQueue contract: durable idempotent stores, ordered drains, acks (spec §4, §5)."""

from __future__ import annotations

import asyncio
import os

from storage.interfaces import Store
from storage.records import PendingOrigin

from .support import DAY_MS, START_MS, Backend, envelope, make_user, new_user


async def fetch_all(store: Store, user: str, device: int, *, now_ms: int = START_MS) -> list[bytes]:
    stored = await store.messages.fetch(user, device, after_seq=0, limit=10_000, now_ms=now_ms)
    return [s.envelope.id for s in stored]


async def test_store_then_fetch_in_storage_order(store: Store) -> None:
    user = await make_user(store)
    first = envelope(user, 1, body=b"\x00" * 1000)
    second, third = envelope(user, 1), envelope(user, 1)
    await store.messages.store([first])
    await store.messages.store([second, third])
    fetched = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert [s.envelope for s in fetched] == [first, second, third]  # byte for byte
    seqs = [s.seq for s in fetched]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3 and seqs[0] > 0


async def test_rows_take_the_stored_name_and_are_read_back_under_the_given_one(
    store: Store,
) -> None:
    """How the encrypted-at-rest view uses the queue: rows name the recipient as `stored_as`
    says (its keyed hash), and a fetch names it as `named` says (the real id), so no
    envelope is copied to be renamed on the way in or out."""
    stored_name = await make_user(store)
    real_name = new_user()
    original = envelope(real_name, 1, body=b"renamed")
    await store.messages.store([original], stored_as={real_name: stored_name}.__getitem__)
    assert await fetch_all(store, real_name, 1) == []  # no row names the real id
    named = await store.messages.fetch(
        stored_name, 1, after_seq=0, limit=10, now_ms=START_MS, named=real_name
    )
    assert [s.envelope for s in named] == [original]
    as_stored = await store.messages.fetch(stored_name, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert [s.envelope.recipient_user for s in as_stored] == [stored_name]


async def test_empty_store_and_ack_are_no_ops(store: Store) -> None:
    user = await make_user(store)
    await store.messages.store([])
    await store.messages.ack(user, 1, [])
    assert await store.messages.queue_state(user, 1, now_ms=START_MS) == (0, 0)


async def test_store_is_idempotent(store: Store) -> None:
    user = await make_user(store, devices=2)
    message_id = os.urandom(16)
    original = envelope(user, 1, id=message_id, body=b"first")
    await store.messages.store([original])
    await store.messages.store([original, envelope(user, 1, id=message_id, body=b"second")])
    fetched = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert [s.envelope for s in fetched] == [original]  # kept as is
    # The same id for another device is another copy.
    await store.messages.store([envelope(user, 2, id=message_id)])
    assert await fetch_all(store, user, 2) == [message_id]


async def test_fetch_pages_by_seq(store: Store) -> None:
    user = await make_user(store)
    envelopes = [envelope(user, 1) for _ in range(7)]
    await store.messages.store(envelopes)
    seen: list[bytes] = []
    after = 0
    while True:
        page = await store.messages.fetch(user, 1, after_seq=after, limit=3, now_ms=START_MS)
        if not page:
            break
        assert len(page) <= 3
        seen += [s.envelope.id for s in page]
        after = page[-1].seq
    assert seen == [e.id for e in envelopes]


async def test_fetch_is_per_device(store: Store) -> None:
    user = await make_user(store, devices=2)
    other = await make_user(store)
    mine, theirs, elsewhere = envelope(user, 1), envelope(user, 2), envelope(other, 1)
    await store.messages.store([mine, theirs, elsewhere])
    assert await fetch_all(store, user, 1) == [mine.id]
    assert await fetch_all(store, user, 2) == [theirs.id]
    assert await fetch_all(store, other, 1) == [elsewhere.id]


async def test_expired_messages_are_not_fetched_and_are_purged(store: Store) -> None:
    user = await make_user(store)
    soon = envelope(user, 1, expires_ms=START_MS + 1000)
    later = envelope(user, 1, expires_ms=START_MS + DAY_MS)
    await store.messages.store([soon, later])
    assert await fetch_all(store, user, 1, now_ms=START_MS + 999) == [soon.id, later.id]
    assert await fetch_all(store, user, 1, now_ms=START_MS + 1000) == [later.id]
    count, highest = await store.messages.queue_state(user, 1, now_ms=START_MS + 1000)
    assert count == 1 and highest > 0
    assert await store.messages.purge_expired(START_MS + 1000) == 1
    assert await store.messages.purge_expired(START_MS + 1000) == 0
    assert await fetch_all(store, user, 1, now_ms=START_MS) == [later.id]


async def test_purge_of_many_rows(store: Store) -> None:
    user = await make_user(store)
    await store.messages.store([envelope(user, 1, expires_ms=START_MS) for _ in range(6000)])
    await store.messages.store([envelope(user, 1)])
    assert await store.messages.purge_expired(START_MS) == 6000
    assert (await store.messages.queue_state(user, 1, now_ms=START_MS))[0] == 1


async def test_ack_removes_only_the_named_device_copies(store: Store) -> None:
    user = await make_user(store, devices=2)
    shared = os.urandom(16)
    a, b = envelope(user, 1, id=shared), envelope(user, 1)
    await store.messages.store([a, b, envelope(user, 2, id=shared)])
    await store.messages.ack(user, 1, [shared, os.urandom(16)])  # unknown ids are ignored
    assert await fetch_all(store, user, 1) == [b.id]
    assert await fetch_all(store, user, 2) == [shared]
    await store.messages.ack(user, 1, [b.id, b.id])
    assert await fetch_all(store, user, 1) == []


async def test_ack_of_a_thousand_ids(store: Store) -> None:
    user = await make_user(store)
    envelopes = [envelope(user, 1) for _ in range(1001)]
    await store.messages.store(envelopes)
    await store.messages.ack(user, 1, [e.id for e in envelopes[:1000]])
    assert await fetch_all(store, user, 1) == [envelopes[-1].id]


async def test_an_ack_submitted_before_a_fetch_is_applied_before_it(store: Store) -> None:
    user = await make_user(store)
    envelopes = [envelope(user, 1) for _ in range(20)]
    await store.messages.store(envelopes)
    acked = [e.id for e in envelopes[:10]]
    _, fetched = await asyncio.gather(
        store.messages.ack(user, 1, acked),
        store.messages.fetch(user, 1, after_seq=0, limit=100, now_ms=START_MS),
    )
    assert [s.envelope.id for s in fetched] == [e.id for e in envelopes[10:]]


async def test_queue_state(store: Store) -> None:
    user = await make_user(store)
    assert await store.messages.queue_state(user, 1, now_ms=START_MS) == (0, 0)
    await store.messages.store([envelope(user, 1) for _ in range(3)])
    stored = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert await store.messages.queue_state(user, 1, now_ms=START_MS) == (3, stored[-1].seq)
    await store.messages.ack(user, 1, [s.envelope.id for s in stored])
    assert await store.messages.queue_state(user, 1, now_ms=START_MS) == (0, 0)


async def test_seq_is_never_reused_after_the_newest_is_acked(store: Store) -> None:
    user = await make_user(store)
    first = envelope(user, 1)
    await store.messages.store([first])
    (stored,) = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    await store.messages.ack(user, 1, [first.id])
    second = envelope(user, 1)
    await store.messages.store([second])
    page = await store.messages.fetch(user, 1, after_seq=stored.seq, limit=10, now_ms=START_MS)
    assert [s.envelope.id for s in page] == [second.id]


async def test_concurrent_stores_all_land(store: Store) -> None:
    user = await make_user(store)
    envelopes = [envelope(user, 1) for _ in range(300)]
    await asyncio.gather(*(store.messages.store([e]) for e in envelopes))
    fetched = await store.messages.fetch(user, 1, after_seq=0, limit=1000, now_ms=START_MS)
    assert sorted(s.envelope.id for s in fetched) == sorted(e.id for e in envelopes)
    assert len({s.seq for s in fetched}) == 300


async def test_pending_origins(store: Store) -> None:
    user = await make_user(store, devices=3)
    message_id = os.urandom(16)
    sender = "11111111-1111-4111-8111-111111111111"
    await store.messages.store(
        [
            envelope(user, 3, id=message_id, sender_user=sender, sender_device=2, nonce=b"n" * 24),
            envelope(user, 1, id=message_id, sender_user=sender, sender_device=2, nonce=b"n" * 24),
            envelope(user, 2, sender_user=sender),
        ]
    )
    origins = await store.messages.pending_origins(user, [1, 2, 3], message_id)
    assert sorted(origins, key=lambda o: o.device) == [
        PendingOrigin(device=1, sender_user=sender, sender_device=2, nonce=b"n" * 24),
        PendingOrigin(device=3, sender_user=sender, sender_device=2, nonce=b"n" * 24),
    ]
    assert await store.messages.pending_origins(user, [2], message_id) == []
    assert await store.messages.pending_origins(user, [], message_id) == []
    await store.messages.ack(user, 1, [message_id])
    assert [o.device for o in await store.messages.pending_origins(user, [1, 3], message_id)] == [3]


async def test_messages_survive_reopen(backend: Backend, store: Store) -> None:
    user = await make_user(store)
    envelopes = [envelope(user, 1) for _ in range(5)]
    await store.messages.store(envelopes)
    await store.messages.ack(user, 1, [envelopes[0].id])
    before = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    await store.close()
    reopened = await backend.open()
    after = await reopened.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert after == before
    assert [s.envelope for s in after] == envelopes[1:]


async def test_stored_count_counts_every_device(store: Store) -> None:
    assert await store.messages.stored_count() == 0
    first, second = await make_user(store, devices=2), await make_user(store)
    await store.messages.store([envelope(first, 1), envelope(first, 2), envelope(second, 1)])
    await store.messages.store([envelope(second, 1)])
    assert await store.messages.stored_count() == 4
    (acked,) = await store.messages.fetch(first, 2, after_seq=0, limit=10, now_ms=START_MS)
    await store.messages.ack(first, 2, [acked.envelope.id])
    assert await store.messages.stored_count() == 3
