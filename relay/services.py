"""What every handler shares, built once by the composition root and passed down explicitly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from protocol.fields import Limits
from relay.clock import Clock
from relay.cluster import Cluster
from relay.config import Settings
from relay.metrics import Metrics
from relay.router import Router
from storage.interfaces import MessageQueue, Store

log = logging.getLogger("relay")


@dataclass
class Services:
    settings: Settings
    store: Store
    router: Router
    metrics: Metrics
    clock: Clock
    limits: Limits
    cluster: Cluster  # presence and the node bus: devices connected to other nodes
    messages: MessageQueue  # the store's queue as acks use it: receipts pushed (relay.receipts)
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run work that must finish even if its connection goes away (a send's outcome)."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def drain_background(self, limit_s: float) -> None:
        """Wait for in-flight sends to reach their outcome (graceful shutdown)."""
        if self.background:
            await asyncio.wait(set(self.background), timeout=limit_s)
