"""The PostgreSQL backend (asyncpg): users, devices, pre-keys and stored messages.

`database` wraps asyncpg in typed functions and turns its errors into ours; `directory`,
`keys` and `messages` implement the interfaces; `data_keys` and `clear_data` are the store's
side of encryption at rest; `migrate` owns the versioned schema (the numbered SQL files in
`migrations/`).
"""

from __future__ import annotations

from storage.postgres.database import Database
from storage.postgres.directory import PostgresDeviceDirectory
from storage.postgres.messages import PostgresMessageQueue
from storage.postgres.migrate import check, latest_version, migrate
from storage.postgres.pg_keys import PostgresKeyStore

__all__ = [
    "Database",
    "PostgresDeviceDirectory",
    "PostgresKeyStore",
    "PostgresMessageQueue",
    "check",
    "latest_version",
    "migrate",
]
