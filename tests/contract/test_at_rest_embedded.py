"""Encryption at rest in the embedded store: the wrapped-key table, sealed messages through
the message queue, the conversion of a clear store (ClearData) and migration 0005.

Real parts throughout: a real SQLite file, a real DataKeyVault over the store's own table, a
RingSealer over the vault's ring; the file's bytes are read from the disk."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storage.at_rest.keyring import KeyRing
from storage.at_rest.master_key import LocalKeyFile
from storage.at_rest.sealing import RingSealer
from storage.at_rest.vault import DataKeyVault
from storage.embedded import DATABASE_FILE, EmbeddedStore
from storage.embedded.database import SCHEMA_VERSION, _migrations, _statements
from storage.errors import StorageError
from storage.records import Envelope, KeyUpload, ReplayScope, Requester, SendOutcome, WrappedKey

from .support import DAY_MS, START_MS, FakeClock, envelope, make_user, new_user
from .test_keys import ec, pq, signed

ROTATION_MS = 7 * DAY_MS
HOUR_MS = 3_600_000


@dataclass
class Opened:
    """An embedded store sealing with a vault of its own keys."""

    store: EmbeddedStore
    vault: DataKeyVault
    clock: FakeClock
    undecryptable: list[str] = field(default_factory=list)

    @property
    def ring(self) -> KeyRing:
        return self.vault.ring


async def open_sealing(data: Path, master: LocalKeyFile, clock: FakeClock) -> Opened:
    store = await EmbeddedStore.open(data, now_ms=clock.now_ms, monotonic=clock.monotonic)
    vault = await DataKeyVault.open(
        store.data_keys, master, rotation_ms=ROTATION_MS, now_ms=clock.now_ms
    )
    opened = Opened(store, vault, clock)
    store.use_sealer(
        RingSealer(vault.ring, load_keys=vault.load, on_undecryptable=opened.undecryptable.append)
    )
    return opened


@pytest.fixture
async def sealing(tmp_path: Path) -> AsyncIterator[Opened]:
    opened = await open_sealing(tmp_path / "data", LocalKeyFile(os.urandom(32)), FakeClock())
    try:
        yield opened
    finally:
        await opened.store.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    opened = await EmbeddedStore.open(tmp_path / "data")
    try:
        yield opened
    finally:
        await opened.close()


def wrapped(
    key_id: int, purpose: str = "data", *, created_ms: int = START_MS, master: str = "m1"
) -> WrappedKey:
    return WrappedKey(
        id=key_id,
        purpose=purpose,
        state="active",
        created_ms=created_ms,
        retired_ms=None,
        master_key_id=master,
        wrapped=os.urandom(72),
    )


def sql(store: EmbeddedStore, query: str, *args: object) -> list[tuple[object, ...]]:
    """A statement on a connection of the test's own, committed at once."""
    conn = sqlite3.connect(store_path(store), isolation_level=None)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def store_path(store: EmbeddedStore) -> Path:
    return store._db.path


# DataKeyTable


async def test_insert_key_takes_the_index_key_once_and_data_keys_in_turn(
    store: EmbeddedStore,
) -> None:
    table = store.data_keys
    assert await table.wrapped_keys() == []
    index = wrapped(1, "index")
    assert await table.insert_key(index, replacing=None)
    assert not await table.insert_key(wrapped(2, "index"), replacing=None)  # made once

    first = wrapped(2, created_ms=START_MS + 1)
    assert await table.insert_key(first, replacing=None)
    # Another node rotated first: the active key is 2, not None / not 7.
    assert not await table.insert_key(wrapped(3), replacing=None)
    assert not await table.insert_key(wrapped(3), replacing=7)
    # The id is taken (two nodes picked the same next id).
    assert not await table.insert_key(wrapped(2, created_ms=START_MS + 5), replacing=2)
    second = wrapped(3, created_ms=START_MS + 10)
    assert await table.insert_key(second, replacing=2)

    assert await table.wrapped_keys() == [
        index,
        WrappedKey(
            id=2,
            purpose="data",
            state="retired",
            created_ms=START_MS + 1,
            retired_ms=START_MS + 10,  # the new key's created_ms
            master_key_id="m1",
            wrapped=first.wrapped,
        ),
        second,
    ]


