"""The PostgreSQL backend's own promises, beyond the shared contract: migrations and the
schema check, the key audit trail, group commit, write ordering, claims across processes,
and driver errors turned into Unavailable."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import asyncpg
import pytest

from storage.errors import Unavailable
from storage.postgres.migrate import check, latest_version, migrate
from storage.production import ProductionStore
from storage.records import KeyUpload, OneTimeKey, SignedKey

from .support import (
    REDIS_URL,
    START_MS,
    Backend,
    envelope,
    make_user,
)

SIG = b"g" * 64


async def open_production(backend: Backend) -> ProductionStore:
    store = await backend.open()
    assert isinstance(store, ProductionStore)
    return store


async def test_migrate_up_down_up_and_check(empty_database: str) -> None:
    assert latest_version() == 9
    ok, message = await check(empty_database)
    assert not ok and "schema version is 0" in message and "table users is missing" in message

    assert await migrate(empty_database) == [
        "up 0001_initial",
        "up 0002_canonical_identity_keys",
        "up 0003_queue_counts",
        "up 0004_key_event_kinds",
        "up 0005_at_rest",
        "up 0006_partitioned_messages",
        "up 0007_receipts",
        "up 0008_key_backups",
        "up 0009_shared_payloads",
    ]
    assert await migrate(empty_database) == []  # already there
    ok, message = await check(empty_database)
    assert ok, message

    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute("ALTER TABLE messages DROP COLUMN nonce")
        ok, message = await check(empty_database)
        assert not ok and "column messages.nonce is missing" in message
        await conn.execute("ALTER TABLE messages ADD COLUMN nonce text NOT NULL")
        ok, message = await check(empty_database)
        assert not ok and "column messages.nonce is text, expected bytea" in message
        # Repaired (the down step of 0006 copies every column into version 5's table).
        await conn.execute("ALTER TABLE messages DROP COLUMN nonce")
        await conn.execute("ALTER TABLE messages ADD COLUMN nonce bytea")
        assert (await check(empty_database))[0]
    finally:
        await conn.close()

    assert await migrate(empty_database, to=0) == [
        "down 0009_shared_payloads",
        "down 0008_key_backups",
        "down 0007_receipts",
        "down 0006_partitioned_messages",
        "down 0005_at_rest",
        "down 0004_key_event_kinds",
        "down 0003_queue_counts",
        "down 0002_canonical_identity_keys",
        "down 0001_initial",
    ]
    ok, message = await check(empty_database)
    assert not ok and "schema version is 0, the latest is 9" in message
    assert await migrate(empty_database, to=1) == ["up 0001_initial"]
    ok, message = await check(empty_database)
    assert not ok and "schema version is 1, the latest is 9" in message
    assert await migrate(empty_database) == [
        "up 0002_canonical_identity_keys",
        "up 0003_queue_counts",
        "up 0004_key_event_kinds",
        "up 0005_at_rest",
        "up 0006_partitioned_messages",
        "up 0007_receipts",
        "up 0008_key_backups",
        "up 0009_shared_payloads",
    ]
    ok, _ = await check(empty_database)
    assert ok
    with pytest.raises(ValueError):
        await migrate(empty_database, to=latest_version() + 1)


async def test_migrate_of_an_unreachable_server_is_unavailable() -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await migrate("postgresql://postgres@127.0.0.1:1/postgres")
    with pytest.raises(Unavailable):
        await check("postgresql://postgres@127.0.0.1:1/postgres")
    assert time.monotonic() - started < 10


async def test_concurrent_migrators_take_turns(empty_database: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database) for _ in range(4)))
    everything = [
        "up 0001_initial",
        "up 0002_canonical_identity_keys",
        "up 0003_queue_counts",
        "up 0004_key_event_kinds",
        "up 0005_at_rest",
        "up 0006_partitioned_messages",
        "up 0007_receipts",
        "up 0008_key_backups",
        "up 0009_shared_payloads",
    ]
    assert sorted(results) == [[], [], [], everything]
    assert (await check(empty_database))[0]


async def test_key_events_are_written_without_key_material(production: Backend) -> None:
    store = await open_production(production)
    user = await make_user(store, devices=2)
    upload = KeyUpload(
        signed_prekey=SignedKey(7, b"S" * 33, SIG),
        prekeys=(OneTimeKey(1, b"E" * 33),),
        pq_prekeys=(SignedKey(3, b"P" * 1569, SIG),),
        pq_last_resort=SignedKey(9, b"L" * 1569, SIG),
    )
    await store.keys.upload(user, 1, upload, now_ms=START_MS, max_stored=100)
    first = await store.keys.claim(user, 1, low_water=0)
    assert first.prekey is not None
    second = await store.keys.claim(user, 1, low_water=0)  # no one-time key left
    assert second.prekey is None and second.pq_prekey == upload.pq_last_resort
    assert await store.devices.remove_device(user, 2)

    assert production.database_url is not None
    conn = await asyncpg.connect(production.database_url)
    try:
        rows = await conn.fetch(
            "SELECT device, kind, detail::text AS detail FROM key_events"
            " WHERE user_id = $1 ORDER BY id",
            user,
        )
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'key_events'"
        )
    finally:
        await conn.close()
    assert [(r["device"], r["kind"]) for r in rows] == [
        (1, "register"),
        (2, "add_device"),
        (1, "signed_prekey_rotated"),
        (1, "prekeys_uploaded"),
        (1, "prekey_claimed"),
        (1, "claim_without_prekey"),
        (2, "remove_device"),
        (2, "identity_key_retired"),
    ]
    details = [json.loads(r["detail"]) for r in rows]
    assert details[2] == {"key_id": 7}
    assert details[3] == {
        "prekeys": 1,
        "pq_prekeys": 1,
        "prekey_ids": [1],
        "pq_prekey_ids": [3],
        "pq_last_resort_id": 9,
    }
    no_requester = {"requester_user": None, "requester_device": None}
    assert details[4] == {
        "signed_prekey_id": 7,
        "prekey_id": 1,
        "pq_prekey_id": 3,
        "pq_last_resort": False,
        **no_requester,
    }
    assert details[5] == {
        "signed_prekey_id": 7,
        "pq_prekey_id": None,
        "pq_last_resort": True,
        "reason": "none left",
        **no_requester,
    }
    assert {c["column_name"] for c in columns} == {
        "id",
        "at",
        "user_id",
        "device",
        "kind",
        "detail",
    }


async def test_group_commit(production: Backend) -> None:
    store = await open_production(production)
    user = await make_user(store)
    queue = store.messages
    batches, envelopes = queue.batches_committed, queue.envelopes_committed
    stored = [envelope(user, 1) for _ in range(100)]

    await asyncio.gather(*(queue.store([e]) for e in stored))

    assert queue.envelopes_committed - envelopes == 100
    assert queue.batches_committed - batches < 100  # several stores shared each commit
    # Durable: a second store (another pool) sees them all.
    other = await open_production(production)
    fetched = await other.messages.fetch(user, 1, after_seq=0, limit=1000, now_ms=START_MS)
    assert sorted(s.envelope.id for s in fetched) == sorted(e.id for e in stored)


async def test_pending_origins_of_many_sends_share_one_statement(production: Backend) -> None:
    store = await open_production(production)
    users = [await make_user(store, devices=2) for _ in range(20)]
    ids = [secrets.token_bytes(16) for _ in users]
    # Every other user has the id stored for device 2, from a sender of its own.
    await store.messages.store(
        [
            envelope(user, 2, id=ids[n], sender_user=f"sender-{n}", sender_device=3)
            for n, user in enumerate(users)
            if n % 2 == 0
        ]
    )
    lookups = store.messages.origins
    statements = lookups.statements
    found = await asyncio.gather(
        *(store.messages.pending_origins(user, [1, 2], ids[n]) for n, user in enumerate(users))
    )
    assert lookups.statements - statements < len(users)
    for n, origins in enumerate(found):
        expected = [(2, f"sender-{n}", 3)] if n % 2 == 0 else []
        assert [(o.device, o.sender_user, o.sender_device) for o in origins] == expected


async def test_reads_joined_to_the_partitions_are_never_planned_again(production: Backend) -> None:
    """The pending-origins lookup and the queue-state read join a list of keys to the 16
    partitions of messages: PostgreSQL would plan them anew on every execution (custom plans,
    about 1.4 ms each; always the first five of a prepared statement). They run on the
    connections of generic plans only, and the main pool keeps PostgreSQL's own choice."""
    store = await open_production(production)
    user = await make_user(store, devices=2)
    stored = envelope(user, 2, sender_user="sender-0", sender_device=3)
    await store.messages.store([stored])
    for _ in range(8):  # one after the other: eight statements of each
        origins = await store.messages.pending_origins(user, [1, 2], stored.id)
        assert [(o.device, o.sender_user) for o in origins] == [(2, "sender-0")]
        assert (await store.messages.queue_state(user, 2, now_ms=START_MS))[0] == 1
    # Used one at a time, the pool hands out the same connection again (as the test's own).
    async with store.database.connection("test", generic_plans=True) as conn:
        rows = await conn.fetch(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE '%messages m%'"
            " AND statement NOT LIKE '%pg_prepared_statements%'"  # this query itself
        )
        mode = await conn.fetchval("SHOW plan_cache_mode")
    assert mode == "force_generic_plan"
    plans = {("unnest" in r["statement"], "LATERAL" in r["statement"]): r for r in rows}
    assert sorted(plans) == [(True, False), (True, True)]
    assert [(r["generic_plans"], r["custom_plans"]) for r in plans.values()] == [(8, 0)] * 2
    async with store.database.connection("test") as conn:  # the main pool is left as it was
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"


