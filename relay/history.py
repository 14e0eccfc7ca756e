"""The last 15 minutes of what the dashboard charts, kept by the relay itself.

A dashboard that opens shows the recent past at once, instead of only what it has polled
since it opened. A background task reads the metrics every second and appends one sample
to a bounded ring; `GET /v1/history` serves the ring (or only the samples newer than
`?since=`). Rates are computed here, from two successive readings of the cumulative
counters, so every page draws the same figures.

Memory bound: CAPACITY samples (900: 15 minutes at one a second) of 12 fields, one of them a
dict of error rates by code that is empty unless requests were refused during that second.
Measured with tracemalloc, a full ring takes about 440 KiB without refusals and 1.1 MiB when
every one of the 17 error codes moves every second (tests/unit/test_history.py checks the
bound).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from relay.clock import Clock
from relay.metrics import Metrics
from storage.stopping import stop_task

log = logging.getLogger("relay.history")

SAMPLE_INTERVAL_S: Final = 1.0
WINDOW_S: Final = 15 * 60.0
CAPACITY: Final = int(WINDOW_S / SAMPLE_INTERVAL_S)


@dataclass(frozen=True, slots=True)
class Reading:
    """The relay's counters (cumulative since start) and gauges at one instant."""

    connections: int
    authenticated: int
    accepted: int
    pushed: int
    delivered: int
    stored: int
    errors: dict[str, int]  # requests refused, by error code
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    queue: int
    loop_lag_ms: float


@dataclass(frozen=True, slots=True)
class Sample:
    """One second of the dashboard's charts. The rates are per second since the previous
    sample; None in the first sample, which has nothing to compare with."""

    t_ms: int  # server wall-clock time, strictly increasing along the ring
    connections: int
    authenticated: int
    messages_in: float | None  # envelopes accepted from senders
    messages_out: float | None  # deliver frames pushed
    delivered: float | None  # acknowledged live
    stored: float | None  # written to the store
    errors: dict[str, float]  # refused requests per second by code; only codes that moved
    latency_p50_ms: float | None  # delivery latency over the last minute
    latency_p99_ms: float | None
    queue: int  # stored envelopes waiting for their device's ack
    loop_lag_ms: float


def read_metrics(metrics: Metrics) -> Reading:
    """The figures the dashboard charts, from the registry (one source of truth)."""
    envelopes = metrics.totals(metrics.envelopes)
    recent = metrics.delivery_latency.recent.summary()
    return Reading(
        connections=metrics.open_connections,
        authenticated=int(metrics.value(metrics.authenticated)),
        accepted=int(envelopes.get("accepted", 0)),
        pushed=int(metrics.totals(metrics.frames_out).get("deliver", 0)),
        delivered=int(envelopes.get("delivered", 0)),
        stored=int(envelopes.get("stored", 0)),
        errors={code: int(n) for code, n in metrics.totals(metrics.rejections).items()},
        latency_p50_ms=_ms(recent.p50_s),
        latency_p99_ms=_ms(recent.p99_s),
        queue=int(metrics.value(metrics.stored_messages)),
        loop_lag_ms=round(metrics.value(metrics.loop_lag_last) * 1000, 3),
    )


class History:
    """A bounded ring of samples, oldest first; the oldest falls out when it is full."""

    def __init__(self, clock: Clock, *, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=capacity)
        self._previous: tuple[float, Reading] | None = None  # (monotonic s, reading)

    @property
    def capacity(self) -> int:
        maxlen = self._samples.maxlen
        assert maxlen is not None
        return maxlen

    def __len__(self) -> int:
        return len(self._samples)

    def record(self, reading: Reading) -> Sample:
        """Append the sample of `reading`, its rates taken against the previous reading."""
        now = self._clock.monotonic()
        t_ms = self._clock.now_ms()
        if self._samples and t_ms <= self._samples[-1].t_ms:
            t_ms = self._samples[-1].t_ms + 1  # a wall clock stepped back keeps the order
        before = self._previous
        dt = now - before[0] if before is not None else 0.0
        rate = _Rates(before[1] if before is not None and dt > 0 else None, dt)
        sample = Sample(
            t_ms=t_ms,
            connections=reading.connections,
            authenticated=reading.authenticated,
            messages_in=rate.of(reading.accepted, lambda r: r.accepted),
            messages_out=rate.of(reading.pushed, lambda r: r.pushed),
            delivered=rate.of(reading.delivered, lambda r: r.delivered),
            stored=rate.of(reading.stored, lambda r: r.stored),
            errors=rate.by_code(reading.errors),
            latency_p50_ms=reading.latency_p50_ms,
            latency_p99_ms=reading.latency_p99_ms,
            queue=reading.queue,
            loop_lag_ms=reading.loop_lag_ms,
        )
        self._samples.append(sample)
        self._previous = (now, reading)
        return sample

    def since(self, t_ms: int | None = None) -> list[Sample]:
        """The samples taken after `t_ms` (all of them for None), oldest first. Walks back
        from the newest: a page polling every second asks for one or two."""
        if t_ms is None:
            return list(self._samples)
        newer: list[Sample] = []
        for sample in reversed(self._samples):
            if sample.t_ms <= t_ms:
                break
            newer.append(sample)
        newer.reverse()
        return newer


class _Rates:
    """Per-second rates of counters against one earlier reading (None: no earlier one)."""

    def __init__(self, before: Reading | None, dt: float) -> None:
        self._before = before
        self._dt = dt

    def of(self, now: int, field: Callable[[Reading], int]) -> float | None:
        if self._before is None:
            return None
        return _per_second(now - field(self._before), self._dt)

    def by_code(self, now: dict[str, int]) -> dict[str, float]:
        if self._before is None:
            return {}
        earlier = self._before.errors
        moved = {code: n - earlier.get(code, 0) for code, n in now.items()}
        return {code: _per_second(n, self._dt) for code, n in sorted(moved.items()) if n > 0}


class HistorySampler:
    """Records a sample now and then every interval, from `start()` until `stop()`.

    Ticks are due on a fixed schedule of the clock's monotonic time, so a slow sample does
    not shift the ones after it; ticks missed while the event loop was blocked are skipped
    (the next rate covers the whole gap)."""

    def __init__(
        self,
        history: History,
        read: Callable[[], Reading],
        clock: Clock,
        *,
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self._history = history
        self._read = read
        self._clock = clock
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Take the first sample at once, then one every interval."""
        self._history.record(self._read())
        self._task = asyncio.create_task(self._run(), name="history-sampler")

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended."""
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)

    async def _run(self) -> None:
        due = self._clock.monotonic()
        while True:
            due += self._interval_s
            now = self._clock.monotonic()
            if due < now:
                due = now + self._interval_s  # behind: skip the missed ticks
            await asyncio.sleep(min(self._interval_s, due - now))  # a stopped clock: 1 interval
            try:
                self._history.record(self._read())
            except Exception:  # a sample lost must not end the sampling
                log.exception("history sample failed")


def _per_second(delta: int, dt: float) -> float:
    return round(max(0, delta) / dt, 3)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