async def test_rewrap_is_all_or_nothing(store: EmbeddedStore) -> None:
    table = store.data_keys
    for key, replacing in ((wrapped(1, "index"), None), (wrapped(2), None), (wrapped(3), 2)):
        assert await table.insert_key(key, replacing=replacing)
    stored = await table.wrapped_keys()
    rewrapped = [
        WrappedKey(k.id, k.purpose, k.state, k.created_ms, k.retired_ms, "m2", os.urandom(72))
        for k in stored
    ]
    with pytest.raises(StorageError):
        await table.rewrap("m0", rewrapped)  # not the master key they are wrapped under
    with pytest.raises(StorageError):
        await table.rewrap("m1", rewrapped[:2])  # a key left out
    with pytest.raises(StorageError):
        await table.rewrap("m1", [*rewrapped, wrapped(9, master="m2")])  # a key not stored
    assert await table.wrapped_keys() == stored

    await table.rewrap("m1", rewrapped)
    assert await table.wrapped_keys() == rewrapped
    with pytest.raises(StorageError):
        await table.rewrap("m1", stored)  # they are under m2 now


async def test_usage_and_delete_retired(sealing: Opened) -> None:
    store, vault, clock = sealing.store, sealing.vault, sealing.clock
    user = await make_user(store)
    first = vault.ring.active_id
    early = [envelope(user, 1) for _ in range(3)]
    await store.messages.store(early)
    clock.advance(60)
    second = await vault.rotate_data()
    await store.messages.store([envelope(user, 1)])
    await store.messages.store([envelope(user, 1, body=b"clear")])  # a clear row: not counted
    sql(
        store,
        "UPDATE messages SET key_id = 0, sealed = NULL, sender_user = 's',"
        " sender_device = 1, ts = 1, type = 1, body = x'00', nonce = x'00'"
        " WHERE seq = (SELECT MAX(seq) FROM messages)",
    )
    assert await store.data_keys.usage() == {first: 3, second: 1}

    retired_ms = clock.now_ms()
    table = store.data_keys
    assert await table.delete_retired(retired_ms + DAY_MS) == []  # rows still use it
    await store.messages.ack(user, 1, [e.id for e in early])
    assert await table.usage() == {second: 1}
    assert await table.delete_retired(retired_ms) == []  # not retired before the bound
    assert await table.delete_retired(retired_ms + 1) == [first]
    assert [k.id for k in await table.wrapped_keys()] == [1, second]  # index, active
    assert await table.delete_retired(retired_ms + DAY_MS) == []  # active and index stay


# Sealed messages


async def test_sealed_round_trip(sealing: Opened, tmp_path: Path) -> None:
    store = sealing.store
    user = await make_user(store, devices=2)
    sender = new_user()
    sent = [
        envelope(user, device, sender_user=sender, sender_device=3, body=os.urandom(40))
        for device in (1, 2, 1)
    ]
    await store.messages.store(sent)

    rows = sql(
        store,
        "SELECT key_id, sealed IS NOT NULL, sender_user, sender_device, ts, type, body, nonce"
        " FROM messages ORDER BY seq",
    )
    active = sealing.ring.active_id
    assert rows == [(active, 1, None, None, None, None, None, None)] * 3
    raw = store_path(store).read_bytes() + wal(store_path(store)).read_bytes()
    assert sender.encode() not in raw
    assert not any(e.body in raw or e.nonce in raw for e in sent)

    fetched = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert [f.envelope for f in fetched] == [sent[0], sent[2]]
    origins = await store.messages.pending_origins(user, [1, 2], sent[1].id)
    assert [(o.device, o.sender_user, o.sender_device, o.nonce) for o in origins] == [
        (2, sender, 3, sent[1].nonce)
    ]
    assert sealing.undecryptable == []

    # Another process (a restart) with the same master key opens them; without it, not.
    master = sealing.vault._wrapper
    await store.close()
    again = await open_sealing(store_path(store).parent, master, FakeClock())
    try:
        fetched = await again.store.messages.fetch(user, 2, after_seq=0, limit=10, now_ms=START_MS)
        assert [f.envelope for f in fetched] == [sent[1]]
    finally:
        await again.store.close()


async def test_clear_rows_and_sealed_rows_are_read_alike(tmp_path: Path) -> None:
    """Rows stored before encryption was turned on stay readable in the clear columns."""
    clock = FakeClock()
    store = await EmbeddedStore.open(tmp_path / "data")
    try:
        user = await make_user(store)
        clear = envelope(user, 1)
        await store.messages.store([clear])
        vault = await DataKeyVault.open(
            store.data_keys,
            LocalKeyFile(os.urandom(32)),
            rotation_ms=ROTATION_MS,
            now_ms=clock.now_ms,
        )
        store.use_sealer(RingSealer(vault.ring, load_keys=vault.load))
        sealed = envelope(user, 1)
        await store.messages.store([sealed])
        assert sql(store, "SELECT key_id FROM messages ORDER BY seq") == [
            (0,),
            (vault.ring.active_id,),
        ]
        fetched = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
        assert [f.envelope for f in fetched] == [clear, sealed]
        found = await store.messages.pending_origins(user, [1], clear.id)
        assert [o.nonce for o in found] == [clear.nonce]
    finally:
        await store.close()


