"""A simulated device: a real identity, real pre-keys, the real wire protocol.

Its connections are `protocol.wire.WireConnection`s, the low-level client every
client of the relay uses. A device registers once (new user, device 1, a signed
pre-key and a few one-time pre-keys), then authenticates on every later
connection. Sends are queued and written by one writer task per connection so
the scheduler never waits on one slow socket; their answers come back to a
handler, not to a waiting task. Every `deliver` is acknowledged, acks of one
event-loop turn going out in one `ack` frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import TypeVar

import nacl.public
from websockets.exceptions import InvalidHandshake

from loadtest.e2e import Cipher, CryptoError
from loadtest.ledger import Entry, Ledger
from loadtest.recorder import Recorder
from protocol.codec import WireFormat
from protocol.frames import (
    Answer,
    Deliver,
    DeviceMessage,
    Error,
    KeysFetch,
    KeysFetchOk,
    KeysUpload,
    KeysUploadOk,
    PreKey,
    QueueEmpty,
    Send,
    SignedPreKey,
)
from protocol.signatures import IdentityKeyPair, KeyScheme
from protocol.wire import (
    AnswerTimeout,
    ConnectionLost,
    RequestRefused,
    ServerPush,
    Undecodable,
    WireConnection,
    WireOptions,
)

OPEN_TIMEOUT = 15.0
HANDSHAKE_TIMEOUT = 15.0
MAX_FRAME = 4 * 1024 * 1024
T = TypeVar("T")


class DeviceError(Exception):
    """A connection or handshake that failed; `kind` is the counter it goes to."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(slots=True)
