"""Encryption at rest in the PostgreSQL store: the data-key table, sealed messages through
the group-commit writer and the batched origin lookups, the conversion of a clear store,
and migration 0005 with rows present."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid

import asyncpg
import pytest

from storage.at_rest.keyring import KeyRing
from storage.at_rest.master_key import LocalKeyFile, MasterKeyError
from storage.at_rest.sealing import RingSealer
from storage.at_rest.vault import DataKeyVault
from storage.errors import QueueFull, StorageError, Unavailable
from storage.postgres.migrate import check, migrate, read_version
from storage.production import ProductionStore
from storage.records import KeyUpload, OneTimeKey, Requester, SignedKey, WrappedKey

from .support import DAY_MS, START_MS, Backend, envelope, make_user

SIG = b"g" * 64
ROTATION_MS = 7 * DAY_MS


async def open_production(backend: Backend) -> ProductionStore:
    store = await backend.open()
    assert isinstance(store, ProductionStore)
    return store


async def sql(backend: Backend) -> asyncpg.Connection:
    assert backend.database_url is not None
    return await asyncpg.connect(backend.database_url)


class Sealed:
    """A vault over the store's data-key table and a RingSealer installed in the store."""

    def __init__(self, vault: DataKeyVault, store: ProductionStore) -> None:
        self.vault = vault
        self.undecryptable: list[str] = []
        self.sealer = RingSealer(
            vault.ring, load_keys=vault.load, on_undecryptable=self.undecryptable.append
        )
        store.use_sealer(self.sealer)

    @classmethod
    async def open(cls, store: ProductionStore, wrapper: LocalKeyFile, backend: Backend) -> Sealed:
        vault = await DataKeyVault.open(
            store.data_keys, wrapper, rotation_ms=ROTATION_MS, now_ms=backend.clock.now_ms
        )
        return cls(vault, store)


def key(key_id: int, purpose: str = "data", *, created_ms: int = START_MS) -> WrappedKey:
    return WrappedKey(
        id=key_id,
        purpose=purpose,
        state="active",
        created_ms=created_ms,
        retired_ms=None,
        master_key_id="m1",
        wrapped=os.urandom(40),
    )


# The data-key table.


async def test_insert_key_replacing_and_collisions(production: Backend) -> None:
    table = (await open_production(production)).data_keys
    assert await table.wrapped_keys() == []
    assert await table.insert_key(key(1, "index"), replacing=None)
    assert not await table.insert_key(key(2, "index"), replacing=None)  # the index key once
    assert await table.insert_key(key(2), replacing=None)
    assert not await table.insert_key(key(2, created_ms=START_MS + 1), replacing=2)  # id taken
    assert not await table.insert_key(key(3), replacing=None)  # 2 is active
    assert not await table.insert_key(key(3), replacing=7)  # 7 is not the active one
    assert await table.insert_key(key(3, created_ms=START_MS + 5), replacing=2)

    stored = {k.id: k for k in await table.wrapped_keys()}
    assert sorted(stored) == [1, 2, 3]
    assert (stored[2].state, stored[2].retired_ms) == ("retired", START_MS + 5)
    assert (stored[3].state, stored[3].retired_ms) == ("active", None)
    assert stored[1].purpose == "index" and stored[1].state == "active"

    # Two rotations of the same key at once (other ids, or the same id): one wins.
    outcomes = await asyncio.gather(
        table.insert_key(key(4, created_ms=START_MS + 9), replacing=3),
        table.insert_key(key(5, created_ms=START_MS + 9), replacing=3),
        table.insert_key(key(4, created_ms=START_MS + 9), replacing=3),
    )
    assert sorted(outcomes) == [False, False, True]
    active = [k for k in await table.wrapped_keys() if k.purpose == "data" and k.state == "active"]
    assert len(active) == 1 and active[0].id in (4, 5)
    assert {k.id for k in await table.wrapped_keys()} == {1, 2, 3, active[0].id}


