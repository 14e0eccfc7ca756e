"""The schema guard of production mode: `relay serve` on a PostgreSQL schema older or newer than
its migrations exits 2 with one line, `--migrate` (or RELAY_MIGRATE) migrates first, several
nodes migrating at once do it once, and a schema changed under a running relay makes /readyz
answer 503 until it is migrated back. The embedded store still migrates itself.

Every test gets fresh PostgreSQL databases of its own (dropped afterwards) and real relay
processes; the commands are the real `relay` command line.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from storage.postgres.migrate import LOCK_KEY, latest_version, migrations

from .commands import Result, arun_relay, run_relay
from .stores import REDIS_URL, master_key_env
from .support import RelayProcess, new_user, offline_user, stop_relays, wait_until
from .throwaway import MachineStores, PgCluster, free_port, migrate

LATEST = latest_version()
APPLIED = [(m.version, m.name) for m in migrations()]  # every migration, in order
UP_ALL = ", ".join(f"up {m.name}" for m in migrations())
DOWN_ALL = [f"down {m.name}" for m in reversed(migrations())]
START_LIMIT_S = 5.0  # a refused start must say so within this
READY_CHANGE_S = 20.0  # the probe re-reads the schema every 5 s; generous for a busy machine


@pytest.fixture
def machine() -> Iterator[MachineStores]:
    stores = MachineStores()
    yield stores
    stores.cleanup()


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    problems = stop_relays(started)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
async def admin() -> AsyncIterator[Any]:
    """A connection to the machine's PostgreSQL server, for reading test databases."""
    from .stores import ADMIN_DSN

    conn = await asyncpg.connect(ADMIN_DSN)
    yield conn
    await conn.close()


def relay_process(
    tmp_path: Path, relays: list[RelayProcess], env: dict[str, str], **options: Any
) -> RelayProcess:
    r = RelayProcess(tmp_path / f"relay-{len(relays)}", options, env=env)
    relays.append(r)
    return r


async def serve_refused(env: dict[str, str], *args: str) -> tuple[Result, float]:
    """`relay serve` that is expected to exit by itself; its result and how long it ran."""
    started = time.monotonic()
    result = await asyncio.to_thread(run_relay, ["serve", "--port", "0", *args], env, None, 30.0)
    return result, time.monotonic() - started


async def applied_migrations(url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [(row["version"], row["name"]) for row in rows]


async def readyz(r: RelayProcess) -> tuple[int, dict[str, Any]]:
    status, _, body = await r.ahttp_get("/readyz")
    return status, json.loads(body)


# --------------------------------------------------------------------------- at start


async def test_unmigrated_database_stops_serve_with_the_command_to_run(machine, tmp_path, relays):
    env = machine.env(migrated=False)
    url = env["RELAY_DATABASE_URL"]
    with_password = url.replace("postgres@", "postgres:pg-s3cret@", 1)
    assert with_password != url
    env["RELAY_DATABASE_URL"] = with_password

    result, took = await serve_refused(env)
    assert result.code == 2, result
    assert took < START_LIMIT_S, f"refused only after {took:.1f}s"
    [line] = result.stderr.splitlines()
    assert line.startswith("relay: "), line
    assert f"version 0, this relay needs version {LATEST}" in line
    assert "pg-s3cret" not in line and "postgres:***@" in line
    assert "--migrate" in line
    assert "serving on" not in result.stdout

    # The line's command, the password put back, is what the operator runs; then serve starts.
    command = re.search(r"`(relay migrate [^`]+)`", line)
    assert command is not None, line
    argv = [arg.replace("***", "pg-s3cret") for arg in shlex.split(command.group(1))]
    assert argv[:3] == ["relay", "migrate", "--database-url"]
    migrated = await arun_relay(argv[1:])
    assert migrated.code == 0, migrated
    r = await relay_process(tmp_path, relays, env).astart()
    status, body = await readyz(r)
    assert status == 200 and body["schema"] == {"version": LATEST, "expected": LATEST}, body


@pytest.mark.parametrize("migrate", [False, True], ids=["plain", "with-migrate"])
async def test_schema_newer_than_the_relay_stops_serve(machine, migrate):
    env = machine.env()
    ahead = LATEST + 1
    conn = await asyncpg.connect(env["RELAY_DATABASE_URL"])
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            ahead,
            f"{ahead:04d}_from_a_newer_release",
        )
    finally:
        await conn.close()

    result, took = await serve_refused(env, *(["--migrate"] if migrate else []))
    assert result.code == 2, result
    assert took < START_LIMIT_S, f"refused only after {took:.1f}s"
    [line] = result.stderr.splitlines()
    assert f"at version {ahead}, this relay knows versions up to {LATEST}" in line, line
    assert "the relay is older than the schema" in line
    assert await applied_migrations(env["RELAY_DATABASE_URL"]) == [
        *APPLIED,
        (ahead, f"{ahead:04d}_from_a_newer_release"),
    ], "the guard must not touch a newer schema"


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_migrate_at_start_then_serve(machine, tmp_path, relays, how):
    env = machine.env(migrated=False)
    if how == "flag":
        r = relay_process(tmp_path, relays, env, migrate=True)
    else:
        r = relay_process(tmp_path, relays, {**env, "RELAY_MIGRATE": "1"})
    await r.astart()
    assert await applied_migrations(env["RELAY_DATABASE_URL"]) == APPLIED
    assert f"schema migrated to version {LATEST}: {UP_ALL}" in r.stderr_tail()
    alice = await new_user(r.url)
    await alice.sync()
    await alice.close()
    status, body = await readyz(r)
    assert status == 200, body
    assert body["schema"] == {"version": LATEST, "expected": LATEST} and body["problems"] == []
    check = await arun_relay(["migrate", "--check", "--database-url", env["RELAY_DATABASE_URL"]])
    assert check.code == 0, check


