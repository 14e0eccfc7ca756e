"""Helpers shared by the contract tests: a fake clock and record factories."""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster

from protocol.signatures import KeyScheme, identity_key_x25519
from storage.at_rest.master_key import LocalKeyFile
from storage.at_rest.sealing import RingSealer
from storage.at_rest.vault import DataKeyVault
from storage.embedded import EmbeddedStore
from storage.interfaces import Store
from storage.postgres.migrate import migrate
from storage.production import ProductionStore
from storage.records import Envelope, NewDevice
from storage.redis_store import RedisClient

# The services of the production backend (CI starts them; the suite never skips them).
POSTGRES_ADMIN_URL = os.environ.get(
    "RELAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("RELAY_TEST_REDIS", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True)
class RedisTarget:
    """The Redis the production backend uses in a test: the machine's single instance, or
    the Redis Cluster the session started (conftest.redis_cluster_servers)."""

    url: str
    cluster: bool = False

    def client(self, prefix: str, *, timeout_s: float = 2.0) -> RedisClient:
        return RedisClient(self.url, prefix=prefix, timeout_s=timeout_s, cluster=self.cluster)

    def raw(self) -> redis_asyncio.Redis | RedisCluster:
        """A plain redis-py client, for looking at or damaging keys behind the store."""
        if self.cluster:
            return RedisCluster.from_url(self.url)
        return redis_asyncio.Redis.from_url(self.url)


SINGLE_REDIS = RedisTarget(REDIS_URL)

START_MS = 1_700_000_000_000
DAY_MS = 86_400_000


class FakeClock:
    """Wall clock and monotonic clock that move only when told to."""

    def __init__(self) -> None:
        self.wall_ms = START_MS
        self.mono = 1_000.0

    def now_ms(self) -> int:
        return self.wall_ms

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall_ms += round(seconds * 1000)
        self.mono += seconds


def new_user() -> str:
    return str(uuid.uuid4())


def new_device(*, registration_id: int = 0, created_ms: int = START_MS) -> NewDevice:
    """A device with an identity key of its own, stored in canonical form as the relay does."""
    identity_key = b"\x05" + os.urandom(32)
    return NewDevice(
        identity_key=identity_key,
        key_scheme="xeddsa",
        identity_x25519=identity_key_x25519(KeyScheme.XEDDSA, identity_key),
        registration_id=registration_id,
        created_ms=created_ms,
    )


async def make_user(store: Store, devices: int = 1) -> str:
    """A new user with devices 1..`devices`."""
    user = new_user()
    await store.devices.create_user(user, new_device())
    for _ in range(devices - 1):
        await store.devices.add_device(user, new_device(), max_devices=127)
    return user


def envelope(
    user: str,
    device: int,
    *,
    id: bytes | None = None,
    body: bytes = b"ciphertext",
    sender_user: str = "00000000-0000-4000-8000-000000000001",
    sender_device: int = 1,
    nonce: bytes | None = None,
    expires_ms: int = START_MS + 30 * DAY_MS,
) -> Envelope:
    return Envelope(
        id=os.urandom(16) if id is None else id,
        recipient_user=user,
        recipient_device=device,
        sender_user=sender_user,
        sender_device=sender_device,
        ts=START_MS - 5,
        server_ts=START_MS,
        type=2,
        body=body,
        nonce=os.urandom(24) if nonce is None else nonce,
        expires_ms=expires_ms,
    )


async def seal_from_now(
    store: Store, backend: Backend, *, on_undecryptable: Callable[[str], None] | None = None
) -> tuple[DataKeyVault, RingSealer]:
    """A vault over `store`'s own key table (a fresh master key), and the sealer its rows
    are sealed with from now on (for a BlindedStore to see the store as the relay does)."""
    assert isinstance(store, EmbeddedStore | ProductionStore)
    vault = await DataKeyVault.open(
        store.data_keys,
        LocalKeyFile(os.urandom(32)),
        rotation_ms=7 * DAY_MS,
        now_ms=backend.clock.now_ms,
    )
    sealer = RingSealer(vault.ring, load_keys=vault.load, on_undecryptable=on_undecryptable)
    store.use_sealer(sealer)
    return vault, sealer


class Backend:
    """Opens stores of one backend on the same data; closes them all at the end."""

    def __init__(self, name: str, data_dir: Path, redis: RedisTarget = SINGLE_REDIS) -> None:
        self.name = name
        self.redis = redis
        self.clock = FakeClock()
        # The embedded guard keeps pending claims in memory; a shared one (Redis) would not.
        self.pending_claims_survive_restart = name != "embedded"
        self._data_dir = data_dir
        self._opened: list[Store] = []
        # (backend, operation) of every call the stores report to their observer hook.
        self.observed: list[tuple[str, str, float]] = []
        # Production: a fresh database and Redis prefix per test, made at the first open.
        self.database_url: str | None = None
        self.redis_prefix = f"relaytest:{secrets.token_hex(8)}:"
        self._database_name = f"relay_test_{secrets.token_hex(8)}"

    async def open(self) -> Store:
        store = await self._open_store()
        self._opened.append(store)
        return store

    async def _open_store(self) -> Store:
        if self.name == "embedded":
            return await EmbeddedStore.open(
                self._data_dir,
                now_ms=self.clock.now_ms,
                monotonic=self.clock.monotonic,
                observe=self._observe,
            )
        if self.name in ("production", "production-cluster"):
            if self.database_url is None:
                template = await asyncio.to_thread(migrated_template)
                self.database_url = await create_database(self._database_name, template=template)
            return await ProductionStore.open(
                database_url=self.database_url,
                redis_url=self.redis.url,
                redis_prefix=self.redis_prefix,
                redis_cluster=self.redis.cluster,
                clock=self.clock.now_ms,
                observe=self._observe,
            )
        raise AssertionError(f"unknown backend {self.name!r}")

    def _observe(self, backend: str, operation: str, seconds: float) -> None:
        self.observed.append((backend, operation, seconds))

    async def close_all(self) -> None:
        try:
            for store in reversed(self._opened):
                await store.close()
        finally:
            if self.name != "embedded":
                await delete_redis_prefix(self.redis_prefix, self.redis)
                if self.database_url is not None:
                    await drop_database(self._database_name)


def database_url(name: str) -> str:
    """The URL of database `name` on the test server."""
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


async def create_database(name: str, *, template: str | None = None) -> str:
    copy_of = "" if template is None else f' TEMPLATE "{template}"'
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"{copy_of}')
    finally:
        await conn.close()
    return database_url(name)


_template: str | None = None
_template_lock = threading.Lock()


def _drop_at_exit(name: str) -> None:
    asyncio.run(drop_database(name))


def migrated_template() -> str:
    """A database migrated to the current schema once per test process (in a thread of its
    own, with its own event loop): each production backend's database is a copy of it, so
    the migrations do not run again for every test. They leave nothing in it but their own
    ledger, so every copy is a store nothing has used."""
    global _template
    with _template_lock:
        if _template is None:
            name = f"relay_test_template_{secrets.token_hex(8)}"
            url = asyncio.run(create_database(name))
            atexit.register(_drop_at_exit, name)
            asyncio.run(migrate(url))
            _template = name
        return _template


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def delete_redis_prefix(prefix: str, redis: RedisTarget = SINGLE_REDIS) -> None:
    client = redis.client(prefix)
    try:
        await client.delete_prefixed()
    finally:
        await client.close()
