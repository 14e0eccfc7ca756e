"""One WebSocket to the relay: the challenge, the signed handshake, answers matched by `rid`.

A reader task decodes every message once, with the codec, into typed frames.
An answer (`ok`, or `error` with the `rid` of a request in flight) goes to the
request waiting for it; everything else the relay pushes (`deliver`,
`keys.low`, `queue_empty`, an `error` that answers nothing, a message the
codec cannot read) goes to the push handler or, without one, to a queue read
with :meth:`WireConnection.pushes`. The connection knows nothing of sessions,
keys or retries: the SDK, the load-test devices and the tests decide those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, Literal, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Subprotocol

from protocol.codec import WireFormat, decode_server_frame, encode
from protocol.errors import RelayError
from protocol.fields import U32_MAX
from protocol.frames import (
    ANSWER_TYPES,
    MAX_ACK_IDS,
    Ack,
    Answer,
    Auth,
    AuthOk,
    Challenge,
    Deliver,
    Error,
    KeysLow,
    Link,
    QueueEmpty,
    Receipt,
    Register,
    Request,
)
from protocol.payloads import auth_payload, register_payload
from protocol.signatures import IdentityKeyPair
from protocol.wire.errors import AnswerTimeout, ConnectionLost, RequestRefused

__all__ = [
    "CONNECT_ERRORS",
    "AnswerHandler",
    "PushHandler",
    "ServerPush",
    "Undecodable",
    "WireConnection",
    "WireOptions",
]

log = logging.getLogger("relay.client")

A = TypeVar("A", bound=Answer)

# What a failed attempt to reach the relay raises.
CONNECT_ERRORS = (OSError, TimeoutError, WebSocketException, ConnectionLost)


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A message the codec could not read: a late answer, or a frame of a newer relay."""

    reason: str


ServerPush = Deliver | Receipt | KeysLow | QueueEmpty | Error | Undecodable
PushHandler = Callable[[ServerPush], None]
# Called with the request's rid and its answer; None when the connection ended first.
AnswerHandler = Callable[[int, Answer | Error | None], None]
CloseHandler = Callable[["WireConnection"], None]
# Every message as it arrived, with the connection's format.
MessageTap = Callable[[bytes | str, WireFormat], None]


@dataclass(frozen=True, slots=True)
class WireOptions:
    fmt: WireFormat = WireFormat.MSGPACK
    # The sub-protocols offered; None offers `fmt` alone, () none (the relay then uses msgpack).
    offer: tuple[str, ...] | None = None
    open_timeout: float = 10.0
    request_timeout: float = 30.0
    close_timeout: float = 5.0
    max_frame_bytes: int | None = 4 * 1024 * 1024
    max_queue: int | None = 16
    ping_interval: float | None = 20.0
    compression: bool = False
    ssl: SSLContext | None = None  # None: ws://, or the default verifying context for wss://
    local_address: str | None = None  # the source address to connect from; None: the system's
    # True: the proxy the environment names (HTTPS_PROXY, ALL_PROXY, NO_PROXY...), as
    # websockets does; a URL: that proxy; None: connect directly, without reading the
    # environment (which costs about 240 us a connection: what a load generator skips).
    proxy: str | Literal[True] | None = True


@dataclass(slots=True)
class _AwaitedAnswer:
    answer_type: type[Answer]
    handler: AnswerHandler


