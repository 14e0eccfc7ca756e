"""The embedded store's reads off the writer: each ordering the relay relies on.

Reads of the accept path (replay records, pending origins, device directory loads) run on
the reader connection, on the event loop, and never wait for a commit. These tests hold the
writer (a job waiting on an event) so that a write is queued but not committed, read
meanwhile, then check that nobody is answered from the older state once the write was
answered, and that the reads the relay orders after its own writes still see them. The
filters of the replay records' keys and of the stored ids (storage/embedded/key_filter.py)
are checked the same way: a lookup they answer without reading must never miss a row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage.embedded import DATABASE_FILE, EmbeddedStore
from storage.embedded.database import SqliteDatabase
from storage.embedded.directory import SqliteDeviceDirectory
from storage.embedded.reader import SqliteReader
from storage.embedded.replay import SqliteReplayGuard
from storage.records import DeviceRecord, ReplayRecord, ReplayScope, SendOutcome

from .support import FakeClock, envelope, make_user, new_device, new_user

LIMIT_S = 10.0  # a test that hangs fails after this
OUTCOME = SendOutcome(delivered=(1,), stored=())


@dataclass
class Opened:
    db: SqliteDatabase
    reader: SqliteReader
    clock: FakeClock
    directory: SqliteDeviceDirectory
    replay: SqliteReplayGuard


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[Opened]:
    db = await SqliteDatabase.open(tmp_path / DATABASE_FILE)
    reader = SqliteReader.open(db.path)
    clock = FakeClock()
    directory = SqliteDeviceDirectory(db, reader, now_ms=clock.now_ms)
    replay = SqliteReplayGuard(db, reader, now_ms=clock.now_ms, monotonic=clock.monotonic)
    try:
        yield Opened(db, reader, clock, directory, replay)
    finally:
        await replay.close()
        reader.close()
        await db.close()


def hold_writer(db: SqliteDatabase) -> tuple[threading.Event, asyncio.Future[bool]]:
    """Every job queued after this one waits until the event is set."""
    release = threading.Event()

    def job(conn: sqlite3.Connection) -> bool:
        return release.wait(LIMIT_S)

    return release, db.run(job)


def numbers(devices: list[DeviceRecord] | None) -> list[int]:
    assert devices is not None
    return [d.device for d in devices]


async def test_a_device_list_read_before_a_write_commits_is_not_kept(opened: Opened) -> None:
    directory = opened.directory
    user = new_user()
    await directory.create_user(user, new_device())
    release, held = hold_writer(opened.db)
    # Tasks start in creation order: the add is queued (behind the held job), then the read
    # runs, before the add can commit, and puts device 1 alone in memory.
    add = asyncio.ensure_future(directory.add_device(user, new_device(), max_devices=5))
    during = asyncio.ensure_future(directory.list_devices(user))
    assert numbers(await asyncio.wait_for(during, LIMIT_S)) == [1]
    assert not add.done()
    release.set()
    assert await asyncio.wait_for(held, LIMIT_S)
    assert (await asyncio.wait_for(add, LIMIT_S)).device == 2
    assert numbers(await directory.list_devices(user)) == [1, 2]

    release, held = hold_writer(opened.db)
    remove = asyncio.ensure_future(directory.remove_device(user, 1))
    during_get = asyncio.ensure_future(directory.get_device(user, 1))
    assert await asyncio.wait_for(during_get, LIMIT_S) is not None
    release.set()
    assert await asyncio.wait_for(remove, LIMIT_S)
    assert await directory.get_device(user, 1) is None
    assert numbers(await directory.list_devices(user)) == [2]


async def test_directory_reads_follow_answered_writes(opened: Opened) -> None:
    directory = opened.directory
    user = new_user()
    assert await directory.list_devices(user) is None  # cached as "no such user"
    await directory.create_user(user, new_device())
    assert [d.device for d in await directory.list_devices(user) or []] == [1]
    await directory.add_device(user, new_device(), max_devices=5)
    assert await directory.get_device(user, 2) is not None
    assert await directory.remove_device(user, 1)
    assert await directory.get_device(user, 1) is None
    assert [d.device for d in await directory.list_devices(user) or []] == [2]
    await directory.touch(user, 2, opened.clock.now_ms() + 60_000)
    seen = await directory.get_device(user, 2)
    assert seen is not None and seen.last_seen_ms == opened.clock.now_ms() + 60_000


async def test_a_claim_while_a_completion_is_queued_finds_the_pending_claim(
    opened: Opened,
) -> None:
    """Until the outcome is committed the claim holds; from then on the outcome answers."""
    guard = opened.replay
    s = ReplayScope(new_user(), 1, new_user())
    nonce, first, second = os.urandom(24), os.urandom(16), os.urandom(16)
    assert await guard.claim(s, nonce, first, pending_ttl_s=30) is None
    release, held = hold_writer(opened.db)
    complete = asyncio.ensure_future(guard.complete(s, nonce, first, OUTCOME, window_s=3600))
    during = asyncio.ensure_future(guard.claim(s, nonce, second, pending_ttl_s=30))
    assert await asyncio.wait_for(during, LIMIT_S) == ReplayRecord(first, None)
    waiting = asyncio.ensure_future(guard.wait_outcome(s, nonce, timeout_s=LIMIT_S))
    release.set()
    assert await asyncio.wait_for(held, LIMIT_S)
    await asyncio.wait_for(complete, LIMIT_S)
    assert await asyncio.wait_for(waiting, LIMIT_S) == ReplayRecord(first, OUTCOME)
    assert await guard.claim(s, nonce, second, pending_ttl_s=30) == ReplayRecord(first, OUTCOME)


async def test_pending_origins_follow_answered_stores_and_acks(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "data")
    try:
        user = await make_user(store, devices=2)
        first = envelope(user, 1)
        await store.messages.store([first])
        found = await store.messages.pending_origins(user, [1, 2], first.id)
        assert [(o.device, o.nonce) for o in found] == [(1, first.nonce)]
        await store.messages.ack(user, 1, [first.id])
        assert await store.messages.pending_origins(user, [1, 2], first.id) == []
    finally:
        await store.close()


async def test_an_ack_not_awaited_is_applied_before_a_later_fetch(tmp_path: Path) -> None:
    """The pump's order: the ack's delete is submitted, the fetch after it; no await between."""
    store = await EmbeddedStore.open(tmp_path / "data")
    try:
        user = await make_user(store)
        stored = [envelope(user, 1) for _ in range(3)]
        await store.messages.store(stored)
        # gather starts them in this order: the delete is queued before the fetch.
        _, fetched = await asyncio.gather(
            store.messages.ack(user, 1, [stored[0].id]),
            store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=0),
        )
        assert [f.envelope.id for f in fetched] == [e.id for e in stored[1:]]
    finally:
        await store.close()


def write_behind_the_store(path: Path, sql: str, params: tuple[object, ...]) -> None:
    """A row written on a connection of its own, which no filter hears of."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def insert_behind_the_guard(db: SqliteDatabase, s: ReplayScope, nonce: bytes) -> None:
    """A replay record the guard's filter never hears of."""
    write_behind_the_store(
        db.path,
        "INSERT INTO replay (sender_user, sender_device, recipient_user, nonce,"
        " message_id, delivered, stored, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            s.sender_user,
            s.sender_device,
            s.recipient_user,
            nonce,
            os.urandom(16),
            "[1]",
            "[]",
            2**62,
        ),
    )


