"""What the cap of stored messages per device (`--max-stored-messages`) costs the stored path:
concurrent single-envelope stores through the MessageQueue, without a cap and with one, in
interleaved rounds on the same store.

    python benchmarks/message_cap.py --rounds 5
    python benchmarks/message_cap.py --rounds 5 \
        --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres --redis-url redis://127.0.0.1:6379/0

Scenarios, each measured without and with the cap (stores a second, median of the rounds):

- `shallow`: stores spread over 200 devices with short queues (the common case);
- `deep`: every store to one device already holding `--depth` envelopes, with a cap above
  it (the insert counts up to the cap: its worst case short of refusing);
- `beside-full` (cap only): half the tasks store to a device at its cap (each refused), half
  as in `shallow`; the figure is the accepted stores a second, against `shallow` with a cap
  (a refusal rolls its group commit back and applies it again without the refused calls).

A benchmark, not a test: figures vary with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from storage.embedded import EmbeddedStore
from storage.errors import QueueFull
from storage.interfaces import Store
from storage.production import ProductionStore
from storage.records import Envelope, NewDevice

CAP = 10_000
DEVICES = 200


def envelope(user: str, body: bytes) -> Envelope:
    now = int(time.time() * 1000)
    return Envelope(
        id=os.urandom(16),
        recipient_user=user,
        recipient_device=1,
        sender_user="bench-sender",
        sender_device=1,
        ts=now,
        server_ts=now,
        type=2,
        body=body,
        nonce=os.urandom(24),
        expires_ms=now + 86_400_000,
    )


async def new_user(store: Store) -> str:
    user = f"bench-{secrets.token_hex(8)}"
    key = os.urandom(32)
    await store.devices.create_user(
        user,
        NewDevice(
            identity_key=key,
            key_scheme="ed25519",
            identity_x25519=key,
            registration_id=0,
            created_ms=int(time.time() * 1000),
        ),
    )
    return user


async def run(
    store: Store, pick: Callable[[int], str], count: int, tasks: int, cap: int | None, body: bytes
) -> tuple[float, list[Envelope]]:
    """Stores a second over `count` stores by `tasks` tasks; the envelopes stored."""
    counter = itertools.count()
    stored: list[Envelope] = []

    async def worker() -> None:
        while (n := next(counter)) < count:
            env = envelope(pick(n), body)
            try:
                await store.messages.store([env], max_per_device=cap)
            except QueueFull:
                continue
            stored.append(env)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return len(stored) / (time.perf_counter() - started), stored


async def ack_all(store: Store, stored: list[Envelope]) -> None:
    """Back to the depth before the phase."""
    by_user: dict[str, list[bytes]] = {}
    for env in stored:
        by_user.setdefault(env.recipient_user, []).append(env.id)
    for user, ids in by_user.items():
        for start in range(0, len(ids), 1000):
            await store.messages.ack(user, 1, ids[start : start + 1000])


async def fill(store: Store, user: str, rows: int, body: bytes) -> None:
    for start in range(0, rows, 1000):
        await store.messages.store([envelope(user, body) for _ in range(min(1000, rows - start))])


async def measure(store: Store, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    body = os.urandom(args.size)
    shallow_users = [await new_user(store) for _ in range(DEVICES)]
    deep_user, full_user = await new_user(store), await new_user(store)
    await fill(store, deep_user, args.depth, body)
    await fill(store, full_user, args.full, body)
    figures: dict[str, dict[str, list[float]]] = {
        "shallow": {"none": [], "cap": []},
        "deep": {"none": [], "cap": []},
        "beside-full": {"cap": []},
    }

    def shallow(n: int) -> str:
        return shallow_users[n % DEVICES]

    def deep(n: int) -> str:
        return deep_user

    def beside_full(n: int) -> str:
        return full_user if n % 2 else shallow_users[n % DEVICES]

    for round_ in range(args.rounds):
        order = ("none", "cap") if round_ % 2 == 0 else ("cap", "none")
        for kind in order:
            for name, pick in (("shallow", shallow), ("deep", deep)):
                # Above the deep device's depth after the phase: nothing is refused.
                cap = None if kind == "none" else max(CAP, args.depth + args.stores + 1)
                rate, stored = await run(store, pick, args.stores, args.tasks, cap, body)
                figures[name][kind].append(rate)
                await ack_all(store, stored)
        rate, stored = await run(store, beside_full, args.stores, args.tasks, args.full, body)
        figures["beside-full"]["cap"].append(rate * 2)  # half the stores can go in
        await ack_all(store, stored)
    return figures


@asynccontextmanager
async def open_store(name: str, args: argparse.Namespace) -> AsyncIterator[Store]:
    if name == "embedded":
        with tempfile.TemporaryDirectory(prefix="relay-cap-") as folder:
            store = await EmbeddedStore.open(Path(folder))
            try:
                yield store
            finally:
                await store.close()
        return
    import asyncpg
    import redis

    from storage.postgres.migrate import migrate

    database = f"relay_bench_{secrets.token_hex(6)}"
    url = f"{args.admin_dsn.rpartition('/')[0]}/{database}"
    admin = await asyncpg.connect(args.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    prefix = f"relaybench:{database}:"
    try:
        await migrate(url)
        store = await ProductionStore.open(
            database_url=url, redis_url=args.redis_url, redis_prefix=prefix, timeout_s=10.0
        )
        try:
            yield store
        finally:
            await store.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        client = redis.Redis.from_url(args.redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


async def main_async(args: argparse.Namespace) -> None:
    backends = ["embedded"] + (["postgresql"] if args.admin_dsn else [])
    for name in backends:
        async with open_store(name, args) as store:
            figures = await measure(store, args)
        print(f"{name}: {args.stores} stores x {args.rounds} rounds, {args.tasks} tasks")
        base = statistics.median(figures["shallow"]["cap"])
        for scenario, kinds in figures.items():
            medians = {kind: statistics.median(rates) for kind, rates in kinds.items()}
            line = ", ".join(f"{kind} {rate:,.0f}/s" for kind, rate in medians.items())
            if "none" in medians:
                line += f", cap/none {medians['cap'] / medians['none']:.3f}"
            else:
                line += f", against shallow with cap {medians['cap'] / base:.3f}"
            print(f"  {scenario:12} {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stores", type=int, default=3000, help="per scenario and round")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=9000, help="envelopes already held (deep)")
    parser.add_argument("--full", type=int, default=100, help="the full device's cap")
    parser.add_argument("--admin-dsn", help="PostgreSQL URL of a database to create others from")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
