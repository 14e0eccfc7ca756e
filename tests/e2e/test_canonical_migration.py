"""Migration 0002 under a real relay: one key pair registered twice by a version 1 relay
(its u once with bit 255 set) keeps the older device after `relay migrate` (PostgreSQL) or
the embedded store's own migration at start; the newer is retired, and neither encoding
registers again."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from protocol.signatures import IdentityKeyPair, KeyScheme
from storage.embedded import DATABASE_FILE
from storage.embedded.database import SCHEMA_VERSION, _migrations, _statements

from .commands import arun_relay
from .support import Device, RelayProcess, error_of, stop_relays
from .test_canonical_keys import high_bit, register_refused
from .throwaway import MachineStores

_USER = "INSERT INTO users VALUES ({p})"
_DEVICE = "INSERT INTO devices VALUES ({p})"  # the columns of version 1, in order


@pytest.fixture
def machine() -> Iterator[MachineStores]:
    stores = MachineStores()
    yield stores
    stores.cleanup()


@pytest.fixture
def relays() -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    problems = stop_relays(started)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def version_1_rows(pair: IdentityKeyPair) -> list[tuple[str, tuple[object, ...]]]:
    """The older account holds `pair` with bit 255 set, the newer one the canonical key:
    what a version 1 relay let one key pair register (user, device rows)."""
    older, newer = high_bit(pair).public_key, pair.public_key
    rows: list[tuple[str, tuple[object, ...]]] = []
    for order, key in enumerate((older, newer)):
        user = str(uuid.uuid4())
        created = 1_700_000_000_000 + order
        rows.append((_USER, (user, created)))
        rows.append((_DEVICE, (user, 1, key, "xeddsa", key[1:], 0, created, created, None)))
    return rows


def users_of(rows: list[tuple[str, tuple[object, ...]]]) -> tuple[str, str]:
    older, newer = (str(values[0]) for sql, values in rows if sql == _USER)
    return older, newer


async def check_served(url: str, pair: IdentityKeyPair, older: str, newer: str) -> None:
    holder = Device(url, identity=high_bit(pair), scheme=KeyScheme.XEDDSA, user=older, device=1)
    await holder.auth()
    retired = Device(url, identity=pair, scheme=KeyScheme.XEDDSA, user=newer, device=1)
    error_of(await retired.auth(expect_ok=False), "auth_failed")
    for identity in (pair, high_bit(pair)):
        await register_refused(url, identity, "conflict")
    await holder.close()
    await retired.close()


async def test_relay_migrate_keeps_the_older_device(machine, tmp_path, relays):
    env = machine.env(migrated=False)
    url = env["RELAY_DATABASE_URL"]
    first = await arun_relay(["migrate", "--to", "1", "--database-url", url])
    assert first.code == 0 and first.stdout.splitlines() == ["up 0001_initial"], first
    pair = IdentityKeyPair.generate(KeyScheme.XEDDSA)
    rows = version_1_rows(pair)
    conn = await asyncpg.connect(url)
    try:
        for sql, values in rows:
            placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
            await conn.execute(sql.format(p=placeholders), *values)
    finally:
        await conn.close()

    # With the master key (the env's): after the schema, the clear store is encrypted.
    second = await arun_relay(["migrate", "--database-url", url], env=env)
    assert second.stdout.splitlines() == [
        "up 0002_canonical_identity_keys",
        "up 0003_queue_counts",
        "up 0004_key_event_kinds",
        "up 0005_at_rest",
        "up 0006_partitioned_messages",
        "up 0007_receipts",
        "up 0008_key_backups",
        "up 0009_shared_payloads",
        f"encrypted at rest: {len(users_of(rows))} users' ids hashed, 0 stored messages sealed",
    ], second
    check = await arun_relay(["migrate", "--check", "--database-url", url], env=env)
    assert check.code == 0, check
    r = RelayProcess(tmp_path / "relay", {}, env=env)
    relays.append(r)
    await r.astart()
    await check_served(r.url, pair, *users_of(rows))


async def test_embedded_store_migrates_itself_at_start(tmp_path, relays):
    data = tmp_path / "relay"
    data.mkdir()
    pair = IdentityKeyPair.generate(KeyScheme.XEDDSA)
    rows = version_1_rows(pair)
    write_version_1_file(data / DATABASE_FILE, rows)
    r = RelayProcess(data, {}, env={})
    relays.append(r)
    await r.astart()
    await check_served(r.url, pair, *users_of(rows))
    conn = sqlite3.connect(data / DATABASE_FILE)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        conn.close()


def write_version_1_file(path: Path, rows: list[tuple[str, tuple[object, ...]]]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for statement in _statements(_migrations()[0][1]):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        for sql, values in rows:
            conn.execute(sql.format(p=", ".join("?" * len(values))), values)
        conn.execute("COMMIT")
    finally:
        conn.close()
