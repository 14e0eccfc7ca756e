"""Migration 0002 on data written by version 1: identity_x25519 becomes canonical in both
stores, one key pair registered twice keeps its oldest active device, and the store then
refuses every encoding of a migrated key. PostgreSQL also migrates back down."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from storage.embedded import DATABASE_FILE, EmbeddedStore
from storage.embedded.database import SCHEMA_VERSION, _migrations, _statements
from storage.errors import IdentityKeyInUse, IdentityKeyRetired
from storage.interfaces import Store
from storage.postgres.migrate import migrate
from storage.production import ProductionStore
from storage.records import NewDevice

from .identity_rows import V1Row, expected_x25519, scenario, with_bit_255
from .support import REDIS_URL, START_MS, delete_redis_prefix, new_user

# (device columns, key and message rows) as both schemas spell them, with `{user}` for the
# user column's name.
_DEVICE_INSERT = (
    "INSERT INTO devices ({user}, device, identity_key, key_scheme, identity_x25519,"
    " registration_id, created_ms, last_seen_ms, removed_ms) VALUES ({p})"
)


def _device_values(row: V1Row) -> tuple[object, ...]:
    removed_ms = START_MS + 100 if row.removed else None
    return (
        row.user,
        1,
        row.identity_key,
        row.key_scheme,
        row.identity_x25519,
        7,
        row.created_ms,
        row.created_ms,
        removed_ms,
    )


def _message_values(row: V1Row) -> tuple[object, ...]:
    expires = START_MS + 10**9
    return (row.user, 1, b"m" * 16, row.user, 1, START_MS, START_MS, 2, b"body", b"n" * 16, expires)


async def _insert_postgres(url: str, rows: list[V1Row]) -> None:
    conn = await asyncpg.connect(url)
    try:
        for row in rows:
            await conn.execute("INSERT INTO users VALUES ($1, $2)", row.user, row.created_ms)
            await conn.execute(
                _DEVICE_INSERT.format(user="user_id", p="$1, $2, $3, $4, $5, $6, $7, $8, $9"),
                *_device_values(row),
            )
            await conn.execute("INSERT INTO prekey_counts VALUES ($1, 1, 1, 0)", row.user)
            if row.removed:
                continue
            await conn.execute(
                "INSERT INTO signed_prekeys VALUES ($1, 1, 1, $2, $3, $4)",
                row.user,
                b"s" * 33,
                b"g" * 64,
                START_MS,
            )
            await conn.execute(
                "INSERT INTO one_time_prekeys (user_id, device, key_id, key) VALUES ($1, 1, 1, $2)",
                row.user,
                b"k" * 33,
            )
            await conn.execute(
                "INSERT INTO messages (recipient_user, recipient_device, id, sender_user,"
                " sender_device, ts, server_ts, type, body, nonce, expires_ms)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                *_message_values(row),
            )
    finally:
        await conn.close()


async def _postgres_state(url: str) -> dict[str, tuple[bytes, bool, int, int]]:
    """{user: (identity_x25519, active, keys, messages)} of every device 1."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT d.user_id, d.identity_x25519, d.removed_ms IS NULL AS active,"
            " (SELECT count(*) FROM signed_prekeys k WHERE k.user_id = d.user_id)"
            " + (SELECT count(*) FROM one_time_prekeys k WHERE k.user_id = d.user_id) AS keys,"
            " (SELECT count(*) FROM messages m WHERE m.recipient_user = d.user_id) AS messages"
            " FROM devices d"
        )
    finally:
        await conn.close()
    return {
        r["user_id"]: (bytes(r["identity_x25519"]), r["active"], r["keys"], r["messages"])
        for r in rows
    }


