"""BackupStore contract: one backup per user replaced by compare-and-set, versions that
never repeat (also across a delete), lookups by access key, the audit events of every put,
read and delete; and, through BlindedStore (encryption at rest), a database that shows
neither the user, the access key nor the blob, with the data key kept while a backup uses it.

Real stores throughout (SQLite file; PostgreSQL and Redis), parametrised over both."""

from __future__ import annotations

import asyncio
import os

import pytest

from storage.at_rest.blinded import BlindedStore, KeyAccess
from storage.at_rest.master_key import LocalKeyFile
from storage.at_rest.opening import convert_clear_data
from storage.at_rest.sealing import RingSealer
from storage.at_rest.vault import DataKeyVault
from storage.errors import BackupAccessKeyTaken, BackupVersionConflict, NoBackup
from storage.interfaces import Store
from storage.records import NewBackup

from .support import DAY_MS, START_MS, Backend, make_user


def backup(blob: bytes = b"sealed by the client", access_key: bytes | None = None) -> NewBackup:
    return NewBackup(blob=blob, access_key=access_key or os.urandom(32))


async def test_put_get_and_compare_and_set(store: Store) -> None:
    user = await make_user(store, devices=2)
    backups = store.backups
    assert await backups.get(user) is None
    first = backup(b"one")
    assert await backups.put(user, 1, first, expected_version=0, now_ms=START_MS) == 1
    got = await backups.get(user)
    assert got is not None
    assert (got.user, got.version, got.blob, got.updated_ms) == (user, 1, b"one", START_MS)

    # A device that saw no backup, or an old version, overwrites nothing.
    with pytest.raises(BackupVersionConflict) as conflict:
        await backups.put(user, 2, backup(b"stale"), expected_version=0, now_ms=START_MS + 1)
    assert conflict.value.current == 1
    assert await backups.put(user, 2, backup(b"two"), expected_version=1, now_ms=START_MS + 2) == 2
    with pytest.raises(BackupVersionConflict) as conflict:
        await backups.put(user, 1, backup(b"late"), expected_version=1, now_ms=START_MS + 3)
    assert conflict.value.current == 2
    got = await backups.get(user)
    assert got is not None and (got.version, got.blob) == (2, b"two")


async def test_versions_never_repeat_across_a_delete(store: Store) -> None:
    user = await make_user(store)
    backups = store.backups
    with pytest.raises(NoBackup):
        await backups.delete(user, 1, expected_version=1, now_ms=START_MS)
    await backups.put(user, 1, backup(), expected_version=0, now_ms=START_MS)
    await backups.put(user, 1, backup(), expected_version=1, now_ms=START_MS)
    with pytest.raises(BackupVersionConflict) as conflict:
        await backups.delete(user, 1, expected_version=1, now_ms=START_MS)
    assert conflict.value.current == 2
    await backups.delete(user, 1, expected_version=2, now_ms=START_MS)
    assert await backups.get(user) is None
    with pytest.raises(NoBackup):
        await backups.delete(user, 1, expected_version=2, now_ms=START_MS)
    # A device still holding version 2 cannot overwrite what comes after the delete.
    with pytest.raises(BackupVersionConflict) as conflict:
        await backups.put(user, 1, backup(), expected_version=2, now_ms=START_MS)
    assert conflict.value.current == 0
    assert await backups.put(user, 1, backup(b"new"), expected_version=0, now_ms=START_MS) == 3


async def test_find_by_access_key_and_keys_are_per_user(store: Store) -> None:
    alice, bob = await make_user(store), await make_user(store)
    key = os.urandom(32)
    await store.backups.put(alice, 1, backup(b"a", key), expected_version=0, now_ms=START_MS)
    found = await store.backups.find(key)
    assert found is not None and (found.user, found.blob, found.version) == (alice, b"a", 1)
    assert await store.backups.find(os.urandom(32)) is None
    with pytest.raises(BackupAccessKeyTaken):
        await store.backups.put(bob, 1, backup(b"b", key), expected_version=0, now_ms=START_MS)
    assert await store.backups.get(bob) is None
    # The owner may keep its key across puts; a new key replaces the old one for lookups.
    await store.backups.put(alice, 1, backup(b"a2", key), expected_version=1, now_ms=START_MS)
    other = os.urandom(32)
    await store.backups.put(alice, 1, backup(b"a3", other), expected_version=2, now_ms=START_MS)
    assert await store.backups.find(key) is None
    found = await store.backups.find(other)
    assert found is not None and found.blob == b"a3"
    # A deleted backup cannot be found by its key any more.
    await store.backups.delete(alice, 1, expected_version=3, now_ms=START_MS)
    assert await store.backups.find(other) is None


async def test_concurrent_puts_of_one_version_one_wins(store: Store) -> None:
    user = await make_user(store, devices=2)
    for expected in (0, 1):
        outcomes = await asyncio.gather(
            *(
                store.backups.put(user, d, backup(), expected_version=expected, now_ms=START_MS)
                for d in (1, 2, 1, 2)
            ),
            return_exceptions=True,
        )
        won = [o for o in outcomes if isinstance(o, int)]
        lost = [o for o in outcomes if isinstance(o, BackupVersionConflict)]
        assert won == [expected + 1] and len(lost) == 3, outcomes


