"""The production store's cached device lists: each node's copy is checked against the
user's version in Redis at every read, so a change made on another node is seen at once,
and a read of a current copy costs no PostgreSQL round trip."""

from __future__ import annotations

import asyncio
import secrets
import time

import asyncpg
import pytest

from storage.errors import Unavailable
from storage.production import ProductionStore
from storage.records import ReplayScope
from storage.redis_store.versions import RedisDirectoryVersions

from .support import START_MS, Backend, make_user, new_device

WAIT_S = 5.0


async def two_nodes(backend: Backend) -> tuple[ProductionStore, ProductionStore]:
    first, second = await backend.open(), await backend.open()
    assert isinstance(first, ProductionStore) and isinstance(second, ProductionStore)
    return first, second


async def listed(store: ProductionStore, user: str) -> list[int]:
    devices = await store.devices.list_devices(user)
    assert devices is not None
    return [d.device for d in devices]


async def test_a_device_removed_on_one_node_is_refused_by_another_at_once(
    production: Backend,
) -> None:
    a, b = await two_nodes(production)
    user = await make_user(a, devices=2)
    assert await listed(a, user) == [1, 2]
    assert await listed(a, user) == [1, 2]
    assert a.devices.hits == 1  # the second read was answered from the copy
    assert await b.devices.remove_device(user, 2)
    assert await listed(a, user) == [1]


async def test_a_device_added_or_touched_on_another_node_is_seen_at_once(
    production: Backend,
) -> None:
    a, b = await two_nodes(production)
    user = await make_user(a)
    assert await listed(a, user) == [1]
    await b.devices.add_device(user, new_device(), max_devices=6)
    assert await listed(a, user) == [1, 2]
    await b.devices.touch(user, 2, START_MS + 5_000)
    devices = await a.devices.list_devices(user)
    assert devices is not None and devices[1].last_seen_ms == START_MS + 5_000


async def test_touches_of_one_turn_share_one_statement(production: Backend) -> None:
    a, _ = await two_nodes(production)
    users = [await make_user(a) for _ in range(30)]
    stored = a.devices.stored
    before = stored.last_seen.statements
    await asyncio.gather(*(a.devices.touch(u, 1, START_MS + 9_000) for u in users))
    assert stored.last_seen.statements - before == 1
    for user in users:
        device = await a.devices.get_device(user, 1)
        assert device is not None and device.last_seen_ms == START_MS + 9_000


async def test_a_touch_statement_locks_its_rows_in_key_order(production: Backend) -> None:
    """Touches of one turn lock their rows in key order, whatever order they were made in:
    two nodes touching the same devices in different orders then wait for each other
    instead of deadlocking (PostgreSQL would abort one, and a handshake would fail).

    A row in the middle is held by another transaction: the statement waits there holding
    the rows before it in key order and none after it."""
    a, _ = await two_nodes(production)
    made = [await make_user(a) for _ in range(9)]
    assert production.database_url is not None
    holder = await asyncpg.connect(production.database_url)
    probe = await asyncpg.connect(production.database_url)
    try:
        in_key_order = [
            str(r["user_id"])
            for r in await probe.fetch(
                "SELECT user_id FROM devices WHERE user_id = ANY($1::text[]) ORDER BY user_id",
                made,
            )
        ]
        held = in_key_order[4]
        holding = holder.transaction()
        await holding.start()
        await holder.execute(
            "SELECT 1 FROM devices WHERE user_id = $1 AND device = 1 FOR UPDATE", held
        )
        touching = asyncio.gather(
            *(a.devices.touch(u, 1, START_MS + 9_000) for u in reversed(in_key_order))
        )
        await _until_a_statement_waits_for_a_lock(probe)
        locked = await _locked(
            probe,
            "SELECT 1 FROM devices WHERE user_id = $1 AND device = 1 FOR NO KEY UPDATE NOWAIT",
            in_key_order,
        )
        assert locked == [True] * 5 + [False] * 4
        await holding.rollback()
        await asyncio.wait_for(touching, WAIT_S)
        for user in made:
            device = await a.devices.get_device(user, 1)
            assert device is not None and device.last_seen_ms == START_MS + 9_000
    finally:
        await holder.close()
        await probe.close()


