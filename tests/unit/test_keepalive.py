"""`relay.keepalive.Keepalive`: one ping per connection and interval; a closed connection is
not kept alive by the ping order."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import cast

from websockets.asyncio.server import ServerConnection

from relay.keepalive import STALE_SLACK, Keepalive


class _Closed:
    """Stands for a connection that has closed: the keepalive only holds and forgets it."""


async def test_closed_connections_are_dropped_from_the_ping_order() -> None:
    keepalive = Keepalive(interval=20.0, timeout=20.0)
    closed = [_Closed() for _ in range(10 * STALE_SLACK)]
    refs = [weakref.ref(c) for c in closed]
    for c in closed:
        keepalive.add(cast(ServerConnection, c))
    for c in closed:
        keepalive.remove(cast(ServerConnection, c))
    keepalive._ping_share(now=0.0)  # one tick: nobody left to ping
    del closed, c
    gc.collect()
    assert all(r() is None for r in refs)


class _Answering:
    """Stands for an open connection whose peer answers every ping at once."""

    def __init__(self) -> None:
        self.pings = 0

    async def ping(self) -> asyncio.Future[float]:
        self.pings += 1
        pong: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        pong.set_result(0.0)
        return pong


async def test_a_connection_is_pinged_once_an_interval_not_once_a_tick() -> None:
    keepalive = Keepalive(interval=20.0, timeout=20.0)
    conn = _Answering()
    joined = asyncio.get_running_loop().time()
    keepalive.add(cast(ServerConnection, conn))

    async def tick(at: float) -> None:
        keepalive._close_late(at)
        keepalive._ping_share(at)
        for _ in range(3):  # the ping task runs and records its pong
            await asyncio.sleep(0)

    for second in range(1, 20):
        await tick(joined + second)
    assert conn.pings == 0  # not before an interval has passed since it joined
    await tick(joined + 20.5)
    assert conn.pings == 1
    for second in range(21, 40):
        await tick(joined + second + 0.5)
    assert conn.pings == 1
    await tick(joined + 41.0)
    assert conn.pings == 2
