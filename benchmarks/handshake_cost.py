"""The relay's CPU per reconnect (connect, challenge, `auth`, `auth.ok`, the first fetch's
`queue.empty`, close), against relays started here on fresh stores.

    python benchmarks/handshake_cost.py --devices 300 --runs 5
    python benchmarks/handshake_cost.py --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres
    python benchmarks/handshake_cost.py --baseline-tree /tmp/before --runs 5   # side by side

Registers `--devices` devices on each relay, then in each run reconnects all of them
(`--concurrency` at a time), waits for each one's `queue.empty`, and closes them. Prints the
reconnects per second and the relay's CPU per reconnect (user + system time from /proc over
the run). With `--baseline-tree` a relay from that tree runs at the same time as this one,
both on fresh stores of the same kind, and the ratios of this tree to it are printed, per run
and as medians. A benchmark, not a test: figures vary with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from send_paths import FMT, cpu_seconds, login, production_env, register, start_relay

from protocol.codec import decode_server_frame
from protocol.frames import QueueEmpty
from protocol.signatures import IdentityKeyPair


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    pid: int
    devices: list[tuple[str, IdentityKeyPair]]


@dataclass(frozen=True, slots=True)
class Figures:
    per_s: float
    cpu_us: float | None


async def enrol(url: str, pid: int, count: int) -> Target:
    """`count` registered devices (device 1 of their own user each), their connections closed."""
    gate = asyncio.Semaphore(50)

    async def one() -> tuple[str, IdentityKeyPair]:
        async with gate:
            ws, user, key = await register(url)
            await ws.close()
            return user, key

    return Target(url, pid, list(await asyncio.gather(*(one() for _ in range(count)))))


async def reconnect_all(target: Target, concurrency: int) -> Figures:
    """Every device of `target` reconnects, reads up to its `queue.empty`, and closes."""
    gate = asyncio.Semaphore(concurrency)

    async def one(user: str, key: IdentityKeyPair) -> None:
        async with gate:
            ws = await login(target.url, user, key)
            while not isinstance(
                decode_server_frame(await ws.recv(), FMT, lambda rid: None), QueueEmpty
            ):
                pass
            await ws.close()

    cpu = cpu_seconds(target.pid)
    started = time.perf_counter()
    await asyncio.gather(*(one(user, key) for user, key in target.devices))
    elapsed = time.perf_counter() - started
    after = cpu_seconds(target.pid)
    count = len(target.devices)
    used = None if cpu is None or after is None else (after - cpu) / count * 1e6
    return Figures(count / elapsed, used)


async def measure(
    relays: Sequence[tuple[str, int]], devices: int, concurrency: int, runs: int
) -> list[list[Figures]]:
    targets = await asyncio.gather(*(enrol(url, pid, devices) for url, pid in relays))
    results: list[list[Figures]] = [[] for _ in relays]
    for run in range(runs):
        found = await asyncio.gather(*(reconnect_all(t, concurrency) for t in targets))
        for i, figures in enumerate(found):
            results[i].append(figures)
        print(f"run {run + 1}: " + "  |  ".join(_shown(f) for f in found), flush=True)
    return results


def _shown(figures: Figures) -> str:
    cpu = "" if figures.cpu_us is None else f", {figures.cpu_us:,.0f} µs relay CPU each"
    return f"{figures.per_s:,.0f} reconnects/s{cpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--admin-dsn", help="PostgreSQL URL to create run databases with")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--tree", type=Path, help="run the relay under test from this tree")
    parser.add_argument("--baseline-tree", type=Path, help="a relay from this tree alongside")
    args = parser.parse_args()
    trees = [args.tree] if args.baseline_tree is None else [args.baseline_tree, args.tree]
    labels = ["relay"] if args.baseline_tree is None else ["baseline tree", "tree under test"]
    with contextlib.ExitStack() as stack:
        relays = []
        for tree in trees:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            env = stack.enter_context(production_env(args))
            proc, url = start_relay(
                data_dir / "data", env, tree=None if tree is None else tree.resolve()
            )
            stack.callback(proc.wait, 30)
            stack.callback(proc.terminate)
            relays.append((url, proc.pid))
        results = asyncio.run(measure(relays, args.devices, args.concurrency, args.runs))
    for label, found in zip(labels, results, strict=True):
        cpus = [f.cpu_us for f in found if f.cpu_us is not None]
        cpu = f", {statistics.median(cpus):,.0f} µs relay CPU each" if cpus else ""
        print(
            f"median of {args.runs} ({label}): "
            f"{statistics.median(f.per_s for f in found):,.0f} reconnects/s{cpu}"
        )
    if len(results) == 2:
        base, mine = results
        rates = [m.per_s / b.per_s for m, b in zip(mine, base, strict=True)]
        cpus = [
            m.cpu_us / b.cpu_us for m, b in zip(mine, base, strict=True) if m.cpu_us and b.cpu_us
        ]
        print(
            f"tree under test / baseline tree, median of the per-run ratios: "
            f"rate {statistics.median(rates):.3f}"
            + (f", CPU per reconnect {statistics.median(cpus):.3f}" if cpus else "")
        )


if __name__ == "__main__":
    main()
