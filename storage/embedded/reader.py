"""A second SQLite connection, read-only, on its own thread: reads that never wait for a commit.

Why: the writer (`database.py`) runs every job inside a transaction that ends with an
fsync, so a read queued there waits for the batch ahead of it and for the disk. WAL lets a
reader see the last committed state while the writer works, so the reads of the accept path
(replay records, pending origins, device directory loads) come here instead.

What a read sees: a snapshot taken after it was submitted, so every write whose result its
caller (or anyone) had in hand before submitting it; a write still queued on the writer may
or may not be visible. Callers that need FIFO order with their own unanswered writes (a
fetch after an ack) stay on the writer; the stores built on this one say how each read copes.

The worker takes every read queued at that moment (up to `MAX_BATCH`), runs them in one read
transaction and hands all the results back to the event loop in one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from storage.errors import Unavailable

T = TypeVar("T")

MAX_BATCH: Final = 512  # reads in one snapshot: bounds the time one batch holds the loop

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Read:
    job: Callable[[sqlite3.Connection], object]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class _Result:
    future: asyncio.Future[Any]
    value: object = None
    error: BaseException | None = None


class SqliteReader:
    """A read-only connection to a file `SqliteDatabase` has opened (and migrated)."""

    def __init__(self, path: Path, *, busy_timeout_ms: int, max_batch: int = MAX_BATCH) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Read | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # makes "closed?" and "queue it" one step
        self._thread = threading.Thread(
            target=self._serve, name=f"sqlite-read:{path.name}", daemon=True
        )
        self._started: asyncio.Future[None] | None = None

    @classmethod
    async def open(
        cls, path: Path, *, busy_timeout_ms: int, max_batch: int = MAX_BATCH
    ) -> SqliteReader:
        """Connect read-only. Raises Unavailable."""
        reader = cls(path, busy_timeout_ms=busy_timeout_ms, max_batch=max_batch)
        reader._started = asyncio.get_running_loop().create_future()
        reader._thread.start()
        try:
            await reader._started
        except BaseException:
            await reader.close()
            raise
        return reader

    def read(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue a read-only job; the future gives its result or its exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if not self._closed:
                self._queue.put(_Read(job, loop, future))
                return future
        future.set_exception(Unavailable("the embedded store is closed"))
        return future

    async def close(self) -> None:
        """Finish the reads already queued, then close the connection and stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    # The worker thread from here on.

    def _serve(self) -> None:
        started = self._started
        assert started is not None
        try:
            conn = _connect(self._path, self._busy_timeout_ms)
        except BaseException as exc:
            error = _unavailable(exc)
            _deliver(started.get_loop(), [_Result(started, error=error)])
            return
        _deliver(started.get_loop(), [_Result(started)])
        try:
            stopping = False
            while not stopping:
                batch, stopping = self._next_batch()
                if batch:
                    self._run_batch(conn, batch)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            with self._lock:
                self._closed = True
            self._fail_queued()

    def _next_batch(self) -> tuple[list[_Read], bool]:
        batch: list[_Read] = []
        item = self._queue.get()
        while item is not None:
            batch.append(item)
            if len(batch) >= self._max_batch:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Read]) -> None:
        # One snapshot for the batch: it starts at the first SELECT, after every job of the
        # batch was submitted.
        results: list[_Result] = []
        try:
            conn.execute("BEGIN")
            try:
                results = [_run_read(conn, item) for item in batch]
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.warning("sqlite read transaction failed: %s", exc)
            results = [_Result(item.future, error=_unavailable(exc)) for item in batch]
        except BaseException as exc:
            results = [_Result(item.future, error=_unavailable(exc)) for item in batch]
            _deliver_all(batch, results)
            raise
        _deliver_all(batch, results)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                error = Unavailable("the embedded store is closed")
                _deliver(item.loop, [_Result(item.future, error=error)])


def _run_read(conn: sqlite3.Connection, item: _Read) -> _Result:
    try:
        return _Result(item.future, value=item.job(conn))
    except sqlite3.Error as exc:
        log.warning("sqlite read failed: %s", exc)
        return _Result(item.future, error=_unavailable(exc))
    except Exception as exc:
        return _Result(item.future, error=exc)


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    # isolation_level=None: the driver opens no transaction of its own; we BEGIN ourselves.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA query_only = ON")  # a job that tries to write fails loudly
    except BaseException:
        conn.close()
        raise
    return conn


def _deliver_all(batch: list[_Read], results: list[_Result]) -> None:
    """One call into each caller's loop for the whole batch, not one per read."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
    for item, result in zip(batch, results, strict=True):
        by_loop.setdefault(item.loop, []).append(result)
    for loop, delivered in by_loop.items():
        _deliver(loop, delivered)


def _deliver(loop: asyncio.AbstractEventLoop, results: list[_Result]) -> None:
    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
        loop.call_soon_threadsafe(_settle_all, results)


def _settle_all(results: list[_Result]) -> None:
    for result in results:
        if result.future.done():  # its caller was cancelled
            continue
        if result.error is not None:
            result.future.set_exception(result.error)
        else:
            result.future.set_result(result.value)


def _unavailable(exc: BaseException) -> Unavailable:
    if isinstance(exc, Unavailable):
        return exc
    error = Unavailable(f"sqlite: {exc}")
    error.__cause__ = exc
    return error
