"""The outbound side of one WebSocket: an ordered queue of encoded frames and a writer task.

Frames are queued without waiting, so a handler never blocks on a slow
reader. What is queued in one turn of the event loop is written at the end of
that turn, by a callback, in one socket write (each frame stays its own
WebSocket message): while the socket takes more, no task is involved. Only when
it does not (flow control paused it) or for a close does a writer task take
over, which waits as `send` would; it lives only while frames wait, so an idle
connection holds none (a connection is idle nearly all of its life, and a task
with its coroutine costs about a kilobyte). The stored-message pump waits for
room in the buffer; a live delivery that finds it full, or a buffer that stays
full for the slow-reader timeout, means the client stopped reading: it is
closed with 1013 and its messages stay stored. A close is queued like a frame,
so an error frame always reaches the client before the close that follows it.
A write takes every frame queued since the last one (up to BATCH_BYTES): a
drain of stored messages costs one socket write per batch instead of one per
delivery.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from protocol.codec import WireFormat, encode
from protocol.errors import CloseCode
from protocol.frames import ClientFrame, ServerFrame
from relay.flag import Flag
from relay.metrics import Metrics

log = logging.getLogger("relay.outbound")

# Frames written together at most (bytes): a drain of stored messages goes out in few writes,
# and a frame queued behind a batch waits for at most this much.
BATCH_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class _Close:
    code: CloseCode
    reason: str


class Outbound:
    def __init__(
        self,
        ws: ServerConnection,
        fmt: WireFormat,
        *,
        limit_bytes: int,
        stall_s: float,
        metrics: Metrics,
    ) -> None:
        self._ws = ws
        self._fmt = fmt
        self._limit = limit_bytes
        self._metrics = metrics
        self._queue: deque[bytes | str | _Close] = deque()
        self._queued_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._room = Flag(is_set=True)
        self._stall_s = stall_s
        self._watchdog: asyncio.Task[None] | None = None
        self.closing = False
        self.close_code: CloseCode | None = None
        self._closer: asyncio.Task[None] | None = None
        self._flush_scheduled = False

    def write(self, frame: ServerFrame | ClientFrame) -> None:
        if self.closing:
            return
        data = encode(frame, self._fmt)
        self._queue.append(data)
        self._queued_bytes += len(data)
        self._metrics.frames_out.labels(frame.T).inc()
        self._schedule_flush()
        if self._queued_bytes >= self._limit:
            self._room.clear()
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch_stall())

    def has_room(self) -> bool:
        """Whether a delivery may be queued now (bytes queued and unsent are below the limit)."""
        return not self.closing and self._queued_bytes < self._limit

    async def wait_room(self) -> None:
        await self._room.wait()

    def close(self, code: CloseCode, reason: str = "") -> None:
        """Close after every frame queued so far has been written."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self._queue.append(_Close(code, reason))
        self._start_writer()

    async def _watch_stall(self) -> None:
        try:
            async with asyncio.timeout(self._stall_s):
                await self._room.wait()
        except TimeoutError:
            self.overflow("its outbound buffer stayed full")

    def overflow(self, cause: str) -> None:
        """The client stopped reading: drop what is queued (it stays stored) and close now,
        behind the bytes already handed to the socket."""
        if self.closing:
            return
        self.closing = True
        self.close_code = CloseCode.TRY_AGAIN_LATER
        self._queue.clear()
        log.info("closing a slow reader: %s", cause)
        self._metrics.closes.labels(str(int(CloseCode.TRY_AGAIN_LATER))).inc()
        self._closer = asyncio.create_task(
            self._ws.close(int(CloseCode.TRY_AGAIN_LATER), "slow reader")
        )
        self._room.set()  # release waiters; has_room() is False from now on

    async def finished(self) -> None:
        """Return once every frame queued so far (a close included) is written, or the
        connection is gone."""
        if self._queue:
            self._start_writer()  # frames waiting for a flush not run yet
        while self._writer is not None:
            await asyncio.shield(self._writer)

    def stop(self) -> None:
        """Stop writing (the connection is being given up); what is queued is dropped."""
        self._queue.clear()
        if self._writer is not None:
            self._writer.cancel()

    def _schedule_flush(self) -> None:
        """Write what is queued at the end of this turn of the event loop: every frame
        queued in the same turn goes out in one socket write."""
        if self._writer is None and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """The common case without a task: the connection is open and its socket takes
        more (not paused by flow control), so the frames go to the transport now. Else,
        or for a close, the writer task takes over and waits as `send` would."""
        self._flush_scheduled = False
        if self._writer is not None or not self._queue:
            return
        ws = self._ws
        if (
            isinstance(self._queue[0], _Close)
            or ws.protocol.state is not State.OPEN
            or ws.paused
            or ws.transport.is_closing()
        ):
            self._start_writer()
            return
        batch = self._take_batch()
        self._write(batch)
        self._written(batch)
        if self._queue:  # a close, or more than one batch
            self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())

    async def _write_queued(self) -> None:
        """Write until the queue is empty, then end (a later `write` starts a new writer)."""
        try:
            while self._queue:
                item = self._queue[0]
                if isinstance(item, _Close):
                    self._queue.popleft()
                    self._metrics.closes.labels(str(int(item.code))).inc()
                    await self._ws.close(int(item.code), item.reason)
                    return
                batch = self._take_batch()
                if len(batch) == 1:
                    await self._ws.send(batch[0])
                else:
                    await self._send_together(batch)
                self._written(batch)
        except ConnectionClosed:
            return
        finally:
            self._writer = None

    def _written(self, batch: list[bytes | str]) -> None:
        # Counted until written: a frame stuck behind a full socket still fills the buffer.
        self._queued_bytes -= sum(len(frame) for frame in batch)
        if self._queued_bytes < self._limit:
            self._room.set()

    def _write(self, frames: list[bytes | str]) -> None:
        """Each frame its own WebSocket message, encoded by the connection's Sans-I/O
        protocol, and all of them handed to the transport in one `writelines`."""
        ws = self._ws
        for frame in frames:
            if isinstance(frame, str):
                ws.protocol.send_text(frame.encode())
            else:
                ws.protocol.send_binary(frame)
        ws.transport.writelines(ws.protocol.data_to_send())

    def _take_batch(self) -> list[bytes | str]:
        """The frames queued up to the next close, at most BATCH_BYTES of them (at least one)."""
        batch: list[bytes | str] = []
        size = 0
        while self._queue and size < BATCH_BYTES:
            item = self._queue[0]
            if isinstance(item, _Close):
                break
            self._queue.popleft()
            batch.append(item)
            size += len(item)
        return batch

    async def _send_together(self, frames: list[bytes | str]) -> None:
        """Several messages, each its own WebSocket frame, in one socket write and one drain.

        `send_context` is what `ServerConnection.send` itself uses: it checks the state,
        drains, and turns a failure into ConnectionClosed. Inside it the connection's Sans-I/O
        protocol encodes each frame, and the bytes go to the transport in one `writelines`
        (one system call) where `send` would write and drain once per frame.
        """
        async with self._ws.send_context():
            self._write(frames)
