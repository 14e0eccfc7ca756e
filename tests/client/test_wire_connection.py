"""`protocol.wire.WireConnection` against a real relay process (embedded store).

The one low-level client: the handshake in both sub-protocols, answers matched
by rid while several requests are in flight, refusals and close codes as typed
errors, pushes as a stream or to a handler, acks, raw bytes, a late answer.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e.support import RelayProcess, stop_relays

from protocol.codec import WireFormat
from protocol.errors import CloseCode, ErrorCode
from protocol.frames import (
    Deliver,
    DeviceMessage,
    DevicesList,
    DevicesListOk,
    Error,
    KeysCount,
    KeysCountOk,
    KeysFetch,
    KeysFetchOk,
    QueueEmpty,
    Send,
    SendOk,
)
from protocol.signatures import IdentityKeyPair, KeyScheme
from protocol.wire import (
    AnswerTimeout,
    ConnectionLost,
    RequestRefused,
    ServerPush,
    WireConnection,
    WireOptions,
)

WAIT = 10.0


@pytest.fixture(scope="module")
def wire_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    relay = RelayProcess(tmp_path_factory.mktemp("wire") / "relay", {})
    relay.start()
    yield relay
    problems = stop_relays([relay])
    assert not problems, problems


@dataclass(frozen=True)
class Registered:
    """A registered device: its identity and address, to authenticate again."""

    identity: IdentityKeyPair
    user: str
    device: int


async def registered(url: str, options: WireOptions | None = None) -> Registered:
    identity = IdentityKeyPair.generate(KeyScheme.ED25519)
    conn = await WireConnection.open(url, options)
    try:
        ok = await conn.register(identity)
    finally:
        await conn.close()
    return Registered(identity, ok.user, ok.device)


@pytest.fixture
async def opened() -> AsyncIterator[list[WireConnection]]:
    """Connections a test opens; all closed at its end."""
    conns: list[WireConnection] = []
    yield conns
    for conn in conns:
        await conn.close()


def send_frame(conn: WireConnection, to: str, body: bytes) -> Send:
    return Send(
        rid=conn.next_rid(),
        id=uuid.uuid4().bytes,
        to=to,
        ts=int(time.time() * 1000),
        nonce=secrets.token_bytes(24),
        devices=(DeviceMessage(device=1, type=2, body=body),),
    )


@pytest.mark.parametrize("fmt", list(WireFormat))
async def test_register_then_authenticate_in_either_format(
    wire_relay: RelayProcess, fmt: WireFormat, opened: list[WireConnection]
) -> None:
    options = WireOptions(fmt=fmt)
    account = await registered(wire_relay.url, options)
    conn = await WireConnection.open(wire_relay.url, options)
    opened.append(conn)
    assert conn.fmt is fmt and conn.websocket.subprotocol == fmt.value
    assert len(conn.challenge.nonce) == 32
    ok = await conn.auth(account.identity, account.user, account.device)
    assert (ok.user, ok.device) == (account.user, account.device)


async def test_no_offer_speaks_msgpack(wire_relay: RelayProcess) -> None:
    conn = await WireConnection.open(wire_relay.url, WireOptions(fmt=WireFormat.JSON, offer=()))
    try:
        assert conn.fmt is WireFormat.MSGPACK and conn.websocket.subprotocol is None
        identity = IdentityKeyPair.generate(KeyScheme.ED25519)
        assert (await conn.register(identity)).device == 1
    finally:
        await conn.close()


async def test_the_environments_proxy_by_default_and_none_connects_directly(
    wire_relay: RelayProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):  # either case
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(OSError):
        await WireConnection.open(wire_relay.url, WireOptions())
    conn = await WireConnection.open(wire_relay.url, WireOptions(proxy=None))
    try:
        identity = IdentityKeyPair.generate(KeyScheme.ED25519)
        assert (await conn.register(identity)).device == 1
    finally:
        await conn.close()


async def test_answers_matched_by_rid_while_many_are_in_flight(
    wire_relay: RelayProcess, opened: list[WireConnection]
) -> None:
    account = await registered(wire_relay.url)
    conn = await WireConnection.open(wire_relay.url)
    opened.append(conn)
    await conn.auth(account.identity, account.user, account.device)
    counts = [conn.request(KeysCount(rid=conn.next_rid()), KeysCountOk) for _ in range(10)]
    lists = [conn.request(DevicesList(rid=conn.next_rid()), DevicesListOk) for _ in range(10)]
    fetch = conn.request(KeysFetch(rid=conn.next_rid(), user=str(uuid.uuid4())), KeysFetchOk)
    answers = await asyncio.gather(*counts, *lists, fetch, return_exceptions=True)
    assert all(isinstance(a, KeysCountOk) for a in answers[:10]), answers[:10]
    assert all(isinstance(a, DevicesListOk) and len(a.devices) == 1 for a in answers[10:20])
    refused = answers[20]
    assert isinstance(refused, RequestRefused) and refused.code is ErrorCode.UNKNOWN_USER
    assert len({a.rid for a in answers[:20] if not isinstance(a, BaseException)}) == 20


async def test_pushes_stream_in_order_and_an_ack_removes_the_message(
    wire_relay: RelayProcess, opened: list[WireConnection]
) -> None:
    alice, bob = await registered(wire_relay.url), await registered(wire_relay.url)
    sender = await WireConnection.open(wire_relay.url)
    opened.append(sender)
    await sender.auth(alice.identity, alice.user, alice.device)
    for body in (b"first", b"second"):
        ok = await sender.request(send_frame(sender, bob.user, body), SendOk)
        assert ok.stored == (1,)

    receiver = await WireConnection.open(wire_relay.url)
    opened.append(receiver)
    assert (await receiver.auth(bob.identity, bob.user, bob.device)).queued == 2
    got: list[ServerPush] = []
    async with asyncio.timeout(WAIT):
        async for push in receiver.pushes():
            got.append(push)
            if isinstance(push, QueueEmpty):
                break
    delivers = [p for p in got if isinstance(p, Deliver)]
    assert [d.body for d in delivers] == [b"first", b"second"]
    assert all(d.from_user == alice.user for d in delivers)
    assert await receiver.ack([d.id for d in delivers])
    await receiver.request(KeysCount(rid=receiver.next_rid()), KeysCountOk)  # the ack landed
    await receiver.close()
    assert receiver.closed and not await receiver.ack([delivers[0].id])

    again = await WireConnection.open(wire_relay.url)
    opened.append(again)
    assert (await again.auth(bob.identity, bob.user, bob.device)).queued == 0


async def test_push_handler_and_live_delivery(
    wire_relay: RelayProcess, opened: list[WireConnection]
) -> None:
    alice, bob = await registered(wire_relay.url), await registered(wire_relay.url)
    delivered: asyncio.Queue[Deliver] = asyncio.Queue()

    def on_push(push: ServerPush) -> None:
        if isinstance(push, Deliver):
            delivered.put_nowait(push)

    receiver = await WireConnection.open(wire_relay.url, on_push=on_push)
    opened.append(receiver)
    await receiver.auth(bob.identity, bob.user, bob.device)
    sender = await WireConnection.open(wire_relay.url)
    opened.append(sender)
    await sender.auth(alice.identity, alice.user, alice.device)
    sent = send_frame(sender, bob.user, b"live")
    answer = asyncio.ensure_future(sender.request(sent, SendOk))
    push = await asyncio.wait_for(delivered.get(), WAIT)
    assert (push.id, push.body) == (sent.id, b"live")
    assert await receiver.ack([push.id])
    assert (await asyncio.wait_for(answer, WAIT)).delivered == (1,)


async def test_replaced_connection_ends_with_its_close_code(
    wire_relay: RelayProcess, opened: list[WireConnection]
) -> None:
    account = await registered(wire_relay.url)
    ended = asyncio.Event()
    first = await WireConnection.open(wire_relay.url, on_close=lambda conn: ended.set())
    opened.append(first)
    await first.auth(account.identity, account.user, account.device)
    second = await WireConnection.open(wire_relay.url)
    opened.append(second)
    await second.auth(account.identity, account.user, account.device)
    await asyncio.wait_for(ended.wait(), WAIT)
    assert first.closed and first.close_code == CloseCode.REPLACED
    with pytest.raises(ConnectionLost) as info:
        await first.request(KeysCount(rid=first.next_rid()), KeysCountOk)
    assert info.value.close_code is CloseCode.REPLACED


async def test_raw_bytes_reach_the_relay_as_sent(
    wire_relay: RelayProcess, opened: list[WireConnection]
) -> None:
    errors: asyncio.Queue[Error] = asyncio.Queue()

    def on_push(push: ServerPush) -> None:
        if isinstance(push, Error):
            errors.put_nowait(push)

    conn = await WireConnection.open(wire_relay.url, on_push=on_push)
    opened.append(conn)
    await conn.send_raw(b"\xc1 not msgpack")
    error = await asyncio.wait_for(errors.get(), WAIT)
    assert error.code is ErrorCode.BAD_FRAME and error.rid is None


async def test_a_close_to_a_relay_that_reads_nothing_takes_the_close_timeout(
    tmp_path: Path,
) -> None:
    # websockets' close waits for room in the write buffer before its own timeout starts,
    # and a stopped relay never gives any: the close hung until the relay read again.
    relay = RelayProcess(tmp_path / "relay", {})
    relay.start()
    try:
        conn = await WireConnection.open(relay.url, WireOptions(close_timeout=1))
        os.kill(relay.pid, signal.SIGSTOP)
        try:
            chunk = secrets.token_bytes(1024 * 1024)
            with pytest.raises(TimeoutError):  # the kernel's buffers full, then websockets'
                for _ in range(256):
                    async with asyncio.timeout(2):
                        await conn.send_raw(chunk)
            async with asyncio.timeout(WAIT):
                await conn.close()
            assert conn.closed
        finally:
            os.kill(relay.pid, signal.SIGCONT)
    finally:
        assert not stop_relays([relay])


async def test_a_relay_that_stops_answering_is_dropped(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay", {})
    relay.start()
    try:
        account = await registered(relay.url)
        conn = await WireConnection.open(relay.url, WireOptions(request_timeout=0.5))
        await conn.auth(account.identity, account.user, account.device)
        os.kill(relay.pid, signal.SIGSTOP)
        try:
            with pytest.raises(AnswerTimeout):
                await conn.request(KeysCount(rid=conn.next_rid()), KeysCountOk)
            await asyncio.wait_for(conn.wait_closed(), WAIT)
        finally:
            os.kill(relay.pid, signal.SIGCONT)
        assert conn.closed
        await conn.close()
    finally:
        assert not stop_relays([relay])