async def test_rewrap_is_all_or_nothing(production: Backend) -> None:
    store = await open_production(production)
    first = LocalKeyFile(os.urandom(32))
    sealed = await Sealed.open(store, first, production)
    await sealed.vault.rotate_data()
    before = await store.data_keys.wrapped_keys()
    assert len(before) == 3

    def wrapped_under(master: str, keys: list[WrappedKey]) -> list[WrappedKey]:
        return [
            WrappedKey(k.id, k.purpose, k.state, k.created_ms, k.retired_ms, master, b"x" * 40)
            for k in keys
        ]

    with pytest.raises(StorageError):  # a wrong old master key id
        await store.data_keys.rewrap("not-the-master", wrapped_under("m2", before))
    with pytest.raises(StorageError):  # a key left out
        await store.data_keys.rewrap(first.key_id, wrapped_under("m2", before[:-1]))
    extra = key(99)
    with pytest.raises(StorageError):  # a key the store does not hold
        await store.data_keys.rewrap(first.key_id, wrapped_under("m2", [*before, extra]))
    assert await store.data_keys.wrapped_keys() == before

    second = LocalKeyFile(os.urandom(32))
    assert await sealed.vault.rotate_master(second) == 3
    after = await store.data_keys.wrapped_keys()
    assert {k.master_key_id for k in after} == {second.key_id}
    assert [(k.id, k.state) for k in after] == [(k.id, k.state) for k in before]
    with pytest.raises(MasterKeyError):
        await DataKeyVault.open(store.data_keys, first, rotation_ms=ROTATION_MS)
    reopened = await DataKeyVault.open(store.data_keys, second, rotation_ms=ROTATION_MS)
    assert reopened.ring.active_id == sealed.vault.ring.active_id


async def test_usage_and_delete_retired(production: Backend) -> None:
    store = await open_production(production)
    sealed = await Sealed.open(store, LocalKeyFile(os.urandom(32)), production)
    user = await make_user(store)
    old_id = sealed.vault.ring.active_id
    old = [envelope(user, 1) for _ in range(3)]
    await store.messages.store(old)
    production.clock.advance(60)
    retired_at = production.clock.now_ms()
    new_id = await sealed.vault.rotate_data()
    await store.messages.store([envelope(user, 1) for _ in range(2)])
    assert await store.data_keys.usage() == {old_id: 3, new_id: 2}

    # Retired long enough, but in use: kept.
    assert await store.data_keys.delete_retired(retired_at + 1) == []
    await store.messages.ack(user, 1, [e.id for e in old])
    assert await store.data_keys.usage() == {new_id: 2}
    # Unused, but retired too recently: kept.
    assert await store.data_keys.delete_retired(retired_at) == []
    # Never the active data key nor the index key, however old.
    assert await store.data_keys.delete_retired(retired_at + 1) == [old_id]
    assert await store.data_keys.delete_retired(retired_at + 10 * DAY_MS) == []
    assert {(k.purpose, k.state) for k in await store.data_keys.wrapped_keys()} == {
        ("index", "active"),
        ("data", "active"),
    }


async def test_delete_retired_keeps_a_key_an_uncommitted_insert_uses(
    production: Backend,
) -> None:
    """An insert holding the key (not committed yet, so no scan can see it) makes the
    deletion wait, and its commit makes the deletion keep the key."""
    store = await open_production(production)
    sealed = await Sealed.open(store, LocalKeyFile(os.urandom(32)), production)
    user = await make_user(store)
    old_id = sealed.vault.ring.active_id
    late = envelope(user, 1)
    key_id, sealed_bytes = sealed.sealer.seal(late, late.recipient_user)
    production.clock.advance(60)
    await sealed.vault.rotate_data()
    bound = production.clock.now_ms() + 1

    writer = await sql(production)
    watcher = await sql(production)
    try:
        transaction = writer.transaction()
        await transaction.start()
        await writer.execute(
            "INSERT INTO messages (id, recipient_user, recipient_device, server_ts,"
            " expires_ms, key_id, sealed) VALUES ($1, $2, 1, $3, $4, $5, $6)",
            late.id,
            user,
            late.server_ts,
            late.expires_ms,
            key_id,
            sealed_bytes,
        )
        deleting = asyncio.create_task(store.data_keys.delete_retired(bound))
        await _until_a_statement_waits_for_a_lock(watcher)
        assert not deleting.done()
        await transaction.commit()
        assert await deleting == []
    finally:
        await writer.close()
        await watcher.close()
    assert old_id in {k.id for k in await store.data_keys.wrapped_keys()}
    stored = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert [s.envelope for s in stored] == [late]


