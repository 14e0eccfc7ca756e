"""The store's part of the stored path and the drain, with and without encryption at rest,
without sockets: what encryption at rest adds per message, in process CPU (every thread).

    python benchmarks/at_rest_store.py [--senders 32] [--messages 4000] [--runs 7]
    python benchmarks/at_rest_store.py --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres

Each run opens a fresh embedded store twice (with encryption at rest, then without, or the
other way round: the order alternates) and makes, per message, the store calls
`relay/sending.py` makes for a send to an offline device (nonce claim, device list and
stored origins together, the insert, the outcome), then drains every queue the way a
device session does (fetch pages of 100, ack each page). With `--admin-dsn` (and
`--redis-url`), the production store on a fresh database and Redis prefix, dropped after.

Printed per run: CPU per message for both, and the difference in microseconds; then the
medians and the median of the per-run ratios. The relay's own CPU per stored message
(`benchmarks/send_paths.py`) puts the difference in proportion. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis.asyncio as redis_asyncio

from storage.at_rest.opening import AtRestSettings, open_at_rest
from storage.embedded import EmbeddedStore
from storage.interfaces import Store
from storage.postgres.migrate import migrate
from storage.production import ProductionStore
from storage.records import Envelope, NewDevice, ReplayScope, SendOutcome

BODY = os.urandom(1024)
PAGE = 100
RETENTION_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Cost:
    stored_us: float  # process CPU per message stored
    drain_us: float  # process CPU per message fetched and acked


async def send_stored(store: Store, me: str, to: str, messages: int, now_ms: int) -> None:
    scope = ReplayScope(me, 1, to)
    for _ in range(messages):
        nonce, message_id = os.urandom(24), os.urandom(16)
        held, devices, origins = await asyncio.gather(
            store.replay.claim(scope, nonce, message_id, pending_ttl_s=30),
            store.devices.list_devices(to),
            store.messages.pending_origins(to, [1], message_id),
        )
        assert held is None and devices and not origins
        envelope = Envelope(
            message_id, to, 1, me, 1, now_ms, now_ms, 1, BODY, nonce, now_ms + RETENTION_MS
        )
        await store.messages.store([envelope], max_per_device=100_000)
        outcome = SendOutcome(delivered=(), stored=(1,))
        await store.replay.complete(scope, nonce, message_id, outcome, window_s=3600)


async def drain(store: Store, user: str, expected: int, now_ms: int) -> None:
    seen, after = 0, 0
    while True:
        page = await store.messages.fetch(user, 1, after_seq=after, limit=PAGE, now_ms=now_ms)
        if not page:
            break
        assert all(s.envelope.recipient_user == user and s.envelope.body == BODY for s in page)
        seen += len(page)
        after = page[-1].seq
        await store.messages.ack(user, 1, [s.envelope.id for s in page])
    assert seen == expected, (seen, expected)


async def measure(store: Store, senders: int, messages: int) -> Cost:
    users = [str(uuid.uuid4()) for _ in range(2 * senders)]
    for user in users:
        key = os.urandom(32)
        await store.devices.create_user(user, NewDevice(key, "ed25519", key, 0, 1))
    per_sender = messages // senders
    now_ms = int(time.time() * 1000)
    cpu = time.process_time()
    await asyncio.gather(
        *(
            send_stored(store, users[2 * i], users[2 * i + 1], per_sender, now_ms)
            for i in range(senders)
        )
    )
    stored_cpu = time.process_time() - cpu
    cpu = time.process_time()
    await asyncio.gather(
        *(drain(store, users[2 * i + 1], per_sender, now_ms) for i in range(senders))
    )
    drain_cpu = time.process_time() - cpu
    done = per_sender * senders
    return Cost(stored_cpu / done * 1e6, drain_cpu / done * 1e6)


@contextlib.asynccontextmanager
async def fresh_store(args: argparse.Namespace, at_rest: bool) -> AsyncIterator[Store]:
    with tempfile.TemporaryDirectory(prefix="relay-at-rest-") as folder:
        key_file = Path(folder) / "master.key"
        settings = AtRestSettings(
            enabled=at_rest,
            master_key_file=None,
            rotation_s=86_400,
            default_key_file=key_file,
            convert=True,
        )
        if args.admin_dsn is None:
            inner = await EmbeddedStore.open(Path(folder) / "data")
            try:
                yield await open_at_rest(inner, settings)
            finally:
                await inner.close()
            return
        async with production_store(args) as inner:
            yield await open_at_rest(inner, settings)


@contextlib.asynccontextmanager
async def production_store(args: argparse.Namespace) -> AsyncIterator[ProductionStore]:
    """A fresh migrated PostgreSQL database and Redis prefix, dropped after."""
    name = f"relay_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(args.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = args.admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    try:
        await migrate(dsn)
        store = await ProductionStore.open(
            database_url=dsn, redis_url=args.redis_url, redis_prefix=prefix
        )
        try:
            yield store
        finally:
            await store.close()
    finally:
        client = redis_asyncio.from_url(args.redis_url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def one_run(args: argparse.Namespace, first_on: bool) -> dict[bool, Cost]:
    costs = {}
    for at_rest in (True, False) if first_on else (False, True):
        async with fresh_store(args, at_rest) as store:
            costs[at_rest] = await measure(store, args.senders, args.messages)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--messages", type=int, default=4000, help="per store and run")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--admin-dsn", help="PostgreSQL URL: measure the production store")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        costs = asyncio.run(one_run(args, first_on=run % 2 == 0))
        on, off = costs[True], costs[False]
        runs.append((on, off))
        print(
            f"run {run + 1}: stored {on.stored_us:.0f} vs {off.stored_us:.0f} µs CPU/msg "
            f"(+{on.stored_us - off.stored_us:.0f}), drain {on.drain_us:.0f} vs "
            f"{off.drain_us:.0f} (+{on.drain_us - off.drain_us:.0f})  [at rest on vs off]",
            flush=True,
        )

    def median(values: list[float]) -> float:
        return statistics.median(values)

    for path in ("stored_us", "drain_us"):
        on_us = median([getattr(on, path) for on, _ in runs])
        off_us = median([getattr(off, path) for _, off in runs])
        extra = median([getattr(on, path) - getattr(off, path) for on, off in runs])
        ratio = median([getattr(on, path) / getattr(off, path) for on, off in runs])
        print(
            f"median of {args.runs}, {path.removesuffix('_us')}: on {on_us:.1f} µs, "
            f"off {off_us:.1f} µs, difference {extra:+.1f} µs a message, ratio {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