async def test_an_ack_issued_right_after_a_store_is_applied_after_it(production: Backend) -> None:
    store = await open_production(production)
    user = await make_user(store)
    pairs = [envelope(user, 1) for _ in range(50)]
    calls = []
    for e in pairs:
        # Issued back to back, neither awaited before the other is issued.
        calls.append(asyncio.ensure_future(store.messages.store([e])))
        calls.append(asyncio.ensure_future(store.messages.ack(user, 1, [e.id])))
    await asyncio.gather(*calls)
    assert await store.messages.fetch(user, 1, after_seq=0, limit=100, now_ms=START_MS) == []
    assert await store.messages.queue_state(user, 1, now_ms=START_MS) == (0, 0)


async def test_a_thousand_claims_from_two_processes_take_each_key_once(
    production: Backend,
) -> None:
    """Two stores (two pools, as two relay nodes would have) claim side by side."""
    first = await open_production(production)
    second = await open_production(production)
    user = await make_user(first)
    last_resort = SignedKey(500, b"L" * 1569, SIG)
    await first.keys.upload(
        user,
        1,
        KeyUpload(
            signed_prekey=SignedKey(1, b"S" * 33, SIG),
            prekeys=tuple(OneTimeKey(i, i.to_bytes(33, "big")) for i in range(1, 101)),
            pq_last_resort=last_resort,
        ),
        now_ms=START_MS,
        max_stored=1000,
    )

    claims = await asyncio.gather(
        *((first if n % 2 else second).keys.claim(user, 1, low_water=0) for n in range(1000))
    )

    taken = [c.prekey for c in claims if c.prekey is not None]
    assert len(taken) == 100
    assert {k.id for k in taken} == set(range(1, 101))
    assert all(k.key == k.id.to_bytes(33, "big") for k in taken)
    assert sum(1 for c in claims if c.prekey is None) == 900
    assert all(c.pq_prekey == last_resort for c in claims)
    assert (await first.keys.counts(user, 1)).prekeys == 0


