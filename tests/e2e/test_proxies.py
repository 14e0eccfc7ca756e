"""--trusted-proxies: the per-address connection cap counts the forwarded client address, but
only for connections from a trusted proxy; anyone else's X-Forwarded-For is ignored.

The cap lives in the relay process, whatever its store: these relays use the embedded one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .support import RelayProcess, stop_relays

WAIT = 10.0
TRY_AGAIN_LATER = 1013

StartRelay = Callable[..., RelayProcess]


@pytest_asyncio.fixture
async def start_relay(tmp_path: Path) -> AsyncIterator[StartRelay]:
    started: list[RelayProcess] = []

    def start(**options: Any) -> RelayProcess:
        relay = RelayProcess(tmp_path / f"relay-{len(started)}", options)
        started.append(relay)
        return relay.start()

    yield start
    problems = stop_relays(started)
    assert not problems, problems


class Clients:
    """Connections to one relay, kept open so that each one counts against its address."""

    def __init__(self, relay: RelayProcess) -> None:
        self.url = relay.url
        self.open: list[ClientConnection] = []

    async def connect(self, forwarded_for: str | None = None) -> int | None:
        """None when the relay admitted the connection (it sent the challenge), else the
        close code it was turned away with."""
        headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
        ws = await connect(self.url, additional_headers=headers, open_timeout=WAIT)
        try:
            await asyncio.wait_for(ws.recv(), WAIT)  # the challenge
        except ConnectionClosed:
            return ws.close_code
        self.open.append(ws)
        return None

    async def close(self) -> None:
        await asyncio.gather(*(ws.close() for ws in self.open))


async def test_trusted_proxy_connections_count_per_forwarded_address(
    start_relay: StartRelay,
) -> None:
    relay = await asyncio.to_thread(
        start_relay, max_connections_per_address=1, trusted_proxies="127.0.0.1/32,10.0.0.0/8"
    )
    clients = Clients(relay)
    try:
        assert await clients.connect("198.51.100.7") is None
        assert await clients.connect("203.0.113.9") is None  # another client: its own budget
        assert await clients.connect("198.51.100.7") == TRY_AGAIN_LATER
        # A client forged the left part; the address our proxy appended is the one counted.
        assert await clients.connect("198.51.100.7, 203.0.113.50") is None
        assert await clients.connect("203.0.113.50") == TRY_AGAIN_LATER
        # A second trusted hop (10.0.0.0/8) is skipped: the client is the address before it.
        assert await clients.connect("192.0.2.1, 10.1.2.3") is None
        assert await clients.connect("192.0.2.1") == TRY_AGAIN_LATER
        # Without the header, the proxy's own connection counts as the proxy's address.
        assert await clients.connect() is None
        assert await clients.connect() == TRY_AGAIN_LATER
    finally:
        await clients.close()


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(start_relay: StartRelay) -> None:
    relay = await asyncio.to_thread(
        start_relay, max_connections_per_address=1, trusted_proxies="10.0.0.0/8"
    )
    clients = Clients(relay)
    try:
        assert await clients.connect("198.51.100.7") is None
        # 127.0.0.1 is not a trusted proxy: a new forged address does not buy a new budget.
        assert await clients.connect("203.0.113.9") == TRY_AGAIN_LATER
        assert await clients.connect() == TRY_AGAIN_LATER
    finally:
        await clients.close()