async def test_a_tampered_row_is_skipped_and_reported(sealing: Opened) -> None:
    store = sealing.store
    user = await make_user(store)
    kept, tampered = envelope(user, 1), envelope(user, 1)
    await store.messages.store([kept, tampered])
    sql(
        store,
        "UPDATE messages SET sealed ="
        " CAST(substr(sealed, 1, 30) || X'00' || substr(sealed, 32) AS BLOB)"
        " WHERE id = ?",
        tampered.id,
    )
    fetched = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert [f.envelope for f in fetched] == [kept]
    assert await store.messages.pending_origins(user, [1], tampered.id) == []
    assert sealing.undecryptable == ["does_not_open", "does_not_open"]


async def test_a_row_moved_to_another_recipient_does_not_open(sealing: Opened) -> None:
    store = sealing.store
    victim, other = await make_user(store, devices=2), await make_user(store)
    sent = envelope(victim, 1)
    await store.messages.store([sent])
    sql(store, "UPDATE messages SET recipient_device = 2 WHERE id = ?", sent.id)
    assert await store.messages.fetch(victim, 2, after_seq=0, limit=10, now_ms=START_MS) == []
    sql(store, "UPDATE messages SET recipient_user = ?, recipient_device = 1", other)
    assert await store.messages.fetch(other, 1, after_seq=0, limit=10, now_ms=START_MS) == []
    assert await store.messages.pending_origins(other, [1], sent.id) == []
    # Relabelled with another key id, it does not open either.
    sql(store, "UPDATE messages SET recipient_user = ?, key_id = 1", victim)
    assert await store.messages.fetch(victim, 1, after_seq=0, limit=10, now_ms=START_MS) == []
    assert sealing.undecryptable == ["does_not_open"] * 3 + ["unknown_key"]


async def test_a_row_sealed_with_a_key_made_elsewhere_is_loaded(
    sealing: Opened, tmp_path: Path
) -> None:
    """Another process rotated the data key and sealed with it: the reader loads the key."""
    store = sealing.store
    user = await make_user(store)
    master = sealing.vault._wrapper
    sealing.clock.advance(60)
    other = await open_sealing(store_path(store).parent, master, sealing.clock)
    try:
        await other.vault.rotate_data()
        sent = envelope(user, 1)
        await other.store.messages.store([sent])
    finally:
        await other.store.close()
    assert other.ring.active_id not in sealing.ring.known_ids()
    fetched = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
    assert [f.envelope for f in fetched] == [sent]


# ClearData


def wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def file_bytes(path: Path) -> bytes:
    """The database file and its WAL as they are on the disk."""
    data = path.read_bytes()
    if wal(path).exists():
        data += wal(path).read_bytes()
    return data


async def test_an_empty_store_is_marked_blinded(sealing: Opened) -> None:
    clear_data, ring = sealing.store.clear_data, sealing.ring
    assert await clear_data.user_ids_state() == "empty"
    assert await clear_data.blind_user_ids(ring.blind_user, _nonce(ring), ring.seal_text) == 0
    assert await clear_data.user_ids_state() == "blinded"


def _nonce(ring: KeyRing) -> Callable[[bytes], bytes]:
    """How a replay nonce is blinded (the caller's choice; the store only applies it)."""
    return lambda nonce: ring.blind(b"nonce", nonce)