async def test_two_nodes_migrating_at_once_migrate_once(machine, tmp_path, relays, admin):
    env = machine.env(migrated=False)
    url = env["RELAY_DATABASE_URL"]
    database = url.rpartition("/")[2]
    nodes = [
        relay_process(tmp_path, relays, env, migrate=True, node_id=name) for name in ("a", "b")
    ]
    # Hold the migrators' lock so both nodes find the schema behind and queue up for it.
    holder = await asyncpg.connect(url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        starting = [asyncio.create_task(node.astart()) for node in nodes]

        async def both_waiting() -> bool:
            waiting = await admin.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = $1",
                database,
            )
            return bool(waiting == 2)

        await wait_until(both_waiting, 30, "both nodes to wait for the migration lock")
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        await asyncio.gather(*starting)
    finally:
        await holder.close()

    assert await applied_migrations(url) == APPLIED
    logs = [node.stderr_tail() for node in nodes]
    applied = [log for log in logs if f"schema migrated to version {LATEST}: {UP_ALL}" in log]
    assert len(applied) == 1, logs
    assert sum("another node migrated it" in log for log in logs) == 1, logs
    for node in nodes:
        status, body = await readyz(node)
        assert status == 200, body
    alice = await new_user(nodes[0].url)
    bob = await new_user(nodes[1].url)
    answer = await alice.send_message(bob, body=b"across the two nodes")
    assert answer["t"] == "ok", answer
    await alice.close()
    await bob.close()


async def test_postgres_out_of_reach_at_start(machine, tmp_path, relays):
    """A plain start still works while PostgreSQL is down (not ready meanwhile); --migrate
    cannot keep its promise and exits 1."""
    env = {
        "RELAY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nothing",
        "RELAY_REDIS_URL": REDIS_URL,
        "RELAY_REDIS_PREFIX": machine.new_prefix(),
        **master_key_env(),
    }
    result, _ = await serve_refused(env, "--migrate", "--backend-timeout", "1")
    assert result.code == 1, result
    [line] = result.stderr.splitlines()
    assert line.startswith("relay: --migrate: PostgreSQL out of reach"), line

    r = await relay_process(tmp_path, relays, env, backend_timeout=1).astart()
    status, body = await readyz(r)
    assert status == 503, body
    assert body["schema"] == {"version": None, "expected": LATEST}, body
    assert "postgresql does not answer" in body["problems"], body
    assert "schema version not checked at start" in r.stderr_tail()


async def test_keys_of_encryption_at_rest_load_when_postgresql_comes_back(
    machine, tmp_path, relays
):
    """A node started while PostgreSQL is down is not ready (naming the keys), then loads
    its keys by itself once PostgreSQL answers, and serves sealed stored messages."""
    cluster = PgCluster()
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(migrate, cluster.url)
        await asyncio.to_thread(cluster.stop, "fast")
        env = {
            "RELAY_DATABASE_URL": cluster.url,
            "RELAY_REDIS_URL": REDIS_URL,
            "RELAY_REDIS_PREFIX": machine.new_prefix(),
            **master_key_env(),
        }
        r = await relay_process(tmp_path, relays, env, backend_timeout=1).astart()
        status, body = await readyz(r)
        assert status == 503 and body["backends"]["at_rest_keys"] is False, body
        assert any("keys of encryption at rest" in p for p in body["problems"]), body

        await asyncio.to_thread(cluster.start)

        async def ready() -> bool:
            return (await readyz(r))[0] == 200

        await wait_until(ready, READY_CHANGE_S, "/readyz to answer 200 with the keys loaded")
        (receiver,) = await offline_user(r.url)
        sender = await new_user(r.url)
        answer = await sender.send_message(receiver, body=b"after the outage")
        assert answer["t"] == "ok" and answer["stored"] == [1], answer
        await sender.close()
        await receiver.reconnect()
        [delivered] = await receiver.drain()
        assert delivered["body"] == b"after the outage" and delivered["from"] == sender.user
        await receiver.close()
        assert "keys of encryption at rest loaded" in r.stderr_tail(200)
    finally:
        for relay in relays:
            await relay.astop()
        await asyncio.to_thread(cluster.destroy)


