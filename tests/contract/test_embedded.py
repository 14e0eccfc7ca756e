"""The embedded backend's own promises, beyond the shared contract: job order, group commit
with per-job rollback, driver errors, schema versions, clean close, and durability."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from storage.embedded import DATABASE_FILE, EmbeddedStore
from storage.embedded.database import SCHEMA_VERSION, SqliteDatabase
from storage.embedded.reader import SqliteReader
from storage.embedded.replay import SqliteReplayGuard
from storage.errors import Unavailable
from storage.records import ReplayScope, SendOutcome

from .support import FakeClock

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = await SqliteDatabase.open(tmp_path / "test.sqlite3")
    await database.run(lambda c: c.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
    try:
        yield database
    finally:
        await database.close()


def insert(x: int) -> Callable[[sqlite3.Connection], int]:
    def job(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (x) VALUES (?)", (x,))
        return x

    return job


async def rows(db: SqliteDatabase) -> list[int]:
    found = await db.run(lambda c: c.execute("SELECT x FROM t ORDER BY x").fetchall())
    return [x for (x,) in found]


async def test_jobs_run_in_submission_order(db: SqliteDatabase) -> None:
    order: list[int] = []

    def job(n: int) -> Callable[[sqlite3.Connection], None]:
        return lambda conn: order.append(n)

    await asyncio.gather(*(db.run(job(n)) for n in range(2000)))
    assert order == list(range(2000))


async def test_a_job_alone_runs_in_order_outside_any_transaction(db: SqliteDatabase) -> None:
    seen: list[tuple[str, bool]] = []

    def job(name: str) -> Callable[[sqlite3.Connection], None]:
        return lambda conn: seen.append((name, conn.in_transaction))

    queued = [db.run(job("before")), db.run_alone(job("alone")), db.run(job("after"))]
    queued.append(db.run_alone(job("alone again")))
    await asyncio.gather(*queued, db.checkpoint())
    assert seen == [("before", True), ("alone", False), ("after", True), ("alone again", False)]
    assert await db.checkpoint()  # nothing holds the WAL: it completes
    assert (db.path.parent / (db.path.name + "-wal")).stat().st_size == 0


async def test_a_failing_job_is_rolled_back_alone(db: SqliteDatabase) -> None:
    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (x) VALUES (2)")
        raise ValueError("refused")

    results = await asyncio.gather(
        db.run(insert(1)),
        db.run(insert_then_fail),
        db.run(insert(3)),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], ValueError)
    assert await rows(db) == [1, 3]


async def test_driver_errors_become_unavailable(db: SqliteDatabase) -> None:
    await db.run(insert(1))
    results = await asyncio.gather(
        db.run(lambda c: c.execute("SELECT * FROM no_such_table").fetchall()),
        db.run(insert(1)),  # a unique violation
        db.run(insert(2)),
        return_exceptions=True,
    )
    assert isinstance(results[0], Unavailable)
    assert isinstance(results[1], Unavailable)
    assert isinstance(results[1].__cause__, sqlite3.IntegrityError)
    assert results[2] == 2
    assert await rows(db) == [1, 2]


async def test_a_locked_database_is_unavailable_then_recovers(tmp_path: Path) -> None:
    """Another process holding the write lock past the busy timeout fails the whole batch."""
    path = tmp_path / "locked.sqlite3"
    db = await SqliteDatabase.open(path, busy_timeout_ms=50)
    try:
        await db.run(lambda c: c.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            results = await asyncio.gather(
                db.run(insert(1)), db.run(insert(2)), return_exceptions=True
            )
            assert all(isinstance(r, Unavailable) for r in results)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await db.run(insert(3)) == 3
        assert await rows(db) == [3]
    finally:
        await db.close()


async def test_close_finishes_queued_jobs_then_refuses(db: SqliteDatabase) -> None:
    queued = [db.run(insert(n)) for n in range(100)]
    await db.close()
    assert [await task for task in queued] == list(range(100))
    with pytest.raises(Unavailable):
        await db.run(insert(1000))
    await db.close()  # twice is fine


async def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "data")
    await store.close()
    conn = sqlite3.connect(tmp_path / "data" / DATABASE_FILE)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        conn.close()
    db = await SqliteDatabase.open(tmp_path / "data" / DATABASE_FILE)
    try:
        assert await db.run(lambda c: c.execute("PRAGMA synchronous").fetchone()) == (2,)  # FULL
        assert await db.run(lambda c: c.execute("PRAGMA foreign_keys").fetchone()) == (1,)
        assert await db.run(lambda c: c.execute("PRAGMA secure_delete").fetchone()) == (1,)
    finally:
        await db.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data" / DATABASE_FILE
    await (await EmbeddedStore.open(path.parent)).close()  # creates the latest version
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(Unavailable, match="newer"):
        await SqliteDatabase.open(path)


async def test_an_unusable_data_dir_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(Unavailable):
        await EmbeddedStore.open(blocker / "data")


async def test_ready(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "data")
    assert await store.ready() == {"sqlite": True}
    await store.close()
    assert await store.ready() == {"sqlite": False}


async def test_expired_replay_rows_are_purged(db: SqliteDatabase) -> None:
    clock = FakeClock()
    reader = SqliteReader.open(db.path)
    guard = SqliteReplayGuard(db, reader, now_ms=clock.now_ms, monotonic=clock.monotonic)
    outcome = SendOutcome(delivered=(1,), stored=())
    for n in range(5):
        scope = ReplayScope("a", n, "b")
        assert await guard.claim(scope, b"nonce", b"id", pending_ttl_s=30) is None
        await guard.complete(scope, b"nonce", b"id", outcome, window_s=60.0)

    def count(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM replay").fetchone()[0])

    assert await db.run(count) == 5
    clock.advance(3600)
    scope = ReplayScope("a", 99, "b")
    assert await guard.claim(scope, b"nonce", b"id", pending_ttl_s=30) is None
    await guard.complete(scope, b"nonce", b"id", outcome, window_s=60.0)
    assert await db.run(count) == 1
    await guard.close()
    reader.close()


CHILD = """
import asyncio, os, sys
from pathlib import Path
from storage.embedded import EmbeddedStore
from storage.records import Envelope, NewDevice

async def main():
    store = await EmbeddedStore.open(Path(sys.argv[1]))
    key = os.urandom(32)
    await store.devices.create_user(sys.argv[2], NewDevice(key, "ed25519", key, 0, 1))
    envelope = Envelope(b"m" * 16, sys.argv[2], 1, sys.argv[2], 1, 1, 1, 2, b"body", b"n" * 24,
                        2**62)
    await store.messages.store([envelope])
    print("stored", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
async def test_a_stored_message_survives_sigkill(tmp_path: Path) -> None:
    user = "5e0c3b9a-2f7d-4f51-9a43-6c1f0e8d2b17"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(tmp_path / "data"),
        user,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 30)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert line == b"stored\n"
    assert child.returncode == -signal.SIGKILL

    store = await EmbeddedStore.open(tmp_path / "data")
    try:
        fetched = await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=0)
        assert [s.envelope.body for s in fetched] == [b"body"]
    finally:
        await store.close()
