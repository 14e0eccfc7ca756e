"""The embedded store's reads off the writer: each ordering the relay relies on.

Reads of the accept path (replay records, pending origins, device directory loads) run on
the reader connection and never wait for a commit. These tests hold a real read between its
snapshot and its answer (`GatedReader`) while a write commits, and check that nobody is
answered from the older snapshot once the write was answered.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from storage.embedded import DATABASE_FILE, EmbeddedStore
from storage.embedded.database import BUSY_TIMEOUT_MS, SqliteDatabase
from storage.embedded.directory import SqliteDeviceDirectory
from storage.embedded.reader import SqliteReader
from storage.embedded.replay import SqliteReplayGuard
from storage.records import ReplayRecord, ReplayScope, SendOutcome

from .support import FakeClock, envelope, make_user, new_device, new_user

T = TypeVar("T")

LIMIT_S = 10.0  # a test that hangs fails after this
OUTCOME = SendOutcome(delivered=(1,), stored=())


class GatedReader(SqliteReader):
    """A real reader whose `n`-th read (from 0), once it has read, waits for `release`."""

    def __init__(self, path: Path, *, busy_timeout_ms: int, max_batch: int) -> None:
        super().__init__(path, busy_timeout_ms=busy_timeout_ms, max_batch=max_batch)
        self.hold: int | None = None
        self.submitted = 0
        self.read_done = threading.Event()  # the held read has its snapshot and its rows
        self.release = threading.Event()
        self.enough: tuple[int, asyncio.Event] | None = None  # set once that many submitted

    def read(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        number = self.submitted
        self.submitted += 1
        if self.enough is not None and self.submitted >= self.enough[0]:
            self.enough[1].set()
        if number != self.hold:
            return super().read(job)

        def held(conn: sqlite3.Connection) -> T:
            result = job(conn)
            self.read_done.set()
            self.release.wait(LIMIT_S)
            return result

        return super().read(held)


@dataclass
class Opened:
    db: SqliteDatabase
    reader: GatedReader
    clock: FakeClock


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[Opened]:
    db = await SqliteDatabase.open(tmp_path / DATABASE_FILE)
    # One read per snapshot, so that a held read holds only itself.
    reader = await GatedReader.open(db.path, busy_timeout_ms=BUSY_TIMEOUT_MS, max_batch=1)
    try:
        yield Opened(db, reader, FakeClock())
    finally:
        reader.release.set()
        await reader.close()
        await db.close()


async def held_read_done(reader: GatedReader) -> None:
    await asyncio.wait_for(asyncio.to_thread(reader.read_done.wait, LIMIT_S), LIMIT_S)
    assert reader.read_done.is_set()


async def test_a_load_that_raced_a_write_is_neither_kept_nor_shared(opened: Opened) -> None:
    directory = SqliteDeviceDirectory(opened.db, opened.reader, now_ms=opened.clock.now_ms)
    user = new_user()
    await directory.create_user(user, new_device())
    opened.reader.hold = opened.reader.submitted  # the next read: the load below
    early = asyncio.ensure_future(directory.list_devices(user))
    await held_read_done(opened.reader)  # it read device 1 alone, and waits
    await directory.add_device(user, new_device(), max_devices=5)
    # Answered after the add: must not join the load that read before it.
    late = asyncio.ensure_future(directory.list_devices(user))
    opened.reader.release.set()
    first = await asyncio.wait_for(early, LIMIT_S)
    assert first is not None and [d.device for d in first] == [1]  # asked before the add
    now = await asyncio.wait_for(directory.list_devices(user), LIMIT_S)
    assert now is not None and [d.device for d in now] == [1, 2]
    second = await asyncio.wait_for(late, LIMIT_S)
    assert second is not None and [d.device for d in second] == [1, 2]


async def test_directory_reads_follow_answered_writes(opened: Opened) -> None:
    directory = SqliteDeviceDirectory(opened.db, opened.reader, now_ms=opened.clock.now_ms)
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


async def test_a_claim_read_before_a_completion_commits_finds_it(opened: Opened) -> None:
    """B asks while the nonce is free; A claims and completes while B's read (its snapshot
    older than A's commit) is held. B must get A's answer, not the nonce."""
    clock = opened.clock
    guard = SqliteReplayGuard(
        opened.db, opened.reader, now_ms=clock.now_ms, monotonic=clock.monotonic
    )
    s = ReplayScope(new_user(), 1, new_user())
    nonce, a_id, b_id = os.urandom(24), os.urandom(16), os.urandom(16)
    both = asyncio.Event()
    opened.reader.enough = (opened.reader.submitted + 2, both)
    opened.reader.hold = opened.reader.submitted + 1  # B's read, the second
    a_claim = asyncio.ensure_future(guard.claim(s, nonce, a_id, pending_ttl_s=30))
    b_claim = asyncio.ensure_future(guard.claim(s, nonce, b_id, pending_ttl_s=30))
    await asyncio.wait_for(both.wait(), LIMIT_S)  # both checked memory, found nothing
    assert await asyncio.wait_for(a_claim, LIMIT_S) is None
    await held_read_done(opened.reader)
    await guard.complete(s, nonce, a_id, OUTCOME, window_s=3600)
    opened.reader.release.set()
    assert await asyncio.wait_for(b_claim, LIMIT_S) == ReplayRecord(a_id, OUTCOME)


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
