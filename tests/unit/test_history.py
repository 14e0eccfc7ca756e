"""The dashboard's history ring: bounded, ordered, `since`, rates from successive readings,
the sampler's start and stop, and the memory bound, all on a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import tracemalloc
from typing import Any

import pytest

from protocol.errors import ErrorCode
from relay.clock import SystemClock
from relay.history import CAPACITY, History, HistorySampler, Reading, read_metrics
from relay.metrics import Metrics
from tests.contract.support import START_MS, FakeClock

MEMORY_BOUND_BYTES = 1_536 * 1024  # docs/operations.md: about 1.1 MiB at worst


def reading(**changes: Any) -> Reading:
    base = Reading(
        connections=3,
        authenticated=2,
        accepted=0,
        pushed=0,
        delivered=0,
        stored=0,
        errors={},
        latency_p50_ms=None,
        latency_p99_ms=None,
        queue=0,
        loop_lag_ms=0.1,
    )
    return dataclasses.replace(base, **changes)


def test_the_ring_keeps_the_newest_samples_up_to_its_capacity() -> None:
    clock = FakeClock()
    history = History(clock, capacity=5)
    for i in range(8):
        history.record(reading(connections=i))
        clock.advance(1)
    samples = history.since()
    assert len(history) == 5 == len(samples)
    assert [s.connections for s in samples] == [3, 4, 5, 6, 7]
    assert [s.t_ms for s in samples] == [START_MS + i * 1000 for i in range(3, 8)]


def test_the_default_capacity_is_fifteen_minutes_of_seconds() -> None:
    assert CAPACITY == 900
    assert History(FakeClock()).capacity == 900
    with pytest.raises(ValueError, match="capacity"):
        History(FakeClock(), capacity=0)


def test_times_stay_strictly_increasing_when_the_wall_clock_steps_back() -> None:
    clock = FakeClock()
    history = History(clock)
    history.record(reading())
    clock.advance(1)
    history.record(reading())
    clock.wall_ms -= 5000  # an NTP step backwards
    clock.mono += 1
    history.record(reading())
    clock.mono += 1  # the wall clock does not move at all
    history.record(reading())
    times = [s.t_ms for s in history.since()]
    assert times == [START_MS, START_MS + 1000, START_MS + 1001, START_MS + 1002]


def test_since_returns_only_the_newer_samples_oldest_first() -> None:
    clock = FakeClock()
    history = History(clock, capacity=10)
    for _ in range(6):
        history.record(reading())
        clock.advance(1)
    times = [s.t_ms for s in history.since()]
    assert [s.t_ms for s in history.since(times[3])] == times[4:]
    assert [s.t_ms for s in history.since(times[3] + 1)] == times[4:]
    assert history.since(times[-1]) == []
    assert [s.t_ms for s in history.since(0)] == times
    assert [s.t_ms for s in history.since(None)] == times


def test_rates_are_per_second_between_successive_readings() -> None:
    clock = FakeClock()
    history = History(clock)
    first = history.record(reading(accepted=100, pushed=50, errors={"bad_frame": 4}))
    assert (first.messages_in, first.messages_out, first.delivered, first.stored) == (
        None,
        None,
        None,
        None,
    )
    assert first.errors == {}
    clock.advance(2)
    second = history.record(
        reading(
            accepted=110,
            pushed=53,
            delivered=4,
            stored=1,
            errors={"bad_frame": 6, "rate_limited": 1},
            queue=7,
            latency_p50_ms=1.5,
        )
    )
    assert second.messages_in == 5.0
    assert second.messages_out == 1.5
    assert second.delivered == 2.0
    assert second.stored == 0.5
    assert second.errors == {"bad_frame": 1.0, "rate_limited": 0.5}
    assert (second.queue, second.latency_p50_ms) == (7, 1.5)
    clock.advance(1)
    third = history.record(reading(accepted=110, pushed=53, errors={"bad_frame": 6}))
    assert third.messages_in == 0.0
    assert third.errors == {}  # only codes that moved


def test_a_reading_taken_at_the_same_instant_gives_no_rate() -> None:
    clock = FakeClock()
    history = History(clock)
    history.record(reading(accepted=1))
    clock.wall_ms += 1
    same = history.record(reading(accepted=9))
    assert same.messages_in is None


def test_read_metrics_reads_the_registry() -> None:
    metrics = Metrics()
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.authenticated.inc()
    metrics.envelopes.labels("accepted").inc(7)
    metrics.envelopes.labels("delivered").inc(5)
    metrics.envelopes.labels("stored").inc(2)
    metrics.frames_out.labels("deliver").inc(6)
    metrics.rejections.labels("bad_frame").inc(3)
    metrics.stored_messages.set(2)
    metrics.observe_loop_lag(0.004)
    metrics.delivery_latency.observe(0.010)
    figures = read_metrics(metrics)
    assert figures == Reading(
        connections=2,
        authenticated=1,
        accepted=7,
        pushed=6,
        delivered=5,
        stored=2,
        errors={"bad_frame": 3},
        latency_p50_ms=10.0,
        latency_p99_ms=10.0,
        queue=2,
        loop_lag_ms=4.0,
    )


async def test_the_sampler_samples_at_start_and_ends_at_stop() -> None:
    clock = FakeClock()
    history = History(clock)
    sampler = HistorySampler(history, reading, clock, interval_s=3600.0)
    sampler.start()
    assert len(history) == 1
    await sampler.stop()
    await sampler.stop()  # a second stop is harmless
    assert len(history) == 1
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "history-sampler"]


async def test_the_sampler_keeps_sampling_on_its_schedule() -> None:
    clock = SystemClock()
    history = History(clock)
    reads = 0
    enough = asyncio.Event()

    def counting_read() -> Reading:
        nonlocal reads
        reads += 1
        if reads == 4:
            enough.set()
        return reading(accepted=reads)

    sampler = HistorySampler(history, counting_read, clock, interval_s=0.01)
    sampler.start()
    try:
        await asyncio.wait_for(enough.wait(), timeout=10)
    finally:
        await sampler.stop()
    assert len(history) >= 4
    times = [s.t_ms for s in history.since()]
    assert times == sorted(set(times))
    assert all(s.messages_in is not None and s.messages_in > 0 for s in history.since()[1:])


def test_a_full_ring_stays_within_its_memory_bound() -> None:
    """The worst case: every error code moves every second, every figure a distinct object."""
    clock = FakeClock()
    history = History(clock)
    codes = [code.value for code in ErrorCode]
    tracemalloc.start()
    try:
        for i in range(2 * CAPACITY):
            clock.advance(1)
            history.record(
                reading(
                    connections=10_000 + i,
                    accepted=1_000_000 + 10 * i,
                    pushed=1_000_000 + 10 * i,
                    delivered=900_000 + 9 * i,
                    stored=100_000 + i,
                    errors={code: (n + 1) * i for n, code in enumerate(codes)},
                    latency_p50_ms=1.5 + i,
                    latency_p99_ms=9.5 + i,
                    queue=100_000 + i,
                    loop_lag_ms=0.25 + i,
                )
            )
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(history) == CAPACITY
    assert used < MEMORY_BOUND_BYTES, used