async def test_a_read_waits_for_a_change_in_progress(production: Backend) -> None:
    """A change bumps the version before it commits; a read that sees the new version must
    not cache the rows as they were before that commit."""
    a, b = await two_nodes(production)
    user = await make_user(a, devices=2)
    assert production.database_url is not None
    conn = await asyncpg.connect(production.database_url)
    try:
        removal = conn.transaction()
        await removal.start()
        # What remove_device does on node B, stopped before its commit.
        await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR NO KEY UPDATE", user)
        await conn.execute(
            "UPDATE devices SET removed_ms = 1 WHERE user_id = $1 AND device = 2", user
        )
        await RedisDirectoryVersions(b.redis, b.replay.batcher).bump(user)
        reading = asyncio.create_task(listed(a, user))
        await _until_a_statement_waits_for_a_lock(conn)
        assert not reading.done()
        await removal.commit()
        assert await asyncio.wait_for(reading, WAIT_S) == [1]
        assert await listed(a, user) == [1]
    finally:
        await conn.close()


async def test_a_lost_version_never_matches_an_old_copy(production: Backend) -> None:
    a, _ = await two_nodes(production)
    user = await make_user(a, devices=2)
    assert await listed(a, user) == [1, 2]
    client = production.redis.raw()
    try:
        # Redis loses the version (restart, eviction); the rows change meanwhile.
        assert await client.delete(a.redis.key("dirversion", user, tag=user)) == 1
    finally:
        await client.aclose()
    assert production.database_url is not None
    conn = await asyncpg.connect(production.database_url)
    try:
        await conn.execute(
            "UPDATE devices SET removed_ms = 1 WHERE user_id = $1 AND device = 2", user
        )
    finally:
        await conn.close()
    assert await listed(a, user) == [1]


async def test_a_current_copy_costs_no_postgresql_and_shares_the_claims_round_trip(
    production: Backend,
) -> None:
    a, _ = await two_nodes(production)
    user = await make_user(a, devices=2)
    await listed(a, user)
    production.observed.clear()
    trips = a.redis.round_trips
    scope = ReplayScope("sender", 1, user)
    claimed, devices = await asyncio.gather(
        a.replay.claim(scope, secrets.token_bytes(16), b"m" * 16, pending_ttl_s=5),
        a.devices.list_devices(user),
    )
    assert claimed is None
    assert devices is not None and [d.device for d in devices] == [1, 2]
    assert a.redis.round_trips == trips + 1
    assert [op for backend, op, _ in production.observed if backend == "postgresql"] == []


async def test_concurrent_misses_share_one_postgresql_read(production: Backend) -> None:
    a, b = await two_nodes(production)
    user = await make_user(b, devices=3)
    production.observed.clear()
    lists = await asyncio.gather(*(listed(a, user) for _ in range(20)))
    assert lists == [[1, 2, 3]] * 20
    reads = [op for name, op, _ in production.observed if name == "postgresql"]
    assert reads == ["list_devices"]
    assert (a.devices.hits, a.devices.misses) == (0, 20)


