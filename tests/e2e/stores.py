"""Where the relays of the end-to-end suite keep their data: the embedded store, or a fresh
PostgreSQL database and Redis key prefix of their own (production mode), dropped afterwards."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import redis

ADMIN_DSN = os.environ.get("RELAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RELAY_TEST_REDIS", "redis://127.0.0.1:6379/0")
MODES = ("embedded", "production")


_KEY_DIR = tempfile.TemporaryDirectory(prefix="relay-test-keys-")  # removed at exit


def master_key_env() -> dict[str, str]:
    """A new master key file for one production store (every node of it gets the same env):
    production mode encrypts at rest and needs one."""
    path = Path(_KEY_DIR.name) / f"{secrets.token_hex(6)}.key"
    path.write_text(secrets.token_hex(32) + "\n", encoding="ascii")
    path.chmod(0o600)
    return {"RELAY_MASTER_KEY_FILE": str(path)}


def _database_url(name: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{name}"


async def _admin_async(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _admin(sql: str) -> None:
    """Run one admin statement; from its own thread, since tests call this inside a loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _admin_async(sql)).result(timeout=60)


@contextlib.contextmanager
def empty_database() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database with no schema, dropped afterwards."""
    name = f"relay_e2e_{secrets.token_hex(6)}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(name)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_template: str | None = None
_template_lock = threading.Lock()


def _drop_at_exit(name: str) -> None:
    # Without _admin's thread: no new thread may start while the interpreter exits.
    asyncio.run(_admin_async(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _migrated_template() -> str:
    """A database `relay migrate` brought to the current schema, once per test process: each
    production store is a copy of it (CREATE DATABASE ... TEMPLATE, about 60 ms here, where
    a migration in a process of its own takes about half a second). The migrations leave
    nothing in it but their own ledger, so every copy is a store no relay has used."""
    global _template
    with _template_lock:
        if _template is None:
            name = f"relay_e2e_template_{secrets.token_hex(6)}"
            _admin(f'CREATE DATABASE "{name}"')
            atexit.register(_drop_at_exit, name)
            subprocess.run(
                [sys.executable, "-m", "relay", "migrate", "--database-url", _database_url(name)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            _template = name
        return _template


class StoreProvisioner:
    """Hands each relay the environment of its store and cleans every store up at the end.

    `redis_cluster_url` (production mode): the relays use that Redis Cluster (any seed node)
    instead of the machine's Redis, with `RELAY_REDIS_CLUSTER`."""

    def __init__(self, mode: str, *, redis_cluster_url: str | None = None) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.redis_cluster_url = redis_cluster_url
        self._databases: list[str] = []
        self._prefixes: list[str] = []

    def new_store_env(self) -> dict[str, str]:
        """Environment variables for one relay (and its restarts): its own database and prefix."""
        if self.mode == "embedded":
            return {}
        tag = secrets.token_hex(6)
        name = f"relay_e2e_{tag}"
        _admin(f'CREATE DATABASE "{name}" TEMPLATE "{_migrated_template()}"')
        self._databases.append(name)
        url = _database_url(name)
        prefix = f"relaye2e:{tag}:"
        self._prefixes.append(prefix)
        if self.redis_cluster_url is not None:
            return {
                "RELAY_DATABASE_URL": url,
                "RELAY_REDIS_URL": self.redis_cluster_url,
                "RELAY_REDIS_CLUSTER": "true",
                "RELAY_REDIS_PREFIX": prefix,
                **master_key_env(),
            }
        return {
            "RELAY_DATABASE_URL": url,
            "RELAY_REDIS_URL": REDIS_URL,
            "RELAY_REDIS_PREFIX": prefix,
            **master_key_env(),
        }

    def cleanup(self) -> None:
        for name in self._databases:
            _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self.redis_cluster_url is not None:
            cluster = redis.RedisCluster.from_url(self.redis_cluster_url)
            try:
                for prefix in self._prefixes:
                    for key in set(cluster.scan_iter(match=f"{prefix}*", count=1000)):
                        cluster.delete(key)
            finally:
                cluster.close()
            self._databases.clear()
            self._prefixes.clear()
            return
        client = redis.Redis.from_url(REDIS_URL)
        try:
            for prefix in self._prefixes:
                keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
                if keys:
                    client.delete(*keys)
        finally:
            client.close()
        self._databases.clear()
        self._prefixes.clear()
