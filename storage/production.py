"""The production store: devices, keys and messages in PostgreSQL; the replay guard and the
rate limiter in Redis. Several relay nodes share one of each.

Opening connects to neither server: both pools connect on first use, so a node starts while
a backend is down, answers `unavailable` meanwhile (and `ready()` says which backend is
missing), and recovers by itself when the server comes back. The schema is not migrated
here: that is `relay migrate` (storage.postgres.migrate), run once per deployment, or
`relay serve --migrate` (relay.schemaguard, which also refuses a schema that does not fit).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from storage.at_rest.sealing import EnvelopeSealer
from storage.directory_cache import CachedDeviceDirectory
from storage.interfaces import BackendObserver, ClearData, DataKeyTable, Store
from storage.postgres import Database, PostgresKeyStore, PostgresMessageQueue
from storage.postgres.audit import PostgresKeyAudit
from storage.postgres.backups import PostgresBackupStore
from storage.postgres.clear_data import PostgresClearData
from storage.postgres.data_keys import PostgresDataKeyTable
from storage.postgres.read_replica import LagTolerantReads
from storage.redis_store import RedisClient, RedisRateLimiter, RedisReplayGuard
from storage.redis_store.versions import RedisDirectoryVersions

__all__ = ["ProductionStore"]

READY_TIMEOUT_S: Final = 1.0  # /readyz must answer within 5 s of an outage


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class ProductionStore:
    """The `Store` of the production backend. Open it with `ProductionStore.open`."""

    def __init__(
        self,
        db: Database,
        redis: RedisClient,
        *,
        clock: Callable[[], int] | None,
        replica: Database | None = None,
    ) -> None:
        self._db = db
        self._reads = LagTolerantReads(db, replica)
        self._redis = redis
        self._replay = RedisReplayGuard(redis, now_ms=clock)
        # The directory versions ride in the replay guard's batches (one round trip a send).
        versions = RedisDirectoryVersions(redis, self._replay.batcher)
        self._devices = CachedDeviceDirectory(db, versions, now_ms=clock or _wall_ms)
        self._keys = PostgresKeyStore(db, now_ms=clock or _wall_ms)
        self._audit = PostgresKeyAudit(db, reads=self._reads)
        self._backups = PostgresBackupStore(db, reads=self._reads)
        self._messages = PostgresMessageQueue(db, reads=self._reads)
        self._data_keys = PostgresDataKeyTable(db)
        self._clear_data = PostgresClearData(db, now_ms=clock or _wall_ms)
        self._rate_limiter = RedisRateLimiter(redis, now_ms=clock)
        self._closed = False

    @classmethod
    async def open(
        cls,
        *,
        database_url: str,
        redis_url: str,
        database_read_url: str | None = None,
        redis_prefix: str = "relay:",
        redis_cluster: bool = False,
        timeout_s: float = 2.0,
        clock: Callable[[], int] | None = None,
        observe: BackendObserver | None = None,
    ) -> ProductionStore:
        """Set up both connection pools (connecting lazily). Raises Unavailable only for a
        URL the drivers cannot use.

        `clock` (ms since the epoch) is for tests: it replaces the Redis server's clock for
        replay and rate-limit expiry, and dates device removals and key events. Leave it None.
        `observe` hears the duration of every PostgreSQL and Redis call (for metrics).
        `redis_cluster`: `redis_url` names a seed node of a Redis Cluster.
        `database_read_url`: a streaming replica of `database_url`, for the reads that
        tolerate lag (storage.postgres.read_replica).
        """
        db = await Database.open(database_url, timeout_s=timeout_s, observe=observe)
        replica = None
        try:
            if database_read_url is not None:
                replica = await Database.open(
                    database_read_url,
                    timeout_s=timeout_s,
                    observe=observe,
                    backend="postgresql_replica",
                )
            redis = RedisClient(
                redis_url,
                prefix=redis_prefix,
                timeout_s=timeout_s,
                observe=observe,
                cluster=redis_cluster,
            )
        except BaseException:
            if replica is not None:
                await replica.close()
            await db.close()
            raise
        return cls(db, redis, clock=clock, replica=replica)

    @property
    def devices(self) -> CachedDeviceDirectory:
        return self._devices

    @property
    def keys(self) -> PostgresKeyStore:
        return self._keys

    @property
    def messages(self) -> PostgresMessageQueue:
        return self._messages

    @property
    def audit(self) -> PostgresKeyAudit:
        return self._audit

    @property
    def backups(self) -> PostgresBackupStore:
        return self._backups

    @property
    def data_keys(self) -> PostgresDataKeyTable:
        """The wrapped keys of encryption at rest."""
        return self._data_keys

    @property
    def clear_data(self) -> PostgresClearData:
        """What is still in the clear from before encryption at rest, and its conversion."""
        return self._clear_data

    def use_sealer(self, sealer: EnvelopeSealer) -> None:
        """Seal stored messages with `sealer` from now on, and open sealed ones with it. Made
        after the store opens: the vault reads its keys from `data_keys`."""
        self._messages.use_sealer(sealer)

    @property
    def replay(self) -> RedisReplayGuard:
        return self._replay

    @property
    def rate_limiter(self) -> RedisRateLimiter:
        return self._rate_limiter

    @property
    def database(self) -> Database:
        return self._db

    @property
    def reads(self) -> LagTolerantReads:
        """Where the reads that tolerate lag go (the replica, if any)."""
        return self._reads

    @property
    def redis(self) -> RedisClient:
        return self._redis

    async def ready(self) -> dict[str, bool]:
        """One real round trip to each, side by side, each within READY_TIMEOUT_S."""
        if self._closed:
            return {"postgresql": False, "redis": False}
        postgresql, redis = await asyncio.gather(
            self._db.ping(READY_TIMEOUT_S), self._redis.ping(READY_TIMEOUT_S)
        )
        return {"postgresql": postgresql, "redis": redis}

    async def close(self) -> None:
        """Finish the queued writes, then close both pools. Twice is fine."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._devices.close()  # before the replay guard: a touch bumps a version
            await self._messages.close()
            await self._keys.close()
            await self._replay.close()
            await self._rate_limiter.close()
        finally:
            await self._redis.close()
            await self._reads.close()
            await self._db.close()


if TYPE_CHECKING:

    def _is_a_store(store: ProductionStore) -> Store:
        """mypy checks here that ProductionStore implements every interface."""
        return store

    def _has_at_rest_tables(store: ProductionStore) -> tuple[DataKeyTable, ClearData]:
        return store.data_keys, store.clear_data
