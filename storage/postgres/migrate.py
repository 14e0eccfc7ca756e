"""Versioned schema migrations for the PostgreSQL store (what `relay migrate` calls).

Migrations are numbered SQL files in `migrations/`: `NNNN_name.up.sql` brings the schema
from version NNNN-1 to NNNN, `NNNN_name.down.sql` takes it back. The versions applied are
rows of `schema_migrations`. Each step runs in its own transaction together with its
bookkeeping row, so a failed step leaves the schema at the previous version; a session
advisory lock makes two migrators (two nodes starting at once) take turns.
`schema_version` and `read_version` read the applied version alone, cheaply, for the
relay's schema guard (relay.schemaguard).
"""

from __future__ import annotations

import importlib.resources
import secrets
from dataclasses import dataclass
from typing import Any, Final, Protocol

import asyncpg

from storage.errors import StorageError, Unavailable
from storage.postgres.database import translated

__all__ = [
    "LOCK_KEY",
    "Migration",
    "SchemaTooNew",
    "check",
    "latest_version",
    "migrate",
    "migrations",
    "read_version",
    "schema_version",
]

# pg_advisory_lock key of the migrator: "relay" + "migr" as hex, any fixed number works.
# Public so that a test can hold it.
LOCK_KEY: Final = 0x72656C61796D6967

_CREATE_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class SchemaTooNew(StorageError):
    """The database holds a schema version that no migration file of this code knows."""

    def __init__(self, live: int, known: int) -> None:
        super().__init__(f"schema version {live} is newer than this relay knows ({known})")
        self.live = live
        self.known = known


class _Queries(Protocol):
    """A raw asyncpg connection or a pooled `Connection`: both answer fetchval."""

    async def fetchval(self, query: str, *args: object) -> object: ...


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    up: str
    down: str


def migrations() -> list[Migration]:
    """Every migration of the package, in version order. Raises RuntimeError when the
    files are not numbered 1..n or a version lacks its up or down file."""
    folder = importlib.resources.files("storage.postgres").joinpath("migrations")
    found: dict[tuple[int, str], dict[str, str]] = {}
    for entry in folder.iterdir():
        name = entry.name
        for direction in ("up", "down"):
            suffix = f".{direction}.sql"
            if name.endswith(suffix):
                number, _, title = name.removesuffix(suffix).partition("_")
                found.setdefault((int(number), title), {})[direction] = entry.read_text("utf-8")
    result = []
    for (version, title), scripts in sorted(found.items()):
        if set(scripts) != {"up", "down"}:
            raise RuntimeError(f"migration {version:04d}_{title} lacks an up or down file")
        result.append(Migration(version, f"{version:04d}_{title}", scripts["up"], scripts["down"]))
    if [m.version for m in result] != list(range(1, len(result) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n: {[m.version for m in result]}")
    return result


def latest_version() -> int:
    return len(migrations())


async def migrate(dsn: str, *, to: int | None = None) -> list[str]:
    """Bring the schema to version `to` (default: the latest), up or down. Returns the
    steps taken, e.g. ["up 0001_initial"]; [] when already there. Raises Unavailable
    (server unreachable or a step failed), SchemaTooNew (the database is at a version
    this code has no file for) or ValueError (no such version)."""
    steps = migrations()
    target = len(steps) if to is None else to
    if not 0 <= target <= len(steps):
        raise ValueError(f"no schema version {target}: versions are 0..{len(steps)}")
    done: list[str] = []
    conn = await _connect(dsn)
    try:
        with translated("migrate"):
            await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
            try:
                await conn.execute(_CREATE_BOOKKEEPING)
                current = await read_version(conn)
                if current > len(steps):
                    raise SchemaTooNew(current, len(steps))
                for step in steps[current:target]:
                    async with conn.transaction():
                        await conn.execute(step.up)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                            step.version,
                            step.name,
                        )
                    done.append(f"up {step.name}")
                for step in reversed(steps[target:current]):
                    async with conn.transaction():
                        # A down step may ask where the run ends (0: the whole schema goes,
                        # so nothing it would refuse to leave unreadable is kept).
                        await conn.execute(
                            "SELECT set_config('relay.migrate_target', $1, true)", str(target)
                        )
                        await conn.execute(step.down)
                        await conn.execute(
                            "DELETE FROM schema_migrations WHERE version = $1", step.version
                        )
                    done.append(f"down {step.name}")
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()
    return done


async def check(dsn: str) -> tuple[bool, str]:
    """Whether the live schema matches the migration files: the applied version is the
    latest, and every table and column the migrations create exists with its type.
    The message says what differs. Raises Unavailable when the server is unreachable."""
    steps = migrations()
    conn = await _connect(dsn)
    try:
        with translated("check"):
            current = await read_version(conn)
            expected = await _expected_columns(conn, steps)
            live = await _columns(conn, "current_schema()")
    finally:
        await conn.close()
    problems = []
    if current != len(steps):
        problems.append(f"schema version is {current}, the latest is {len(steps)}")
    for table, columns in sorted(expected.items()):
        if table not in live:
            problems.append(f"table {table} is missing")
            continue
        for column, data_type in sorted(columns.items()):
            found = live[table].get(column)
            if found is None:
                problems.append(f"column {table}.{column} is missing")
            elif found != data_type:
                problems.append(f"column {table}.{column} is {found}, expected {data_type}")
    if problems:
        return False, "; ".join(problems)
    return True, f"schema version {current} is the latest and matches the migration files"


async def schema_version(dsn: str, *, timeout_s: float) -> int:
    """The applied schema version (0 when nothing was ever migrated), over one connection
    made within `timeout_s`. Raises Unavailable when the server does not answer."""
    conn = await _connect(dsn, timeout_s=timeout_s)
    try:
        with translated("schema version"):
            return await read_version(conn)
    finally:
        await conn.close()


async def read_version(conn: _Queries) -> int:
    """The applied schema version on an open connection: 0 without a bookkeeping table.
    Two index-only reads, cheap enough for a readiness probe."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
        return 0
    version = await conn.fetchval("SELECT COALESCE(max(version), 0) FROM schema_migrations")
    if not isinstance(version, int):
        raise Unavailable(f"schema_migrations holds a version that is not a number: {version!r}")
    return version


async def _connect(dsn: str, *, timeout_s: float = 10.0) -> Any:
    with translated("connect"):
        return await asyncpg.connect(dsn, timeout=timeout_s)


async def _columns(conn: Any, schema: str) -> dict[str, dict[str, str]]:
    """{table: {column: data type}} of the base tables of one schema."""
    rows = await conn.fetch(
        "SELECT c.table_name, c.column_name, c.data_type"
        " FROM information_schema.columns c JOIN information_schema.tables t"
        " ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
        f" WHERE c.table_schema = {schema} AND t.table_type = 'BASE TABLE'"
    )
    tables: dict[str, dict[str, str]] = {}
    for row in rows:
        tables.setdefault(str(row["table_name"]), {})[str(row["column_name"])] = str(
            row["data_type"]
        )
    return tables


async def _expected_columns(conn: Any, steps: list[Migration]) -> dict[str, dict[str, str]]:
    """What the migration files create, found by running them in a scratch schema inside
    a transaction that is rolled back: the files are the one source of truth."""
    scratch = f"relay_check_{secrets.token_hex(6)}"
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(f"CREATE SCHEMA {scratch}")
        await conn.execute(f"SET LOCAL search_path = {scratch}")
        for step in steps:
            await conn.execute(step.up)
        expected = await _columns(conn, f"'{scratch}'")
    finally:
        await tx.rollback()
    return expected
