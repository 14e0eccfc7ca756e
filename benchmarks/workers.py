"""Messages per second through `relay serve --workers 1` and `--workers 2` (production store),
measured in the same run, with the CPU of the relay (summed over its processes), of the load
generator (this process) and of the whole machine, per message.

    python benchmarks/workers.py --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres \
        --redis-url redis://127.0.0.1:6379/0 --pairs 20 --messages 500 --rounds 3

Each round starts a relay with 1 worker, then one with 2 workers, on one fresh database and
Redis prefix, and measures the online path on fresh users: pair i's sender keeps 32 sends
outstanding to its receiver, which is connected and acks every delivery. With 2 workers it
measures two placements: "kernel", each connection where the kernel put it, so about half
the pairs cross workers (over the node bus; the share is printed, from the presence
entries); and "same worker", each receiver reconnected as a new user until it lands on its
sender's worker, so no message crosses and the pairs still spread over both workers. Prints
each measurement, then the medians. The generator is one asyncio process: its CPU shows
whether it, not the relay, is the limit; "machine cores" is every process's CPU (PostgreSQL,
Redis, and whatever else runs) per second, 2.0 being all of a 2-core machine. A benchmark,
not a test: figures vary with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from send_paths import cpu_seconds, production_env, receiver, register, sender, start_relay
from websockets.asyncio.client import ClientConnection

Device = tuple[ClientConnection, str, object]  # what send_paths.register gives: socket, user, key
PLACEMENTS = ("1 worker", "2 workers, kernel", "2 workers, same worker")


@dataclass(frozen=True, slots=True)
class Figures:
    rate: float  # messages a second
    relay_cpu_us: float  # relay CPU per message, every process of it
    relay_cores: float  # relay CPU seconds per second of the run
    generator_cpu_us: float
    generator_cores: float
    machine_cores: float  # every process's CPU seconds per second of the run
    cross_share: float  # pairs whose two devices are on different workers

    def __str__(self) -> str:
        return (
            f"{self.rate:,.0f} msg/s; relay {self.relay_cpu_us:.0f} µs CPU/msg "
            f"({self.relay_cores:.2f} cores); generator {self.generator_cpu_us:.0f} µs CPU/msg "
            f"({self.generator_cores:.2f} cores); machine {self.machine_cores:.2f} cores; "
            f"cross-worker pairs {self.cross_share:.0%}"
        )


def relay_pids(parent: int) -> list[int]:
    """The relay process and its workers (its children, from /proc)."""
    pids = [parent]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == parent:
                pids.append(int(entry.name))
    return pids


def relay_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


def machine_cpu() -> float:
    """CPU seconds every process of the machine has used (Linux /proc/stat, less idle)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def holders(env: dict[str, str], users: list[str]) -> list[bytes]:
    """The node holding each user's device 1, from its presence entry."""
    client = redis.Redis.from_url(env["RELAY_REDIS_URL"])
    try:
        prefix = env["RELAY_REDIS_PREFIX"]
        values = client.mget([f"{prefix}presence:{user}:1" for user in users])
    finally:
        client.close()
    return [(v or b"?").split(b"|")[0] for v in values]


MAX_PLACEMENT_TRIES = 40


async def receiver_beside(url: str, env: dict[str, str], node: bytes) -> Device:
    """A new user connected to the worker `node` (the kernel picks: try again until it does)."""
    for _ in range(MAX_PLACEMENT_TRIES):
        device = await register(url)
        await device[0].recv()  # queue_empty: its presence entry is written
        if holders(env, [device[1]]) == [node]:
            return device
        await device[0].close()
    raise RuntimeError(f"{MAX_PLACEMENT_TRIES} connections never reached {node!r}")


