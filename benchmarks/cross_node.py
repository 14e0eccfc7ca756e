"""Messages per second between devices on the same node and on different nodes, measured in
the same run against two relay nodes sharing one PostgreSQL database and one Redis prefix.

    python benchmarks/cross_node.py --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres \
        --redis-url redis://127.0.0.1:6379/0 --pairs 20 --messages 500 --rounds 3

Each round measures both placements on fresh users, alternating: "same node" (pair i has both
devices on node i % 2) and "cross node" (the sender on node i % 2, the receiver on the
other). Receivers are online and ack every delivery; senders keep 32 sends outstanding.
Prints each round, the medians, and the ratio cross/same. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from send_paths import production_env, receiver, register, sender, start_relay


async def measure(urls: list[str], pairs: int, messages: int, size: int, cross: bool) -> float:
    senders = [await register(urls[i % 2]) for i in range(pairs)]
    receivers = [await register(urls[(i + cross) % 2]) for i in range(pairs)]
    for ws, _, _ in receivers:
        await ws.recv()  # queue_empty
    start = time.perf_counter()
    await asyncio.gather(
        *(sender(s[0], r[1], messages, size, 32) for s, r in zip(senders, receivers, strict=True)),
        *(receiver(r[0], messages) for r in receivers),
    )
    rate = pairs * messages / (time.perf_counter() - start)
    for ws, _, _ in (*senders, *receivers):
        await ws.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500, help="per pair and placement")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--admin-dsn", required=True, help="PostgreSQL URL to create the run's database with"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    same: list[float] = []
    cross: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, production_env(args) as env:
        nodes = [
            start_relay(Path(tmp) / name, env, "--node-id", name) for name in ("bench-a", "bench-b")
        ]
        urls = [url for _, url in nodes]
        try:
            for n in range(args.rounds):
                same.append(asyncio.run(measure(urls, args.pairs, args.messages, args.size, False)))
                cross.append(asyncio.run(measure(urls, args.pairs, args.messages, args.size, True)))
                print(
                    f"round {n + 1}: same node {same[-1]:,.0f} msg/s  "
                    f"cross node {cross[-1]:,.0f} msg/s"
                )
        finally:
            for proc, _ in nodes:
                proc.terminate()
                proc.wait(timeout=30)
    med_same, med_cross = statistics.median(same), statistics.median(cross)
    print(f"\n| placement | msg/s (median of {args.rounds}) |")
    print("| --- | --- |")
    print(f"| same node | {med_same:,.0f} |")
    print(f"| cross node | {med_cross:,.0f} |")
    print(f"\ncross/same: {med_cross / med_same:.2f}")


if __name__ == "__main__":
    main()
