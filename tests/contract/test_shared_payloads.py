"""MessageQueue contract for the shared payloads of `send.multi` (storage.records.SharedPayload):
stored once however many devices name it, joined back on fetch, gone with its last message
(acks, removal, purge), never left behind by a store that stored nothing, and sealed apart
under encryption at rest (also by the conversion of a clear store)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3

import asyncpg
import pytest

from storage.at_rest.sealing import RingSealer
from storage.embedded import EmbeddedStore
from storage.errors import QueueFull
from storage.interfaces import Store
from storage.production import ProductionStore
from storage.records import Envelope, SharedPayload

from .support import DAY_MS, START_MS, Backend, envelope, make_user, seal_from_now


async def payload_rows(backend: Backend, store: Store) -> list[tuple[bytes, bool, int]]:
    """Every stored payload as (id, sealed?, messages naming it), read from the tables."""
    if isinstance(store, EmbeddedStore):
        conn = sqlite3.connect(store._db.path, isolation_level=None)
        try:
            rows = conn.execute(
                "SELECT p.payload_id, p.key_id <> 0,"
                " (SELECT COUNT(*) FROM messages m WHERE m.payload_id = p.payload_id)"
                " FROM shared_payloads p ORDER BY 1"
            ).fetchall()
        finally:
            conn.close()
        return [(bytes(r[0]), bool(r[1]), int(r[2])) for r in rows]
    assert isinstance(store, ProductionStore) and backend.database_url is not None
    pg = await asyncpg.connect(backend.database_url)
    try:
        found = await pg.fetch(
            "SELECT p.payload_id, p.key_id IS NOT NULL AS sealed,"
            " (SELECT count(*) FROM messages m WHERE m.payload_id = p.payload_id) AS refs"
            " FROM shared_payloads p ORDER BY 1"
        )
    finally:
        await pg.close()
    return [(bytes(r["payload_id"]), bool(r["sealed"]), int(r["refs"])) for r in found]


def group(
    recipients: list[tuple[str, int]],
    payload: SharedPayload,
    *,
    message_id: bytes | None = None,
    expires_ms: int = START_MS + 30 * DAY_MS,
) -> list[Envelope]:
    """One frame's envelopes: a header each, one payload for all."""
    message_id = os.urandom(16) if message_id is None else message_id
    return [
        dataclasses.replace(
            envelope(
                user, device, id=message_id, body=b"header-%d" % device, expires_ms=expires_ms
            ),
            payload=payload,
        )
        for user, device in recipients
    ]


def new_payload(size: int = 3000) -> SharedPayload:
    return SharedPayload(id=os.urandom(16), body=os.urandom(size))


async def fetched(
    store: Store, user: str, device: int, *, now_ms: int = START_MS
) -> list[Envelope]:
    rows = await store.messages.fetch(user, device, after_seq=0, limit=100, now_ms=now_ms)
    return [r.envelope for r in rows]


async def test_stored_once_and_joined_back(backend: Backend, store: Store) -> None:
    a = await make_user(store, devices=3)
    b = await make_user(store, devices=2)
    payload = new_payload()
    sent = group([(a, 1), (a, 2), (a, 3), (b, 1), (b, 2)], payload)
    await store.messages.store(sent)
    assert await payload_rows(backend, store) == [(payload.id, False, 5)]
    for e in sent:
        (got,) = await fetched(store, e.recipient_user, e.recipient_device)
        assert got == e  # the header in `body`, the payload named and whole
        assert got.delivered_body == e.body + payload.body
    # A message without a payload beside them is untouched.
    plain = envelope(a, 1)
    await store.messages.store([plain])
    assert (await fetched(store, a, 1))[1] == plain
    assert plain.payload is None


async def test_the_last_ack_deletes_the_payload(backend: Backend, store: Store) -> None:
    a = await make_user(store, devices=3)
    payload = new_payload()
    sent = group([(a, 1), (a, 2), (a, 3)], payload)
    await store.messages.store(sent)
    await store.messages.ack(a, 1, [sent[0].id])
    await store.messages.ack(a, 2, [sent[0].id, os.urandom(16)])
    assert await payload_rows(backend, store) == [(payload.id, False, 1)]
    assert (await fetched(store, a, 3)) == [sent[2]]
    await store.messages.ack(a, 3, [sent[0].id])
    assert await payload_rows(backend, store) == []


async def test_two_store_calls_and_a_retry_keep_one_copy(backend: Backend, store: Store) -> None:
    """The devices stored at once and those whose ack came late are two calls of one frame;
    a retry stores them again: still one payload, counted once per device."""
    a = await make_user(store, devices=3)
    payload = new_payload()
    sent = group([(a, 1), (a, 2), (a, 3)], payload)
    await store.messages.store(sent[:1])
    await store.messages.store(sent[1:])
    await store.messages.store(sent)  # the retry
    assert await payload_rows(backend, store) == [(payload.id, False, 3)]
    # Acked meanwhile, then stored late again: the payload comes back with its row.
    for e in sent:
        await store.messages.ack(a, e.recipient_device, [e.id])
    assert await payload_rows(backend, store) == []
    await store.messages.store(sent[2:])
    assert await payload_rows(backend, store) == [(payload.id, False, 1)]
    assert await fetched(store, a, 3) == [sent[2]]