async def test_once_the_filter_is_built_a_fresh_nonce_is_not_read(opened: Opened) -> None:
    """Records in the table when the filter is built, and completed after, are found; a
    record the filter never heard of (written behind its back after the build) is not read:
    the claim is answered from the filter alone."""
    guard = opened.replay
    s = ReplayScope(new_user(), 1, new_user())
    before, after, written, unseen = (os.urandom(24) for _ in range(4))
    first, second = os.urandom(16), os.urandom(16)
    assert await guard.claim(s, before, first, pending_ttl_s=30) is None
    await guard.complete(s, before, first, OUTCOME, window_s=3600)
    insert_behind_the_guard(opened.db, s, written)
    assert (await guard.lookup(s, written)) is not None  # no filter yet: every claim reads
    await asyncio.wait_for(guard.build_filter(), LIMIT_S)
    insert_behind_the_guard(opened.db, s, unseen)
    assert await guard.claim(s, before, second, pending_ttl_s=30) == ReplayRecord(first, OUTCOME)
    assert (await guard.lookup(s, written)) is not None  # found by the build's scan
    assert await guard.claim(s, after, first, pending_ttl_s=30) is None
    await guard.complete(s, after, first, OUTCOME, window_s=3600)
    assert await guard.claim(s, after, second, pending_ttl_s=30) == ReplayRecord(first, OUTCOME)
    assert await guard.lookup(s, unseen) is None


