"""A simulated device: a real identity, real pre-keys, the real wire protocol.

Frames are built and read with the `protocol` package (the wire core every
client uses). A device registers once (new user, device 1, a signed pre-key and
a few one-time pre-keys), then authenticates on every later connection. Sends
are queued and written by one writer task per connection so the scheduler
never waits on one slow socket; every `deliver` is acknowledged, acks of one
event-loop turn going out in one `ack` frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

import nacl.public
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from loadtest.e2e import Cipher, CryptoError
from loadtest.ledger import Entry, Ledger
from loadtest.recorder import Recorder
from protocol.codec import WireFormat, decode_server_frame, encode
from protocol.errors import RelayError
from protocol.frames import (
    Ack,
    Answer,
    Auth,
    AuthOk,
    Challenge,
    Deliver,
    DeviceMessage,
    EmptyOk,
    Error,
    KeysFetch,
    KeysFetchOk,
    KeysUpload,
    KeysUploadOk,
    PreKey,
    QueueEmpty,
    Register,
    Send,
    SendOk,
    SignedPreKey,
)
from protocol.payloads import auth_payload, register_payload
from protocol.signatures import IdentityKeyPair, KeyScheme

OPEN_TIMEOUT = 15.0
HANDSHAKE_TIMEOUT = 15.0
MAX_FRAME = 4 * 1024 * 1024


class DeviceError(Exception):
    """A connection or handshake that failed; `kind` is the counter it goes to."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(slots=True)
class Outgoing:
    """One message waiting to be written (or re-written after a reconnect)."""

    msg_id: bytes
    nonce: bytes
    ts: int
    to_user: str
    body: bytes
    entry: Entry
    type: int = 2
    sealed: bool = False