async def test_conversion_leaves_nothing_in_the_clear(tmp_path: Path) -> None:
    clock = FakeClock()
    data = tmp_path / "data"
    store = await EmbeddedStore.open(data, now_ms=clock.now_ms, monotonic=clock.monotonic)
    path = store_path(store)
    users = [await make_user(store, devices=2) for _ in range(3)]
    sender, recipient, requester = users
    # Messages (the sender a registered user), keys with a claim event naming a requester,
    # completed replay records, a pending claim, the device cache filled.
    sent = [
        envelope(recipient, device, sender_user=sender, body=os.urandom(48))
        for device in (1, 2, 1, 2, 1)
    ]
    await store.messages.store(sent)
    await store.keys.upload(
        recipient,
        1,
        KeyUpload(signed_prekey=signed(1), prekeys=(ec(1), ec(2)), pq_last_resort=pq(9)),
        now_ms=START_MS,
        max_stored=100,
    )
    await store.keys.claim(recipient, 1, low_water=0, requester=Requester(requester, 2))
    scope = ReplayScope(sender, 1, recipient)
    replay_nonces = [os.urandom(24) for _ in range(3)]
    for nonce in replay_nonces[:2]:
        assert await store.replay.claim(scope, nonce, os.urandom(16), pending_ttl_s=60) is None
        await store.replay.complete(
            scope, nonce, os.urandom(16), SendOutcome((1,), (2,)), window_s=3600
        )
    pending_id = os.urandom(16)
    assert await store.replay.claim(scope, replay_nonces[2], pending_id, pending_ttl_s=60) is None
    assert await store.devices.list_devices(recipient) is not None  # cached

    # Deleted before the conversion: acked messages.
    # (Many, so that whole pages go to the free list, which no later change rewrites.)
    acked = [envelope(recipient, 2, sender_user=sender, body=os.urandom(900)) for _ in range(100)]
    await store.messages.store(acked)
    await store._db.checkpoint()  # in the database file, not only in the WAL
    await store.messages.ack(recipient, 2, [e.id for e in acked])
    secrets_in_clear = [u.encode() for u in users] + [e.body for e in [*sent, *acked]]
    secrets_in_clear += [e.nonce for e in sent] + replay_nonces[:2]
    before = file_bytes(path)
    assert all(s in before for s in secrets_in_clear)  # the scan does find them

    master = LocalKeyFile(os.urandom(32))
    vault = await DataKeyVault.open(
        store.data_keys, master, rotation_ms=ROTATION_MS, now_ms=clock.now_ms
    )
    ring = vault.ring
    sealer = RingSealer(ring, load_keys=vault.load)
    clear_data = store.clear_data
    assert await clear_data.user_ids_state() == "clear"
    assert await clear_data.clear_messages() == len(sent)
    assert await clear_data.blind_user_ids(ring.blind_user, _nonce(ring), ring.seal_text) == 3
    assert await clear_data.user_ids_state() == "blinded"
    # Nothing in memory answers for the clear ids any more.
    assert await store.devices.list_devices(recipient) is None
    assert await store.replay.lookup(scope, replay_nonces[2]) is None
    # Twice is nothing.
    assert await clear_data.blind_user_ids(ring.blind_user, _nonce(ring), ring.seal_text) == 0

    sealed = 0
    while count := await clear_data.seal_clear_messages(sealer, limit=2):
        assert count <= 2
        sealed += count
    assert sealed == len(sent)
    assert await clear_data.clear_messages() == 0

    # The files on the disk, as the conversion left them, then after a checkpoint.
    leaked = [s for s in secrets_in_clear if s in file_bytes(path)]
    assert leaked == []

    # Everything still works through the store, called with the blinded ids.
    store.use_sealer(sealer)
    b = ring.blind_user
    devices = await store.devices.list_devices(b(recipient))
    assert devices is not None and [(d.user, d.device) for d in devices] == [
        (b(recipient), 1),
        (b(recipient), 2),
    ]
    fetched = await store.messages.fetch(b(recipient), 1, after_seq=0, limit=10, now_ms=START_MS)
    assert [f.envelope for f in fetched] == [
        blinded_recipient(e, b(recipient)) for e in sent if e.recipient_device == 1
    ]
    origins = await store.messages.pending_origins(b(recipient), [1, 2], sent[1].id)
    assert [(o.device, o.sender_user, o.nonce) for o in origins] == [(2, sender, sent[1].nonce)]
    record = await store.replay.lookup(
        ReplayScope(b(sender), 1, b(recipient)), ring.blind(b"nonce", replay_nonces[0])
    )
    assert record is not None and record.outcome == SendOutcome((1,), (2,))
    counts = await store.keys.counts(b(recipient), 1)
    assert counts.prekeys == 1
    events = await store.audit.events(b(recipient))
    claimed = [e for e in events if e.kind == "prekey_claimed"]
    assert len(claimed) == 1
    requester_sealed = claimed[0].detail["requester_user"]
    assert isinstance(requester_sealed, str) and requester_sealed != requester
    assert ring.open_text(requester_sealed) == requester
    assert await store.messages.queue_state(b(recipient), 2, now_ms=START_MS) == (2, 4)
    await store.close()

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
    assert [s for s in secrets_in_clear if s in file_bytes(path)] == []


def blinded_recipient(e: Envelope, user: str) -> Envelope:
    return Envelope(
        id=e.id,
        recipient_user=user,
        recipient_device=e.recipient_device,
        sender_user=e.sender_user,
        sender_device=e.sender_device,
        ts=e.ts,
        server_ts=e.server_ts,
        type=e.type,
        body=e.body,
        nonce=e.nonce,
        expires_ms=e.expires_ms,
    )


