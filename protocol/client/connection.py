"""One WebSocket to the relay: the challenge, requests matched to answers by `rid`, pushes.

A reader task decodes every message once, with the codec, into typed frames.
An answer (`ok` or `error` with a `rid`) resolves the request waiting for it;
everything else the server pushes (`deliver`, `keys.low`, `queue_empty`) goes
to a queue that the client consumes in arrival order. The connection knows
nothing about sessions, keys or retries: the client decides those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Subprotocol

from protocol.client.errors import ConnectionLost, RequestRefused
from protocol.codec import WireFormat, decode_server_frame, encode
from protocol.errors import RelayError
from protocol.fields import U32_MAX
from protocol.frames import (
    ANSWER_TYPES,
    Ack,
    Answer,
    Challenge,
    Deliver,
    Error,
    KeysLow,
    QueueEmpty,
    Request,
)

__all__ = ["CONNECT_ERRORS", "ConnectOptions", "Connection", "Push"]

log = logging.getLogger("relay.client")

Push = Deliver | KeysLow | QueueEmpty
A = TypeVar("A", bound=Answer)

# What a failed attempt to reach the relay raises: the client retries after these.
CONNECT_ERRORS = (OSError, TimeoutError, WebSocketException, ConnectionLost)


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    fmt: WireFormat = WireFormat.MSGPACK
    open_timeout: float = 10.0
    request_timeout: float = 30.0
    max_frame_bytes: int = 4 * 1024 * 1024
    ping_interval: float | None = 20.0
    ssl: SSLContext | None = None  # None: ws://, or the default verifying context for wss://


@dataclass(slots=True)
class _Pending:
    answer_type: type[Answer]
    future: asyncio.Future[Answer]


class Connection:
    """An open WebSocket after the relay's `challenge`; use :meth:`open`."""

    def __init__(self, ws: ClientConnection, options: ConnectOptions, challenge: Challenge) -> None:
        self._ws = ws
        self.options = options
        self.challenge = challenge
        # Pushes in arrival order; None once the connection has closed.
        self.pushes: asyncio.Queue[Push | None] = asyncio.Queue()
        self._pending: dict[int, _Pending] = {}
        self._rid = secrets.randbelow(U32_MAX)
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader = asyncio.create_task(self._read_loop(), name="relay-client-reader")

    @classmethod
    async def open(cls, url: str, options: ConnectOptions) -> Connection:
        """Connect and wait for the challenge; raises one of :data:`CONNECT_ERRORS`."""
        tls: dict[str, Any] = {} if options.ssl is None else {"ssl": options.ssl}
        ws = await connect(
            url,
            subprotocols=[Subprotocol(options.fmt.value)],
            open_timeout=options.open_timeout,
            max_size=options.max_frame_bytes,
            ping_interval=options.ping_interval,
            close_timeout=5,
            compression=None,
            **tls,
        )
        try:
            if ws.subprotocol not in (None, options.fmt.value):
                raise ConnectionLost(None, f"relay chose {ws.subprotocol}")
            async with asyncio.timeout(options.open_timeout):
                data = await ws.recv()
            frame = decode_server_frame(data, options.fmt, lambda rid: None)
            if not isinstance(frame, Challenge):
                raise ConnectionLost(None, f"expected a challenge, got {frame.T}")
        except RelayError as exc:
            await ws.close()
            raise ConnectionLost(None, f"undecodable challenge: {exc.message}") from None
        except BaseException:
            await ws.close()
            raise
        return cls(ws, options, frame)

    # --- requests --------------------------------------------------------------

    async def request(self, make: Callable[[int], Request], answer_type: type[A]) -> A:
        """Send the request that `make(rid)` builds and wait for its answer.

        Raises :class:`RequestRefused` for an `error` answer and
        :class:`ConnectionLost` when the connection ends (or the answer is late).
        """
        if self._closed.is_set():
            raise ConnectionLost(self.close_code, self.close_reason)
        rid = self._next_rid()
        frame = make(rid)
        assert ANSWER_TYPES[type(frame)] is answer_type, (type(frame), answer_type)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(answer_type, future)  # type: ignore[arg-type]
        try:
            await self._ws.send(encode(frame, self.options.fmt))
            async with asyncio.timeout(self.options.request_timeout):
                answer = await future
        except ConnectionClosed:
            raise ConnectionLost(self.close_code, self.close_reason) from None
        except TimeoutError:
            # A relay that does not answer in time is as good as gone: start afresh.
            self.abort()
            raise ConnectionLost(None, f"no answer to {frame.T} in time") from None
        finally:
            self._pending.pop(rid, None)
        assert isinstance(answer, answer_type)
        return answer

    async def ack(self, ids: list[bytes]) -> None:
        """Acknowledge deliveries; silently nothing when the connection is gone."""
        if not ids or self._closed.is_set():
            return
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(encode(Ack(ids=tuple(ids)), self.options.fmt))

    def _next_rid(self) -> int:
        while True:
            self._rid = (self._rid + 1) % (U32_MAX + 1)
            if self._rid not in self._pending:
                return self._rid

    def _answer_type(self, rid: int) -> type[Answer] | None:
        pending = self._pending.get(rid)
        return None if pending is None else pending.answer_type

    # --- reading ---------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            async for data in self._ws:
                try:
                    frame = decode_server_frame(data, self.options.fmt, self._answer_type)
                except RelayError as exc:
                    # A late answer (its request gave up) or a frame of a newer relay.
                    log.debug("ignoring a frame from the relay: %s", exc.message)
                    continue
                if isinstance(frame, Error):
                    self._on_error(frame)
                elif isinstance(frame, Deliver | KeysLow | QueueEmpty):
                    self.pushes.put_nowait(frame)
                elif isinstance(frame, Challenge):
                    log.debug("ignoring a second challenge")
                else:
                    pending = self._pending.get(frame.rid)
                    if pending is not None and not pending.future.done():
                        pending.future.set_result(frame)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason or ""
            self._closed.set()
            self.pushes.put_nowait(None)
            lost = ConnectionLost(self.close_code, self.close_reason)
            for pending in self._pending.values():
                if not pending.future.done():
                    pending.future.set_exception(lost)

    def _on_error(self, error: Error) -> None:
        pending = self._pending.get(error.rid) if error.rid is not None else None
        if pending is None:
            log.warning("relay reported %s: %s", error.code, error.message)
            return
        if not pending.future.done():
            pending.future.set_exception(RequestRefused(error))

    # --- closing ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def abort(self) -> None:
        """Drop the socket at once, with no closing handshake: what a network failure does."""
        transport = self._ws.transport
        if transport is not None:
            transport.abort()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        with contextlib.suppress(Exception):
            await self._reader