class SimDevice:
    """One device of the load test; the ledger and recorder are its process's."""

    def __init__(
        self,
        url: str,
        ledger: Ledger,
        recorder: Recorder,
        *,
        fmt: WireFormat = WireFormat.MSGPACK,
        prekeys: int = 5,
        e2e: bool = False,
        ssl: SSLContext | None = None,
    ) -> None:
        self.url = url
        self._tls: dict[str, Any] = {} if ssl is None else {"ssl": ssl}
        self.ledger = ledger
        self.recorder = recorder
        self.fmt = fmt
        self.prekeys = prekeys
        self.cipher = Cipher(prekeys) if e2e else None
        self.identity = (
            self.cipher.keys.identity
            if self.cipher is not None
            else IdentityKeyPair.generate(KeyScheme.ED25519)
        )
        self.user = ""
        self.device = 0
        self.ws: ClientConnection | None = None
        self._rid = 0
        self._sends: dict[int, Outgoing] = {}
        self._requests: dict[int, tuple[type[Answer], asyncio.Future[Answer | Error]]] = {}
        self._queue: deque[Outgoing] = deque()
        self._wakeup = asyncio.Event()
        self._acks: list[bytes] = []
        self._ack_scheduled = False
        self._ack_tasks: set[asyncio.Future[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.queue_empty = asyncio.Event()
        self.on_deliver: Callable[[Deliver], None] | None = None

    # -- connection lifecycle

    def next_rid(self) -> int:
        self._rid = (self._rid + 1) & 0xFFFFFFFF or 1
        return self._rid

    async def _open(self) -> tuple[ClientConnection, Challenge]:
        try:
            ws = await connect(
                self.url,
                subprotocols=[self.fmt.value],  # type: ignore[list-item]
                open_timeout=OPEN_TIMEOUT,
                max_size=MAX_FRAME,
                compression=None,
                ping_interval=None,
                **self._tls,
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise DeviceError(f"connect:{type(exc).__name__}") from exc
        try:
            frame = decode_server_frame(await ws.recv(), self.fmt, lambda rid: None)
        except (ConnectionClosed, RelayError) as exc:
            await ws.close()
            raise DeviceError("no_challenge") from exc
        if not isinstance(frame, Challenge):
            await ws.close()
            raise DeviceError("no_challenge")
        return ws, frame

    async def _request(
        self, ws: ClientConnection, frame: Register | Auth | KeysUpload, answer: type[Answer]
    ) -> Answer:
        """A request on a connection whose reader has not started (the handshake)."""
        await ws.send(encode(frame, self.fmt))
        while True:
            try:
                got = decode_server_frame(await ws.recv(), self.fmt, lambda rid: answer)
            except ConnectionClosed as exc:
                raise DeviceError(f"closed:{exc.rcvd.code if exc.rcvd else 1006}") from exc
            if isinstance(got, Error):
                raise DeviceError(f"handshake:{got.code}")
            if isinstance(got, answer) and getattr(got, "rid", None) == frame.rid:
                return got

    async def register(self) -> None:
        """Create this device's user and upload its pre-keys; leaves the connection open."""
        started = time.time()
        ws, challenge = await self._open()
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                reg = Register(
                    rid=self.next_rid(),
                    identity_key=self.identity.public_key,
                    key_scheme=self.identity.scheme,
                    signature=self.identity.sign(
                        register_payload(challenge.nonce, self.identity.public_key)
                    ),
                    registration_id=(
                        self.cipher.keys.registration_id if self.cipher is not None else None
                    ),
                )
                ok = await self._request(ws, reg, AuthOk)
                assert isinstance(ok, AuthOk)
                self.user, self.device = ok.user, ok.device
                upload = (
                    self.cipher.upload(self.next_rid())
                    if self.cipher is not None
                    else self._key_upload()
                )
                await self._request(ws, upload, KeysUploadOk)
        except BaseException:
            await ws.close()
            raise
        self.recorder.handshake(time.time(), started)
        self._attach(ws)

    def _key_upload(self) -> KeysUpload:
        signed = nacl.public.PrivateKey.generate().public_key.encode()
        return KeysUpload(
            rid=self.next_rid(),
            signed_prekey=SignedPreKey(id=1, key=signed, signature=self.identity.sign(signed)),
            prekeys=tuple(
                PreKey(id=i + 1, key=nacl.public.PrivateKey.generate().public_key.encode())
                for i in range(self.prekeys)
            ),
        )

    async def connect(self, scheduled: float | None = None) -> None:
        """Authenticate a new connection; handshake latency from `scheduled` (or now)."""
        started = time.time() if scheduled is None else scheduled
        ws, challenge = await self._open()
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                auth = Auth(
                    rid=self.next_rid(),
                    user=self.user,
                    device=self.device,
                    signature=self.identity.sign(
                        auth_payload(challenge.nonce, self.user, self.device)
                    ),
                )
                await self._request(ws, auth, AuthOk)
        except TimeoutError as exc:
            await ws.close()
            raise DeviceError("handshake:timeout") from exc
        except BaseException:
            await ws.close()
            raise
        self.recorder.handshake(time.time(), started)
        self._attach(ws)

    def _attach(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.queue_empty.clear()
        self.recorder.connection_opened()
        # Sends that were written but not answered on the previous connection are
        # retried first, with the same id and nonce (spec §4: the sender owns them).
        retry = sorted(self._sends.items())
        self._sends.clear()
        for _, out in reversed(retry):
            self._queue.appendleft(out)
        self._tasks = [
            asyncio.create_task(self._reader(ws)),
            asyncio.create_task(self._writer(ws)),
        ]
        self._wakeup.set()

    async def close(self, *, abort: bool = False) -> None:
        """Close the connection (abort: drop the TCP connection without a close handshake)."""
        ws = self.ws
        if ws is None:
            return
        self.ws = None
        if abort:
            ws.transport.abort()
        else:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), OPEN_TIMEOUT)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    @property
    def connected(self) -> bool:
        return self.ws is not None

    async def fetch(self, user: str) -> KeysFetchOk:
        """`keys.fetch` of a user's bundles on the open connection."""
        ws = self.ws
        if ws is None:
            raise DeviceError("fetch:not_connected")
        rid = self.next_rid()
        fut: asyncio.Future[Answer | Error] = asyncio.get_running_loop().create_future()
        self._requests[rid] = (KeysFetchOk, fut)
        try:
            await ws.send(encode(KeysFetch(rid=rid, user=user), self.fmt))
            answer = await asyncio.wait_for(fut, HANDSHAKE_TIMEOUT)
        except (ConnectionClosed, TimeoutError) as exc:
            raise DeviceError("fetch:failed") from exc
        finally:
            self._requests.pop(rid, None)
        if not isinstance(answer, KeysFetchOk):
            raise DeviceError(f"fetch:{answer.code if isinstance(answer, Error) else 'bad'}")
        return answer

    # -- traffic

    def submit(self, out: Outgoing) -> None:
        """Queue a message; it is written as soon as this device is connected."""
        self._queue.append(out)
        self._wakeup.set()

    async def _writer(self, ws: ClientConnection) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue and self.ws is ws:
                    out = self._queue.popleft()
                    if self.cipher is not None and not out.sealed:
                        try:
                            out.type, out.body = self.cipher.seal(out.to_user, out.body)
                        except KeyError:
                            self.ledger.answered(out.msg_id, False, "e2e:no_session")
                            continue
                        out.sealed = True
                    rid = self.next_rid()
                    frame = Send(
                        rid=rid,
                        id=out.msg_id,
                        to=out.to_user,
                        ts=out.ts,
                        nonce=out.nonce,
                        devices=(DeviceMessage(device=1, type=out.type, body=out.body),),
                    )
                    self._sends[rid] = out
                    await ws.send(encode(frame, self.fmt))
                    if not out.entry.sent:
                        self.ledger.mark_sent(out.entry)
                        self.recorder.sent(time.time(), out.entry.scheduled)
        except ConnectionClosed:
            return

    def _answer_type(self, rid: int) -> type[Answer] | None:
        if rid in self._sends:
            return SendOk
        pending = self._requests.get(rid)
        return pending[0] if pending is not None else EmptyOk

    async def _reader(self, ws: ClientConnection) -> None:
        code = 1006
        try:
            async for message in ws:
                try:
                    frame = decode_server_frame(message, self.fmt, self._answer_type)
                except RelayError:
                    self.recorder.connection_error("bad_server_frame", time.time())
                    continue
                if isinstance(frame, Deliver):
                    self._on_deliver(frame)
                elif isinstance(frame, SendOk):
                    self._on_answer(frame.rid, None)
                elif isinstance(frame, Error | KeysFetchOk) and frame.rid in self._requests:
                    fut = self._requests[frame.rid][1]
                    if not fut.done():
                        fut.set_result(frame)
                elif isinstance(frame, Error):
                    if frame.rid is not None and frame.rid in self._sends:
                        self._on_answer(frame.rid, str(frame.code))
                    else:
                        self.recorder.connection_error(f"error:{frame.code}", time.time())
                elif isinstance(frame, QueueEmpty):
                    self.queue_empty.set()
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
        finally:
            self._closed(ws, code)

    def _closed(self, ws: ClientConnection, code: int) -> None:
        now = time.time()
        self.recorder.connection_closed(now)
        if self.ws is ws:
            # The server (or the network) closed it: an unplanned disconnect.
            self.ws = None
            self.recorder.connection_error(f"closed:{code}", now)
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    def _on_answer(self, rid: int, code: str | None) -> None:
        out = self._sends.pop(rid, None)
        if out is None:
            return
        now = time.time()
        if code == "rate_limited" or code == "unavailable":
            # Retryable (spec §8): the sender still owns the message; count and retry.
            self.ledger.errors_by_code[code] += 1
            self.recorder.error(now)
            self.submit(out)
            return
        entry = self.ledger.answered(out.msg_id, code is None, code or "")
        if entry is None:
            return
        if code is None:
            self.recorder.ok(now, entry.scheduled)
        else:
            self.recorder.error(now)

    def _on_deliver(self, frame: Deliver) -> None:
        if self.cipher is not None:
            try:
                self.cipher.open(frame.from_user, frame.type, frame.body)
            except CryptoError:
                self.recorder.connection_error("decrypt_failed", time.time())
        entry = self.ledger.delivered(frame.id)
        if entry is not None:
            self.recorder.delivered(time.time(), entry.scheduled)
        if self.on_deliver is not None:
            self.on_deliver(frame)
        self._acks.append(frame.id)
        if not self._ack_scheduled:
            self._ack_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_scheduled = False
        ids, self._acks = self._acks, []
        ws = self.ws
        if ws is None or not ids:
            return
        for i in range(0, len(ids), 1000):
            chunk = tuple(ids[i : i + 1000])
            task = asyncio.ensure_future(self._send_ack(ws, chunk))
            self._ack_tasks.add(task)
            task.add_done_callback(self._ack_tasks.discard)

    async def _send_ack(self, ws: ClientConnection, ids: tuple[bytes, ...]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(encode(Ack(ids=ids), self.fmt))
            for msg_id in ids:
                self.ledger.acked(msg_id)


def new_message(
    ledger: Ledger, to_user: str, body_size: int, scheduled: float, body: bytes | None = None
) -> Outgoing:
    """A fresh message (random id, nonce and body) entered in the ledger."""
    msg_id = uuid.uuid4().bytes
    entry = ledger.schedule(msg_id, scheduled)
    return Outgoing(
        msg_id=msg_id,
        nonce=secrets.token_bytes(24),
        ts=int(scheduled * 1000),
        to_user=to_user,
        body=body if body is not None else secrets.token_bytes(body_size),
        entry=entry,
    )
