"""`on_connection_change`: the application hears a refused attempt, the connection, and its end."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

from e2e.support import RelayProcess

from protocol.client import Client, ConnectionChange, ConnectionLost

from .sdk import FAST, PASSPHRASE, WAIT, device


class Changes:
    """Records every change; waits for one that matches, never sleeps."""

    def __init__(self) -> None:
        self.seen: list[ConnectionChange] = []
        self._cond = asyncio.Condition()

    def __call__(self, change: ConnectionChange) -> None:
        self.seen.append(change)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait_for(self, test: Callable[[ConnectionChange], bool]) -> ConnectionChange:
        async with asyncio.timeout(WAIT), self._cond:
            await self._cond.wait_for(lambda: any(test(c) for c in self.seen))
        return next(c for c in self.seen if test(c))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_refused_connected_and_lost_are_reported(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "relay", {"port": _free_port()})
    await relay.astart()
    try:
        async with device(relay.url, tmp_path / "alice") as alice:
            await alice.register()
        await relay.astop()

        changes = Changes()
        async with Client.open(
            relay.url,
            tmp_path / "alice",
            PASSPHRASE,
            options=FAST,
            on_connection_change=changes,
        ) as alice:
            refused = await changes.wait_for(lambda c: not c.connected)
            assert isinstance(refused.error, ConnectionRefusedError)
            assert refused.retry_in is not None and 0 <= refused.retry_in <= FAST.backoff.cap
            assert not alice.connected

            await relay.astart()
            await changes.wait_for(lambda c: c.connected)
            assert alice.connected

            await relay.astop()
            lost = await changes.wait_for(lambda c: isinstance(c.error, ConnectionLost))
            assert not lost.connected and lost.retry_in is not None
    finally:
        await relay.astop()
