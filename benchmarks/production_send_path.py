"""The production store's share of a send, without sockets: the store calls the relay makes
for each message to a connected device, from many senders at once, against real PostgreSQL
and Redis. Prints CPU per send (this process: the relay's side of the store), sends per
second and backend round trips per send (what the store reports to its observer: a batch
is one).

    python benchmarks/production_send_path.py \\
        --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres \\
        --redis-url redis://127.0.0.1:6379/0 [--senders 100] [--sends 20000] [--order both]

Orders: `read-first` is relay/sending.py's (lookup, device list and pending origins side by
side, then the claim), `claim-first` claims side by side with the reads. Both end with
`complete`. Run it with PYTHONPATH set to another checkout to compare trees (A/B). A
benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from collections import Counter

import asyncpg

from protocol.signatures import KeyScheme, identity_key_x25519
from storage.postgres.migrate import migrate
from storage.production import ProductionStore
from storage.records import NewDevice, ReplayScope, SendOutcome

ORDERS = ("read-first", "claim-first")


def new_device() -> NewDevice:
    identity_key = b"\x05" + os.urandom(32)
    return NewDevice(
        identity_key=identity_key,
        key_scheme="xeddsa",
        identity_x25519=identity_key_x25519(KeyScheme.XEDDSA, identity_key),
        registration_id=1,
        created_ms=int(time.time() * 1000),
    )


async def one_send(store: ProductionStore, order: str, recipient: str, sender: str) -> None:
    scope = ReplayScope(sender, 1, recipient)
    nonce, message_id = secrets.token_bytes(24), secrets.token_bytes(16)
    if order == "read-first":
        record, devices, origins = await asyncio.gather(
            store.replay.lookup(scope, nonce),
            store.devices.list_devices(recipient),
            store.messages.pending_origins(recipient, [1], message_id),
        )
        assert record is None
        taken = await store.replay.claim(scope, nonce, message_id, pending_ttl_s=30)
    else:
        taken, devices, origins = await asyncio.gather(
            store.replay.claim(scope, nonce, message_id, pending_ttl_s=30),
            store.devices.list_devices(recipient),
            store.messages.pending_origins(recipient, [1], message_id),
        )
    assert taken is None and devices is not None and origins == []
    outcome = SendOutcome(delivered=(1,), stored=())
    await store.replay.complete(scope, nonce, message_id, outcome, window_s=60)


async def run(args: argparse.Namespace, order: str) -> dict[str, float]:
    name = f"relay_bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(args.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = args.admin_dsn.rpartition("/")[0] + "/" + name
    calls: Counter[str] = Counter()
    try:
        await migrate(dsn)
        store = await ProductionStore.open(
            database_url=dsn,
            redis_url=args.redis_url,
            redis_prefix=f"relaybench:{secrets.token_hex(6)}:",
            observe=lambda backend, operation, seconds: calls.update([backend]),
        )
        try:
            users = [secrets.token_hex(8) for _ in range(args.senders)]
            for user in users:
                await store.devices.create_user(user, new_device())

            async def sender(n: int) -> None:
                recipient = users[(n + 1) % len(users)]
                for _ in range(args.sends // args.senders):
                    await one_send(store, order, recipient, users[n])

            await asyncio.gather(*(sender(n) for n in range(10)))  # warm up pools and caches
            calls.clear()
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(sender(n) for n in range(args.senders)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            await store.redis.delete_prefixed()
        finally:
            await store.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    sends = args.sends // args.senders * args.senders
    return {
        "cpu_us": cpu / sends * 1e6,
        "per_s": sends / wall,
        "postgresql": calls["postgresql"] / sends,
        "redis": calls["redis"] / sends,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--senders", type=int, default=100)
    parser.add_argument("--sends", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--order", choices=[*ORDERS, "both"], default="both")
    args = parser.parse_args()
    for order in ORDERS if args.order == "both" else (args.order,):
        runs = [asyncio.run(run(args, order)) for _ in range(args.runs)]
        figures = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"{order}: {figures['cpu_us']:.0f} µs CPU/send, {figures['per_s']:.0f} sends/s, "
            f"round trips per send: postgresql {figures['postgresql']:.2f}, "
            f"redis {figures['redis']:.2f} (median of {args.runs})",
            flush=True,
        )


if __name__ == "__main__":
    main()
