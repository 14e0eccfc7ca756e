"""The relay's metric helpers: the recent-latency window behind /v1/stats, the loop-lag
timer, and the totals read back from the registry."""

from __future__ import annotations

import asyncio
import time

from relay.looplag import LoopLagMonitor
from relay.metrics import Metrics, RecentLatencies


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_percentiles_are_nearest_rank() -> None:
    recent = RecentLatencies(clock=FakeClock())
    for ms in range(1, 101):  # 1..100 ms, in any order
        recent.add((101 - ms) / 1000)
    summary = recent.summary()
    assert summary.count == 100
    assert summary.p50_s == 0.050
    assert summary.p99_s == 0.099


def test_old_samples_leave_the_window() -> None:
    clock = FakeClock()
    recent = RecentLatencies(window_s=60.0, clock=clock)
    recent.add(5.0)
    clock.now += 61
    recent.add(0.002)
    summary = recent.summary()
    assert (summary.count, summary.p50_s, summary.p99_s) == (1, 0.002, 0.002)
    clock.now += 61
    assert recent.summary().count == 0
    assert recent.summary().p50_s is None


def test_the_window_is_bounded() -> None:
    recent = RecentLatencies(max_samples=10, clock=FakeClock())
    for _ in range(1000):
        recent.add(0.001)
    assert recent.summary().count == 10


def test_delivery_latency_feeds_histogram_and_window() -> None:
    metrics = Metrics()
    metrics.delivery_latency.observe(0.004)
    assert metrics.registry.get_sample_value("relay_delivery_latency_seconds_count") == 1
    assert metrics.delivery_latency.recent.summary().p50_s == 0.004


def test_totals_by_label() -> None:
    metrics = Metrics()
    metrics.envelopes.labels("accepted").inc(3)
    metrics.envelopes.labels("stored").inc()
    assert metrics.totals(metrics.envelopes) == {"accepted": 3.0, "stored": 1.0}
    assert metrics.total(metrics.envelopes) == 4.0
    metrics.stored_messages.set(7)
    assert metrics.value(metrics.stored_messages) == 7.0


async def test_loop_lag_is_how_late_the_timer_fired() -> None:
    metrics = Metrics()
    monitor = LoopLagMonitor(metrics, interval_s=60.0)
    monitor.start()
    try:
        # A firing 50 ms after its due time records 50 ms or a little more, and re-arms.
        monitor._fired(asyncio.get_running_loop(), time.perf_counter() - 0.05)
        lag = metrics.value(metrics.loop_lag_last)
        assert 0.05 <= lag < 1.0
        assert metrics.registry.get_sample_value("relay_event_loop_lag_seconds_count") == 1
        # A timer that fired early (clock granularity) is no negative lag.
        monitor._fired(asyncio.get_running_loop(), time.perf_counter() + 0.01)
        assert metrics.value(metrics.loop_lag_last) == 0.0
    finally:
        monitor.stop()
