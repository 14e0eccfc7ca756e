"""The guarantee of spec §4: nothing answered `ok` is lost when a relay process crashes."""

from __future__ import annotations

import asyncio

import pytest

from .support import Device, ServerClosed, new_user, offline_user

N_MESSAGES = 200
KILL_AFTER = 100


@pytest.mark.parametrize("proto", ["msgpack", "json"])
async def test_sigkill_loses_nothing_acknowledged(relay_factory, proto):
    r = relay_factory()
    bob = await offline_user(r.url, devices=2)
    carol = await offline_user(r.url, devices=1)
    sender = await new_user(r.url, proto=proto)

    ledger: dict[bytes, tuple[str, list[int]]] = {}  # message id -> (user, stored devices)
    oks = 0
    killed = asyncio.Event()

    async def one(i: int) -> None:
        nonlocal oks
        to = bob if i % 2 == 0 else carol
        devices = [d.device for d in to]
        try:
            answer = await sender.send_message(
                to[0].user, devices, body=f"crash-test {i}".encode(), timeout=30
            )
        except ServerClosed:
            return  # no answer: the sender still owns the message (not in the ledger)
        assert answer["t"] == "ok", answer
        assert answer["delivered"] == [], answer
        assert answer["stored"] == devices, answer
        ledger[answer["id"]] = (to[0].user, answer["stored"])
        oks += 1
        if oks == KILL_AFTER and not killed.is_set():
            r.kill()  # SIGKILL, right now, while other sends are in flight
            killed.set()

    await asyncio.gather(*(one(i) for i in range(N_MESSAGES)))
    if not killed.is_set():  # every send finished before the 100th ok was counted
        r.kill()
    assert len(ledger) >= KILL_AFTER
    await sender.wait_closed(15)

    await r.arestart()
    expected: dict[tuple[str, int], set[bytes]] = {}
    for msg_id, (user, stored) in ledger.items():
        for dev in stored:
            expected.setdefault((user, dev), set()).add(msg_id)

    for dev in [*bob, *carol]:
        dev.url = r.url
        auth = await dev.reconnect()
        got = await dev.drain(ack=True, timeout=30)
        ids = [d["id"] for d in got]
        assert len(ids) == len(set(ids)), "one connection delivers each message once"
        want = expected.get((dev.user, dev.device), set())
        missing = want - set(ids)
        assert not missing, f"{dev!r}: {len(missing)} acknowledged messages lost in the crash"
        # Messages never acknowledged may or may not have made it; nothing else may appear.
        assert auth["queued"] >= len(want)
        for d in got:
            assert d["from"] == sender.user
        await dev.sync()
        await dev.close()

    # After draining, everything is acked: nothing comes back.
    for dev in [*bob, *carol]:
        auth = await dev.reconnect()
        assert auth["queued"] == 0
        assert await dev.drain() == []
        await dev.close()


async def test_sigkill_with_online_recipient(relay_factory):
    """Messages stored after an ack timeout survive a crash too."""
    r = relay_factory(ack_timeout=0.3)
    sender = await new_user(r.url)
    silent = await new_user(r.url)  # connected, never acks
    await silent.next_push("queue_empty")
    answers = await asyncio.gather(*(sender.send_message(silent) for _ in range(20)))
    assert all(a["t"] == "ok" and a["stored"] == [1] for a in answers), answers
    r.kill()
    await silent.wait_closed(15)
    await r.arestart()
    again = Device(r.url, identity=silent.identity, user=silent.user, device=silent.device)
    auth = await again.auth()
    assert auth["queued"] == 20
    got = await again.drain()
    assert {d["id"] for d in got} == {a["id"] for a in answers}
    await again.close()