async def test_an_unreachable_database_is_unavailable_fast() -> None:
    store = await ProductionStore.open(
        database_url="postgresql://postgres@127.0.0.1:1/postgres",
        redis_url=REDIS_URL,
        redis_prefix=f"relaytest:{secrets.token_hex(8)}:",
        timeout_s=0.5,
    )
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await store.devices.get_device("u", 1)
        with pytest.raises(Unavailable):
            await store.messages.store([envelope("u", 1)])
        # Lookups sharing one statement share its failure; the next ones are tried anew.
        for _ in range(2):
            lookups = await asyncio.gather(
                *(store.messages.pending_origins("u", [1], secrets.token_bytes(16)) for _ in "ab"),
                return_exceptions=True,
            )
            assert all(isinstance(result, Unavailable) for result in lookups)
        assert time.monotonic() - started < 2.0
        assert await store.ready() == {"postgresql": False, "redis": True}
    finally:
        await store.close()


async def test_ready_and_close(production: Backend) -> None:
    store = await open_production(production)
    assert await store.ready() == {"postgresql": True, "redis": True}
    await store.close()
    assert await store.ready() == {"postgresql": False, "redis": False}
    with pytest.raises(Unavailable):
        await store.messages.store([envelope("u", 1)])
    await store.close()  # twice is fine


async def test_migration_4_down_deletes_the_kinds_it_added(production: Backend) -> None:
    """Version 3's check knows neither prekey_claimed nor identity_key_retired: going down
    deletes those rows (and only those), and going up again records them anew."""
    store = await open_production(production)
    user = await make_user(store, devices=2)
    assert await store.devices.remove_device(user, 2)
    assert production.database_url is not None
    assert await migrate(production.database_url, to=3) == [
        "down 0009_shared_payloads",
        "down 0008_key_backups",
        "down 0007_receipts",
        "down 0006_partitioned_messages",
        "down 0005_at_rest",
        "down 0004_key_event_kinds",
    ]
    conn = await asyncpg.connect(production.database_url)
    try:
        kinds = await conn.fetch("SELECT kind FROM key_events WHERE user_id = $1 ORDER BY id", user)
        assert [r["kind"] for r in kinds] == ["register", "add_device", "remove_device"]
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO key_events (user_id, device, kind) VALUES ($1, 1, 'prekey_claimed')",
                user,
            )
    finally:
        await conn.close()
    assert await migrate(production.database_url) == [
        "up 0004_key_event_kinds",
        "up 0005_at_rest",
        "up 0006_partitioned_messages",
        "up 0007_receipts",
        "up 0008_key_backups",
        "up 0009_shared_payloads",
    ]
    fresh = await open_production(production)  # new connections: statements prepared anew
    other = await make_user(fresh, devices=2)
    assert await fresh.devices.remove_device(other, 2)
    assert [e.kind for e in await fresh.audit.events(other)][-1] == "identity_key_retired"