async def _until_a_statement_waits_for_a_lock(conn: asyncpg.Connection) -> None:
    """Until another backend of this database waits on a lock: each check is a server round
    trip, within 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            return
    raise AssertionError("the deletion never waited for the insert's lock")


async def test_a_store_sealed_with_a_key_the_table_lacks_is_refused(production: Backend) -> None:
    store = await open_production(production)
    user = await make_user(store)
    ring = KeyRing(index_key=os.urandom(32), data_keys={42: os.urandom(32)}, active_id=42)
    store.use_sealer(RingSealer(ring))
    with pytest.raises(Unavailable):
        await store.messages.store([envelope(user, 1)])
    assert await store.messages.stored_count() == 0


# Sealed messages.


async def test_sealed_round_trip(production: Backend) -> None:
    store = await open_production(production)
    wrapper = LocalKeyFile(os.urandom(32))
    sealed = await Sealed.open(store, wrapper, production)
    user = await make_user(store, devices=2)
    sender = await make_user(store)
    sent = [envelope(user, d, body=os.urandom(50), sender_user=sender) for d in (1, 2, 1)]
    await store.messages.store(sent)
    # The cap and the retried store behave as without sealing.
    await store.messages.store([sent[0]], max_per_device=2)
    with pytest.raises(QueueFull):
        await store.messages.store([envelope(user, 1)], max_per_device=2)

    got = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert [s.envelope for s in got] == [sent[0], sent[2]]
    origins = await asyncio.gather(
        store.messages.pending_origins(user, [1, 2], sent[1].id),
        store.messages.pending_origins(user, [1], sent[0].id),
    )
    assert [(o.device, o.sender_user, o.nonce) for o in origins[0]] == [(2, sender, sent[1].nonce)]
    assert [(o.device, o.sender_user, o.nonce) for o in origins[1]] == [(1, sender, sent[0].nonce)]

    conn = await sql(production)
    try:
        rows = await conn.fetch("SELECT m::text AS row, key_id FROM messages m")
    finally:
        await conn.close()
    assert {r["key_id"] for r in rows} == {sealed.vault.ring.active_id}
    for row in rows:
        for e in sent:
            assert e.body.hex() not in row["row"] and e.nonce.hex() not in row["row"]
        assert sender not in row["row"]

    # Another node, whose keys predate a rotation: it loads the new key when a row names it.
    other = await open_production(production)
    other_sealed = await Sealed.open(other, wrapper, production)
    await sealed.vault.rotate_data()
    later = envelope(user, 2, sender_user=sender)
    await store.messages.store([later])
    got = await other.messages.fetch(user, 2, after_seq=0, limit=10, now_ms=START_MS)
    assert [s.envelope for s in got] == [sent[1], later]
    assert other_sealed.undecryptable == []


async def test_a_tampered_row_is_skipped_and_reported(production: Backend) -> None:
    store = await open_production(production)
    sealed = await Sealed.open(store, LocalKeyFile(os.urandom(32)), production)
    user = await make_user(store)
    sent = [envelope(user, 1) for _ in range(3)]
    await store.messages.store(sent)
    conn = await sql(production)
    try:
        await conn.execute(
            "UPDATE messages SET sealed = overlay(sealed PLACING"
            " decode(lpad(to_hex(get_byte(sealed, 40) # 1), 2, '0'), 'hex') FROM 41 FOR 1)"
            " WHERE id = $1",
            sent[1].id,
        )
    finally:
        await conn.close()
    got = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert [s.envelope for s in got] == [sent[0], sent[2]]
    assert await store.messages.pending_origins(user, [1], sent[1].id) == []
    assert sealed.undecryptable == ["does_not_open", "does_not_open"]
    assert len(await store.messages.pending_origins(user, [1], sent[2].id)) == 1


async def test_a_sealed_row_moved_to_another_recipient_does_not_open(
    production: Backend,
) -> None:
    store = await open_production(production)
    sealed = await Sealed.open(store, LocalKeyFile(os.urandom(32)), production)
    user = await make_user(store, devices=2)
    other = await make_user(store)
    first, second = envelope(user, 1), envelope(user, 1)
    await store.messages.store([first, second])
    conn = await sql(production)
    try:
        await conn.execute("UPDATE messages SET recipient_device = 2 WHERE id = $1", first.id)
        await conn.execute(
            "UPDATE messages SET recipient_user = $2 WHERE id = $1", second.id, other
        )
    finally:
        await conn.close()
    assert await store.messages.fetch(user, 2, after_seq=0, limit=10, now_ms=START_MS) == []
    assert await store.messages.fetch(other, 1, after_seq=0, limit=10, now_ms=START_MS) == []
    assert await store.messages.pending_origins(other, [1], second.id) == []
    assert sealed.undecryptable == ["does_not_open"] * 3


# Converting a clear store.


async def test_clear_data_conversion_leaves_nothing_in_the_clear(production: Backend) -> None:
    store = await open_production(production)
    assert await store.clear_data.user_ids_state() == "empty"
    alice = await make_user(store, devices=2)
    bob = await make_user(store)
    users = [alice, bob]
    upload = KeyUpload(
        signed_prekey=SignedKey(7, b"S" * 33, SIG),
        prekeys=(OneTimeKey(1, b"E" * 33), OneTimeKey(2, b"F" * 33)),
        pq_prekeys=(SignedKey(3, b"P" * 1569, SIG),),
        pq_last_resort=SignedKey(9, b"L" * 1569, SIG),
    )
    for user, device in ((alice, 1), (alice, 2), (bob, 1)):
        await store.keys.upload(user, device, upload, now_ms=START_MS, max_stored=100)
    await store.keys.claim(alice, 1, low_water=0, requester=Requester(bob, 1))
    await store.keys.claim(bob, 1, low_water=0, requester=Requester(alice, 2))
    sent = [
        envelope(alice, 1, body=b"body-" + os.urandom(20), sender_user=bob),
        envelope(alice, 2, body=b"body-" + os.urandom(20), sender_user=bob),
        envelope(bob, 1, body=b"body-" + os.urandom(20), sender_user=alice, sender_device=2),
    ]
    await store.messages.store(sent)
    assert await store.clear_data.user_ids_state() == "clear"
    assert await store.clear_data.clear_messages() == 3

    sealed = await Sealed.open(store, LocalKeyFile(os.urandom(32)), production)
    ring = sealed.vault.ring
    assert (
        await store.clear_data.blind_user_ids(
            ring.blind_user, lambda nonce: ring.blind(b"nonce", nonce), ring.seal_text
        )
        == 2
    )
    assert await store.clear_data.user_ids_state() == "blinded"
    assert (
        await store.clear_data.blind_user_ids(
            ring.blind_user, lambda nonce: ring.blind(b"nonce", nonce), ring.seal_text
        )
        == 0
    )  # marked: nothing happens
    sealed_counts = []
    while count := await store.clear_data.seal_clear_messages(sealed.sealer, limit=2):
        sealed_counts.append(count)
    assert sealed_counts == [2, 1]
    assert await store.clear_data.clear_messages() == 0

    # Nothing of a user id, a nonce or a body anywhere, in any form.
    dump = await _dump_every_table(production)
    forbidden = []
    for user in users:
        raw = uuid.UUID(user).bytes
        forbidden += [user, user.replace("-", ""), raw.hex(), base64.b64encode(raw).decode()]
    for e in sent:
        forbidden += [e.nonce.hex(), e.body.hex(), base64.b64encode(e.body).decode()]
        forbidden += [base64.b64encode(e.nonce).decode(), e.body.decode("latin-1")]
    found = [value for value in forbidden if value.lower() in dump.lower()]
    assert found == []

    # And all of it usable through the store with the blinded ids.
    fresh = await open_production(production)  # no cache from before the conversion
    fresh.use_sealer(sealed.sealer)
    blind_alice, blind_bob = ring.blind_user(alice), ring.blind_user(bob)
    devices = await fresh.devices.list_devices(blind_alice)
    assert devices is not None and [d.device for d in devices] == [1, 2]
    assert await fresh.devices.list_devices(alice) is None
    for e in sent:
        got = await fresh.messages.fetch(
            ring.blind_user(e.recipient_user),
            e.recipient_device,
            after_seq=0,
            limit=10,
            now_ms=START_MS,
        )
        assert [s.envelope.body for s in got] == [e.body]
        assert got[0].envelope.sender_user == e.sender_user
        assert got[0].envelope.nonce == e.nonce
    claimed = await fresh.keys.claim(blind_bob, 1, low_water=0)
    assert claimed.prekey is not None and claimed.prekey.id == 2
    events = await fresh.audit.events(blind_alice)
    claims = [e for e in events if e.kind == "prekey_claimed"]
    assert len(claims) == 1
    requester = claims[0].detail["requester_user"]
    assert isinstance(requester, str) and ring.open_text(requester) == bob
    await fresh.messages.store([envelope(blind_alice, 1)], max_per_device=2)
    with pytest.raises(QueueFull):  # the blinded counter carried the stored rows over
        await fresh.messages.store([envelope(blind_alice, 1)], max_per_device=2)

    # Version 4 could not read this store: going down is refused at step 0005, and changes
    # nothing of version 5 (each step is its own transaction: 0006 went down before it).
    assert production.database_url is not None
    with pytest.raises(Unavailable, match="sealed"):
        await migrate(production.database_url, to=4)
    conn = await sql(production)
    try:
        assert await read_version(conn) == 5
    finally:
        await conn.close()


async def _dump_every_table(backend: Backend) -> str:
    """Every row of every table as text, and every bytea value as hex, escape and base64."""
    conn = await sql(backend)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        assert {"users", "devices", "messages", "key_events", "queue_counts"} <= set(tables)
        parts = []
        for table in tables:
            parts += [r["t"] for r in await conn.fetch(f'SELECT t::text AS t FROM "{table}" t')]
            columns = await conn.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = $1 AND data_type = 'bytea'",
                table,
            )
            for column in (r["column_name"] for r in columns):
                for encoding in ("hex", "escape", "base64"):
                    parts += [
                        str(r["v"])
                        for r in await conn.fetch(
                            f'SELECT encode("{column}", \'{encoding}\') AS v FROM "{table}"'
                            f' WHERE "{column}" IS NOT NULL'
                        )
                    ]
        return "\n".join(parts)
    finally:
        await conn.close()


async def test_migration_down_refuses_a_blinded_store(production: Backend) -> None:
    store = await open_production(production)
    await make_user(store)
    ring = (await Sealed.open(store, LocalKeyFile(os.urandom(32)), production)).vault.ring
    await store.clear_data.blind_user_ids(
        ring.blind_user, lambda nonce: ring.blind(b"nonce", nonce), ring.seal_text
    )
    assert production.database_url is not None
    with pytest.raises(Unavailable, match="blinded"):
        await migrate(production.database_url, to=4)


# Migration 0005 with rows present.


async def test_migration_5_up_down_up_keeps_rows_and_restores_version_4(
    production: Backend, empty_database: str
) -> None:
    store = await open_production(production)
    user = await make_user(store, devices=2)
    await store.keys.upload(
        user,
        1,
        KeyUpload(signed_prekey=SignedKey(7, b"S" * 33, SIG), prekeys=(OneTimeKey(1, b"E" * 33),)),
        now_ms=START_MS,
        max_stored=100,
    )
    sent = [envelope(user, 1) for _ in range(3)]
    await store.messages.store(sent)
    # A data key no row uses does not hold the schema back.
    await Sealed.open(store, LocalKeyFile(os.urandom(32)), production)
    assert production.database_url is not None
    url = production.database_url

    assert await migrate(url, to=4) == [
        "down 0009_shared_payloads",
        "down 0008_key_backups",
        "down 0007_receipts",
        "down 0006_partitioned_messages",
        "down 0005_at_rest",
    ]
    assert await migrate(empty_database, to=4)
    assert await _schema_shape(url) == await _schema_shape(empty_database)
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id, body, nonce FROM messages ORDER BY seq")
        assert [tuple(r) for r in rows] == [(e.id, e.body, e.nonce) for e in sent]
        assert await conn.fetchval("SELECT stored FROM queue_counts") == 3
    finally:
        await conn.close()

    assert await migrate(url) == [
        "up 0005_at_rest",
        "up 0006_partitioned_messages",
        "up 0007_receipts",
        "up 0008_key_backups",
        "up 0009_shared_payloads",
    ]
    assert (await check(url))[0]
    again = await open_production(production)
    got = await again.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert [s.envelope for s in got] == sent
    await again.messages.store([envelope(user, 1)], max_per_device=4)  # counts kept
    with pytest.raises(QueueFull):
        await again.messages.store([envelope(user, 1)], max_per_device=4)
    assert (await again.keys.claim(user, 1, low_water=0)).prekey is not None
    assert await again.clear_data.user_ids_state() == "clear"

    # A sealed row holds the schema at version 5.
    sealed = await Sealed.open(again, LocalKeyFile(os.urandom(32)), production)
    await again.messages.store([envelope(user, 2)])
    with pytest.raises(Unavailable, match="sealed"):
        await migrate(url, to=4)
    # The steps above 5 went down before the refusal (each is its own transaction).
    assert await migrate(url) == [
        "up 0006_partitioned_messages",
        "up 0007_receipts",
        "up 0008_key_backups",
        "up 0009_shared_payloads",
    ]
    got = await again.messages.fetch(user, 2, after_seq=0, limit=10, now_ms=START_MS)
    assert len(got) == 1 and sealed.undecryptable == []


async def _schema_shape(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Columns, constraints (deferrability included), indexes and triggers of the schema."""
    conn = await asyncpg.connect(url)
    try:
        queries = {
            "columns": "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
            "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid),"
            " condeferrable, condeferred FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
            "indexes": "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public' ORDER BY 1",
            "triggers": "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger"
            " WHERE NOT tgisinternal ORDER BY 1",
            "functions": "SELECT proname, prosrc FROM pg_proc"
            " WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
        }
        return {
            name: [tuple(r) for r in await conn.fetch(query)] for name, query in queries.items()
        }
    finally:
        await conn.close()
