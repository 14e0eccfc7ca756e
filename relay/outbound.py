"""The outbound side of one WebSocket: an ordered queue of encoded frames and a writer task.

Frames are queued without waiting, so a handler never blocks on a slow
reader; a client whose queue grows past the limit is closed with 1013 and
its messages stay stored. A close is queued like a frame, so an error frame
always reaches the client before the close that follows it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from protocol.codec import WireFormat, encode
from protocol.errors import CloseCode
from protocol.frames import ClientFrame, ServerFrame
from relay.metrics import Metrics

log = logging.getLogger("relay.outbound")


@dataclass(frozen=True, slots=True)
class _Close:
    code: CloseCode
    reason: str


class Outbound:
    def __init__(
        self, ws: ServerConnection, fmt: WireFormat, *, limit_bytes: int, metrics: Metrics
    ) -> None:
        self._ws = ws
        self._fmt = fmt
        self._limit = limit_bytes
        self._metrics = metrics
        self._queue: deque[bytes | str | _Close] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self.closing = False
        self.close_code: CloseCode | None = None

    def write(self, frame: ServerFrame | ClientFrame) -> None:
        if self.closing:
            return
        data = encode(frame, self._fmt)
        self._queue.append(data)
        self._queued_bytes += len(data)
        self._metrics.frames_out.labels(frame.T).inc()
        self._wake.set()
        if self._queued_bytes > self._limit:
            self._overflow()

    def close(self, code: CloseCode, reason: str = "") -> None:
        """Close after every frame queued so far has been written."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self._queue.append(_Close(code, reason))
        self._wake.set()

    def _overflow(self) -> None:
        # The client stopped reading: drop what is queued (it stays stored) and close now.
        self._queue.clear()
        self._queued_bytes = 0
        self.close(CloseCode.TRY_AGAIN_LATER, "slow reader")

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    item = self._queue.popleft()
                    if isinstance(item, _Close):
                        self._metrics.closes.labels(str(int(item.code))).inc()
                        await self._ws.close(int(item.code), item.reason)
                        return
                    self._queued_bytes -= len(item)
                    await self._ws.send(item)
        except ConnectionClosed:
            return
