"""The live progress line: current rate, p50/p99 of recent deliveries, errors, connections."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.live import Live
from rich.text import Text

from loadtest.recorder import new_histogram
from loadtest.worker import Progress

PLAIN_EVERY = 5.0


class ProgressLine:
    """One line, redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, label: str, console: Console | None = None) -> None:
        self.label = label
        self.console = console or Console(stderr=True)
        self.latest: dict[int, Progress] = {}
        self.recent_by_proc: dict[int, HdrHistogram] = {}
        self._last_total = 0
        self._last_time = time.time()
        self._rate = 0.0
        self._printed = 0.0
        self._live: Live | None = None

    def __enter__(self) -> ProgressLine:
        if self.console.is_terminal:
            self._live = Live(self.render(), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(exc_type, exc, tb)
        else:
            print(self.render().plain, file=sys.stderr, flush=True)

    def update(self, index: int, progress: Progress) -> None:
        self.latest[index] = progress
        self.recent_by_proc[index] = HdrHistogram.decode(progress.recent)

    def tick(self) -> None:
        """Once a second: compute the rate, redraw, reset the recent latencies."""
        now = time.time()
        total = sum(p.delivered for p in self.latest.values())
        if now > self._last_time:
            self._rate = (total - self._last_total) / (now - self._last_time)
        self._last_total, self._last_time = total, now
        if self._live is not None:
            self._live.update(self.render())
        elif now - self._printed >= PLAIN_EVERY:
            self._printed = now
            print(self.render().plain, file=sys.stderr, flush=True)

    def render(self) -> Text:
        ps = self.latest.values()
        sent = sum(p.sent for p in ps)
        delivered = sum(p.delivered for p in ps)
        errors = sum(p.errors for p in ps)
        conns = sum(p.connections for p in ps)
        recent = new_histogram()
        for h in self.recent_by_proc.values():
            recent.add(h)
        if recent.get_total_count():
            p50 = recent.get_value_at_percentile(50) / 1000
            p99 = recent.get_value_at_percentile(99) / 1000
            lat = f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"
        else:
            lat = "p50       -     p99       -   "
        return Text(
            f"{self.label}: {self._rate:8.0f} msg/s  {lat}  sent {sent}  delivered {delivered}"
            f"  errors {errors}  connections {conns}",
            style="bold red" if errors else "",
        )
