"""Presence and node bus for the embedded store: one node, nothing to share.

Every connected device is on this node, which the relay's local registry already knows, so
presence holds nothing and locates nobody; the bus hands a message for this node back to it
(loopback) and has no other node to reach."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from storage.node_records import BusMessage, Holder, NodeInfo, Refresh


class LocalPresence:
    """The `Presence` of a single node: the registry lists this node alone."""

    def __init__(self, *, node_id: str, connections: Callable[[], int]) -> None:
        self._node_id = node_id
        self._connections = connections

    async def claim(self, user: str, device: int, token: str) -> Holder | None:
        return None

    async def release(self, user: str, device: int, token: str) -> None:
        return None

    async def locate(self, devices: Sequence[tuple[str, int]]) -> list[str | None]:
        return [None] * len(devices)

    async def refresh(self, entries: Sequence[tuple[str, int, str]]) -> list[Refresh]:
        return [Refresh.KEPT] * len(entries)

    async def heartbeat(self, connections: int) -> None:
        return None

    async def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(self._node_id, self._connections(), time.time_ns() // 1_000_000)]

    async def leave(self) -> None:
        return None

    async def close(self) -> None:
        return None


class LoopbackBus:
    """The `NodeBus` of a single node: messages to itself come back on the next loop turn."""

    def __init__(self, *, node_id: str) -> None:
        self._node_id = node_id
        self._on_message: Callable[[BusMessage], None] | None = None

    def start(
        self, on_message: Callable[[BusMessage], None], on_resync: Callable[[], None]
    ) -> None:
        self._on_message = on_message

    async def publish(self, node: str, message: BusMessage) -> bool:
        if node != self._node_id or self._on_message is None:
            return False
        asyncio.get_running_loop().call_soon(self._on_message, message)
        return True

    async def close(self) -> None:
        self._on_message = None