async def measure(
    url: str,
    pids: list[int],
    env: dict[str, str],
    args: argparse.Namespace,
    *,
    same_worker: bool = False,
) -> Figures:
    pairs, messages, size = args.pairs, args.messages, args.size
    senders = [await register(url) for _ in range(pairs)]
    if same_worker:
        nodes = holders(env, [s[1] for s in senders])
        receivers = [await receiver_beside(url, env, node) for node in nodes]
    else:
        receivers = [await register(url) for _ in range(pairs)]
        for ws, _, _ in receivers:
            await ws.recv()  # queue_empty
    users = [s[1] for s in senders] + [r[1] for r in receivers]
    placed = holders(env, users)
    for _ in range(MAX_PLACEMENT_TRIES):  # a sender's entry may still be on its way
        if b"?" not in placed:
            break
        placed = holders(env, users)
    else:
        raise RuntimeError("some devices have no presence entry")
    share = sum(a != b for a, b in zip(placed[:pairs], placed[pairs:], strict=True)) / pairs
    total = pairs * messages
    machine_before = machine_cpu()
    relay_before, mine_before, start = relay_cpu(pids), time.process_time(), time.perf_counter()
    await asyncio.gather(
        *(sender(s[0], r[1], messages, size, 32) for s, r in zip(senders, receivers, strict=True)),
        *(receiver(r[0], messages) for r in receivers),
    )
    elapsed = time.perf_counter() - start
    relay_used = relay_cpu(pids) - relay_before
    mine_used = time.process_time() - mine_before
    machine_used = machine_cpu() - machine_before
    for ws, _, _ in (*senders, *receivers):
        await ws.close()
    return Figures(
        rate=total / elapsed,
        relay_cpu_us=relay_used / total * 1e6,
        relay_cores=relay_used / elapsed,
        generator_cpu_us=mine_used / total * 1e6,
        generator_cores=mine_used / elapsed,
        machine_cores=machine_used / elapsed,
        cross_share=share,
    )


def one_relay(
    workers: int, tmp: Path, env: dict[str, str], args: argparse.Namespace
) -> list[Figures]:
    """Start a relay with `workers` workers and measure it: one placement with 1 worker, both
    with 2."""
    proc, url = start_relay(tmp / f"w{workers}", env, "--workers", str(workers))
    try:
        if not url.startswith("ws://"):
            raise RuntimeError(f"relay --workers {workers} did not start: {url!r}")
        pids = relay_pids(proc.pid)
        assert len(pids) == (1 if workers == 1 else workers + 1), pids
        if workers == 1:
            return [asyncio.run(measure(url, pids, env, args))]
        return [
            asyncio.run(measure(url, pids, env, args)),
            asyncio.run(measure(url, pids, env, args, same_worker=True)),
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500, help="per pair and measurement")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--admin-dsn", required=True, help="PostgreSQL URL to create the run's database with"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    results: dict[str, list[Figures]] = {name: [] for name in PLACEMENTS}
    print(f"{os.cpu_count()} cores; {args.pairs} pairs x {args.messages} messages of {args.size} B")
    with tempfile.TemporaryDirectory() as tmp, production_env(args) as env:
        for n in range(args.rounds):
            measured = one_relay(1, Path(tmp), env, args) + one_relay(2, Path(tmp), env, args)
            for name, figures in zip(PLACEMENTS, measured, strict=True):
                results[name].append(figures)
                print(f"round {n + 1}, {name}: {figures}", flush=True)
    print(f"\nmedians of {args.rounds} rounds:\n")
    print(
        "| relay | msg/s | relay CPU/msg | relay cores | generator CPU/msg | generator cores "
        "| machine cores | cross-worker pairs |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    medians = {}
    for name, runs in results.items():
        med = {f: statistics.median(getattr(r, f) for r in runs) for f in Figures.__slots__}
        medians[name] = med
        print(
            f"| {name} | {med['rate']:,.0f} | {med['relay_cpu_us']:.0f} µs "
            f"| {med['relay_cores']:.2f} | {med['generator_cpu_us']:.0f} µs "
            f"| {med['generator_cores']:.2f} | {med['machine_cores']:.2f} "
            f"| {med['cross_share']:.0%} |"
        )
    one = medians[PLACEMENTS[0]]
    for name in PLACEMENTS[1:]:
        two = medians[name]
        print(
            f"{name} / 1 worker: {two['rate'] / one['rate']:.2f}x msg/s, "
            f"{two['relay_cpu_us'] / one['relay_cpu_us']:.2f}x relay CPU/msg"
        )


if __name__ == "__main__":
    main()
