"""Issue 7, item 6: a graceful shutdown under load loses nothing answered `ok`.

SIGTERM (or SIGINT) stops accepting, closes every client with 1001, lets every
send in flight reach its outcome, flushes the store and exits 0 within the
shutdown timeout. After a restart on the same store, every message answered
`ok` reaches its recipient, and none comes back after its acknowledgement
took effect.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .support import Device, ServerClosed, new_user, offline_user

SHUTDOWN_TIMEOUT_S = 5.0
EXIT_MARGIN_S = 3.0
SENDERS = 4
SENDS_IN_FLIGHT_PER_SENDER = 4
SIGNAL_AFTER_OKS = 120

Key = tuple[str, int]  # (user, device)


def _key(dev: Device) -> Key:
    assert dev.user is not None and dev.device is not None
    return dev.user, dev.device


async def _signal_and_wait_exit(relay: Any, sig: signal.Signals) -> tuple[int, float]:
    """Send the signal; the exit code and the seconds the process took to exit."""
    began = time.monotonic()
    relay.proc.send_signal(sig)
    code = await asyncio.to_thread(relay.proc.wait, SHUTDOWN_TIMEOUT_S + 30)
    return code, time.monotonic() - began


class Receiver:
    """An online device that acks every delivery and confirms each ack with a round trip."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.seen: set[bytes] = set()
        self.confirmed: set[bytes] = set()  # acks known to have taken effect

    async def run(self) -> None:
        try:
            while True:
                frame = await self.dev.next_push("deliver", timeout=60)
                self.seen.add(frame["id"])
                await self.dev.ack(frame["id"])
                await self.dev.sync()  # answered: the ack before it took effect
                self.confirmed.add(frame["id"])
        except (ServerClosed, ConnectionClosed):
            return


async def test_sigterm_under_load_loses_nothing_acknowledged(relay_factory):
    r = relay_factory(shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    offline = [*(await offline_user(r.url, devices=2)), *(await offline_user(r.url, devices=1))]
    online = [Receiver(await new_user(r.url)) for _ in range(2)]
    for receiver in online:
        await receiver.dev.next_push("queue_empty")
    senders = [await new_user(r.url) for _ in range(SENDERS)]
    lurker = Device(r.url)  # connected, still in its handshake when the signal comes
    await lurker.connect()

    targets: list[tuple[str, list[int]]] = [
        (offline[0].user, [1, 2]),  # type: ignore[list-item]
        (offline[2].user, [1]),  # type: ignore[list-item]
        *((rc.dev.user, [1]) for rc in online),  # type: ignore[misc]
    ]
    ledger: dict[Key, set[bytes]] = defaultdict(set)
    oks = 0
    enough = asyncio.Event()

    async def keep_sending(sender: Device, lane: int) -> None:
        nonlocal oks
        i = lane
        while True:
            user, devices = targets[i % len(targets)]
            i += 1
            try:
                answer = await sender.send_message(user, devices, timeout=30)
            except (ServerClosed, ConnectionClosed):
                return  # no answer: the sender still owns that message
            assert answer["t"] == "ok", answer
            assert sorted(answer["delivered"] + answer["stored"]) == devices, answer
            for dev in devices:
                ledger[(user, dev)].add(answer["id"])
            oks += 1
            if oks >= SIGNAL_AFTER_OKS:
                enough.set()

    receiving = [asyncio.create_task(rc.run()) for rc in online]
    sending = [
        asyncio.create_task(keep_sending(s, lane))
        for s in senders
        for lane in range(SENDS_IN_FLIGHT_PER_SENDER)
    ]
    await asyncio.wait_for(enough.wait(), 60)
    code, took = await _signal_and_wait_exit(r, signal.SIGTERM)
    assert code == 0, r.stderr_tail()
    assert took < SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S, f"exit took {took:.1f}s"
    await asyncio.wait_for(asyncio.gather(*sending, *receiving), 30)

    for dev in [*senders, *(rc.dev for rc in online), lurker]:
        assert await dev.closed_code(10) == 1001, dev
    # Nobody new gets in once the relay is gone.
    with pytest.raises((OSError, InvalidStatus)):
        await Device(r.url).connect()

    await r.arestart()
    seen: dict[Key, set[bytes]] = {_key(rc.dev): rc.seen for rc in online}
    confirmed: dict[Key, set[bytes]] = {_key(rc.dev): rc.confirmed for rc in online}
    for dev in [*offline, *(rc.dev for rc in online)]:
        dev.url = r.url
        await dev.reconnect()
        drained = [frame["id"] for frame in await dev.drain(ack=True, timeout=30)]
        assert len(drained) == len(set(drained)), "one connection delivers each message once"
        again = confirmed.get(_key(dev), set()) & set(drained)
        assert not again, f"{dev!r}: {len(again)} messages delivered again after their ack"
        missing = ledger[_key(dev)] - seen.get(_key(dev), set()) - set(drained)
        assert not missing, f"{dev!r}: {len(missing)} messages answered ok were lost"
        await dev.close()
    assert sum(len(ids) for ids in ledger.values()) >= SIGNAL_AFTER_OKS
    for s in senders:
        await s.close()


async def test_sigint_closes_clients_with_1001_and_exits_0(relay_factory):
    r = relay_factory(shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    alice = await new_user(r.url)
    bob = await offline_user(r.url)
    answer = await alice.send_message(bob[0].user, [1])
    assert answer["t"] == "ok" and answer["stored"] == [1], answer
    code, took = await _signal_and_wait_exit(r, signal.SIGINT)
    assert code == 0, r.stderr_tail()
    assert took < SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S, f"exit took {took:.1f}s"
    assert await alice.closed_code(10) == 1001
    assert alice.close_reason == "server shutting down"
    await r.arestart()
    bob[0].url = r.url
    auth = await bob[0].reconnect()
    assert auth["queued"] == 1
    assert [d["id"] for d in await bob[0].drain()] == [answer["id"]]
    await bob[0].close()
    await alice.close()
