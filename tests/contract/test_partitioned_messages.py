"""Migration 0006: stored messages in hash partitions of the recipient user. Rows present
survive up, down and up again with their seq values, version 5 comes back exactly, and the
store's promises (dedup of a retried store, drain order, the cap's counts, the purge, the
blinding of user ids that moves rows between partitions) hold on the partitioned table."""

from __future__ import annotations

import os

import asyncpg
import pytest

from storage.at_rest.master_key import LocalKeyFile
from storage.errors import QueueFull
from storage.postgres.migrate import check, migrate
from storage.production import ProductionStore

from .support import DAY_MS, START_MS, Backend, envelope, make_user
from .test_at_rest_postgres import Sealed, _schema_shape, open_production

PARTITIONS = 16


async def _rows(url: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        # The columns of versions 5 and 6 (a later migration's columns go down before them).
        return [
            tuple(r)
            for r in await conn.fetch(
                "SELECT seq, recipient_user, recipient_device, id, sender_user, sender_device,"
                " ts, server_ts, type, body, nonce, expires_ms, key_id, sealed"
                " FROM messages ORDER BY seq"
            )
        ]
    finally:
        await conn.close()


async def _partitions_used(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        count = await conn.fetchval(
            "SELECT count(DISTINCT tableoid) FROM messages WHERE tableoid <> 'messages'::regclass"
        )
        assert isinstance(count, int)
        return count
    finally:
        await conn.close()


async def _counts_match_rows(url: str) -> None:
    """Every device's counter is its number of stored rows (zero counters aside)."""
    conn = await asyncpg.connect(url)
    try:
        wrong = await conn.fetch(
            "SELECT * FROM (SELECT recipient_user, recipient_device, count(*) AS n"
            " FROM messages GROUP BY 1, 2) m"
            " FULL JOIN (SELECT * FROM queue_counts WHERE stored <> 0) q"
            " USING (recipient_user, recipient_device) WHERE n IS DISTINCT FROM stored"
        )
        assert wrong == []
    finally:
        await conn.close()


async def _users_with_rows(store: ProductionStore, users: int) -> list[str]:
    made = [await make_user(store, devices=2) for _ in range(users)]
    for i, user in enumerate(made):
        await store.messages.store([envelope(user, 1 + i % 2) for _ in range(3)])
    return made


async def test_migration_6_up_down_up_keeps_rows_and_restores_version_5(
    production: Backend, empty_database: str
) -> None:
    store = await open_production(production)
    users = await _users_with_rows(store, 12)
    sealed = await Sealed.open(store, LocalKeyFile(os.urandom(32)), production)
    await store.messages.store([envelope(users[0], 2) for _ in range(2)])  # sealed rows
    assert production.database_url is not None
    url = production.database_url
    before = await _rows(url)
    assert len(before) == 12 * 3 + 2
    assert await _partitions_used(url) > 1

    assert await migrate(url, to=5) == [
        "down 0009_shared_payloads",
        "down 0008_key_backups",
        "down 0007_receipts",
        "down 0006_partitioned_messages",
    ]
    assert await migrate(empty_database, to=5)
    assert await _schema_shape(url) == await _schema_shape(empty_database)
    assert await _rows(url) == before
    await _counts_match_rows(url)

    assert await migrate(url) == [
        "up 0006_partitioned_messages",
        "up 0007_receipts",
        "up 0008_key_backups",
        "up 0009_shared_payloads",
    ]
    assert (await check(url))[0]
    assert await _rows(url) == before
    assert await _partitions_used(url) > 1
    await _counts_match_rows(url)
    assert await migrate(empty_database) == [
        "up 0006_partitioned_messages",
        "up 0007_receipts",
        "up 0008_key_backups",
        "up 0009_shared_payloads",
    ]
    assert await _schema_shape(url) == await _schema_shape(empty_database)

    again = await open_production(production)
    again.use_sealer(sealed.sealer)
    got = await again.messages.fetch(users[0], 2, after_seq=0, limit=10, now_ms=START_MS)
    assert len(got) == 2 and sealed.undecryptable == []
    # The sequence goes on after the moved rows: a drain never sees a lower seq appear.
    later = envelope(users[0], 2)
    await again.messages.store([later])
    got = await again.messages.fetch(users[0], 2, after_seq=0, limit=10, now_ms=START_MS)
    assert [s.envelope.id for s in got][-1] == later.id
    assert got[-1].seq > max(int(str(row[0])) for row in before)
    assert [s.seq for s in got] == sorted(s.seq for s in got)
    # A retried store of the same (device, id) is still ignored.
    await again.messages.store([later])
    assert await again.messages.stored_count() == len(before) + 1
    # The cap reads the counts the triggers keep on every partition.
    await again.messages.store([envelope(users[0], 2)], max_per_device=4)
    with pytest.raises(QueueFull):
        await again.messages.store([envelope(users[0], 2)], max_per_device=4)
    await _counts_match_rows(url)


async def test_purge_walks_every_partition(production: Backend) -> None:
    store = await open_production(production)
    users = await _users_with_rows(store, 20)
    short = [envelope(user, 1 + i % 2, expires_ms=START_MS + 10) for i, user in enumerate(users)]
    await store.messages.store(short)
    assert production.database_url is not None
    assert await store.messages.purge_expired(START_MS + 10) == len(short)
    assert await store.messages.purge_expired(START_MS + 10) == 0
    assert await store.messages.stored_count() == 20 * 3
    await _counts_match_rows(production.database_url)
    assert await store.messages.purge_expired(START_MS + 30 * DAY_MS) == 20 * 3
    await _counts_match_rows(production.database_url)


async def test_blinding_moves_rows_between_partitions_and_keeps_counts(
    production: Backend,
) -> None:
    store = await open_production(production)
    users = await _users_with_rows(store, 16)
    sealed = await Sealed.open(store, LocalKeyFile(os.urandom(32)), production)
    ring = sealed.vault.ring
    assert production.database_url is not None
    url = production.database_url
    conn = await asyncpg.connect(url)
    try:
        before = {
            (r["recipient_user"], r["p"])
            for r in await conn.fetch("SELECT recipient_user, tableoid AS p FROM messages")
        }
    finally:
        await conn.close()
    await store.clear_data.blind_user_ids(
        ring.blind_user, lambda nonce: ring.blind(b"nonce", nonce), ring.seal_text
    )
    conn = await asyncpg.connect(url)
    try:
        after = {
            (r["recipient_user"], r["p"])
            for r in await conn.fetch("SELECT recipient_user, tableoid AS p FROM messages")
        }
    finally:
        await conn.close()
    moved = {user for user, p in before if (ring.blind_user(user), p) not in after}
    assert moved, "with 16 users some blinded ids hash to another partition"
    await _counts_match_rows(url)
    while await store.clear_data.seal_clear_messages(sealed.sealer, limit=7):
        pass
    assert await store.clear_data.clear_messages() == 0
    blinded = ring.blind_user(users[0])
    await store.messages.store([envelope(blinded, 1)], max_per_device=4)
    with pytest.raises(QueueFull):
        await store.messages.store([envelope(blinded, 1)], max_per_device=4)
    await _counts_match_rows(url)
