"""Relay nodes sharing one PostgreSQL database and a Redis Cluster (3 masters, 3 replicas on
loopback, `--redis-cluster`): messages across nodes over sharded pub/sub, and a master
killed with SIGKILL during a send burst: no send accepted unchecked (every nonce ok'd before,
during or after the failover is refused `replay` when sent again under another id), no
ok'd message lost, and the relays recover by themselves once the replica is promoted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from .redis_cluster import RedisClusterServers, redis_cluster
from .stores import StoreProvisioner
from .support import Device, RelayProcess, new_user, offline_user, stop_relays
from .test_cluster import Ledger, Receiver

StartNodes = Callable[..., list[RelayProcess]]
RETRY_FOR_S = 30.0  # a send is retried (same id and nonce) until ok for this long
RECOVERY_BOUND_S = 15.0  # after the promotion, sends succeed again within this


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[RedisClusterServers]:
    with redis_cluster() as servers:
        yield servers


def _nodes_on(
    servers: RedisClusterServers, root: Path, names: list[str], **options: Any
) -> Iterator[tuple[StoreProvisioner, list[RelayProcess]]]:
    provisioner = StoreProvisioner("production", redis_cluster_url=servers.url)
    started: list[RelayProcess] = []
    try:
        env = provisioner.new_store_env()
        for name in names:
            node = RelayProcess(root / f"node-{name}", {"node_id": name, **options}, env=env)
            started.append(node)
            node.start()
        yield provisioner, started
    finally:
        problems = stop_relays(started)
        provisioner.redis_cluster_url = servers.url  # a live seed, the first may be dead
        provisioner.cleanup()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def pair(shared_cluster: RedisClusterServers, tmp_path: Path) -> Iterator[list[RelayProcess]]:
    for _, nodes in _nodes_on(shared_cluster, tmp_path, ["a", "b"]):
        yield nodes


async def test_messages_across_nodes_over_a_redis_cluster(
    pair: list[RelayProcess], shared_cluster: RedisClusterServers
) -> None:
    a, b = pair
    alice = await new_user(a.url)
    bob = await new_user(b.url)
    for dev in (alice, bob):
        await dev.next_push("queue_empty")

    # Online both ways: each node's bus is a shard channel, hash-tagged by the node id.
    sent = asyncio.ensure_future(alice.send_message(bob, body=b"hello bob"))
    got = await bob.next_push("deliver")
    await bob.ack(got["id"])
    assert got["body"] == b"hello bob" and got["from"] == alice.user
    answer = await sent
    assert answer["t"] == "ok" and answer["delivered"] == [1], answer
    sent = asyncio.ensure_future(bob.send_message(alice, body=b"hello alice"))
    got = await alice.next_push("deliver")
    await alice.ack(got["id"])
    assert (await sent)["delivered"] == [1]

    prefix = a.extra_env["RELAY_REDIS_PREFIX"]
    channels = set()
    for node in shared_cluster.live_nodes():
        if shared_cluster.role(node) == "master":
            with node.client() as c:
                channels |= set(c.execute_command("PUBSUB", "SHARDCHANNELS", f"{prefix}*"))
    assert channels == {f"{prefix}{{a}}node:a".encode(), f"{prefix}{{b}}node:b".encode()}

    # Offline: stored on one node, fetched on the other.
    (carol,) = await offline_user(b.url)
    answer = await alice.send_message(carol, body=b"for later")
    assert answer["delivered"] == [] and answer["stored"] == [1], answer
    carol.url = a.url
    auth = await carol.reconnect()
    assert auth["queued"] == 1
    assert [d["body"] for d in await carol.drain()] == [b"for later"]
    await carol.sync()

    # A nonce is claimed in the cluster, not on a node: a copy under another id, sent by
    # the same device through the other node, is refused `replay`.
    frame = alice.send_frame(carol, body=b"once")
    assert (await alice.request(frame))["t"] == "ok"
    alice.url = b.url
    await alice.reconnect()
    copy = {**frame, "rid": alice.next_rid(), "id": alice.send_frame(carol)["id"]}
    refused = await alice.request(copy)
    assert refused["t"] == "error" and refused["code"] == "replay", refused
    for dev in (alice, bob, carol):
        await dev.close()


# --------------------------------------------------------------------------- failover


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterServers]:
    """A cluster of its own: the test kills one of its masters."""
    with redis_cluster() as servers:
        yield servers


async def _until_ok(
    sender: Device,
    frame: dict[str, Any],
    refusals: dict[str, int],
    answers: dict[bytes, str] | None = None,
) -> float:
    """Sends `frame` (same id and nonce each time) until answered ok; counts the refusals;
    the time of the ok."""
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        answer = await sender.request({**frame, "rid": sender.next_rid()}, timeout=30)
        if answer["t"] == "ok":
            if answers is not None:
                answers[frame["id"]] = f"{answer} at {time.monotonic():.2f}"
            return time.monotonic()
        code = str(answer.get("code"))
        refusals[code] = refusals.get(code, 0) + 1
        assert code == "unavailable", f"refused other than unavailable: {answer}"
        assert time.monotonic() < deadline, f"no ok within {RETRY_FOR_S}s: {answer}"
        await asyncio.sleep(0.05)  # backoff between retries, not synchronisation


async def test_a_master_killed_during_a_send_burst(
    own_cluster: RedisClusterServers, tmp_path: Path
) -> None:
    for _, nodes in _nodes_on(
        own_cluster, tmp_path, ["a", "b"], rate_requests=5000, rate_requests_burst=10000
    ):
        await _burst_through_a_failover(own_cluster, nodes)


async def _burst_through_a_failover(
    servers: RedisClusterServers, nodes: list[RelayProcess]
) -> None:
    a, b = nodes
    total, kill_after, in_flight = 3000, 800, 40
    ledger = Ledger()
    receivers = []
    for node in (a, b):
        for _ in range(3):
            dev = await new_user(node.url)
            await dev.next_push("queue_empty")
            receivers.append(Receiver(dev, ledger, [node.url]))
    senders = [await new_user(n.url) for n in (a, b)]
    stop = asyncio.Event()
    receiving = [asyncio.create_task(r.run(stop)) for r in receivers]
    # The master of node b's bus channel: its listener must move with the failover too.
    prefix = a.extra_env["RELAY_REDIS_PREFIX"]
    victim = servers.master_of(f"{prefix}{{b}}node:b")
    killed_at: list[float] = []
    refusals: dict[str, int] = {}
    frames: list[tuple[Device, dict[str, Any], float]] = []  # sender, frame, ok time
    when: dict[bytes, str] = {}  # for a failure's message: what each send was answered

    async def send_all(sender: Device, offset: int) -> None:
        slots = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            target = receivers[(offset + i) % len(receivers)].device
            frame = sender.send_frame(target, body=f"burst {offset}-{i}".encode())
            async with slots:
                ok_at = await _until_ok(sender, frame, refusals, when)
            ledger.ok[frame["id"]] = (target.user or "", target.device or 0)
            frames.append((sender, frame, ok_at))
            if len(ledger.ok) >= kill_after and not killed_at:
                killed_at.append(time.monotonic())
                servers.kill(victim)

        await asyncio.gather(*(one(i) for i in range(total // len(senders))))

    await asyncio.gather(*(send_all(s, i * 5) for i, s in enumerate(senders)))
    assert killed_at and not victim.alive()
    assert len(ledger.ok) == total
    await asyncio.to_thread(servers.wait_promoted, victim)
    promoted_at = time.monotonic()

    # Recovered without a restart: a fresh send through each node is ok within the bound.
    for sender in senders:
        target = receivers[0].device
        frame = sender.send_frame(target, body=b"after the failover")
        started = time.monotonic()
        ok_at = await _until_ok(sender, frame, {})
        assert ok_at - started < RECOVERY_BOUND_S
        ledger.ok[frame["id"]] = (target.user or "", target.device or 0)
        frames.append((sender, frame, ok_at))

    # Node b's bus moved to the promoted master: a send from a to a device on b is
    # delivered live again (not only stored) within the bound.
    sender, target = senders[0], receivers[-1].device
    deadline = time.monotonic() + RECOVERY_BOUND_S
    while True:
        frame = sender.send_frame(target, body=b"live across nodes again")
        answer = await sender.request(frame, timeout=30)
        assert answer["t"] == "ok", answer
        ledger.ok[frame["id"]] = (target.user or "", target.device or 0)
        frames.append((sender, frame, time.monotonic()))
        if answer["delivered"] == [1]:
            break
        assert time.monotonic() < deadline, f"no live cross-node delivery: {answer}"
    assert "node bus listening again" in b.stderr_tail(5000)

    # Nothing accepted unchecked: every nonce ok'd (before, during and after the failover)
    # sent again under another id is refused `replay`.
    replayed: dict[str, int] = {}
    for sender, frame, _ in frames:
        copy = {**frame, "id": sender.send_frame(receivers[0].device)["id"]}
        answer = await sender.request({**copy, "rid": sender.next_rid()}, timeout=30)
        key = answer["t"] if answer["t"] == "ok" else str(answer.get("code"))
        replayed[key] = replayed.get(key, 0) + 1
    assert replayed == {"replay": len(frames)}, replayed

    # Nothing ok'd lost: the receivers get every message.
    ledger.expect_all()
    try:
        await asyncio.wait_for(ledger.complete.wait(), 60)
    except TimeoutError:
        lost = {mid: when.get(mid) for mid in ledger.outstanding}
        raise AssertionError(
            f"{len(ledger.outstanding)} ok'd messages never delivered: {lost}\n"
            f"{a.stderr_tail()}\n{b.stderr_tail()}"
        ) from None
    finally:
        stop.set()
        await asyncio.gather(*receiving, return_exceptions=True)
    assert ledger.violations == [], ledger.violations[:5]
    oks_after_kill = sum(1 for _, _, ok_at in frames if ok_at > killed_at[0])
    print(
        f"\n{len(frames)} ok; refusals during the failover {refusals}; "
        f"promotion {promoted_at - killed_at[0]:.1f}s after the kill; "
        f"{oks_after_kill} ok after the kill; replays refused {replayed}"
    )
    with redis.RedisCluster.from_url(servers.url) as check:
        assert check.ping()
    for dev in (*senders, *(r.device for r in receivers)):
        await dev.close()
