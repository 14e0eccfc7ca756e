"""Give the memory of a burst of connections back to the system once the burst is over.

A flood of connections (each a socket, buffers, a task, a few hundred small objects) takes
tens of MiB. When they close, every object is freed (the count of live objects returns to
its level before the flood), yet the RSS stays near its peak, for two reasons measured in
docs/security.md ("Memory after a flood"): Python's small-object allocator keeps each
1 MiB arena that still holds one live block (objects created during the flood and kept,
such as a grown dict, pin arenas that are otherwise empty), and glibc keeps freed heap
pages for reuse. Both are reused by the next burst, so the memory is bounded by the
largest burst (itself bounded by `--max-handshakes`), not growing from flood to flood.
`malloc_trim(0)` gives the free glibc pages back; it walks the heap (about 1 ms for 100
MiB), so it runs only once a burst has ended: after at least `BURST_CLOSES` connections
closed, when at most `QUIET_OPENING` are still opening. Without glibc nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger("relay.heap")

BURST_CLOSES = 1000
QUIET_OPENING = 100
CHECK_AFTER_S = 5.0  # after the burst's threshold, and again while it goes on


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    result: Callable[[int], int] = trim
    return result


class HeapTrimmer:
    def __init__(
        self,
        opening: Callable[[], int],
        *,
        trim: Callable[[int], int] | None = None,
        burst: int = BURST_CLOSES,
        check_after_s: float = CHECK_AFTER_S,
    ) -> None:
        self._opening = opening  # connections still opening: the burst is not over
        self._trim = trim or _malloc_trim()
        self._burst = burst
        self._check_after_s = check_after_s
        self._closed = 0
        self._check: asyncio.TimerHandle | None = None
        self.trims = 0

    def connection_ended(self) -> None:
        self._closed += 1
        if self._closed >= self._burst and self._check is None and self._trim is not None:
            loop = asyncio.get_running_loop()
            self._check = loop.call_later(self._check_after_s, self._after_burst)

    def _after_burst(self) -> None:
        self._check = None
        if self._opening() > QUIET_OPENING:
            loop = asyncio.get_running_loop()
            self._check = loop.call_later(self._check_after_s, self._after_burst)
            return
        assert self._trim is not None
        started = time.perf_counter()
        self._trim(0)
        self.trims += 1
        log.info(
            "heap trimmed after %d closed connections in %.1f ms",
            self._closed,
            (time.perf_counter() - started) * 1000,
        )
        self._closed = 0
