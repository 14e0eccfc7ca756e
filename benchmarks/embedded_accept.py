"""The embedded store's part of a send, without sockets: how long a send waits for the store
before it is accepted, and the process CPU the store costs per send.

    python benchmarks/embedded_accept.py [--senders 64] [--sends 4000] [--runs 3]

Each of `--senders` tasks makes sends one after another to a receiver of its own, with the
store calls `relay/sending.py` makes for a stored (not `online`) send whose recipient is
connected: replay lookup, device list and pending origins together, then the nonce claim
(the accept point), then the replay outcome (committed before the `ok`). Prints, per run,
sends per second, the accept wait (p50, p99) and the process CPU per send (every thread).
Run it with another tree first on PYTHONPATH to compare revisions. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from storage.embedded import EmbeddedStore
from storage.records import NewDevice, ReplayScope, SendOutcome

OUTCOME = SendOutcome(delivered=(1,), stored=())


async def sender(store: EmbeddedStore, me: str, to: str, sends: int, waits: list[float]) -> None:
    scope = ReplayScope(me, 1, to)
    for _ in range(sends):
        nonce, message_id = os.urandom(24), os.urandom(16)
        started = time.perf_counter()
        record, devices, origins = await asyncio.gather(
            store.replay.lookup(scope, nonce),
            store.devices.list_devices(to),
            store.messages.pending_origins(to, [1], message_id),
        )
        assert record is None and devices and not origins
        taken = await store.replay.claim(scope, nonce, message_id, pending_ttl_s=30)
        assert taken is None
        waits.append(time.perf_counter() - started)
        await store.replay.complete(scope, nonce, message_id, OUTCOME, window_s=3600)


async def one_run(senders: int, sends: int) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory(prefix="relay-accept-") as folder:
        store = await EmbeddedStore.open(Path(folder))
        try:
            users = [str(uuid.uuid4()) for _ in range(2 * senders)]
            for user in users:
                key = os.urandom(32)
                await store.devices.create_user(user, NewDevice(key, "ed25519", key, 0, 1))
            waits: list[float] = []
            per_sender = sends // senders
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(
                *(
                    sender(store, users[2 * i], users[2 * i + 1], per_sender, waits)
                    for i in range(senders)
                )
            )
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            await store.close()
    done = per_sender * senders
    waits.sort()
    p50, p99 = waits[len(waits) // 2], waits[int(len(waits) * 0.99)]
    return done / wall, p50 * 1e3, p99 * 1e3, cpu / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument("--sends", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    for _ in range(args.runs):
        rate, p50, p99, cpu = asyncio.run(one_run(args.senders, args.sends))
        results.append((rate, p50, p99, cpu))
        print(
            f"{rate:,.0f} sends/s, accept wait p50 {p50:.2f} ms p99 {p99:.2f} ms, "
            f"{cpu:.0f} µs CPU/send",
            flush=True,
        )
    print(
        f"median: {statistics.median(r[0] for r in results):,.0f} sends/s, accept wait p50 "
        f"{statistics.median(r[1] for r in results):.2f} ms, "
        f"{statistics.median(r[3] for r in results):.0f} µs CPU/send"
    )


if __name__ == "__main__":
    main()
