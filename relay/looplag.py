"""Event-loop lag: how late a periodic timer fires.

Everything in the relay shares one event loop, so a callback that hogs it (a big decode, a
slow synchronous call) delays every connection. A timer due every INTERVAL_S measures that
delay directly, at the cost of one callback per interval, without a task.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from relay.metrics import Metrics

INTERVAL_S: Final = 0.5


class LoopLagMonitor:
    """Schedules itself with `call_later`; each firing records how late it came."""

    def __init__(self, metrics: Metrics, *, interval_s: float = INTERVAL_S) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is not None:
            self._handle.cancel()  # one timer at a time (a no-op for the one that just fired)
        # Measured with perf_counter: uvloop's loop.time() has millisecond resolution.
        due = time.perf_counter() + self._interval_s
        self._handle = loop.call_later(self._interval_s, self._fired, loop, due)

    def _fired(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self._metrics.observe_loop_lag(max(0.0, time.perf_counter() - due))
        self._schedule(loop)
