"""The contract suite: every test runs against every storage backend.

A backend joins by adding its name to BACKENDS and a branch in `support.Backend._open_store`.
Tests reach time through `backend.clock` (a FakeClock the backend is given), and reach a
restart through `backend.open()` (a new store on the same data).

The modules of the Redis parts (REDIS_CLUSTER_MODULES) also run the production backend
against a Redis Cluster of 3 masters and 3 replicas, started once for the session on
loopback; their `redis_target` fixture gives either Redis.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from e2e.redis_cluster import RedisClusterServers, redis_cluster

from storage.interfaces import Store

from .support import SINGLE_REDIS, Backend, RedisTarget, create_database, drop_database

BACKENDS = ["embedded", "production"]
CLUSTER_BACKEND = "production-cluster"
REDIS_CLUSTER_MODULES = frozenset(
    {"test_redis", "test_replay", "test_ratelimit", "test_cluster", "test_directory_cache"}
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    in_cluster = metafunc.module.__name__.rpartition(".")[2] in REDIS_CLUSTER_MODULES
    extra = [CLUSTER_BACKEND] if in_cluster else []
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS + extra, indirect=True)
    if "production" in metafunc.fixturenames:
        metafunc.parametrize("production", ["production", *extra], indirect=True)
    if "redis_target" in metafunc.fixturenames:
        metafunc.parametrize(
            "redis_target", ["single", *(["cluster"] if in_cluster else [])], indirect=True
        )


@pytest.fixture(scope="session")
def redis_cluster_servers() -> Iterator[RedisClusterServers]:
    with redis_cluster() as servers:
        yield servers


def _target(request: pytest.FixtureRequest, cluster: bool) -> RedisTarget:
    if not cluster:
        return SINGLE_REDIS
    servers: RedisClusterServers = request.getfixturevalue("redis_cluster_servers")
    return RedisTarget(servers.url, cluster=True)


@pytest.fixture
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    return _target(request, request.param == "cluster")


@pytest.fixture
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    name = str(request.param)
    opened = Backend(name, tmp_path / "data", _target(request, name == CLUSTER_BACKEND))
    try:
        yield opened
    finally:
        await opened.close_all()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()


@pytest.fixture
async def production(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The production backend alone, for the tests of its own promises."""
    name = str(request.param)
    opened = Backend(name, tmp_path / "data", _target(request, name == CLUSTER_BACKEND))
    try:
        yield opened
    finally:
        await opened.close_all()


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    """A new PostgreSQL database with no schema, dropped afterwards."""
    name = f"relay_test_{secrets.token_hex(8)}"
    url = await create_database(name)
    try:
        yield url
    finally:
        await drop_database(name)
