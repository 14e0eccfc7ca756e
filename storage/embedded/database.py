"""One SQLite connection on one worker thread, fed with jobs from asyncio in order.

Why one thread and one connection: sqlite3 blocks, and SQLite admits one writer at a
time anyway. Serialising every job on one connection costs nothing SQLite would have
given us, and it makes each job a critical section: the stores built on top check and
then act inside one job without locks. Jobs run strictly in submission order (FIFO); the
relay relies on it (an ack's delete submitted before a later fetch is applied before it).
`run` queues the job when it is called, so the order is the order of the calls.

Why group commit: with `synchronous=FULL` every COMMIT waits for the disk. The worker
takes every job queued at that moment (up to `MAX_BATCH`) and runs them in one
transaction, each inside its own SAVEPOINT: a job that raises is rolled back alone and its
exception goes to its caller, the others commit together. Callers learn their results only
after the COMMIT, so a result in hand means the job is durable.

A job is a plain function taking the connection; it must read everything it returns
(`fetchall`) before returning. Driver errors become `storage.errors.Unavailable`. A job may
carry a `settled` callback, run on the event loop when its outcome is known (committed or
not) and before anyone awaiting it resumes: the in-memory state built on the store (the
device cache) changes there, in step with what is committed. The results of a batch go back
to the loop in one call, not one per job.

A few maintenance jobs must run outside any transaction (a WAL checkpoint): `run_alone`
queues one that runs by itself, between two batches, in the same FIFO order.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from storage.errors import Unavailable
from storage.interfaces import BackendObserver

T = TypeVar("T")

MAX_BATCH: Final = 512  # jobs in one transaction: bounds the latency one commit adds
BUSY_TIMEOUT_MS: Final = 2000  # only another process (a backup tool) can hold the lock

log = logging.getLogger(__name__)


Settled = Callable[[bool], None]
"""`settled(committed)`: told on the event loop whether the job's work was committed."""


@dataclass(frozen=True, slots=True)
class _Submitted:
    job: Callable[[sqlite3.Connection], object]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    settled: Settled | None = None
    alone: bool = False  # outside any transaction, in a batch of its own


@dataclass(frozen=True, slots=True)
class _Outcome:
    value: object = None
    error: BaseException | None = None