async def test_a_store_that_stores_nothing_leaves_no_payload(
    backend: Backend, store: Store
) -> None:
    a = await make_user(store, devices=2)
    assert await store.devices.remove_device(a, 2)
    await store.messages.store(group([(a, 2)], new_payload()))  # a removed device: dropped
    assert await payload_rows(backend, store) == []
    # A full queue refuses the call as a whole: no payload either.
    await store.messages.store([envelope(a, 1)], max_per_device=1)
    with pytest.raises(QueueFull):
        await store.messages.store(group([(a, 1)], new_payload()), max_per_device=1)
    assert await payload_rows(backend, store) == []


async def test_removal_and_purge_take_the_payload(backend: Backend, store: Store) -> None:
    a = await make_user(store, devices=2)
    kept = new_payload()
    await store.messages.store(group([(a, 1), (a, 2)], kept))
    assert await store.devices.remove_device(a, 2)
    assert await payload_rows(backend, store) == [(kept.id, False, 1)]
    assert await store.devices.remove_device(a, 1)
    assert await payload_rows(backend, store) == []

    b = await make_user(store, devices=2)
    expiring = new_payload()
    await store.messages.store(group([(b, 1), (b, 2)], expiring, expires_ms=START_MS + 1000))
    assert await store.messages.purge_expired(START_MS + 1000) == 2
    assert await payload_rows(backend, store) == []


async def _sealed(store: Store, backend: Backend) -> tuple[RingSealer, list[str]]:
    """A vault over the store's key table and a RingSealer installed; its failures."""
    failures: list[str] = []
    _, sealer = await seal_from_now(store, backend, on_undecryptable=failures.append)
    return sealer, failures


async def test_sealed_apart_and_opened(backend: Backend, store: Store) -> None:
    _, failures = await _sealed(store, backend)
    a = await make_user(store, devices=2)
    payload = new_payload()
    sent = group([(a, 1), (a, 2)], payload)
    await store.messages.store(sent)
    assert await payload_rows(backend, store) == [(payload.id, True, 2)]
    assert await fetched(store, a, 2) == [sent[1]]
    assert failures == []
    assert isinstance(store, EmbeddedStore | ProductionStore)
    used = await store.data_keys.usage()
    assert sum(used.values()) == 3  # two messages and one payload hold the key


async def test_the_conversion_of_a_clear_store_seals_payloads(
    backend: Backend, store: Store
) -> None:
    a = await make_user(store, devices=2)
    payload = new_payload()
    sent = group([(a, 1), (a, 2)], payload)
    await store.messages.store(sent)  # in the clear (no sealer yet)
    assert isinstance(store, EmbeddedStore | ProductionStore)
    assert await store.clear_data.clear_messages() == 3
    sealer, failures = await _sealed(store, backend)
    while await store.clear_data.seal_clear_messages(sealer, limit=100):
        pass
    assert await store.clear_data.clear_messages() == 0
    assert await payload_rows(backend, store) == [(payload.id, True, 2)]
    assert await fetched(store, a, 1) == [sent[0]]
    assert failures == []


async def _orphan(backend: Backend, store: Store, payload_id: bytes, expires_ms: int) -> None:
    """A payload row no message names, as a race between two last acks can leave one."""
    if isinstance(store, EmbeddedStore):
        conn = sqlite3.connect(store._db.path, isolation_level=None)
        try:
            conn.execute(
                "INSERT INTO shared_payloads (payload_id, body, expires_ms) VALUES (?, ?, ?)",
                (payload_id, b"orphan", expires_ms),
            )
        finally:
            conn.close()
        return
    assert backend.database_url is not None
    pg = await asyncpg.connect(backend.database_url)
    try:
        await pg.execute(
            "INSERT INTO shared_payloads (payload_id, body, expires_ms) VALUES ($1, $2, $3)",
            payload_id,
            b"orphan",
            expires_ms,
        )
    finally:
        await pg.close()


async def test_the_purge_takes_expired_payloads_nothing_names(
    backend: Backend, store: Store
) -> None:
    a = await make_user(store, devices=1)
    live = new_payload()
    await store.messages.store(group([(a, 1)], live))
    orphan, later = os.urandom(16), os.urandom(16)
    await _orphan(backend, store, orphan, START_MS + 1000)
    await _orphan(backend, store, later, START_MS + 5000)
    await store.messages.purge_expired(START_MS + 1000)
    assert sorted(p[0] for p in await payload_rows(backend, store)) == sorted([live.id, later])
    assert (await fetched(store, a, 1))[0].payload == live
