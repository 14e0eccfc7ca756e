"""Several relay nodes sharing one PostgreSQL database and one Redis prefix (production store
only): messages, replacement, removal and keys.low across nodes; a node killed with SIGKILL
during a burst, and a node paused with SIGSTOP past the presence expiry, lose nothing."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio

from .stores import REDIS_URL, StoreProvisioner
from .support import (
    Device,
    NoFrame,
    RelayProcess,
    ServerClosed,
    link_device,
    new_user,
    offline_user,
    prekey,
    signed_prekey,
    stop_relays,
    wait_until,
)

StartNodes = Callable[..., list[RelayProcess]]


@pytest.fixture(scope="module")
def production() -> Iterator[StoreProvisioner]:
    provisioner = StoreProvisioner("production")
    yield provisioner
    provisioner.cleanup()


def _start_nodes(
    provisioner: StoreProvisioner, root: Path, names: list[str], **options: Any
) -> list[RelayProcess]:
    """Nodes sharing one fresh database and Redis prefix, started side by side."""
    env = provisioner.new_store_env()
    nodes = [
        RelayProcess(root / f"node-{name}", {"node_id": name, **options}, env=env) for name in names
    ]
    for node in nodes:
        node.start()
    return nodes


@pytest.fixture
def start_nodes(production: StoreProvisioner, tmp_path: Path) -> Iterator[StartNodes]:
    started: list[RelayProcess] = []

    def start(names: list[str], **options: Any) -> list[RelayProcess]:
        nodes = _start_nodes(production, tmp_path, names, **options)
        started.extend(nodes)
        return nodes

    yield start
    for node in started:  # a paused node must run again to stop
        if node.running():
            os.kill(node.pid, signal.SIGCONT)
    problems = stop_relays(started)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def trio(
    production: StoreProvisioner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RelayProcess]]:
    """Three nodes, shared by the functional tests of this module."""
    nodes = _start_nodes(production, tmp_path_factory.mktemp("trio"), ["a", "b", "c"])
    yield nodes
    problems = stop_relays(nodes)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest_asyncio.fixture
async def nodes(trio: list[RelayProcess]) -> AsyncIterator[list[RelayProcess]]:
    for node in trio:
        assert node.running(), f"node died\n{node.stderr_tail()}"
    yield trio


async def _existing(keys: list[str]) -> int:
    """How many of these Redis keys exist (one round trip)."""
    client = redis_asyncio.Redis.from_url(REDIS_URL)
    try:
        return int(await client.exists(*keys))
    finally:
        await client.aclose()


async def _close_all(*devices: Device) -> None:
    for device in devices:
        await device.close()


# --------------------------------------------------------------------------- functional


async def test_online_and_offline_messages_across_nodes(nodes):
    a, b, c = nodes
    alice = await new_user(a.url)
    alice2 = await link_device(alice)  # registered on a, then moved to b
    alice2.url = b.url
    await alice2.reconnect()
    bob = await new_user(c.url)
    for dev in (alice, alice2, bob):
        await dev.next_push("queue_empty")

    # Online: a -> c, and c -> a + b; every device acks as it receives.
    sent = asyncio.ensure_future(alice.send_message(bob, body=b"hello bob"))
    deliver = await bob.next_push("deliver")
    await bob.ack(deliver["id"])
    assert deliver["body"] == b"hello bob" and deliver["from"] == alice.user
    answer = await _answer(await sent)
    assert answer["delivered"] == [1] and answer["stored"] == [], answer

    pending = asyncio.ensure_future(bob.send_message(alice.user, [1, 2], body=b"hi both"))
    for dev in (alice, alice2):
        got = await dev.next_push("deliver")
        assert got["body"] == b"hi both"
        await dev.ack(got["id"])
    answer = await pending
    assert answer["delivered"] == [1, 2] and answer["stored"] == [], answer

    # Offline: carol was registered on b and is gone; a message from c is stored, and she
    # gets it on a.
    (carol,) = await offline_user(b.url)
    answer = await bob.send_message(carol, body=b"for later")
    assert answer["delivered"] == [] and answer["stored"] == [1], answer
    carol.url = a.url
    auth = await carol.reconnect()
    assert auth["queued"] == 1
    got = await carol.drain()
    assert [d["body"] for d in got] == [b"for later"]
    await carol.sync()
    auth = await carol.reconnect()
    assert auth["queued"] == 0
    await _close_all(alice, alice2, bob, carol)


async def _answer(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["t"] == "ok", answer
    return answer


async def test_late_ack_on_another_node_deletes_the_stored_copy(nodes):
    """The ack comes after the origin's ack timeout: the message is answered `stored`, and
    the late ack (received by another node) still removes it."""
    a, _, c = nodes
    sender = await new_user(a.url)
    slow = await new_user(c.url)
    await slow.next_push("queue_empty")
    answer = await sender.send_message(slow, body=b"slow")
    assert answer["delivered"] == [] and answer["stored"] == [1], answer
    got = await slow.next_push("deliver")
    await slow.ack(got["id"])
    await slow.sync()

    async def queued_after_reconnect() -> bool:
        auth = await slow.reconnect()
        return auth["queued"] == 0

    await wait_until(queued_after_reconnect, 5, "the stored copy to be deleted")
    await slow.no_push("deliver", timeout=0.3)
    await _close_all(sender, slow)


async def test_stored_message_pushed_to_a_device_on_another_node(nodes):
    """A message stored for a device connected elsewhere (its window was full) is pushed on
    that connection, no reconnect needed."""
    a, b, _ = nodes
    sender = await new_user(a.url)
    busy = await new_user(b.url)
    await busy.next_push("queue_empty")
    window = 256
    frames = [sender.send_frame(busy, body=f"m{i}".encode()) for i in range(window + 3)]
    answers = asyncio.gather(*(sender.request(f, timeout=20) for f in frames))
    first = [await busy.next_push("deliver", timeout=20) for _ in range(window)]
    done = await answers
    stored = [x for x in done if x["stored"] == [1]]
    assert len(stored) >= 3, "the window was full: the rest is stored"
    for d in first:
        await busy.ack(d["id"])
    seen = {d["id"] for d in first}
    want = {f["id"] for f in frames}
    while seen != want:
        d = await busy.next_push("deliver", timeout=10)
        seen.add(d["id"])
        await busy.ack(d["id"])
    await busy.sync()
    auth = await busy.reconnect()
    assert auth["queued"] == 0
    await _close_all(sender, busy)


async def test_replacement_across_nodes(nodes):
    a, b, c = nodes
    sender = await new_user(c.url)
    (dev,) = await offline_user(a.url)
    for i in range(5):
        answer = await sender.send_message(dev, body=f"stored {i}".encode())
        assert answer["stored"] == [1]
    auth = await dev.auth()
    assert auth["queued"] == 5
    got = await dev.drain()
    assert len(got) == 5  # acked as they came; no sync: the replacement must apply them
    newer = Device(b.url, identity=dev.identity, user=dev.user, device=dev.device)
    auth = await newer.auth()
    assert await dev.closed_code() == 4001
    assert auth["queued"] == 0, "acks received by the replaced connection took effect first"
    # The newest connection is the device's: messages reach it on b.
    answer = await sender.send_message(dev, body=b"to the new one")
    got = await newer.next_push("deliver")
    await newer.ack(got["id"])
    assert got["body"] == b"to the new one"
    await _close_all(sender, newer)


async def test_remove_closes_the_connection_on_another_node(nodes):
    a, b, _ = nodes
    first = await new_user(a.url)
    second = await link_device(first)
    second.url = b.url
    await second.reconnect()
    await second.next_push("queue_empty")
    await first.request_ok({"t": "devices.remove", "device": 2})
    assert await second.closed_code() == 4002
    await first.close()


async def test_keys_low_reaches_the_device_on_another_node(nodes):
    a, _, c = nodes
    owner = await new_user(c.url)
    await owner.upload(
        signed_prekey=signed_prekey(owner.identity, 1), prekeys=[prekey(i) for i in range(11)]
    )
    fetcher = await new_user(a.url)
    await fetcher.fetch(owner.user)  # 11 -> 10
    await fetcher.fetch(owner.user)  # 10 -> 9: below the mark
    low = await owner.next_push("keys.low")
    assert low == {"t": "keys.low", "prekeys": 9, "pq_prekeys": 0}
    await _close_all(owner, fetcher)


async def test_nodes_registry_lists_every_node(nodes):
    """Each node's heartbeat is in the registry from its start (what `/v1/stats` lists)."""
    prefix = nodes[0].extra_env["RELAY_REDIS_PREFIX"]
    client = redis_asyncio.Redis.from_url(REDIS_URL)
    try:
        registry = await client.hgetall(prefix + "nodes")
    finally:
        await client.aclose()
    assert set(registry) == {b"a", b"b", b"c"}
    for value in registry.values():
        connections, _, beat = value.decode().partition("|")
        assert int(connections) >= 0 and abs(int(beat) - time.time() * 1000) < 60_000