def _insert_embedded(path: Path, rows: list[V1Row]) -> None:
    """A version 1 database file holding `rows`, as the relay of version 1 left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        version, script = _migrations()[0]
        assert version == 1
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        for row in rows:
            conn.execute("INSERT INTO users VALUES (?, ?)", (row.user, row.created_ms))
            conn.execute(
                _DEVICE_INSERT.format(user="user", p="?, ?, ?, ?, ?, ?, ?, ?, ?"),
                _device_values(row),
            )
            if row.removed:
                continue
            conn.execute(
                "INSERT INTO signed_prekeys VALUES (?, 1, 1, ?, ?, ?)",
                (row.user, b"s" * 33, b"g" * 64, START_MS),
            )
            conn.execute(
                "INSERT INTO one_time_prekeys (user, device, key_id, key) VALUES (?, 1, 1, ?)",
                (row.user, b"k" * 33),
            )
            conn.execute(
                "INSERT INTO messages (recipient_user, recipient_device, id, sender_user,"
                " sender_device, ts, server_ts, type, body, nonce, expires_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _message_values(row),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _embedded_state(path: Path) -> dict[str, tuple[bytes, bool, int, int]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT d.user, d.identity_x25519, d.removed_ms IS NULL,"
            " (SELECT count(*) FROM signed_prekeys k WHERE k.user = d.user)"
            " + (SELECT count(*) FROM one_time_prekeys k WHERE k.user = d.user),"
            " (SELECT count(*) FROM messages m WHERE m.recipient_user = d.user)"
            " FROM devices d"
        ).fetchall()
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    finally:
        conn.close()
    assert version == SCHEMA_VERSION
    return {
        user: (bytes(x25519), bool(active), keys, messages)
        for user, x25519, active, keys, messages in rows
    }


def _assert_migrated(rows: list[V1Row], state: dict[str, tuple[bytes, bool, int, int]]) -> None:
    for row in rows:
        x25519, active, keys, messages = state[row.user]
        assert x25519 == expected_x25519(row), row.name
        assert active is row.active_after, row.name
        if not row.removed:
            # A device retired by the migration lost its keys and messages, as a removal does.
            kept = 1 if row.active_after else 0
            assert (keys, messages) == (2 * kept, kept), row.name


def _device(identity_x25519: bytes) -> NewDevice:
    return NewDevice(
        identity_key=b"\x05" + identity_x25519,
        key_scheme="xeddsa",
        identity_x25519=identity_x25519,
        registration_id=0,
        created_ms=START_MS + 1000,
    )


async def _assert_store_refuses_migrated_keys(store: Store, rows: list[V1Row]) -> None:
    """Every key pair of the scenario, registered again in canonical form, is refused."""
    for row in rows:
        with pytest.raises((IdentityKeyInUse, IdentityKeyRetired)):
            await store.devices.create_user(new_user(), _device(row.canonical))
        found = await store.devices.get_device(row.user, 1)
        assert (found is not None) is row.active_after, row.name
    # A key whose holder is removed is retired for good.
    holder = next(r for r in rows if r.name == "alone-bit-255")
    assert await store.devices.remove_device(holder.user, 1)
    with pytest.raises(IdentityKeyRetired):
        await store.devices.create_user(new_user(), _device(holder.canonical))


async def test_postgres_migration_canonicalises_and_goes_back(empty_database: str) -> None:
    rows = scenario()
    assert await migrate(empty_database, to=1) == ["up 0001_initial"]
    await _insert_postgres(empty_database, rows)
    assert await migrate(empty_database, to=2) == ["up 0002_canonical_identity_keys"]
    _assert_migrated(rows, await _postgres_state(empty_database))

    conn = await asyncpg.connect(empty_database)
    try:
        retired_events = await conn.fetch(
            "SELECT user_id, detail->>'reason' AS reason FROM key_events"
            " WHERE kind = 'remove_device'"
        )
    finally:
        await conn.close()
    retired_by_migration = {r.user for r in rows if not r.removed and not r.active_after}
    assert {e["user_id"] for e in retired_events} == retired_by_migration
    assert {e["reason"] for e in retired_events} == {"identity key held by an older device"}

    # Down: every row gets back the form version 1 stored; retired devices stay retired.
    assert await migrate(empty_database, to=1) == ["down 0002_canonical_identity_keys"]
    state = await _postgres_state(empty_database)
    for row in rows:
        assert state[row.user][:2] == (row.identity_x25519, row.active_after), row.name
    # And up again: the same result as the first time.
    assert await migrate(empty_database, to=2) == ["up 0002_canonical_identity_keys"]
    _assert_migrated(rows, await _postgres_state(empty_database))
    assert await migrate(empty_database) == [
        "up 0003_queue_counts",
        "up 0004_key_event_kinds",
        "up 0005_at_rest",
        "up 0006_partitioned_messages",
        "up 0007_receipts",
        "up 0008_key_backups",
        "up 0009_shared_payloads",
    ]

    prefix = f"relaytest:{secrets.token_hex(8)}:"
    store = await ProductionStore.open(
        database_url=empty_database, redis_url=REDIS_URL, redis_prefix=prefix
    )
    try:
        await _assert_store_refuses_migrated_keys(store, rows)
    finally:
        await store.close()
        await delete_redis_prefix(prefix)


async def test_embedded_migration_canonicalises(tmp_path: Path) -> None:
    rows = scenario()
    data = tmp_path / "data"
    data.mkdir()
    _insert_embedded(data / DATABASE_FILE, rows)
    store = await EmbeddedStore.open(data)  # migrates itself to the latest version
    try:
        _assert_migrated(rows, _embedded_state(data / DATABASE_FILE))
        await _assert_store_refuses_migrated_keys(store, rows)
    finally:
        await store.close()


def test_scenario_covers_every_rule() -> None:
    rows = scenario()
    assert any(r.identity_x25519 != r.canonical for r in rows)
    assert any(r.identity_x25519 == with_bit_255(r.canonical) for r in rows)
    assert any(int.from_bytes(r.identity_x25519, "little") >= 2**255 - 19 for r in rows)
    assert {r.key_scheme for r in rows} == {"ed25519", "xeddsa"}
    assert any(not r.holds_key and r.identity_x25519 == r.canonical for r in rows)
