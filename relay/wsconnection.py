"""The relay's WebSocket connection: websockets' own, bounded against a peer that never reads
(its pongs, or the close frame the relay sends it).

websockets answers each ping with a pong as the ping is read, outside the flow control
that holds the relay's own writes at the write limit: a client that keeps sending pings
and never reads makes the server buffer pongs without bound (the Autobahn runs and a
flood on loopback showed ~1 MiB of relay memory per MiB of pings). Here, while the
writes to a peer are backed up (its buffer above the write limit, so the peer is not
reading), the pongs and other automatic answers added to the buffer are counted; past
`UNREAD_ANSWERS_LIMIT` the peer is a slow reader like any other: close 1013, and the
connection is dropped at once (it would never read the close frame behind its pongs).

websockets' own `close` drains the write buffer before its close timeout starts, and that
wait has no bound: a peer that does not read held a connection the relay had closed (1013,
1008...) open, with its buffers and the handshake's budget, until the keepalive's next ping
happened to abort it. Here the close as a whole, that wait included, takes at most
`close_timeout`; then the TCP connection is dropped, as websockets does when the peer never
answers the close frame.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from protocol.errors import CloseCode

log = logging.getLogger("relay.wsconnection")

UNREAD_ANSWERS_LIMIT = 64 * 1024
SLOW_READER_REASON = "slow reader: pongs not read"


class RelayConnection(ServerConnection):
    """Given to `serve(create_connection=...)`; everything else is websockets' own."""

    unread_answers = 0  # bytes of automatic answers written while the peer was not reading
    backed_up = False  # the write buffer is above the high-water mark

    def pause_writing(self) -> None:
        super().pause_writing()
        self.backed_up = True

    def resume_writing(self) -> None:
        super().resume_writing()
        self.backed_up = False
        self.unread_answers = 0

    def data_received(self, data: bytes) -> None:
        before = self.transport.get_write_buffer_size()
        super().data_received(data)
        if not self.backed_up or self.protocol.state is not State.OPEN:
            return
        self.unread_answers += max(0, self.transport.get_write_buffer_size() - before)
        if self.unread_answers > UNREAD_ANSWERS_LIMIT:
            self._drop_slow_reader()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """websockets' closing handshake, bounded as a whole by `close_timeout`."""
        try:
            async with asyncio.timeout(self.close_timeout):
                await super().close(code, reason)
        except TimeoutError:
            log.debug("dropping a peer that did not take the close frame in time")
            self.transport.abort()
            await asyncio.shield(self.connection_lost_waiter)

    def _drop_slow_reader(self) -> None:
        log.debug("closing a peer that does not read its pongs (%d bytes)", self.unread_answers)
        self.protocol.fail(CloseCode.TRY_AGAIN_LATER, SLOW_READER_REASON)
        self.send_data()  # records the close as sent, for the connection log
        self.transport.abort()