# --------------------------------------------------------------------------- SIGKILL


@dataclass
class Ledger:
    """What the test saw: answers, deliveries, and which acks were confirmed."""

    ok: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # id -> recipient
    delivered: dict[tuple[str, int], set[bytes]] = field(default_factory=dict)
    confirmed: dict[tuple[str, int], set[bytes]] = field(default_factory=dict)
    acked: dict[tuple[str, int], set[bytes]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    after_unconfirmed_ack: int = 0
    outstanding: dict[bytes, tuple[str, int]] = field(default_factory=dict)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def expect_all(self) -> None:
        """From now on, `complete` is set once every ok'd message was delivered."""
        self.outstanding = {
            mid: key for mid, key in self.ok.items() if mid not in self.delivered.get(key, set())
        }
        if not self.outstanding:
            self.complete.set()

    def on_deliver(self, key: tuple[str, int], message_id: bytes) -> None:
        if self.outstanding.get(message_id) == key:
            del self.outstanding[message_id]
            if not self.outstanding:
                self.complete.set()
        if message_id in self.confirmed.get(key, set()):
            self.violations.append(f"{key}: {message_id.hex()} delivered after a confirmed ack")
        elif message_id in self.acked.get(key, set()):
            self.after_unconfirmed_ack += 1
        self.delivered.setdefault(key, set()).add(message_id)


class Receiver:
    """Acks every delivery at once and confirms its acks with a keys.count every few."""

    CONFIRM_EVERY = 25

    def __init__(self, device: Device, ledger: Ledger, fallback: list[str]) -> None:
        self.device = device
        self.ledger = ledger
        self.fallback = itertools.cycle(fallback)
        self.key = (device.user or "", device.device or 0)
        self.reconnects = 0

    async def run(self, stop: asyncio.Event) -> None:
        unconfirmed: list[bytes] = []
        while not stop.is_set():
            try:
                frame = await self.device.next_push("deliver", timeout=0.2)
            except NoFrame:
                await self._confirm(unconfirmed)
                continue
            except ServerClosed:
                await self._move()
                unconfirmed = []  # acks of a dead connection stay unconfirmed
                continue
            self.ledger.on_deliver(self.key, frame["id"])
            try:
                await self.device.ack(frame["id"])
            except Exception:  # the connection is gone: the next read moves it
                continue
            self.ledger.acked.setdefault(self.key, set()).add(frame["id"])
            unconfirmed.append(frame["id"])
            if len(unconfirmed) >= self.CONFIRM_EVERY:
                await self._confirm(unconfirmed)

    async def _confirm(self, unconfirmed: list[bytes]) -> None:
        if not unconfirmed:
            return
        batch = list(unconfirmed)
        try:
            await self.device.sync()
        except (ServerClosed, AssertionError):
            return
        self.ledger.confirmed.setdefault(self.key, set()).update(batch)
        del unconfirmed[: len(batch)]

    async def _move(self) -> None:
        """The node died: connect to a surviving one."""
        self.device.url = next(self.fallback)
        self.reconnects += 1
        await self.device.reconnect()


async def burst_through_a_kill(
    senders: list[Device],
    receivers: list[Receiver],
    ledger: Ledger,
    *,
    total: int,
    kill_after: int,
    in_flight: int,
    kill: Callable[[], object],
) -> bool:
    """`total` sends spread over `senders` (each keeping `in_flight` outstanding) to the
    receivers in turn, each retried with its id and nonce until answered ok and recorded in
    the ledger; `kill` runs once `kill_after` are ok. Whether it ran."""
    killed = asyncio.Event()

    async def send_all(sender: Device, offset: int) -> None:
        slots = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            target = receivers[(offset + i) % len(receivers)].device
            frame = sender.send_frame(target, body=f"burst {offset}-{i}".encode())
            async with slots:
                for _ in range(20):  # retried with the same id and nonce until answered ok
                    answer = await sender.request(frame, timeout=30)
                    if answer["t"] == "ok":
                        break
                else:
                    raise AssertionError(f"never answered ok: {answer}")
            ledger.ok[frame["id"]] = (target.user or "", target.device or 0)
            if len(ledger.ok) >= kill_after and not killed.is_set():
                killed.set()
                kill()

        await asyncio.gather(*(one(i) for i in range(total // len(senders))))

    await asyncio.gather(*(send_all(s, i * 7) for i, s in enumerate(senders)))
    return killed.is_set()


async def test_sigkill_of_a_node_during_a_burst(start_nodes):
    a, b, c = start_nodes(
        ["a", "b", "c"], presence_ttl=3, rate_requests=5000, rate_requests_burst=10000
    )
    total, kill_after, senders_per_node, receivers_per_node, in_flight = 10_000, 3_000, 2, 4, 60
    ledger = Ledger()
    receivers: list[Receiver] = []
    for node in (a, b, c):
        for _ in range(receivers_per_node):
            dev = await new_user(node.url)
            await dev.next_push("queue_empty")
            receivers.append(Receiver(dev, ledger, [a.url, b.url]))
    senders = [await new_user(n.url) for n in (a, b) for _ in range(senders_per_node)]
    stop = asyncio.Event()
    receiving = [asyncio.create_task(r.run(stop)) for r in receivers]
    assert total // len(senders) * len(senders) == total

    started = time.monotonic()
    killed = await burst_through_a_kill(
        senders,
        receivers,
        ledger,
        total=total,
        kill_after=kill_after,
        in_flight=in_flight,
        kill=c.kill,
    )
    burst_s = time.monotonic() - started
    assert killed and not c.running()
    assert len(ledger.ok) == total

    ledger.expect_all()
    try:
        await asyncio.wait_for(ledger.complete.wait(), 60)
    except TimeoutError:
        raise AssertionError(f"{len(ledger.outstanding)} ok'd messages never delivered") from None
    finally:
        stop.set()
        await asyncio.gather(*receiving, return_exceptions=True)
    moved = sum(r.reconnects for r in receivers)
    print(
        f"\n{len(ledger.ok)} ok in {burst_s:.1f}s; {moved} receivers moved; "
        f"{ledger.after_unconfirmed_ack} redelivered after an unconfirmed ack"
    )
    assert moved >= receivers_per_node
    assert ledger.violations == [], ledger.violations[:5]
    await _close_all(*senders, *(r.device for r in receivers))


# --------------------------------------------------------------------------- SIGSTOP


async def test_paused_node_loses_nothing(start_nodes):
    ttl = 1.5
    a, b = start_nodes(["a", "b"], presence_ttl=ttl, ack_timeout=0.5)
    prefix = a.extra_env["RELAY_REDIS_PREFIX"]
    sender = await new_user(a.url)
    stays = await new_user(b.url)  # waits for b to resume
    moves = await new_user(b.url)  # moves to a while b is paused
    for dev in (stays, moves):
        await dev.next_push("queue_empty")
    os.kill(b.pid, signal.SIGSTOP)
    try:
        keys = [f"{prefix}presence:{d.user}:{d.device}" for d in (stays, moves)]
        assert await _existing(keys) == 2

        async def presence_gone() -> bool:
            return await _existing(keys) == 0

        await wait_until(presence_gone, 10 * ttl, "b's presence entries to expire")
        bodies = [f"while paused {i}".encode() for i in range(3)]
        for dev in (stays, moves):
            for body in bodies:
                answer = await sender.send_message(dev, body=body)
                assert answer["delivered"] == [] and answer["stored"] == [1], answer
        mover = Device(a.url, identity=moves.identity, user=moves.user, device=moves.device)
        auth = await mover.auth()
        assert auth["queued"] == 3
        got = await mover.drain()
        assert sorted(d["body"] for d in got) == bodies
        await mover.sync()
    finally:
        os.kill(b.pid, signal.SIGCONT)
    # b runs again: its refresh finds its entries gone, publishes them again and wakes its
    # pumps (the stored messages come without a reconnect); the device that moved is closed.
    got = [await stays.next_push("deliver", timeout=10) for _ in bodies]
    assert sorted(d["body"] for d in got) == bodies
    for d in got:
        await stays.ack(d["id"])
    await stays.sync()
    assert await moves.closed_code() == 4001
    pending = asyncio.ensure_future(sender.send_message(stays, body=b"after"))
    got_after = await stays.next_push("deliver")
    await stays.ack(got_after["id"])
    answer = await pending
    assert answer["delivered"] == [1], "b is reachable again"
    await _close_all(sender, stays, mover)