class PendingSend:
    """One message waiting to be written (or re-written after a reconnect)."""

    msg_id: bytes
    nonce: bytes
    ts: int
    to_user: str
    body: bytes
    entry: Entry
    type: int = 2
    sealed: bool = False
    # Where and when it was last written: an answer to it confirms the acks written earlier
    # on the same connection (frames take effect in order).
    conn: WireConnection | None = None
    mark: int = 0


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
        source: str | None = None,
    ) -> None:
        self.url = url
        self.options = WireOptions(
            fmt=fmt,
            open_timeout=OPEN_TIMEOUT,
            request_timeout=HANDSHAKE_TIMEOUT,
            max_frame_bytes=MAX_FRAME,
            ping_interval=None,
            ssl=ssl,
            local_address=source,
            proxy=None,  # straight to the relay under test, never through a proxy
        )
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
        self.conn: WireConnection | None = None  # the authenticated connection, once attached
        self._newest: WireConnection | None = None  # the last one opened: acks go there
        self._counted: WireConnection | None = None  # the one the recorder counts as open
        self._sends: dict[int, PendingSend] = {}
        self._queue: deque[PendingSend] = deque()
        self._wakeup = asyncio.Event()
        self._acks: list[bytes] = []
        self._ack_scheduled = False
        self._ack_tasks: set[asyncio.Future[None]] = set()
        self._writer_task: asyncio.Task[None] | None = None
        self.queue_empty = asyncio.Event()
        self.dropped = asyncio.Event()  # the server or the network ended the connection
        self._marks = 0  # frames written, counted: orders acks before later sends
        self._unconfirmed: list[tuple[WireConnection, int, list[bytes]]] = []
        self.on_deliver: Callable[[Deliver], None] | None = None

    # -- connection lifecycle

    async def _open(self) -> WireConnection:
        # Pushes may come right after the handshake's answer, before the connection is attached.
        self.queue_empty.clear()
        try:
            conn = await WireConnection.open(
                self.url, self.options, on_push=self._on_push, on_close=self._closed
            )
        except ConnectionLost as exc:
            raise DeviceError("no_challenge") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise DeviceError(f"connect:{type(exc).__name__}") from exc
        self._newest = conn
        return conn

    async def _handshake(self, conn: WireConnection, steps: Awaitable[T]) -> T:
        """The handshake's requests, bounded; a failure closes the connection."""
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                return await steps
        except (TimeoutError, AnswerTimeout) as exc:
            await conn.close()
            raise DeviceError("handshake:timeout") from exc
        except RequestRefused as exc:
            await conn.close()
            raise DeviceError(f"handshake:{exc.code}") from exc
        except ConnectionLost as exc:
            await conn.close()
            raise DeviceError(f"closed:{exc.code or 1006}") from exc
        except BaseException:
            await conn.close()
            raise

    async def register(self) -> None:
        """Create this device's user and upload its pre-keys; leaves the connection open."""
        started = time.time()
        conn = await self._open()
        await self._handshake(conn, self._register_on(conn))
        self.recorder.handshake(time.time(), started)
        self._attach(conn)

    async def _register_on(self, conn: WireConnection) -> None:
        registration_id = self.cipher.keys.registration_id if self.cipher is not None else None
        ok = await conn.register(self.identity, registration_id=registration_id)
        self.user, self.device = ok.user, ok.device
        rid = conn.next_rid()
        upload = self.cipher.upload(rid) if self.cipher is not None else self._key_upload(rid)
        await conn.request(upload, KeysUploadOk)

    def _key_upload(self, rid: int) -> KeysUpload:
        signed = nacl.public.PrivateKey.generate().public_key.encode()
        return KeysUpload(
            rid=rid,
            signed_prekey=SignedPreKey(id=1, key=signed, signature=self.identity.sign(signed)),
            prekeys=tuple(
                PreKey(id=i + 1, key=nacl.public.PrivateKey.generate().public_key.encode())
                for i in range(self.prekeys)
            ),
        )

    async def connect(self, scheduled: float | None = None) -> None:
        """Authenticate a new connection; handshake latency from `scheduled` (or now)."""
        started = time.time() if scheduled is None else scheduled
        conn = await self._open()
        await self._handshake(conn, conn.auth(self.identity, self.user, self.device))
        self.recorder.handshake(time.time(), started)
        self._attach(conn)

    def _attach(self, conn: WireConnection) -> None:
        self.conn = conn
        self._counted = conn
        self.recorder.connection_opened()
        # Sends that were written but not answered on the previous connection are
        # retried first, with the same id and nonce (spec §4: the sender owns them).
        retry = sorted(self._sends.items())
        self._sends.clear()
        for _, out in reversed(retry):
            self._queue.appendleft(out)
        self._writer_task = asyncio.create_task(self._writer(conn))
        self._wakeup.set()

    async def close(self, *, abort: bool = False) -> None:
        """Close the connection (abort: drop the TCP connection without a close handshake)."""
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        if abort:
            conn.abort()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(OPEN_TIMEOUT):
                await conn.close()
        await self._stop_writer()

    async def _stop_writer(self) -> None:
        task, self._writer_task = self._writer_task, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    @property
    def connected(self) -> bool:
        return self.conn is not None

    async def fetch(self, user: str) -> KeysFetchOk:
        """`keys.fetch` of a user's bundles on the open connection."""
        conn = self.conn
        if conn is None:
            raise DeviceError("fetch:not_connected")
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                return await conn.request(KeysFetch(rid=conn.next_rid(), user=user), KeysFetchOk)
        except RequestRefused as exc:
            raise DeviceError(f"fetch:{exc.code}") from exc
        except (ConnectionLost, TimeoutError) as exc:
            raise DeviceError("fetch:failed") from exc

    # -- traffic

    def submit(self, out: PendingSend) -> None:
        """Queue a message; it is written as soon as this device is connected."""
        self._queue.append(out)
        self._wakeup.set()

    async def _writer(self, conn: WireConnection) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue and self.conn is conn:
                    out = self._queue.popleft()
                    if self.cipher is not None and not out.sealed:
                        try:
                            out.type, out.body = self.cipher.seal(out.to_user, out.body)
                        except KeyError:
                            self.ledger.answered(out.msg_id, False, "e2e:no_session")
                            continue
                        out.sealed = True
                    rid = conn.next_rid()
                    out.conn, out.mark = conn, self._next_mark()
                    frame = Send(
                        rid=rid,
                        id=out.msg_id,
                        to=out.to_user,
                        ts=out.ts,
                        nonce=out.nonce,
                        devices=(DeviceMessage(device=1, type=out.type, body=out.body),),
                    )
                    self._sends[rid] = out
                    await conn.send_request(frame, self._on_send_answer)
                    if not out.entry.sent:
                        self.recorder.sent(time.time(), out.entry.scheduled)
                    self.ledger.mark_sent(out.entry)
        except ConnectionLost:
            return

    def _on_push(self, push: ServerPush) -> None:
        if isinstance(push, Deliver):
            self._on_deliver(push)
        elif isinstance(push, QueueEmpty):
            self.queue_empty.set()
        elif isinstance(push, Error):
            self.recorder.connection_error(f"error:{push.code}", time.time())
        elif isinstance(push, Undecodable):
            self.recorder.connection_error("bad_server_frame", time.time())

    def _closed(self, conn: WireConnection) -> None:
        if self._newest is conn:
            self._newest = None
        if self._counted is not conn:
            return  # it ended during its handshake: never counted as open
        self._counted = None
        now = time.time()
        self.recorder.connection_closed(now)
        if self.conn is conn:
            # The server (or the network) closed it: an unplanned disconnect.
            self.conn = None
            self.recorder.connection_error(f"closed:{conn.close_code or 1006}", now)
            self.dropped.set()
            task, self._writer_task = self._writer_task, None
            if task is not None:
                task.cancel()

    def _on_send_answer(self, rid: int, answer: Answer | Error | None) -> None:
        if answer is None:
            return  # the connection ended: the send stays in `_sends`, retried on the next
        out = self._sends.get(rid)
        if out is not None and out.conn is not None:
            self._confirm_acks(out.conn, out.mark)
        self._on_answer(rid, str(answer.code) if isinstance(answer, Error) else None)

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
        conn = self._newest
        if conn is None or not ids:
            return
        task = asyncio.ensure_future(self._send_ack(conn, ids))
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    async def _send_ack(self, conn: WireConnection, ids: list[bytes]) -> None:
        if await conn.ack(ids):
            for msg_id in ids:
                self.ledger.acked(msg_id)
            # Counted once written: a send counted later was written after this ack.
            self._unconfirmed.append((conn, self._next_mark(), ids))

    def _next_mark(self) -> int:
        self._marks += 1
        return self._marks

    def _confirm_acks(self, conn: WireConnection, mark: int) -> None:
        """A request written at `mark` on `conn` was answered: the relay has read every ack
        written before it on that connection. Acks of other, closed connections never will."""
        keep: list[tuple[WireConnection, int, list[bytes]]] = []
        for ack_conn, ack_mark, ids in self._unconfirmed:
            if ack_conn is conn and ack_mark < mark:
                for msg_id in ids:
                    self.ledger.ack_confirmed(msg_id)
            elif ack_conn is conn or not ack_conn.closed:
                keep.append((ack_conn, ack_mark, ids))
        self._unconfirmed = keep


def new_message(
    ledger: Ledger, to_user: str, body_size: int, scheduled: float, body: bytes | None = None
) -> PendingSend:
    """A fresh message (random id, nonce and body) entered in the ledger."""
    msg_id = uuid.uuid4().bytes
    entry = ledger.schedule(msg_id, scheduled)
    return PendingSend(
        msg_id=msg_id,
        nonce=secrets.token_bytes(24),
        ts=int(scheduled * 1000),
        to_user=to_user,
        body=body if body is not None else secrets.token_bytes(body_size),
        entry=entry,
    )