class WireConnection:
    """An open WebSocket after the relay's `challenge`; use :meth:`open`."""

    def __init__(
        self,
        ws: ClientConnection,
        fmt: WireFormat,
        options: WireOptions,
        challenge: Challenge,
        *,
        on_push: PushHandler | None,
        on_close: CloseHandler | None,
        tap: MessageTap | None,
    ) -> None:
        self._ws = ws
        self.fmt = fmt
        self.options = options
        self.challenge = challenge
        self.close_code: int | None = None
        self.close_reason = ""
        self._queue: asyncio.Queue[ServerPush | None] = asyncio.Queue()
        self._on_push = on_push or self._queue.put_nowait
        self._on_close = on_close
        self._tap = tap
        self._pending: dict[int, _AwaitedAnswer] = {}
        self._rid = secrets.randbelow(U32_MAX)
        self._closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read_loop(), name="relay-wire-reader")

    @classmethod
    async def open(
        cls,
        url: str,
        options: WireOptions | None = None,
        *,
        on_push: PushHandler | None = None,
        on_close: CloseHandler | None = None,
        tap: MessageTap | None = None,
    ) -> WireConnection:
        """Connect and wait for the challenge; raises one of :data:`CONNECT_ERRORS`.

        `on_push` runs in the reader for every push (without it, read :meth:`pushes`);
        `on_close` once the connection has ended; `tap` sees every message as it
        arrived, before decoding (the tests check the relay's encoding with it).
        """
        options = options or WireOptions()
        offer = (options.fmt.value,) if options.offer is None else options.offer
        transport: dict[str, Any] = {} if options.ssl is None else {"ssl": options.ssl}
        if options.local_address is not None:
            transport["local_addr"] = (options.local_address, 0)
        ws = await connect(
            url,
            subprotocols=[Subprotocol(name) for name in offer] or None,
            open_timeout=options.open_timeout,
            close_timeout=options.close_timeout,
            max_size=options.max_frame_bytes,
            max_queue=options.max_queue,
            ping_interval=options.ping_interval,
            compression="deflate" if options.compression else None,
            proxy=options.proxy,
            **transport,
        )
        try:
            fmt = _negotiated(ws.subprotocol, options.fmt, offer)
            async with asyncio.timeout(options.open_timeout):
                challenge = await _read_challenge(ws, fmt, tap)
        except TimeoutError:
            await ws.close()
            raise ConnectionLost(None, "no challenge in time") from None
        except BaseException:
            await ws.close()
            raise
        return cls(ws, fmt, options, challenge, on_push=on_push, on_close=on_close, tap=tap)

    @property
    def websocket(self) -> ClientConnection:
        """The underlying connection (its TLS object, its negotiated sub-protocol)."""
        return self._ws

    # --- the handshake -----------------------------------------------------------

    async def auth(self, identity: IdentityKeyPair, user: str, device: int) -> AuthOk:
        """Authenticate as an existing device: the challenge, signed (spec §3)."""
        signature = identity.sign(auth_payload(self.challenge.nonce, user, device))
        frame = Auth(rid=self.next_rid(), user=user, device=device, signature=signature)
        return await self.request(frame, AuthOk)

    async def register(
        self,
        identity: IdentityKeyPair,
        *,
        registration_id: int | None = None,
        token: str | None = None,
        user: str | None = None,
        link: Link | None = None,
    ) -> AuthOk:
        """Register a new user (device 1), or with `user` and `link` a new device of one."""
        public = identity.public_key
        frame = Register(
            rid=self.next_rid(),
            identity_key=public,
            key_scheme=identity.scheme,
            signature=identity.sign(register_payload(self.challenge.nonce, public)),
            registration_id=registration_id,
            token=token,
            user=user,
            link=link,
        )
        return await self.request(frame, AuthOk)

    # --- requests ------------------------------------------------------------------

    def next_rid(self) -> int:
        """A request id no request in flight on this connection uses."""
        while True:
            self._rid = (self._rid + 1) % (U32_MAX + 1)
            if self._rid not in self._pending:
                return self._rid

    async def request(self, frame: Request, answer_type: type[A]) -> A:
        """Send `frame` (its rid from :meth:`next_rid`) and wait for its answer.

        Raises :class:`RequestRefused` for an `error` answer, :class:`ConnectionLost`
        when the connection ends first and :class:`AnswerTimeout` (after dropping
        the connection: a relay that does not answer is as good as gone) when the
        answer is late.
        """
        assert ANSWER_TYPES[type(frame)] is answer_type, (type(frame), answer_type)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

        def settle(rid: int, result: Answer | Error | None) -> None:
            if future.done():
                return
            if result is None:
                future.set_exception(ConnectionLost(self.close_code, self.close_reason))
            elif isinstance(result, Error):
                future.set_exception(RequestRefused(result))
            else:
                future.set_result(result)

        try:
            await self.send_request(frame, settle)
            async with asyncio.timeout(self.options.request_timeout):
                answer = await future
        except TimeoutError:
            self.abort()
            raise AnswerTimeout(None, f"no answer to {frame.T} in time") from None
        finally:
            self._pending.pop(frame.rid, None)
            if future.done() and not future.cancelled():
                future.exception()  # seen: an error raised here is not "never retrieved"
        assert isinstance(answer, answer_type)
        return answer

    async def send_request(self, frame: Request, on_answer: AnswerHandler) -> None:
        """Send without waiting: `on_answer(rid, answer)` runs in the reader when it comes."""
        if self._closed.is_set():
            raise ConnectionLost(self.close_code, self.close_reason)
        self._pending[frame.rid] = _AwaitedAnswer(ANSWER_TYPES[type(frame)], on_answer)
        try:
            await self._ws.send(encode(frame, self.fmt))
        except ConnectionClosed:
            self._pending.pop(frame.rid, None)
            raise self._lost() from None

    async def ack(self, ids: Sequence[bytes]) -> bool:
        """Acknowledge deliveries (several frames beyond the limit of one); False if closed."""
        if self._closed.is_set():
            return False
        try:
            for start in range(0, len(ids), MAX_ACK_IDS):
                chunk = tuple(ids[start : start + MAX_ACK_IDS])
                await self._ws.send(encode(Ack(ids=chunk), self.fmt))
        except ConnectionClosed:
            return False
        return True

    async def send_raw(self, data: bytes | str) -> None:
        """Send one message exactly as given: for tests of what the relay does with bad input."""
        try:
            await self._ws.send(data)
        except ConnectionClosed:
            raise self._lost() from None

    # --- reading -------------------------------------------------------------------

    async def pushes(self) -> AsyncIterator[ServerPush]:
        """Without a push handler: the pushes in arrival order, until the connection ends."""
        while (push := await self._queue.get()) is not None:
            yield push

    def _answer_type(self, rid: int) -> type[Answer] | None:
        awaited = self._pending.get(rid)
        return None if awaited is None else awaited.answer_type

    async def _read_loop(self) -> None:
        ws, fmt, tap, on_push = self._ws, self.fmt, self._tap, self._on_push
        try:
            async for data in ws:
                if tap is not None:
                    tap(data, fmt)
                try:
                    frame = decode_server_frame(data, fmt, self._answer_type)
                except RelayError as exc:
                    on_push(Undecodable(exc.message))
                    continue
                if isinstance(frame, Deliver | Receipt | QueueEmpty | KeysLow):
                    on_push(frame)
                elif isinstance(frame, Error):
                    rid = frame.rid
                    awaited = self._pending.pop(rid, None) if rid is not None else None
                    if awaited is None or rid is None:
                        on_push(frame)
                    else:
                        awaited.handler(rid, frame)
                elif isinstance(frame, Challenge):
                    log.debug("ignoring a second challenge")
                else:
                    awaited = self._pending.pop(frame.rid, None)
                    if awaited is not None:
                        awaited.handler(frame.rid, frame)
        except ConnectionClosed:
            pass
        finally:
            self._ended()

    def _ended(self) -> None:
        self.close_code = self._ws.close_code
        self.close_reason = self._ws.close_reason or ""
        self._closed.set()
        pending, self._pending = self._pending, {}
        for rid, awaited in pending.items():
            awaited.handler(rid, None)
        self._queue.put_nowait(None)
        if self._on_close is not None:
            self._on_close(self)

    def _lost(self) -> ConnectionLost:
        return ConnectionLost(self._ws.close_code, self._ws.close_reason or "")

    # --- closing -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def stop_reading(self) -> None:
        """Stop the reader (the connection counts as ended): a client that stalls."""
        self._reader.cancel()

    def abort(self) -> None:
        """Drop the socket at once, with no closing handshake: what a network failure does."""
        transport = self._ws.transport
        if transport is not None:
            transport.abort()

    async def close(self) -> None:
        """Close with the closing handshake, within the close timeout; returns once the reader
        has finished.

        websockets' own `close` first waits, without a bound, for room in the write buffer,
        which a relay that reads nothing (stopped, or cut off by the network) never gives:
        past the close timeout the socket is dropped instead."""
        with contextlib.suppress(Exception):
            try:
                async with asyncio.timeout(self._ws.close_timeout):
                    await self._ws.close()
            except TimeoutError:
                self.abort()
        await asyncio.wait({self._reader})  # never raises: the reader ends by itself


def _negotiated(chosen: str | None, fmt: WireFormat, offer: Sequence[str]) -> WireFormat:
    """The relay's choice of sub-protocol; one offering none speaks msgpack (spec §1)."""
    if chosen is None:
        return fmt if offer else WireFormat.MSGPACK
    if chosen not in offer or chosen not in tuple(WireFormat):
        raise ConnectionLost(None, f"relay chose {chosen}")
    return WireFormat(chosen)


async def _read_challenge(
    ws: ClientConnection, fmt: WireFormat, tap: MessageTap | None
) -> Challenge:
    try:
        data = await ws.recv()
    except ConnectionClosed:
        raise ConnectionLost(ws.close_code, ws.close_reason or "") from None
    if tap is not None:
        tap(data, fmt)
    try:
        frame = decode_server_frame(data, fmt, lambda rid: None)
    except RelayError as exc:
        raise ConnectionLost(None, f"undecodable challenge: {exc.message}") from None
    if not isinstance(frame, Challenge):
        raise ConnectionLost(None, f"expected a challenge, got {frame.T}")
    return frame