class SqliteDatabase:
    """The one connection to one SQLite file; `run` jobs on it, `close` it once."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        observe: BackendObserver | None = None,
    ) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._observe = observe  # hears each batch's transaction time, from the worker thread
        # None is the stop sentinel: everything queued before it still runs.
        self._queue: queue.SimpleQueue[_Submitted | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # makes "closed?" and "queue it" one step
        self._thread = threading.Thread(target=self._serve, name=f"sqlite:{path.name}", daemon=True)
        self._started: asyncio.Future[None] | None = None
        self._held: _Submitted | None = None  # a job `alone`, taken off the queue, runs next

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        observe: BackendObserver | None = None,
    ) -> SqliteDatabase:
        """Connect, set the pragmas and bring the schema up to date. Raises Unavailable."""
        db = cls(path, busy_timeout_ms=busy_timeout_ms, observe=observe)
        loop = asyncio.get_running_loop()
        db._started = loop.create_future()
        db._thread.start()
        try:
            await db._started
        except BaseException:
            # Stops the worker if it did connect after all (open was cancelled).
            await db.close()
            raise
        return db

    @property
    def path(self) -> Path:
        return self._path

    def run(
        self, job: Callable[[sqlite3.Connection], T], *, settled: Settled | None = None
    ) -> asyncio.Future[T]:
        """Queue the job now; the future gives its result once committed, or its exception.

        Queued at call time, not at first await: calls are served in the order they are
        made. Cancelling the future does not cancel the job: it may still commit (and
        `settled` is still told).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if not self._closed:
                self._queue.put(_Submitted(job, loop, future, settled))
                return future
        if settled is not None:
            settled(False)
        future.set_exception(Unavailable("the embedded store is closed"))
        return future

    def run_alone(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Like `run`, but the job runs outside any transaction, with no other job in its
        batch (for statements that cannot run in one: a WAL checkpoint, VACUUM). A job that
        raises changes only what it committed itself."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if not self._closed:
                self._queue.put(_Submitted(job, loop, future, alone=True))
                return future
        future.set_exception(Unavailable("the embedded store is closed"))
        return future

    def committed(self) -> asyncio.Future[None]:
        """Ends once every job queued before it is committed (or failed)."""
        return self.run(_nothing)

    async def checkpoint(self) -> bool:
        """Copy the WAL into the database file and truncate the WAL to nothing, so that
        neither file keeps a page as it was before the last commit (with secure_delete,
        which zeroes what a job deletes, nothing deleted is left in either). False when a
        reader kept it from completing (it is done at the next one, or by SQLite's own)."""

        def job(conn: sqlite3.Connection) -> bool:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return not busy

        return await self.run_alone(job)

    async def close(self) -> None:
        """Finish the jobs already queued, then close the connection and stop the thread."""
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
            error = exc if isinstance(exc, Unavailable) else _unavailable(exc)
            _deliver(started.get_loop(), [(started, None, _Outcome(error=error))])
            return
        _deliver(started.get_loop(), [(started, None, _Outcome())])
        try:
            stopping = False
            while not stopping:
                batch, stopping = self._next_batch()
                if len(batch) == 1 and batch[0].alone:
                    _run_alone(conn, batch[0])
                elif batch:
                    self._run_batch(conn, batch)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            with self._lock:  # after this, nothing more can be queued
                self._closed = True
            self._fail_queued()

    def _next_batch(self) -> tuple[list[_Submitted], bool]:
        """Block for one job, then take every job queued behind it, up to MAX_BATCH. A job
        `alone` is a batch by itself: one found behind others waits for the next call."""
        batch: list[_Submitted] = []
        item = self._held if self._held is not None else self._queue.get()
        self._held = None
        if item is not None and item.alone:
            return [item], False
        while item is not None:
            batch.append(item)
            if len(batch) >= MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
            if item is not None and item.alone:
                self._held = item
                return batch, False
        return batch, True

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Submitted]) -> None:
        outcomes: list[_Outcome] = []
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            outcomes = [_run_job(conn, item.job) for item in batch]
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The transaction itself failed (disk full, I/O error, lock timeout): nothing of
            # this batch is committed, so every caller hears Unavailable.
            log.warning("sqlite transaction failed: %s", exc)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            outcomes = [_Outcome(error=_unavailable(exc)) for _ in batch]
        except BaseException as exc:
            _deliver_all(batch, [_Outcome(error=_unavailable(exc)) for _ in batch])
            raise
        if self._observe is not None:
            self._observe("sqlite", "batch", time.perf_counter() - started)
        _deliver_all(batch, outcomes)

    def _fail_queued(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            error = Unavailable("the embedded store is closed")
            _deliver(held.loop, [(held.future, held.settled, _Outcome(error=error))])
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                error = Unavailable("the embedded store is closed")
                _deliver(item.loop, [(item.future, item.settled, _Outcome(error=error))])


def _nothing(conn: sqlite3.Connection) -> None:
    """A job that only waits its turn."""


def _run_alone(conn: sqlite3.Connection, item: _Submitted) -> None:
    """A job `alone`: no transaction around it, driver errors become Unavailable."""
    try:
        outcome = _Outcome(value=item.job(conn))
    except sqlite3.Error as exc:
        log.warning("sqlite job failed: %s", exc)
        outcome = _Outcome(error=_unavailable(exc))
    except Exception as exc:
        outcome = _Outcome(error=exc)
    _deliver(item.loop, [(item.future, item.settled, outcome)])


def _run_job(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], object]) -> _Outcome:
    """Run one job inside its own savepoint, so that its failure undoes its work alone.

    A sqlite3.Error raised by the rollback itself (the whole transaction is gone) escapes
    and fails the batch.
    """
    conn.execute("SAVEPOINT job")
    try:
        value = job(conn)
    except Exception as exc:
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
        if isinstance(exc, sqlite3.Error):
            log.warning("sqlite job failed: %s", exc)
            return _Outcome(error=_unavailable(exc))
        return _Outcome(error=exc)
    conn.execute("RELEASE job")
    return _Outcome(value=value)


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    # isolation_level=None: the driver opens no transaction of its own; we BEGIN ourselves.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise Unavailable(f"sqlite refused WAL mode (got {mode!r})")
        # FULL: a COMMIT is on disk before the relay answers ok, even across power loss.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # Deleted rows are zeroed in the file, not left in free space: with encryption at
        # rest, what a copy of the file shows is what the rows show. (Many builds of SQLite
        # have it on by default already; this makes every build alike.)
        conn.execute("PRAGMA secure_delete = ON")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrations() -> list[tuple[int, str]]:
    """(version, SQL) for each file migrations/NNNN_name.sql, in version order."""
    folder = importlib.resources.files("storage.embedded").joinpath("migrations")
    found = [
        (int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    found.sort()
    if [version for version, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n: {[v for v, _ in found]}")
    return found


SCHEMA_VERSION: Final = len(_migrations())


def _statements(script: str) -> list[str]:
    """Split a script into statements, so that they run inside our own transaction
    (executescript would COMMIT it first)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer)
            buffer = ""
    return statements


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION, tracked in PRAGMA user_version.

    The version is read and written inside one IMMEDIATE transaction, so two processes
    opening the same new file cannot both apply a migration.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise Unavailable(
                f"schema version {version} is newer than this relay knows ({SCHEMA_VERSION})"
            )
        for number, script in _migrations()[version:]:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _unavailable(exc: BaseException) -> Unavailable:
    error = Unavailable(f"sqlite: {exc}")
    error.__cause__ = exc
    return error


_Delivery = tuple[asyncio.Future[Any], Settled | None, _Outcome]


def _deliver_all(batch: list[_Submitted], outcomes: list[_Outcome]) -> None:
    """One call into each caller's loop for the whole batch, not one per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Delivery]] = {}
    for item, outcome in zip(batch, outcomes, strict=True):
        by_loop.setdefault(item.loop, []).append((item.future, item.settled, outcome))
    for loop, deliveries in by_loop.items():
        _deliver(loop, deliveries)


def _deliver(loop: asyncio.AbstractEventLoop, deliveries: list[_Delivery]) -> None:
    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
        loop.call_soon_threadsafe(_settle_all, deliveries)


def _settle_all(deliveries: list[_Delivery]) -> None:
    """In job order: each job's `settled`, then its future (a cancelled caller's is skipped)."""
    for future, settled, outcome in deliveries:
        if settled is not None:
            settled(outcome.error is None)
        if future.done():
            continue
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.value)
