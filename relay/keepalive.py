"""One keepalive for every connection: a ping each `interval`, a close when its pong is late.

websockets would run a keepalive task per connection (a coroutine asleep for the
interval, its timer and future: about a kilobyte each, held by every idle
connection). The relay serves with websockets' keepalive off and runs this one
task instead. Each tick it pings its share of the connections whose ping is due (an
interval after they joined or were last pinged), so every connection is pinged once per
interval and a crowd's pings spread over it; a
connection whose pong is more than `timeout` late is closed with 1011, as
websockets does; so is one whose ping could not even be written in that time (its peer
reads nothing).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

log = logging.getLogger("relay.keepalive")

TICK_S = 1.0
STALE_SLACK = 64  # closed connections the ping order may hold before it is rebuilt
PONG_LATE_CODE = 1011  # as websockets closes on a late pong
PONG_LATE_REASON = "keepalive ping timeout"


class Keepalive:
    def __init__(self, *, interval: float, timeout: float, tick: float = TICK_S) -> None:
        self._interval = interval
        self._timeout = timeout
        self._tick = min(tick, interval)
        self._members: set[ServerConnection] = set()
        # The ping order, each with the loop time its next ping is due (a ping interval after
        # it joined or was last pinged, so the deque stays in due order); removed ones skipped.
        self._turns: deque[tuple[ServerConnection, float]] = deque()
        # Pings in flight, oldest first: when each was sent and the future of its pong.
        self._pongs: dict[ServerConnection, tuple[float, asyncio.Future[float]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # pings being written, late closes

    def add(self, ws: ServerConnection) -> None:
        self._members.add(ws)
        self._turns.append((ws, asyncio.get_running_loop().time() + self._interval))

    def remove(self, ws: ServerConnection) -> None:
        self._members.discard(ws)
        self._pongs.pop(ws, None)

    async def run(self, serving: Callable[[], bool]) -> None:
        """Ping until `serving()` turns False (the server stopped accepting)."""
        loop = asyncio.get_running_loop()
        while serving():
            await asyncio.sleep(self._tick)
            now = loop.time()
            self._close_late(now)
            self._ping_share(now)

    def _close_late(self, now: float) -> None:
        for ws, (sent, pong) in list(self._pongs.items()):
            if pong.done():
                del self._pongs[ws]
            elif now - sent > self._timeout:
                del self._pongs[ws]
                self._members.discard(ws)
                self._spawn(self._close(ws))
            else:
                return  # the rest were sent later

    def _ping_share(self, now: float) -> None:
        if len(self._turns) > 2 * len(self._members) + STALE_SLACK:
            # Mostly closed connections: drop them now, not when their turns come, so a closed
            # connection is not kept alive by the ping order.
            self._turns = deque((ws, due) for ws, due in self._turns if ws in self._members)
        share = math.ceil(len(self._members) * self._tick / self._interval)
        pinged = 0
        while pinged < share and self._turns and self._turns[0][1] <= now:
            ws, _ = self._turns.popleft()
            if ws not in self._members:
                continue  # gone since its last turn
            self._turns.append((ws, now + self._interval))
            pinged += 1
            if ws not in self._pongs:
                self._spawn(self._ping(ws, now))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ping(self, ws: ServerConnection, now: float) -> None:
        try:
            # The timeout counts from now, the write included: websockets' `ping` waits for
            # room in the write buffer without a bound, and a peer that reads nothing (with
            # less queued for it than the slow-reader checks look for) never gives any. A
            # ping that cannot be written in time is as late as a pong that never came.
            async with asyncio.timeout(self._timeout):
                pong = await ws.ping()
        except ConnectionClosed:
            return
        except TimeoutError:
            if ws in self._members:
                self._members.discard(ws)
                await self._close(ws)
            return
        if ws in self._members:
            self._pongs[ws] = (now, asyncio.ensure_future(pong))

    async def _close(self, ws: ServerConnection) -> None:
        log.info("closing a connection whose pong is late")
        await ws.close(PONG_LATE_CODE, PONG_LATE_REASON)
