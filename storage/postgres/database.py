"""A typed face on asyncpg: one connection pool, and driver errors turned into ours.

asyncpg ships without complete types, so nothing outside this module touches it directly:
the stores get `Connection` (a thin typed wrapper) from `Database.connection()` or
`Database.transaction()`, and every asyncpg exception that escapes a `translated()` block
becomes `storage.errors.Unavailable` (connection lost, server down, timeout, any other
server error). Errors a store wants to interpret (a unique violation) are caught inside the
block, as `UniqueViolation` or `ForeignKeyViolation`, which this module re-exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, Final

import asyncpg

from storage.errors import StorageError, Unavailable
from storage.interfaces import BackendObserver

__all__ = [
    "Connection",
    "Database",
    "DeadlockDetected",
    "ForeignKeyViolation",
    "Row",
    "UniqueViolation",
    "is_connection_failure",
    "translated",
]

log = logging.getLogger(__name__)

MAX_POOL_SIZE: Final = 10
GENERIC_POOL_SIZE: Final = 2  # one per batched statement: each has one on the wire at a time
# A statement that joins a list of keys (unnest of arrays) to the partitioned messages table
# cannot be pruned to one partition when it is planned, so planning it covers all 16 (about
# 1.4 ms). PostgreSQL plans a prepared statement anew for each execution while that plan
# looks cheaper than its generic one, which it does for the short lists of a quiet node:
# every lookup was planned again. The generic plan of such a statement, written so that it
# reads each key by index (a nested loop: pending origins; a LATERAL subquery: queue state),
# prunes while it runs. Only for such statements: a statement's generic plan can be much
# worse than its custom one (a join and GROUP BY planned generic scanned every partition).
_GENERIC_PLANS: Final = {"plan_cache_mode": "force_generic_plan"}

# Re-exported so the stores can catch what they interpret without importing asyncpg.
UniqueViolation: type[Exception] = asyncpg.UniqueViolationError
DeadlockDetected: type[Exception] = asyncpg.DeadlockDetectedError
ForeignKeyViolation: type[Exception] = asyncpg.ForeignKeyViolationError

# A row as asyncpg returns it: indexable by position or column name.
Row = Any


@contextlib.contextmanager
def translated(what: str = "postgresql") -> Iterator[None]:
    """Turn every driver error raised in the block into Unavailable.

    Our own StorageErrors pass through; so do cancellation and programming errors of ours.
    """
    try:
        yield
    except StorageError:
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        # PostgresConnectionError, AdminShutdown, CannotConnectNow, query_canceled, ...
        raise Unavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    except (OSError, TimeoutError, EOFError) as exc:  # refused, reset, cut off, timed out
        raise Unavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


class Connection:
    """One pooled connection, typed. Obtain it from `Database`; never keep it."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, query: str, *args: object) -> str:
        return str(await self._conn.execute(query, *args))

    async def executemany(self, query: str, args: Iterable[Sequence[object]]) -> None:
        await self._conn.executemany(query, args)

    async def fetchmany(self, query: str, args: Iterable[Sequence[object]]) -> list[Row]:
        """`executemany` that returns the rows of every execution (RETURNING)."""
        return list(await self._conn.fetchmany(query, args))

    async def fetch(self, query: str, *args: object) -> list[Row]:
        return list(await self._conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: object) -> Row | None:
        return await self._conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: object) -> object:
        return await self._conn.fetchval(query, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        async with self._conn.transaction():
            yield


class Database:
    """The pools (the main one, and the small one of generic plans). `open` connects lazily:
    a server down at startup is no error yet."""

    def __init__(
        self,
        pool: Any,
        generic_pool: Any,
        *,
        timeout_s: float,
        observe: BackendObserver | None = None,
        backend: str = "postgresql",
    ) -> None:
        self._pool = pool
        self._generic_pool = generic_pool
        self.timeout_s = timeout_s
        self._observe = observe
        self._backend = backend  # the observer's name for this server ("postgresql_replica")

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        timeout_s: float = 2.0,
        max_size: int = MAX_POOL_SIZE,
        observe: BackendObserver | None = None,
        backend: str = "postgresql",
    ) -> Database:
        with translated():
            pool = await _create_pool(dsn, timeout_s, max_size, {})
            generic_pool = await _create_pool(dsn, timeout_s, GENERIC_POOL_SIZE, _GENERIC_PLANS)
        return cls(pool, generic_pool, timeout_s=timeout_s, observe=observe, backend=backend)

    @contextlib.asynccontextmanager
    async def connection(
        self, operation: str = "query", *, generic_plans: bool = False
    ) -> AsyncIterator[Connection]:
        """A pooled connection, errors translated. Released even when cancelled.

        `operation` names the call for the observer (a fixed name, never an identifier),
        which hears how long it held the connection, the pool wait included.
        `generic_plans`: from the pool of GENERIC_POOL_SIZE connections whose prepared
        statements always run their generic plan (see _GENERIC_PLANS), for a statement that
        joins a list of keys to the partitioned messages table."""
        started = time.perf_counter()
        pool = self._generic_pool if generic_plans else self._pool
        try:
            with translated():
                conn = await pool.acquire(timeout=self.timeout_s)
                try:
                    yield Connection(conn)
                finally:
                    # Shielded: a cancelled caller must not leak the connection.
                    await asyncio.shield(pool.release(conn))
        finally:
            if self._observe is not None:
                self._observe(self._backend, operation, time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def transaction(self, operation: str = "transaction") -> AsyncIterator[Connection]:
        """A pooled connection inside one transaction (committed when the block ends)."""
        async with self.connection(operation) as conn, conn.transaction():
            yield conn

    async def ping(self, timeout_s: float) -> bool:
        """One real round trip within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s), self.connection("ping") as conn:
                return await conn.fetchval("SELECT 1") == 1
        except (Unavailable, TimeoutError):
            return False

    async def expire_connections(self) -> None:
        """Replace every pooled connection at its next use: after the schema changed, the
        statements each one has prepared may name tables that are gone."""
        for pool in (self._pool, self._generic_pool):
            await pool.expire_connections()

    async def close(self) -> None:
        for pool in (self._pool, self._generic_pool):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout_s * 5):
                    await pool.close()
                continue
            pool.terminate()


async def _create_pool(dsn: str, timeout_s: float, max_size: int, settings: dict[str, str]) -> Any:
    """An asyncpg pool as the relay uses it; `settings`: server settings of its own."""
    return await asyncpg.create_pool(
        dsn,
        min_size=0,  # no connection at open: the pool connects on first use
        max_size=max_size,
        timeout=timeout_s,  # connect timeout
        command_timeout=timeout_s * 5,  # a statement; group commits may be large
        max_inactive_connection_lifetime=300.0,
        reset=_keep_session,
        # Explicit: a store() returns only once its commit is flushed to disk.
        server_settings={"synchronous_commit": "on", "application_name": "relay", **settings},
    )


async def _keep_session(conn: Any) -> None:
    """The pool's reset on release: nothing to send (asyncpg rolls back an open transaction
    before calling it).

    The default reset is a round trip per release (`pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`), which costs as much as the query the connection was taken for.
    Pooled connections never leave session state behind: advisory locks are transaction
    locks (`pg_advisory_xact_lock`; the migrator's session lock is on a connection of its
    own), cursors live inside transactions, nothing LISTENs, nothing runs SET outside a
    transaction."""


def is_connection_failure(exc: BaseException) -> bool:
    """True when `exc` (an Unavailable, or what caused it) means the server is out of reach,
    as opposed to one statement being refused."""
    cause = exc.__cause__ if isinstance(exc, Unavailable) else exc
    return isinstance(
        cause,
        (
            OSError,
            TimeoutError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError,
            asyncpg.AdminShutdownError,
        ),
    )
