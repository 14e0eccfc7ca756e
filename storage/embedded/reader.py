"""A second SQLite connection, read-only, used on the event loop thread: reads that never
wait for a commit, and cost no thread hop.

Why: the writer (`database.py`) runs every job inside a transaction that ends with an
fsync, so a read queued there waits for the batch ahead of it and for the disk. In WAL mode
a reader sees the last committed state while the writer works and never waits for it, and
the reads of the accept path are point lookups by key (a few µs from SQLite's page cache or
the OS's), cheaper to run in place than to hand to a thread (measured in
docs/benchmarks.md). Only WAL recovery by another process can make this connection wait,
for at most `BUSY_TIMEOUT_MS`; it then answers Unavailable.

What a read sees: everything committed when it runs, so every write whose result anyone
has had in hand, and perhaps writes still unanswered. Callers that need FIFO order with
their own unanswered writes (a fetch after an ack) stay on the writer; the stores built on
this one say how each read copes with the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, Final, TypeVar

from storage.errors import Unavailable

T = TypeVar("T")

BUSY_TIMEOUT_MS: Final = 50  # holds the event loop: only WAL recovery can make a reader wait

log = logging.getLogger(__name__)


class SqliteReader:
    """A read-only connection to a file that `SqliteDatabase` has opened (and migrated)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    def open(cls, path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> SqliteReader:
        """Connect read-only. Raises Unavailable."""
        try:
            # Autocommit: each statement reads the latest commit and holds no snapshot after.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            conn.execute("PRAGMA query_only = ON")  # a job that tries to write fails loudly
        except sqlite3.Error as exc:
            conn.close()
            raise _unavailable(exc) from exc
        return cls(conn)

    def read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only job now, on the caller's thread. Raises Unavailable."""
        if self._conn is None:
            raise Unavailable("the embedded store is closed")
        try:
            return job(self._conn)
        except sqlite3.Error as exc:
            log.warning("sqlite read failed: %s", exc)
            raise _unavailable(exc) from exc

    async def read_off_loop(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """`read` on a worker thread. A cancellation waits for the job to end, so that the
        caller may close the reader. Raises Unavailable."""
        return await _finished(asyncio.to_thread(self.read, job))

    async def chunks(self, sql: str, *, size: int) -> AsyncIterator[list[tuple[Any, ...]]]:
        """The rows of one query, `size` at a time, each chunk fetched on a worker thread:
        one snapshot for the whole scan, and the event loop free between chunks. For a
        reader of the scan's own: its read transaction lasts until the last chunk, and any
        other read on it in between would see that snapshot. Raises Unavailable."""
        if self._conn is None:
            raise Unavailable("the embedded store is closed")
        conn = self._conn
        try:
            cursor = await _finished(asyncio.to_thread(conn.execute, sql))
            while rows := await _finished(asyncio.to_thread(cursor.fetchmany, size)):
                yield rows
        except sqlite3.Error as exc:
            log.warning("sqlite scan failed: %s", exc)
            raise _unavailable(exc) from exc

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


async def _finished(call: Coroutine[Any, Any, T]) -> T:
    """`call`'s result. A cancellation first waits for its thread to be done with the
    connection, so that the caller may close it."""
    running = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await running
        raise


def _unavailable(exc: sqlite3.Error) -> Unavailable:
    return Unavailable(f"sqlite: {exc}")
