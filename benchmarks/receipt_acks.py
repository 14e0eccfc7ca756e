"""What delivery receipts cost the ack path: concurrent single-id acks through the
MessageQueue (as many connections acking their drains do), of copies that asked for no
receipt (`plain`) and of copies that asked for one (`receipt`: each ack then opens the row
and stores one receipt for the sender's device in the ack's transaction), in interleaved
rounds on the same store.

    python benchmarks/receipt_acks.py --rounds 5
    python benchmarks/receipt_acks.py --rounds 5 \\
        --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres --redis-url redis://127.0.0.1:6379/0

Run it with PYTHONPATH pointing at a checkout from before receipts to get `plain` for the
old ack (`receipt` is then skipped), alternating with `--plain-only` runs of this one: the
ratio of the two `plain` medians is what the receipt machinery costs an ack that asked for
none.

A benchmark, not a test: figures vary with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import statistics
import time
import uuid

from message_cap import open_store

from storage.interfaces import Store
from storage.records import Envelope, NewDevice

DEVICES = 200


async def new_user(store: Store) -> str:
    # A real UUID: a receipt names the acknowledging user by its 16 bytes.
    user = str(uuid.uuid4())
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


def envelope(user: str, sender: str, body: bytes) -> Envelope:
    now = int(time.time() * 1000)
    return Envelope(
        id=os.urandom(16),
        recipient_user=user,
        recipient_device=1,
        sender_user=sender,
        sender_device=1,
        ts=now,
        server_ts=now,
        type=2,
        body=body,
        nonce=os.urandom(24),
        expires_ms=now + 86_400_000,
    )


async def one_round(
    store: Store, users: list[str], sender: str, args: argparse.Namespace, *, receipt: bool
) -> float:
    """Acks a second: `--acks` stored copies spread over the devices, acked one id a call."""
    body = os.urandom(args.size)
    copies = [envelope(users[n % DEVICES], sender, body) for n in range(args.acks)]
    if receipt:
        copies = [dataclasses.replace(c, receipt=True) for c in copies]
    for start in range(0, len(copies), 1000):
        await store.messages.store(copies[start : start + 1000])
    counter = itertools.count()

    async def worker() -> None:
        while (n := next(counter)) < len(copies):
            env = copies[n]
            await store.messages.ack(env.recipient_user, 1, [env.id])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.tasks)))
    rate = len(copies) / (time.perf_counter() - started)
    if receipt:  # the sender's receipts, acked between rounds
        stored = await store.messages.fetch(
            sender, 1, after_seq=0, limit=args.acks, now_ms=int(time.time() * 1000)
        )
        await store.messages.ack(sender, 1, [s.envelope.id for s in stored])
        assert len(stored) == args.acks, len(stored)
    return rate


async def measure(store: Store, args: argparse.Namespace) -> dict[str, list[float]]:
    users = [await new_user(store) for _ in range(DEVICES)]
    sender = await new_user(store)
    supported = "receipt" in {f.name for f in dataclasses.fields(Envelope)}
    figures: dict[str, list[float]] = {"plain": []}
    if supported and not args.plain_only:
        figures["receipt"] = []
    for round_ in range(args.rounds):
        kinds = list(figures) if round_ % 2 == 0 else list(reversed(figures))
        for kind in kinds:
            rate = await one_round(store, users, sender, args, receipt=kind == "receipt")
            figures[kind].append(rate)
    return figures


async def main_async(args: argparse.Namespace) -> None:
    backends = ["embedded"] + (["postgresql"] if args.admin_dsn else [])
    for name in backends:
        async with open_store(name, args) as store:
            figures = await measure(store, args)
        medians = {kind: statistics.median(rates) for kind, rates in figures.items()}
        line = ", ".join(f"{kind} {rate:,.0f} acks/s" for kind, rate in medians.items())
        if "receipt" in medians:
            line += f", receipt/plain {medians['receipt'] / medians['plain']:.3f}"
        print(f"{name}: {args.acks} acks x {args.rounds} rounds, {args.tasks} tasks: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--acks", type=int, default=4000)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--plain-only", action="store_true", help="only `plain`, as a checkout from before runs"
    )
    parser.add_argument("--admin-dsn", default=None)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
