"""The embedded backend: one SQLite file under a data directory, for a single node.

Every write goes through one `SqliteDatabase` (one connection, one worker thread, jobs in
submission order, group commit), and so do the reads that must follow the caller's own
unanswered writes (fetch, queue state, keys). The reads of the accept path (replay records,
pending origins, device directory loads) go to one `SqliteReader` (a second connection,
used on the event loop thread: WAL lets it read the committed state while a commit is on
its way to the disk). Pending replay claims, the device directory and rate-limit buckets
live in memory: the process owns its file, so what it committed is all there is.

Encryption at rest (storage.at_rest): the wrapped keys are in `data_keys`, the conversion of
a clear store's data is `clear_data`, and `use_sealer` makes the message queue seal new rows
and open sealed ones. The store stores the ids it is given; blinding them is its caller's.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from storage.at_rest.sealing import EnvelopeSealer
from storage.embedded.audit import SqliteKeyAudit
from storage.embedded.backups import SqliteBackupStore
from storage.embedded.clear_data import SqliteClearData
from storage.embedded.data_keys import SqliteDataKeyTable
from storage.embedded.database import SqliteDatabase
from storage.embedded.directory import SqliteDeviceDirectory
from storage.embedded.messages import SqliteMessageQueue
from storage.embedded.reader import SqliteReader
from storage.embedded.replay import SqliteReplayGuard
from storage.embedded.sqlite_keys import SqliteKeyStore
from storage.errors import Unavailable
from storage.interfaces import BackendObserver, ClearData, DataKeyTable, Store
from storage.ratelimit import TokenBucketLimiter

__all__ = ["DATABASE_FILE", "EmbeddedStore"]

DATABASE_FILE: Final = "relay.sqlite3"
READY_TIMEOUT_S: Final = 2.0  # a worker stuck on a lock counts as not ready


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class EmbeddedStore:
    """The `Store` of the embedded backend. Open it with `EmbeddedStore.open`."""

    def __init__(
        self,
        db: SqliteDatabase,
        reader: SqliteReader,
        *,
        now_ms: Callable[[], int],
        monotonic: Callable[[], float],
    ) -> None:
        self._db = db
        self._reader = reader
        self._devices = SqliteDeviceDirectory(db, reader, now_ms=now_ms)
        self._keys = SqliteKeyStore(db, now_ms=now_ms)
        self._audit = SqliteKeyAudit(db)
        self._backups = SqliteBackupStore(db)
        self._messages = SqliteMessageQueue(db, reader, monotonic=monotonic)
        self._replay = SqliteReplayGuard(db, reader, now_ms=now_ms, monotonic=monotonic)
        self._rate_limiter = TokenBucketLimiter(clock=monotonic)
        self._data_keys = SqliteDataKeyTable(db)
        self._clear_data = SqliteClearData(db, on_blinded=self._forget_clear_ids)

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        now_ms: Callable[[], int] = _wall_ms,
        monotonic: Callable[[], float] = time.monotonic,
        observe: BackendObserver | None = None,
    ) -> EmbeddedStore:
        """Open (creating if need be) `data_dir/relay.sqlite3`. Raises Unavailable.

        The clocks are injectable for tests: `now_ms` (wall clock, ms since the epoch)
        dates what must outlive the process, `monotonic` (seconds) times what does not.
        `observe` hears the time of each group-commit transaction (for metrics).
        """
        try:
            await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(f"cannot create the data directory {data_dir}: {exc}") from exc
        path = data_dir / DATABASE_FILE
        db = await SqliteDatabase.open(path, observe=observe)  # creates and migrates first
        try:
            reader = SqliteReader.open(path)
        except BaseException:
            await db.close()
            raise
        return cls(db, reader, now_ms=now_ms, monotonic=monotonic)

    @property
    def devices(self) -> SqliteDeviceDirectory:
        return self._devices

    @property
    def keys(self) -> SqliteKeyStore:
        return self._keys

    @property
    def messages(self) -> SqliteMessageQueue:
        return self._messages

    @property
    def audit(self) -> SqliteKeyAudit:
        return self._audit

    @property
    def backups(self) -> SqliteBackupStore:
        return self._backups

    @property
    def replay(self) -> SqliteReplayGuard:
        return self._replay

    @property
    def rate_limiter(self) -> TokenBucketLimiter:
        return self._rate_limiter

    @property
    def data_keys(self) -> SqliteDataKeyTable:
        return self._data_keys

    @property
    def clear_data(self) -> SqliteClearData:
        return self._clear_data

    def use_sealer(self, sealer: EnvelopeSealer) -> None:
        """Seal stored messages with `sealer` from now on (and open sealed ones with it)."""
        self._messages.use_sealer(sealer)

    def _forget_clear_ids(self) -> None:
        """The user ids and nonces were blinded under the in-memory state: drop it all."""
        self._devices.forget_cached()
        self._replay.drop_pending()

    async def ready(self) -> dict[str, bool]:
        def ping(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute("SELECT 1").fetchone() == (1,))

        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                ok = await self._db.run(ping)
        except (Unavailable, TimeoutError):
            ok = False
        return {"sqlite": ok}

    async def close(self) -> None:
        await self._replay.close()
        await self._messages.close()
        self._reader.close()
        await self._db.close()


if TYPE_CHECKING:

    def _is_a_store(store: EmbeddedStore) -> Store:
        """mypy checks here that EmbeddedStore implements every interface."""
        return store

    def _at_rest_parts(store: EmbeddedStore) -> tuple[DataKeyTable, ClearData]:
        """And that its parts for encryption at rest implement theirs."""
        return store.data_keys, store.clear_data
