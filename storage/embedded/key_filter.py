"""The keys of one of the embedded store's tables, in memory: a lookup of a key that no row
holds (nearly every send's replay claim and stored-origins check) is answered without
reading SQLite.

`KeyFilter` is a Bloom filter: `may_hold(key)` is False only for a key never added, so a
lookup that skips the read on False cannot miss a row; a false positive (about 0.6 % of
fresh keys at capacity) costs the read it made before. Keys are only ever added: a deleted
row's key stays until the filter is built again.

`TableKeys` keeps a filter a superset of the table's committed keys. The store adds a key
before it queues the insert that writes it (the process owns its file: its writer is the
only one). A build, in the background at the first lookup, first joins the filters those
adds reach, then waits until every insert queued before that is committed, then scans the
table on a reader of its own: a key committed before the scan is in the scan, one queued
after the join is added. Until a build ends, and for a table too large to filter, every
lookup reads. It is built again once more keys were added than it was sized for.

Memory: 12 bits a key, sized at twice the rows found and at least MIN_CAPACITY keys
(1.5 MB). A table of more than MAX_CAPACITY / 2 rows (a 96 MB filter) is not filtered.
The positions come from Python's own hash of the key (strings and bytes cache theirs),
salted per process: the filter lives and dies with the process and is never written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Final

from storage.embedded.reader import SqliteReader
from storage.errors import Unavailable

__all__ = ["MAX_CAPACITY", "MIN_CAPACITY", "KeyFilter", "TableKeys", "capacity_for"]

PROBES: Final = 4
BITS_PER_KEY: Final = 12
MIN_CAPACITY: Final = 1 << 20
MAX_CAPACITY: Final = 1 << 26
SCAN_CHUNK: Final = 1024  # rows per chunk of a build's scan: about 3 ms of the loop each
BUILD_INTERVAL_S: Final = 600.0  # between two builds (or attempts)
_MASK32: Final = (1 << 32) - 1
_MASK64: Final = (1 << 64) - 1

log = logging.getLogger(__name__)


def capacity_for(rows: int) -> int | None:
    """The capacity of a filter for a table of `rows` rows, or None: too many to filter."""
    if rows > MAX_CAPACITY // 2:
        return None
    return max(MIN_CAPACITY, 2 * rows)


class KeyFilter:
    """A Bloom filter (PROBES positions by double hashing)."""

    __slots__ = ("_bits", "_size", "added", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a filter holds at least one key")
        self.capacity = capacity
        self.added = 0
        self._size = capacity * BITS_PER_KEY
        self._bits = bytearray((self._size + 7) // 8)

    @property
    def full(self) -> bool:
        """More keys were added than it was sized for: its false positives grow from here."""
        return self.added > self.capacity

    def add(self, key: Hashable) -> None:
        bits, size = self._bits, self._size
        hashed = hash(key) & _MASK64
        at, step = hashed & _MASK32, (hashed >> 32) | 1
        for _ in range(PROBES):
            position = at % size
            bits[position >> 3] |= 1 << (position & 7)
            at += step
        self.added += 1

    def may_hold(self, key: Hashable) -> bool:
        """False only if `key` was never added."""
        bits, size = self._bits, self._size
        hashed = hash(key) & _MASK64
        at, step = hashed & _MASK32, (hashed >> 32) | 1
        for _ in range(PROBES):
            position = at % size
            if not bits[position >> 3] & (1 << (position & 7)):
                return False
            at += step
        return True


class TableKeys:
    """The filter of one table's keys, kept a superset of its committed keys (see above).

    Used on the event loop only: `add` and `may_hold` from the store's calls, the build's
    adds between its chunks."""

    def __init__(
        self,
        path: Path,
        wait_for_writes: Callable[[], Any],
        *,
        table: str,
        key_columns: str,
        key_of: Callable[[tuple[Any, ...]], Hashable],
        monotonic: Callable[[], float],
    ) -> None:
        """`wait_for_writes()`: an awaitable that ends once every write queued before it
        is committed. `key_of(row)`: the key of a row of `SELECT key_columns FROM table`,
        equal to what the store adds and looks up."""
        self._path = path
        self._wait_for_writes = wait_for_writes
        self._table = table
        self._scan = f"SELECT {key_columns} FROM {table}"
        self._key_of = key_of
        self._monotonic = monotonic
        self._built: KeyFilter | None = None  # None: every lookup reads
        self._filling: list[KeyFilter] = []  # being built: `add` reaches them too
        self._build: asyncio.Task[None] | None = None
        self._next_build = monotonic()

    def add(self, key: Hashable) -> None:
        """A row with `key` is about to be written: call before its insert is queued."""
        built = self._built
        if built is not None:
            built.add(key)
            if built.full:
                self._start_build()
        for filling in self._filling:
            filling.add(key)

    def may_hold(self, key: Hashable) -> bool:
        """False only if no committed row has `key` (True until the filter is built)."""
        built = self._built
        if built is None:
            self._start_build()
            return True
        return built.may_hold(key)

    def reset(self) -> None:
        """The table's keys were rewritten in place: forget them and build again."""
        self._built = None
        if self._build is not None:
            self._build.cancel()

    async def close(self) -> None:
        build = self._build
        if build is not None:
            build.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await build

    async def build(self) -> None:
        """Build the filter and answer lookups from it from now on. Raises Unavailable;
        the filter in use, if any, stays."""
        scan = SqliteReader.open(self._path)
        try:
            started = time.perf_counter()
            (rows,) = await scan.read_off_loop(_counter(self._table))
            capacity = capacity_for(rows)
            if capacity is None:
                log.info("%s table: %d rows, too many to filter; lookups read", self._table, rows)
                return
            fresh = KeyFilter(capacity)
            self._filling.append(fresh)
            try:
                await self._wait_for_writes()  # what was queued before the join is committed
                key_of = self._key_of
                async for chunk in scan.chunks(self._scan, size=SCAN_CHUNK):
                    for row in chunk:
                        fresh.add(key_of(row))
            finally:
                self._filling.remove(fresh)
            self._built = fresh
            log.info(
                "%s table filtered: %d rows, room for %d keys, built in %.0f ms",
                self._table,
                rows,
                capacity,
                (time.perf_counter() - started) * 1000,
            )
        finally:
            scan.close()

    def _start_build(self) -> None:
        if self._build is None and self._monotonic() >= self._next_build:
            self._build = asyncio.get_running_loop().create_task(self._building())

    async def _building(self) -> None:
        try:
            await self.build()
        except Unavailable as exc:
            log.warning("%s table not filtered, lookups read: %s", self._table, exc)
        finally:
            self._build = None
        # Not after a cancellation (reset): the next lookup starts again at once.
        self._next_build = self._monotonic() + BUILD_INTERVAL_S


def _counter(table: str) -> Callable[[sqlite3.Connection], tuple[int]]:
    def count(conn: sqlite3.Connection) -> tuple[int]:
        (rows,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return (int(rows),)

    return count