async def test_a_completion_queued_before_the_build_is_in_the_filter(opened: Opened) -> None:
    """The build waits for the inserts queued before it: its scan then sees them."""
    guard = opened.replay
    s = ReplayScope(new_user(), 2, new_user())
    nonce, first, second = os.urandom(24), os.urandom(16), os.urandom(16)
    assert await guard.claim(s, nonce, first, pending_ttl_s=30) is None
    release, held = hold_writer(opened.db)
    complete = asyncio.ensure_future(guard.complete(s, nonce, first, OUTCOME, window_s=3600))
    build = asyncio.ensure_future(guard.build_filter())
    await asyncio.sleep(0)  # both under way, behind the held writer
    assert not build.done()
    release.set()
    assert await asyncio.wait_for(held, LIMIT_S)
    await asyncio.wait_for(complete, LIMIT_S)
    await asyncio.wait_for(build, LIMIT_S)
    assert await guard.claim(s, nonce, second, pending_ttl_s=30) == ReplayRecord(first, OUTCOME)


async def test_records_of_an_earlier_run_are_in_the_filter(tmp_path: Path) -> None:
    """A restart builds the filter from the table: the window stays closed."""
    s = ReplayScope(new_user(), 1, new_user())
    nonce, first, second = os.urandom(24), os.urandom(16), os.urandom(16)
    store = await EmbeddedStore.open(tmp_path / "data")
    try:
        assert await store.replay.claim(s, nonce, first, pending_ttl_s=30) is None
        await store.replay.complete(s, nonce, first, OUTCOME, window_s=3600)
    finally:
        await store.close()
    store = await EmbeddedStore.open(tmp_path / "data")
    try:
        await asyncio.wait_for(store.replay.build_filter(), LIMIT_S)
        found = await store.replay.claim(s, nonce, second, pending_ttl_s=30)
        assert found == ReplayRecord(first, OUTCOME)
    finally:
        await store.close()


def store_behind_the_queue(path: Path, user: str, device: int, message_id: bytes) -> None:
    """A stored row the queue's filter never hears of."""
    write_behind_the_store(
        path,
        "INSERT INTO messages (recipient_user, recipient_device, id, sender_user,"
        " sender_device, ts, server_ts, type, body, nonce, expires_ms)"
        " VALUES (?, ?, ?, ?, 1, 1, 1, 2, x'00', ?, ?)",
        (user, device, message_id, new_user(), os.urandom(24), 2**62),
    )


async def test_pending_origins_once_the_ids_are_filtered(tmp_path: Path) -> None:
    """Ids stored before and after the filter is built, and the id of a receipt an ack
    leaves, are found; an id the filter never heard of (written behind its back after the
    build) is answered from the filter alone."""
    store = await EmbeddedStore.open(tmp_path / "data")
    path = tmp_path / "data" / DATABASE_FILE
    try:
        sender = await make_user(store)
        recipient = await make_user(store, devices=2)
        before = envelope(recipient, 1, sender_user=sender)
        await store.messages.store([before])
        await asyncio.wait_for(store.messages.build_filter(), LIMIT_S)
        asked = dataclasses.replace(envelope(recipient, 2, sender_user=sender), receipt=True)
        await store.messages.store([asked])
        unseen = os.urandom(16)
        store_behind_the_queue(path, recipient, 1, unseen)

        found = await store.messages.pending_origins(recipient, [1, 2], before.id)
        assert [(o.device, o.nonce) for o in found] == [(1, before.nonce)]
        found = await store.messages.pending_origins(recipient, [1, 2], asked.id)
        assert [(o.device, o.nonce) for o in found] == [(2, asked.nonce)]
        (receipt,) = await store.messages.ack(recipient, 2, [asked.id])
        found = await store.messages.pending_origins(sender, [1], receipt.id)
        assert [(o.device, o.sender_user) for o in found] == [(1, recipient)]
        assert await store.messages.pending_origins(recipient, [1], unseen) == []
    finally:
        await store.close()
