"""`relay.keepalive.Keepalive`: a closed connection is not kept alive by the ping order."""

from __future__ import annotations

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
