"""Sizes of the flood and slow-reader tests, and the relay's memory as the tests read it.

CI runs them small; `RELAY_FLOOD_FULL=1` runs the sizes of docs/security.md ("Floods and
slow readers") and the tests print their figures (`pytest -s` shows them).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field

FULL = os.environ.get("RELAY_FLOOD_FULL") == "1"
FULL_TIMEOUT_S = 900  # a full-size test's time limit (pytest-timeout)


@dataclass(frozen=True)
class FloodSize:
    per_kind: int  # connections that never upgrade, and as many that never authenticate
    processes_per_kind: int
    rate: float  # connections opened a second, all processes together
    handshake_timeout: float


@dataclass(frozen=True)
class SlowSize:
    slow_readers: int
    pairs: int  # honest sender/receiver pairs measured meanwhile
    seconds: float  # how long messages keep coming
    rate: float  # messages a second for the slow readers, all together
    slow_reader_timeout: float


FLOOD = (
    FloodSize(per_kind=8000, processes_per_kind=4, rate=250, handshake_timeout=30)
    if FULL
    else FloodSize(per_kind=300, processes_per_kind=1, rate=600, handshake_timeout=2)
)
SLOW = (
    SlowSize(slow_readers=200, pairs=20, seconds=20, rate=400, slow_reader_timeout=5)
    if FULL
    else SlowSize(slow_readers=20, pairs=5, seconds=4, rate=100, slow_reader_timeout=1.5)
)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class RssCurve:
    """The relay's RSS sampled at a fixed interval while a test runs."""

    pid: int
    interval: float = 0.5
    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, float]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self.started, rss_mib(self.pid)))
            await asyncio.sleep(self.interval)  # a sampling period, not a synchronisation

    @property
    def peak(self) -> float:
        return max(rss for _, rss in self.samples)

    def text(self, every: float = 2.0) -> str:
        shown: list[str] = []
        next_at = 0.0
        for at, rss in self.samples:
            if at >= next_at:
                shown.append(f"{at:.0f}s:{rss:.0f}")
                next_at = at + every
        return " ".join(shown) + " (MiB)"


def p99(samples: list[float]) -> float:
    if len(samples) < 2:
        return samples[0] if samples else 0.0
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
