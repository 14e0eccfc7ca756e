"""A read replica (`database_read_url`): a real streaming replica of a private PostgreSQL
cluster (pg_basebackup -R) serves the reads that tolerate lag (the stored-messages gauge,
`relay audit`), while the paths a client depends on read the primary. With its WAL replay
paused, the replica's figures stay behind and the client's are right; with the replica
stopped, the relay keeps serving and those reads fall back to the primary. And the
failover of docs/deployment.md: the primary gone, the relay answers unavailable; the
replica promoted and the relay pointed at it, every acknowledged message is there."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from storage.postgres.migrate import latest_version

from .commands import arun_relay
from .stores import REDIS_URL, master_key_env
from .support import RelayProcess, link_device, new_user, offline_user, stop_relays, wait_until
from .test_metrics import scrape
from .throwaway import MachineStores, PgCluster, migrate

GAUGE_S = 30.0  # the gauge is refreshed every 5 s
COUNT_METRIC = "relay_backend_call_duration_seconds_count"


@pytest.fixture
def machine() -> Iterator[MachineStores]:
    stores = MachineStores()
    yield stores
    stores.cleanup()


@pytest.fixture
def clusters() -> Iterator[list[PgCluster]]:
    made: list[PgCluster] = []
    yield made
    for cluster in made:
        cluster.destroy()


async def _fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def _schema_version(url: str) -> int:
    version = await _fetchval(
        url,
        "SELECT CASE WHEN to_regclass('schema_migrations') IS NULL THEN 0"
        " ELSE (SELECT COALESCE(max(version), 0) FROM schema_migrations) END",
    )
    assert isinstance(version, int)
    return version


async def _gauge(relay: RelayProcess) -> float:
    return (await scrape(relay)).value("relay_stored_messages")


async def _counts_taken(relay: RelayProcess, backend: str) -> float:
    """How many stored-message counts `backend` (postgresql, postgresql_replica) served."""
    return (await scrape(relay)).value(COUNT_METRIC, backend=backend, operation="stored_count")


async def _audit_kinds(user: str, env: dict[str, str]) -> list[str]:
    result = await arun_relay(["audit", user, "--json"], env)
    assert result.code == 0, result.stderr
    return [event["kind"] for event in orjson.loads(result.stdout)["events"]]


async def test_lag_tolerant_reads_go_to_the_replica_and_fall_back_to_the_primary(
    tmp_path: Path, machine: MachineStores, clusters: list[PgCluster]
) -> None:
    primary = PgCluster()
    clusters.append(primary)
    await asyncio.to_thread(primary.init)
    await asyncio.to_thread(primary.start)
    replica = await asyncio.to_thread(primary.streaming_replica)
    clusters.append(replica)
    await asyncio.to_thread(replica.start)
    assert await _fetchval(replica.url, "SELECT pg_is_in_recovery()") is True
    await asyncio.to_thread(migrate, primary.url)
    await wait_until(
        lambda: _schema_version_is(replica.url, latest_version()),
        30,
        "the replica replays the migration",
    )

    store_env = {
        "RELAY_DATABASE_URL": primary.url,
        "RELAY_REDIS_URL": REDIS_URL,
        "RELAY_REDIS_PREFIX": machine.new_prefix(),
        **master_key_env(),
    }
    read_env = {**store_env, "RELAY_DATABASE_READ_URL": replica.url}
    relay = RelayProcess(tmp_path / "relay", {}, env=read_env)
    relays = [relay]
    try:
        relay.start()
        sender = await new_user(relay.url)
        [receiver] = await offline_user(relay.url)
        for i in range(3):
            answer = await sender.send_message(receiver, body=f"before {i}".encode())
            assert answer["t"] == "ok" and answer["stored"] == [1], answer
        await wait_until(lambda: _equals(_gauge(relay), 3), GAUGE_S, "the gauge reads 3")
        assert await _audit_kinds(sender.user, read_env) == ["register"]

        # Replay paused: what the primary commits from now on is not on the replica.
        await _fetchval(replica.url, "SELECT pg_wal_replay_pause()")
        await wait_until(
            lambda: _equals(
                _fetchval(replica.url, "SELECT pg_get_wal_replay_pause_state()"), "paused"
            ),
            30,
            "replay paused",
        )
        for i in range(2):
            answer = await sender.send_message(receiver, body=f"during {i}".encode())
            assert answer["t"] == "ok" and answer["stored"] == [1], answer
        await link_device(sender)  # an add_device event, on the primary only
        assert await _fetchval(primary.url, "SELECT count(*) FROM messages") == 5
        # Two more refreshes of the gauge, both served by the paused replica: still 3.
        taken = await _counts_taken(relay, "postgresql_replica")
        await wait_until(
            lambda: _at_least(_counts_taken(relay, "postgresql_replica"), taken + 2),
            GAUGE_S,
            "two gauge refreshes",
        )
        assert await _counts_taken(relay, "postgresql") == 0  # none on the primary
        assert await _gauge(relay) == 3
        assert await _audit_kinds(sender.user, read_env) == ["register"]  # the replica's
        assert await _audit_kinds(sender.user, store_env) == ["register", "add_device"]
        # The client's paths read the primary: all five are queued and delivered.
        auth = await receiver.auth()
        assert auth["queued"] == 5, auth
        bodies = [frame["body"] for frame in await receiver.drain(ack=True)]
        assert bodies == [f"before {i}".encode() for i in range(3)] + [
            f"during {i}".encode() for i in range(2)
        ]
        await receiver.close()

        # Replay resumed: the replica catches up, the gauge with it.
        await _fetchval(replica.url, "SELECT pg_wal_replay_resume()")
        await wait_until(lambda: _equals(_gauge(relay), 0), GAUGE_S, "the gauge reads 0")
        assert await _audit_kinds(sender.user, read_env) == ["register", "add_device"]

        # Replica down: the relay keeps serving; those reads go to the primary.
        await asyncio.to_thread(replica.stop, "fast")
        answer = await sender.send_message(receiver, body=b"replica down")
        assert answer["t"] == "ok" and answer["stored"] == [1], answer
        await wait_until(lambda: _equals(_gauge(relay), 1), GAUGE_S, "the gauge reads 1")
        assert await _counts_taken(relay, "postgresql") >= 1  # the primary's count
        status, _, _ = await relay.ahttp_get("/readyz")
        assert status == 200
        assert "read replica failed" in relay.stderr_tail(200)
        assert await _audit_kinds(sender.user, read_env) == ["register", "add_device"]
        auth = await receiver.auth()
        assert auth["queued"] == 1, auth
        await sender.close()
        await receiver.close()
    finally:
        problems = stop_relays(relays)
    assert problems == []


async def _caught_up(primary: str, replica: str) -> None:
    """Until the replica has replayed everything the primary had written by now."""
    lsn = await _fetchval(primary, "SELECT pg_current_wal_lsn()::text")

    async def replayed() -> bool:
        behind = await _fetchval(
            replica, f"SELECT pg_wal_lsn_diff('{lsn}', pg_last_wal_replay_lsn()) > 0"
        )
        return behind is False

    await wait_until(replayed, 30, "the replica replays the primary's WAL")


@pytest.mark.parametrize("how", ["new-url", "same-address"])
async def test_failover_to_a_promoted_replica(
    tmp_path: Path, machine: MachineStores, clusters: list[PgCluster], how: str
) -> None:
    primary = PgCluster()
    clusters.append(primary)
    await asyncio.to_thread(primary.init)
    await asyncio.to_thread(primary.start)
    await asyncio.to_thread(migrate, primary.url)
    replica = await asyncio.to_thread(primary.streaming_replica)
    clusters.append(replica)
    await asyncio.to_thread(replica.start)

    store_env = {
        "RELAY_REDIS_URL": REDIS_URL,
        "RELAY_REDIS_PREFIX": machine.new_prefix(),
        **master_key_env(),
    }
    before = RelayProcess(
        tmp_path / "before",
        {"backend_timeout": 1},
        env={**store_env, "RELAY_DATABASE_URL": primary.url},
    )
    relays = [before]
    try:
        before.start()
        sender = await new_user(before.url)
        [receiver] = await offline_user(before.url)
        for i in range(4):
            answer = await sender.send_message(receiver, body=f"stored {i}".encode())
            assert answer["t"] == "ok" and answer["stored"] == [1], answer
        await _caught_up(primary.url, replica.url)

        # The primary goes away: the relay answers unavailable and says it is not ready.
        await asyncio.to_thread(primary.stop, "fast")
        answer = await sender.send_message(receiver, body=b"refused", timeout=30)
        assert answer["t"] == "error" and answer["code"] == "unavailable", answer
        status, _, _ = await before.ahttp_get("/readyz")
        assert status == 503
        await sender.close()

        # Promoted. "new-url": the relay restarted with database_url naming it, through
        # the schema guard. "same-address": it takes over the old primary's address (a
        # DNS name or virtual IP that moves), and the running relay recovers by itself.
        await asyncio.to_thread(replica.promote)
        assert await _fetchval(replica.url, "SELECT pg_is_in_recovery()") is False
        if how == "new-url":
            assert stop_relays(relays) == []
            after = RelayProcess(
                tmp_path / "after", {}, env={**store_env, "RELAY_DATABASE_URL": replica.url}
            )
            relays = [after]
            after.start()
        else:
            await asyncio.to_thread(replica.stop, "fast")
            replica.port = primary.port
            await asyncio.to_thread(replica.start)
            after = before
        await wait_until(lambda: _ready(after), 30, "the relay ready on the new primary")
        receiver.url = after.url
        auth = await receiver.auth()
        assert auth["queued"] == 4, auth
        bodies = [frame["body"] for frame in await receiver.drain(ack=True)]
        assert bodies == [f"stored {i}".encode() for i in range(4)]
        sender.url = after.url
        await sender.auth()
        await receiver.close()
        answer = await sender.send_message(receiver, body=b"after the failover")
        assert answer["t"] == "ok" and answer["stored"] == [1], answer
        await sender.close()
    finally:
        problems = stop_relays(relays)
    assert problems == []


async def _ready(relay: RelayProcess) -> bool:
    status, _, _ = await relay.ahttp_get("/readyz")
    return status == 200


async def _schema_version_is(url: str, wanted: int) -> bool:
    try:
        return await _schema_version(url) == wanted
    except (OSError, asyncpg.PostgresError):
        return False


async def _equals(value: Awaitable[object], wanted: object) -> bool:
    return await value == wanted


async def _at_least(value: Awaitable[float], wanted: float) -> bool:
    return await value >= wanted