async def test_misses_of_many_users_in_one_turn_share_one_batch(production: Backend) -> None:
    """A burst of first reads (new users, a node started cold) costs one batch of two
    statements, not a pool checkout per user, and each user gets its own list."""
    a, b = await two_nodes(production)
    users = [await make_user(b, devices=1 + n % 3) for n in range(30)]
    assert await b.devices.remove_device(users[1], 2)
    unknown = "not-yet-" + secrets.token_hex(4)
    stored = a.devices.stored
    before = stored.settled_lists.batches
    production.observed.clear()
    lists = await asyncio.gather(*(a.devices.list_devices(u) for u in [*users, unknown]))
    # The misses wait for the users' versions first: one Redis answers them in one turn; a
    # cluster answers each hash slot's apart, over a few turns, and the misses that come
    # while a batch is on the wire go in the next one.
    batches = stored.settled_lists.batches - before
    if production.redis.cluster:
        assert 1 <= batches <= len(users) // 2
    else:
        assert batches == 1
    reads = [op for name, op, _ in production.observed if name == "postgresql"]
    assert reads == ["list_devices"] * batches
    assert lists[-1] is None
    expected = [list(range(1, 2 + n % 3)) for n in range(30)]
    expected[1] = [1]
    assert [[d.device for d in found or ()] for found in lists[:-1]] == expected
    assert all(d.user == u for u, found in zip(users, lists, strict=False) for d in found or ())


async def test_a_batch_of_reads_waits_for_changes_in_user_order(production: Backend) -> None:
    """The batch takes its users' row locks in user order: waiting for one change in
    progress, it holds the users before it and none after it (two batches, or a batch and a
    change, then wait for each other instead of deadlocking)."""
    a, b = await two_nodes(production)
    users = sorted([await make_user(b) for _ in range(9)])
    held = users[4]
    assert production.database_url is not None
    holder = await asyncpg.connect(production.database_url)
    probe = await asyncpg.connect(production.database_url)
    try:
        change = holder.transaction()
        await change.start()
        # What add_device and remove_device take first, held.
        await holder.execute("SELECT 1 FROM users WHERE user_id = $1 FOR NO KEY UPDATE", held)
        settled = a.devices.stored.list_devices_settled  # below the versions: one batch
        reading = asyncio.gather(*(settled(u) for u in reversed(users)))
        await _until_a_statement_waits_for_a_lock(probe)
        locked = await _locked(
            probe, "SELECT 1 FROM users WHERE user_id = $1 FOR NO KEY UPDATE NOWAIT", users
        )
        assert locked == [True] * 5 + [False] * 4
        await change.rollback()
        lists = await asyncio.wait_for(reading, WAIT_S)
        assert [[d.device for d in found or ()] for found in lists] == [[1]] * 9
    finally:
        await holder.close()
        await probe.close()


async def test_unknown_users_are_not_cached(production: Backend) -> None:
    a, b = await two_nodes(production)
    user = "not-yet-" + secrets.token_hex(4)
    assert await a.devices.list_devices(user) is None
    await b.devices.create_user(user, new_device())
    assert await listed(a, user) == [1]


async def test_with_redis_unreachable_lists_come_from_postgresql_and_changes_roll_back(
    production: Backend,
) -> None:
    a = await production.open()
    user = await make_user(a, devices=2)
    assert production.database_url is not None
    cut_off = await ProductionStore.open(
        database_url=production.database_url,
        redis_url="redis://127.0.0.1:1/0",
        redis_prefix=production.redis_prefix,
        redis_cluster=production.redis.cluster,
        timeout_s=0.5,
    )
    try:
        assert await listed(cut_off, user) == [1, 2]
        assert (cut_off.devices.hits, cut_off.devices.misses) == (0, 1)
        with pytest.raises(Unavailable):
            await cut_off.devices.remove_device(user, 2)  # its version cannot be bumped
        assert await listed(cut_off, user) == [1, 2]  # so the removal was rolled back
    finally:
        await cut_off.close()


async def _locked(probe: asyncpg.Connection, nowait: str, users: list[str]) -> list[bool]:
    """For each user, whether `nowait` (a `... NOWAIT` lock of that user's row) finds the row
    locked by another transaction."""
    locked = []
    for user in users:
        try:
            async with probe.transaction():
                await probe.execute(nowait, user)
            locked.append(False)
        except asyncpg.LockNotAvailableError:
            locked.append(True)
    return locked


async def _until_a_statement_waits_for_a_lock(conn: asyncpg.Connection) -> None:
    """Until another backend of this database waits on a lock (the read): each check is a
    server round trip, within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            return
    raise AssertionError("the read never waited for the change's lock")