async def test_every_put_read_and_delete_is_audited(store: Store) -> None:
    user = await make_user(store, devices=2)
    backups = store.backups
    await backups.put(user, 1, backup(), expected_version=0, now_ms=START_MS)
    with pytest.raises(BackupVersionConflict):  # refused: not recorded
        await backups.put(user, 2, backup(), expected_version=0, now_ms=START_MS)
    await backups.record_read(user, 2, 1, via="device", now_ms=START_MS + 1)
    await backups.record_read(user, 0, 1, via="recovery", now_ms=START_MS + 2)
    await backups.delete(user, 2, expected_version=1, now_ms=START_MS + 3)
    events = [
        (e.device, e.kind, e.detail, e.at_ms)
        for e in await store.audit.events(user)
        if e.kind.startswith("backup_")
    ]
    assert events == [
        (1, "backup_put", {"version": 1}, START_MS),
        (2, "backup_get", {"version": 1, "via": "device"}, START_MS + 1),
        (0, "backup_get", {"version": 1, "via": "recovery"}, START_MS + 2),
        (2, "backup_delete", {"version": 1}, START_MS + 3),
    ]


async def test_count(store: Store) -> None:
    before = await store.backups.count()
    users = [await make_user(store) for _ in range(3)]
    for user in users:
        await store.backups.put(user, 1, backup(), expected_version=0, now_ms=START_MS)
    await store.backups.delete(users[0], 1, expected_version=1, now_ms=START_MS)
    assert await store.backups.count() == before + 2


# Encryption at rest


async def blinded(backend: Backend) -> tuple[BlindedStore, DataKeyVault]:
    inner = await backend.open()
    data_keys = inner.data_keys  # type: ignore[attr-defined]
    vault = await DataKeyVault.open(
        data_keys, LocalKeyFile(os.urandom(32)), rotation_ms=DAY_MS, now_ms=backend.clock.now_ms
    )

    async def opener() -> DataKeyVault:
        return vault

    return BlindedStore(inner, KeyAccess(opener, vault)), vault  # type: ignore[arg-type]


async def raw_rows(backend: Backend, store: BlindedStore | Store) -> list[bytes]:
    """Every backups row as the database holds it, all columns joined."""
    inner = store.inner if isinstance(store, BlindedStore) else store
    if backend.name == "embedded":
        db = inner._db  # type: ignore[attr-defined]
        rows = await db.run(lambda conn: conn.execute("SELECT * FROM backups").fetchall())
    else:
        async with inner.database.connection() as conn:  # type: ignore[attr-defined]
            rows = [tuple(r) for r in await conn.fetch("SELECT * FROM backups")]
    return [b"|".join(v if isinstance(v, bytes) else str(v).encode() for v in r) for r in rows]


async def test_at_rest_the_database_shows_nothing_readable(backend: Backend) -> None:
    store, _ = await blinded(backend)
    user = await make_user(store)
    key = os.urandom(32)
    blob = b"client ciphertext " + os.urandom(16)
    await store.backups.put(user, 1, backup(blob, key), expected_version=0, now_ms=START_MS)
    got = await store.backups.get(user)
    assert got is not None and (got.user, got.blob) == (user, blob)
    found = await store.backups.find(key)
    assert found is not None and (found.user, found.blob) == (user, blob)
    (row,) = await raw_rows(backend, store)
    for clear in (user.encode(), key, blob, blob[:16]):
        assert clear not in row
    # The audit trail names the blinded user only.
    assert [e.kind for e in await store.audit.events(user)][-1] == "backup_put"


async def test_at_rest_a_data_key_stays_while_a_backup_uses_it(backend: Backend) -> None:
    store, vault = await blinded(backend)
    user = await make_user(store)
    await store.backups.put(user, 1, backup(b"old key"), expected_version=0, now_ms=START_MS)
    first = vault.ring.active_id
    backend.clock.advance(60)
    second = await vault.rotate_data()
    table = store.inner.data_keys
    assert (await table.usage()).get(first) == 1
    far = backend.clock.now_ms() + DAY_MS
    assert first not in await table.delete_retired(far)
    got = await store.backups.get(user)
    assert got is not None and got.blob == b"old key"  # still opens
    # The next put seals with the active key; the old one may go.
    await store.backups.put(user, 1, backup(b"new key"), expected_version=1, now_ms=START_MS)
    assert (await table.usage()).get(second) == 1
    assert first in await table.delete_retired(far)
    got = await store.backups.get(user)
    assert got is not None and got.blob == b"new key"


async def test_converting_a_clear_store_keeps_its_backups(backend: Backend) -> None:
    """A backup saved while encryption at rest was off comes through the conversion of the
    store (storage.at_rest.opening.convert_clear_data): found by its user and by its access
    key, with the user's id and the access key hashed, the owner and the blob sealed."""
    inner = await backend.open()
    user = await make_user(inner)
    key = os.urandom(32)
    blob = b"clear era " + os.urandom(16)
    await inner.backups.put(user, 1, backup(blob, key), expected_version=0, now_ms=1)
    (clear_row,) = await raw_rows(backend, inner)
    assert blob in clear_row and key in clear_row and user.encode() in clear_row
    data_keys = inner.data_keys  # type: ignore[attr-defined]
    vault = await DataKeyVault.open(
        data_keys, LocalKeyFile(os.urandom(32)), rotation_ms=DAY_MS, now_ms=backend.clock.now_ms
    )
    clear_data = inner.clear_data  # type: ignore[attr-defined]
    report = await convert_clear_data(clear_data, vault, RingSealer(vault.ring))
    assert report.users == 1
    assert await clear_data.seal_clear_backups(lambda u, b: (0, b)) == 0  # none left clear

    async def opener() -> DataKeyVault:
        return vault

    store = BlindedStore(inner, KeyAccess(opener, vault))  # type: ignore[arg-type]
    (row,) = await raw_rows(backend, store)
    for clear in (user.encode(), key, blob):
        assert clear not in row
    got = await store.backups.get(user)
    assert got is not None and (got.user, got.blob, got.version) == (user, blob, 1)
    found = await store.backups.find(key)
    assert found is not None and (found.user, found.blob) == (user, blob)
    assert (await data_keys.usage()).get(vault.ring.active_id) == 1
