"""What a group message takes in the store: `send.multi` with a shared payload (stored once,
a header per device) against a body per device (`send`, or `send.multi` without payload),
for members whose devices are all offline, on both stores, sealed as deployed
(encryption at rest on).

    python benchmarks/shared_payload_storage.py --messages 20 --size 1024
    python benchmarks/shared_payload_storage.py --messages 20 --size 1024 \
        --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres --redis-url redis://127.0.0.1:6379/0

For each store and form: a fresh store, `--users` users with `--devices` devices each, then
`--messages` group messages to all of them through the MessageQueue, and the growth of the
store: the SQLite file's pages (page_count x page_size, read on a connection of its own),
or PostgreSQL's relations (messages with its partitions, indexes and TOAST, and
shared_payloads). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from storage.at_rest.master_key import LocalKeyFile
from storage.at_rest.sealing import RingSealer
from storage.at_rest.vault import DataKeyVault
from storage.embedded import EmbeddedStore
from storage.production import ProductionStore
from storage.records import Envelope, NewDevice, SharedPayload

HEADER_BYTES = 64  # a per-device header of a shared-payload group message (a session message)
DAY_MS = 86_400_000

_PG_SIZE = """
SELECT COALESCE(sum(pg_total_relation_size(relid)), 0)
FROM (
    SELECT relid FROM pg_partition_tree('messages')
    UNION ALL SELECT 'shared_payloads'::regclass
) AS t
"""


def new_device(now: int) -> NewDevice:
    key = os.urandom(32)
    return NewDevice(
        identity_key=key,
        key_scheme="ed25519",
        identity_x25519=key,
        registration_id=1,
        created_ms=now,
    )


async def members(store: EmbeddedStore | ProductionStore, users: int, devices: int) -> list[str]:
    now = int(time.time() * 1000)
    made = []
    for _ in range(users):
        user = str(os.urandom(16).hex())
        await store.devices.create_user(user, new_device(now))
        for _ in range(devices - 1):
            await store.devices.add_device(user, new_device(now), max_devices=devices)
        made.append(user)
    return made


def group_message(users: list[str], devices: int, size: int, *, shared: bool) -> list[Envelope]:
    now = int(time.time() * 1000)
    message_id, nonce = os.urandom(16), os.urandom(24)
    payload = SharedPayload(id=os.urandom(16), body=os.urandom(size)) if shared else None
    base = Envelope(
        id=message_id,
        recipient_user="",
        recipient_device=0,
        sender_user="00000000-0000-4000-8000-000000000001",
        sender_device=1,
        ts=now,
        server_ts=now,
        type=3 if shared else 2,
        body=b"",
        nonce=nonce,
        expires_ms=now + 30 * DAY_MS,
        payload=payload,
    )
    return [
        dataclasses.replace(
            base,
            recipient_user=user,
            recipient_device=device,
            body=os.urandom(HEADER_BYTES if shared else HEADER_BYTES + size),
        )
        for user in users
        for device in range(1, devices + 1)
    ]


async def sealed(store: EmbeddedStore | ProductionStore) -> None:
    vault = await DataKeyVault.open(
        store.data_keys,
        LocalKeyFile(os.urandom(32)),
        rotation_ms=DAY_MS,
        now_ms=lambda: int(time.time() * 1000),
    )
    store.use_sealer(RingSealer(vault.ring, load_keys=vault.load))


@asynccontextmanager
async def open_store(
    name: str, args: argparse.Namespace
) -> AsyncIterator[tuple[EmbeddedStore | ProductionStore, Callable[[], Awaitable[int]]]]:
    """A fresh store and a function that reads its size in bytes."""
    if name == "embedded":
        with tempfile.TemporaryDirectory(prefix="relay-shared-") as folder:
            store = await EmbeddedStore.open(Path(folder))

            async def sqlite_size() -> int:
                conn = sqlite3.connect(store._db.path)
                try:
                    (pages,) = conn.execute("PRAGMA page_count").fetchone()
                    (page,) = conn.execute("PRAGMA page_size").fetchone()
                    return int(pages) * int(page)
                finally:
                    conn.close()

            try:
                yield store, sqlite_size
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

        async def pg_size() -> int:
            conn = await asyncpg.connect(url)
            try:
                return int(await conn.fetchval(_PG_SIZE))
            finally:
                await conn.close()

        try:
            yield store, pg_size
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


async def measure(name: str, args: argparse.Namespace, *, shared: bool) -> int:
    """Bytes the store grew by, per group message."""
    async with open_store(name, args) as (store, size):
        await sealed(store)
        users = await members(store, args.users, args.devices)
        before = await size()
        for _ in range(args.messages):
            await store.messages.store(group_message(users, args.devices, args.size, shared=shared))
        return (await size() - before) // args.messages


async def main_async(args: argparse.Namespace) -> None:
    backends = ["embedded"] + (["postgresql"] if args.admin_dsn else [])
    devices = args.users * args.devices
    print(
        f"{args.messages} group messages of {args.size} bytes to {args.users} users x "
        f"{args.devices} devices (all offline), sealed; store growth per group message"
    )
    for name in backends:
        per_device = await measure(name, args, shared=False)
        shared = await measure(name, args, shared=True)
        print(
            f"  {name:10} body per device {per_device / 1024:8.1f} KiB"
            f" ({per_device / devices:6.0f} B a device)"
            f"   shared payload {shared / 1024:8.1f} KiB ({shared / devices:6.0f} B a device)"
            f"   ratio {per_device / max(1, shared):5.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024, help="bytes of the shared ciphertext")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--devices", type=int, default=3, help="devices of each user")
    parser.add_argument("--admin-dsn", help="PostgreSQL URL of a database to create others from")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