# --------------------------------------------------------------------------- while running


async def test_schema_changed_under_a_running_relay(machine, tmp_path, relays):
    env = machine.env()
    url = env["RELAY_DATABASE_URL"]
    r = await relay_process(tmp_path, relays, env).astart()
    alice = await new_user(r.url)
    await alice.close()
    status, body = await readyz(r)
    assert status == 200 and body["schema"] == {"version": LATEST, "expected": LATEST}, body

    down = await arun_relay(["migrate", "--to", "0", "--database-url", url])
    assert down.code == 0 and down.stdout.splitlines() == DOWN_ALL, down

    async def answers(wanted: int) -> dict[str, Any] | None:
        status, body = await readyz(r)
        return body if status == wanted else None

    body = await wait_until(lambda: answers(503), READY_CHANGE_S, "/readyz to answer 503")
    assert body["ready"] is False and body["backends"] == {"postgresql": True, "redis": True}
    assert body["schema"] == {"version": 0, "expected": LATEST}, body
    assert f"schema version 0, expected {LATEST}: run relay migrate" in body["problems"], body
    assert "schema drift" in r.stderr_tail()

    up = await arun_relay(["migrate", "--database-url", url])
    assert up.code == 0 and up.stdout.splitlines() == UP_ALL.split(", "), up
    body = await wait_until(lambda: answers(200), READY_CHANGE_S, "/readyz to answer 200 again")
    assert body["schema"] == {"version": LATEST, "expected": LATEST} and body["problems"] == []
    # Serving again on the recreated tables: the pool's old prepared statements are gone.
    bob = await new_user(r.url)
    await bob.sync()
    await bob.close()
    assert r.running()


# --------------------------------------------------------------------------- unchanged


async def test_migrate_command_works_as_before(machine):
    url = machine.new_database(migrated=False)
    before = await arun_relay(["migrate", "--check", "--database-url", url])
    assert before.code == 1
    assert f"schema version is 0, the latest is {LATEST}" in before.stdout
    first = await arun_relay(["migrate", "--database-url", url])
    assert (first.code, first.stdout) == (0, "".join(f"{step}\n" for step in UP_ALL.split(", "))), (
        first
    )
    again = await arun_relay(["migrate", "--database-url", url])
    assert (again.code, again.stdout) == (0, "schema up to date\n"), again
    after = await arun_relay(["migrate", "--check", "--database-url", url])
    assert after.code == 0 and "is the latest and matches" in after.stdout, after
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, 'future')", LATEST + 1
        )
    finally:
        await conn.close()
    newer = await arun_relay(["migrate", "--database-url", url])
    assert newer.code == 1
    assert f"schema version {LATEST + 1} is newer than this relay knows ({LATEST})" in newer.stderr


async def test_embedded_store_migrates_itself(tmp_path, relays):
    r = await relay_process(tmp_path, relays, {}).astart()
    alice = await new_user(r.url)
    await alice.sync()
    await alice.close()
    status, body = await readyz(r)
    assert status == 200, body
    assert "schema" not in body and body["problems"] == [], body
    await r.arestart()  # the same store, already migrated
    status, body = await readyz(r)
    assert status == 200, body


def test_config_show_lists_migrate(tmp_path):
    default = run_relay(["config", "show"])
    assert default.code == 0, default.stderr
    assert "migrate = false  # default" in default.stdout.splitlines()
    for args, env, source in (
        (["--migrate"], {}, "flag --migrate"),
        ([], {"RELAY_MIGRATE": "yes"}, "env RELAY_MIGRATE"),
    ):
        shown = run_relay(["config", "show", "--format", "json", *args], env)
        assert shown.code == 0, shown.stderr
        setting = json.loads(shown.stdout)["settings"]["migrate"]
        assert setting == {"value": True, "source": source}
    off = run_relay(["config", "show", "--no-migrate"], {"RELAY_MIGRATE": "1"})
    assert "migrate = false  # flag --migrate" in off.stdout.splitlines(), off.stdout
    bad = run_relay(["serve", "--port", "0"], {"RELAY_MIGRATE": "maybe"})
    assert bad.code == 2
    assert bad.stderr.strip() == (
        "relay: bad setting: migrate must be a boolean, not 'maybe' (from env RELAY_MIGRATE)"
    )
    helped = run_relay(["serve", "--help"])
    assert "--migrate, --no-migrate" in helped.stdout and "RELAY_MIGRATE" in helped.stdout
