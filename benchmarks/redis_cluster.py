"""One Redis against a Redis Cluster, in the same run: two relay nodes sharing one PostgreSQL
database, first on the machine's Redis, then on a Redis Cluster of 3 masters and 3 replicas
started here on loopback (`--redis-cluster`), measured in alternating rounds.

    python benchmarks/redis_cluster.py --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres \
        --redis-url redis://127.0.0.1:6379/0 --pairs 20 --messages 300 --rounds 3

Each round measures, on fresh users: "cross node" (the sender on one node, the receiver online
on the other, acking every delivery: replay claim, presence lookup and two bus messages per
message) and "stored" (the receiver offline: replay claim and a group commit). Senders keep 32
sends outstanding. Prints each round, then the medians, the ratio cluster/single, the relays'
CPU per message (both nodes, user + system from /proc), the Redis servers' CPU per message
(INFO cpu; all six nodes of the cluster; the machine's Redis is shared with whatever else
runs, so its figure is an upper bound) and this generator's own
CPU per message. A benchmark, not a test: figures vary with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.e2e: the cluster

from send_paths import cpu_seconds, production_env, receiver, register, sender, start_relay

from tests.e2e.redis_cluster import RedisClusterServers, redis_cluster

WINDOW = 32


@dataclass
class Deployment:
    name: str
    urls: list[str]
    relay_pids: list[int]
    redis_ports: list[int]  # the Redis servers whose CPU is counted

    def relay_cpu(self) -> float:
        return sum(cpu_seconds(pid) or 0.0 for pid in self.relay_pids)

    def redis_cpu(self) -> float:
        total = 0.0
        for port in self.redis_ports:
            with redis.Redis(host="127.0.0.1", port=port) as client:
                info = client.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return total


@dataclass
class Figure:
    rate: float  # messages per second
    relay_us: float  # relay CPU per message, both nodes
    redis_us: float  # Redis CPU per message
    generator_us: float  # this process's CPU per message


async def _measured(deployment: Deployment, total: int, *work: Awaitable[None]) -> Figure:
    relay, server, own = deployment.relay_cpu(), deployment.redis_cpu(), time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*work)
    elapsed = time.perf_counter() - start
    per = 1e6 / total
    return Figure(
        total / elapsed,
        (deployment.relay_cpu() - relay) * per,
        (deployment.redis_cpu() - server) * per,
        (time.process_time() - own) * per,
    )


async def cross_node(deployment: Deployment, pairs: int, messages: int, size: int) -> Figure:
    urls = deployment.urls
    senders = [await register(urls[i % 2]) for i in range(pairs)]
    receivers = [await register(urls[(i + 1) % 2]) for i in range(pairs)]
    for ws, _, _ in receivers:
        await ws.recv()  # queue_empty
    figure = await _measured(
        deployment,
        pairs * messages,
        *(
            sender(s[0], r[1], messages, size, WINDOW)
            for s, r in zip(senders, receivers, strict=True)
        ),
        *(receiver(r[0], messages) for r in receivers),
    )
    for ws, _, _ in (*senders, *receivers):
        await ws.close()
    return figure


async def stored(deployment: Deployment, pairs: int, messages: int, size: int) -> Figure:
    urls = deployment.urls
    senders = [await register(urls[i % 2]) for i in range(pairs)]
    receivers = [await register(urls[(i + 1) % 2]) for i in range(pairs)]
    for ws, _, _ in receivers:
        await ws.close()
    figure = await _measured(
        deployment,
        pairs * messages,
        *(
            sender(s[0], r[1], messages, size, WINDOW)
            for s, r in zip(senders, receivers, strict=True)
        ),
    )
    for ws, _, _ in senders:
        await ws.close()
    return figure


@contextlib.contextmanager
def relays(tmp: Path, name: str, env: dict[str, str]) -> Iterator[list[tuple[int, str]]]:
    procs: list[subprocess.Popen[str]] = []
    started: list[tuple[int, str]] = []
    try:
        for node in ("a", "b"):
            proc, url = start_relay(tmp / f"{name}-{node}", env, "--node-id", f"{name}-{node}")
            procs.append(proc)
            started.append((proc.pid, url))
        yield started
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def _all_nodes(servers: RedisClusterServers) -> list[int]:
    """Masters and replicas: replicating the writes is part of the cost."""
    return [n.port for n in servers.live_nodes()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=300, help="per pair, path and round")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--admin-dsn", required=True, help="PostgreSQL URL to create the run's databases with"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    single_port = redis.Redis.from_url(args.redis_url).connection_pool.connection_kwargs["port"]
    results: dict[tuple[str, str], list[Figure]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_cluster() as servers,
        production_env(args) as single_env,
        production_env(args) as cluster_env,  # its keys go with the cluster, thrown away
    ):
        cluster_env = {
            **cluster_env,
            "RELAY_REDIS_URL": servers.url,
            "RELAY_REDIS_CLUSTER": "true",
        }
        with (
            relays(Path(tmp), "single", single_env) as single_nodes,
            relays(Path(tmp), "cluster", cluster_env) as cluster_nodes,
        ):
            deployments = [
                Deployment(
                    "one Redis",
                    [u for _, u in single_nodes],
                    [p for p, _ in single_nodes],
                    [int(single_port)],
                ),
                Deployment(
                    "Redis Cluster",
                    [u for _, u in cluster_nodes],
                    [p for p, _ in cluster_nodes],
                    _all_nodes(servers),
                ),
            ]
            for n in range(args.rounds):
                order = deployments if n % 2 == 0 else deployments[::-1]
                for deployment in order:
                    for path, run in (("cross node", cross_node), ("stored", stored)):
                        figure = asyncio.run(run(deployment, args.pairs, args.messages, args.size))
                        results.setdefault((deployment.name, path), []).append(figure)
                        print(
                            f"round {n + 1}: {deployment.name:13} {path:10} "
                            f"{figure.rate:7,.0f} msg/s  relay {figure.relay_us:5.0f} us/msg  "
                            f"redis {figure.redis_us:4.0f} us/msg  "
                            f"generator {figure.generator_us:4.0f} us/msg",
                            flush=True,
                        )

    def med(name: str, path: str, attr: str) -> float:
        return statistics.median(getattr(f, attr) for f in results[(name, path)])

    print(
        f"\n| Redis | path | msg/s (median of {args.rounds}) | relay CPU us/msg | "
        "Redis CPU us/msg | generator CPU us/msg |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for path in ("cross node", "stored"):
        for name in ("one Redis", "Redis Cluster"):
            print(
                f"| {name} | {path} | {med(name, path, 'rate'):,.0f} | "
                f"{med(name, path, 'relay_us'):.0f} | {med(name, path, 'redis_us'):.0f} | "
                f"{med(name, path, 'generator_us'):.0f} |"
            )
    for path in ("cross node", "stored"):
        ratio = med("Redis Cluster", path, "rate") / med("one Redis", path, "rate")
        print(f"{path}: cluster/single {ratio:.2f}")


if __name__ == "__main__":
    main()
