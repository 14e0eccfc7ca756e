"""The figures behind the capacity arithmetic of docs/deployment.md, measured on one
production node: per message, the relay's CPU, the Redis commands it sends, and the
PostgreSQL transactions and row writes it causes, for the online path (receivers connected
and acking), the stored path (receivers offline) and the drain.

    python benchmarks/capacity.py --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres

It starts a Redis of its own on a free port (so that only this relay's commands are
counted) and uses a fresh database (dropped after). Counters: Redis `INFO commandstats`,
PostgreSQL `pg_stat_database` (read until it stops moving: backends publish their
statistics about once a second). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis
from send_paths import (
    cpu_seconds,
    login,
    production_env,
    receiver,
    register,
    sender,
    start_relay,
)

from protocol.signatures import IdentityKeyPair

STATS_SETTLE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Counters:
    cpu_s: float
    redis_calls: dict[str, int]
    commits: int
    inserted: int
    updated: int
    deleted: int


@contextmanager
def private_redis() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="relay-capacity-redis-")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling a starting server, not synchronisation of our own
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def redis_calls(url: str) -> dict[str, int]:
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name not in ("cmdstat_info",)
    }


async def pg_counters(url: str) -> tuple[int, int, int, int]:
    """(commits, rows inserted, updated, deleted) of the database, once they stop moving."""
    conn = await asyncpg.connect(url)
    try:
        query = (
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        deadline = time.monotonic() + STATS_SETTLE_TIMEOUT_S
        last = None
        while True:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            row = tuple(await conn.fetchrow(query))
            if row == last or time.monotonic() > deadline:
                # Our own reads commit too: two per probe.
                return row  # type: ignore[return-value]
            last = row
            await asyncio.sleep(1.2)  # statistics are published about once a second
    finally:
        await conn.close()


async def snapshot(pid: int, redis_url: str, database_url: str) -> Counters:
    commits, inserted, updated, deleted = await pg_counters(database_url)
    return Counters(
        cpu_seconds(pid) or 0.0, redis_calls(redis_url), commits, inserted, updated, deleted
    )


def per_message(before: Counters, after: Counters, messages: int) -> str:
    calls = {
        k: after.redis_calls.get(k, 0) - before.redis_calls.get(k, 0) for k in after.redis_calls
    }
    total_calls = sum(calls.values())
    top = ", ".join(
        f"{name} {count / messages:.2f}"
        for name, count in sorted(calls.items(), key=lambda kv: -kv[1])[:4]
        if count
    )
    return (
        f"relay CPU {1e6 * (after.cpu_s - before.cpu_s) / messages:.0f} µs"
        f" | Redis commands {total_calls / messages:.2f} ({top})"
        f" | PostgreSQL commits {(after.commits - before.commits) / messages:.3f},"
        f" rows inserted {(after.inserted - before.inserted) / messages:.2f},"
        f" updated {(after.updated - before.updated) / messages:.2f},"
        f" deleted {(after.deleted - before.deleted) / messages:.2f}"
    )


async def measure(
    url: str, pid: int, redis_url: str, database_url: str, args: argparse.Namespace
) -> None:
    senders = [await register(url) for _ in range(args.pairs)]
    receivers = [await register(url) for _ in range(args.pairs)]
    for ws, _, _ in receivers:
        await ws.recv()  # queue_empty
    total = args.pairs * args.messages

    async def phase(name: str, *work: Awaitable[None]) -> None:
        before = await snapshot(pid, redis_url, database_url)
        started = time.perf_counter()
        await asyncio.gather(*work)
        elapsed = time.perf_counter() - started
        after = await snapshot(pid, redis_url, database_url)
        print(
            f"{name:7} {total / elapsed:7,.0f} msg/s | {per_message(before, after, total)}",
            flush=True,
        )

    await phase(
        "online",
        *(
            sender(s[0], r[1], args.messages, args.size, 32)
            for s, r in zip(senders, receivers, strict=True)
        ),
        *(receiver(r[0], args.messages) for r in receivers),
    )
    offline = []
    for ws, user, key in receivers:
        offline.append((user, key))
        await ws.close()
    await phase(
        "stored",
        *(
            sender(s[0], r[1], args.messages, args.size, 32)
            for s, r in zip(senders, receivers, strict=True)
        ),
    )

    async def drain(user: str, key: IdentityKeyPair) -> None:
        ws = await login(url, user, key)
        await receiver(ws, args.messages)
        await ws.close()

    await phase("drain", *(drain(u, k) for u, k in offline))
    for ws, _, _ in senders:
        await ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=300, help="per pair and path")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--admin-dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL URL to create the run's database with",
    )
    args = parser.parse_args()
    with private_redis() as redis_url:
        args.redis_url = redis_url
        with tempfile.TemporaryDirectory() as tmp, production_env(args) as env:
            proc, url = start_relay(Path(tmp) / "data", env)
            try:
                asyncio.run(measure(url, proc.pid, redis_url, env["RELAY_DATABASE_URL"], args))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    print(
        f"({args.pairs} pairs x {args.messages} messages of {args.size} bytes per path;"
        f" python {sys.version.split()[0]}, {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