# Migration 0005


def version_4_file(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN")
        for number, script in _migrations()[:4]:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_migration_5_keeps_rows_counts_and_seq(tmp_path: Path) -> None:
    path = tmp_path / "data" / DATABASE_FILE
    path.parent.mkdir()
    version_4_file(path)
    user = new_user()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("INSERT INTO users VALUES (?, ?)", (user, START_MS))
        for device in (1, 2):
            conn.execute(
                "INSERT INTO devices (user, device, identity_key, key_scheme, identity_x25519,"
                " registration_id, created_ms, last_seen_ms) VALUES (?, ?, ?, 'xeddsa', ?, 0,"
                " ?, ?)",
                (user, device, os.urandom(33), os.urandom(32), START_MS, START_MS),
            )
        stored = [envelope(user, device) for device in (1, 2, 1, 1)]
        for e in stored:
            conn.execute(
                "INSERT INTO messages (recipient_user, recipient_device, id, sender_user,"
                " sender_device, ts, server_ts, type, body, nonce, expires_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    e.recipient_user,
                    e.recipient_device,
                    e.id,
                    e.sender_user,
                    e.sender_device,
                    e.ts,
                    e.server_ts,
                    e.type,
                    e.body,
                    e.nonce,
                    e.expires_ms,
                ),
            )
        conn.execute("DELETE FROM messages WHERE seq = 4")  # the newest, acked: seq 4 is used
        assert conn.execute("SELECT * FROM queue_counts ORDER BY 2").fetchall() == [
            (user, 1, 2),
            (user, 2, 1),
        ]
        (schema_before,) = conn.execute(
            "SELECT group_concat(sql, ';') FROM (SELECT sql FROM sqlite_master"
            " WHERE tbl_name = 'messages' AND type IN ('index', 'trigger') AND sql IS NOT NULL"
            " ORDER BY name)"
        ).fetchone()
    finally:
        conn.close()

    store = await EmbeddedStore.open(path.parent)
    try:
        fetched = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)
        assert [(f.seq, f.envelope) for f in fetched] == [(1, stored[0]), (3, stored[2])]
        assert await store.messages.queue_state(user, 2, now_ms=START_MS) == (1, 2)
        assert await store.messages.stored_count() == 3
        later = envelope(user, 1)
        await store.messages.store([later])
        fetched = await store.messages.fetch(user, 1, after_seq=3, limit=10, now_ms=START_MS)
        assert [(f.seq, f.envelope) for f in fetched] == [(5, later)]  # seq 4 never again
        await store.messages.ack(user, 1, [stored[0].id])
        assert sql(store, "SELECT * FROM queue_counts ORDER BY 2") == [(user, 1, 2), (user, 2, 1)]
        # The messages rows are kept in the clear columns, key id 0.
        assert sql(store, "SELECT DISTINCT key_id, sealed FROM messages") == [(0, None)]
        assert sql(store, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION >= 5  # 0005 and every later migration ran
        assert sql(store, "PRAGMA foreign_key_check") == []
        (schema_after,) = sql(
            store,
            "SELECT group_concat(sql, ';') FROM (SELECT sql FROM sqlite_master"
            " WHERE tbl_name = 'messages' AND type IN ('index', 'trigger') AND sql IS NOT NULL"
            " AND name NOT LIKE 'messages_payload_%'"  # the shared payloads' (0006)
            " ORDER BY name)",
        )[0]
        assert schema_after == schema_before  # the same indexes and triggers
    finally:
        await store.close()


async def test_a_failed_blinding_changes_nothing(store: EmbeddedStore) -> None:
    """The job fails half way (after users, before devices): nothing of it is kept, the
    deferred references are rolled back with it, and the writer commits the next jobs."""
    user = await make_user(store, devices=2)
    calls: list[str] = []

    def blind_user(value: str) -> str:
        calls.append(value)
        if len(calls) > 1:
            raise RuntimeError("no index key")
        return "b:" + value

    with pytest.raises(StorageError):
        await store.clear_data.blind_user_ids(blind_user, bytes, str)
    assert calls  # it did run, and renamed `users` before it failed
    assert await store.clear_data.user_ids_state() == "clear"
    assert sql(store, "SELECT user FROM users") == [(user,)]
    devices = await store.devices.list_devices(user)
    assert devices is not None and len(devices) == 2
    later = await make_user(store)  # the next jobs commit (no broken reference left behind)
    assert sql(store, "SELECT COUNT(*) FROM users WHERE user IN (?, ?)", user, later) == [(2,)]
