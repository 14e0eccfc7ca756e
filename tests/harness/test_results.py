"""`loadtest.results.merge`: the recordings of several generator processes add up to one run."""

from __future__ import annotations

import dataclasses

import pytest

from loadtest.results import ServerTrace, merge

from . import synthetic


def test_two_processes_add_up() -> None:
    one, two = synthetic.outcome(0.001), synthetic.outcome(0.003)
    one.counts = dataclasses.replace(one.counts, errors=1, errors_by_code={"rate_limited": 1})
    two.counts = dataclasses.replace(
        two.counts, errors=2, errors_by_code={"rate_limited": 1, "unavailable": 1}
    )
    one.recording.marks = {"drain_start": 1.0, "drain_end": 3.0}
    two.recording.marks = {"drain_start": 0.5, "drain_end": 4.0}
    two.setup_seconds = 0.7
    w = synthetic.workload()
    result = merge(w, [one, two], ServerTrace(), target=w.url, runner_cpu=0.2)

    n = 2 * synthetic.RATE * synthetic.DURATION
    assert (result.counts.sent, result.counts.delivered, result.counts.errors) == (n, n, 3)
    assert result.counts.errors_by_code == {"rate_limited": 2, "unavailable": 1}
    assert result.latency_ms.delivery.count == n
    assert result.latency_ms.delivery.p50 == pytest.approx(1.0, rel=0.01)  # half at 1 ms
    assert result.latency_ms.delivery.max == pytest.approx(3.0, rel=0.01)
    # A phase starts with the first process to start it and ends with the last.
    assert result.marks_s == {"drain_start": 0.5, "drain_end": 4.0}
    assert result.throughput.drain_seconds == 3.5
    assert result.throughput.drain_per_s == pytest.approx(n / 3.5)
    assert result.throughput.connections_peak == 20.0  # 10 open in each process
    assert result.generator.procs == 2
    assert result.generator.cpu_seconds == pytest.approx(0.4 + 0.4 + 0.2)
    assert result.generator.setup_seconds == 0.7
    # No probe, no server figures.
    assert result.server.rss_peak_mb is None and result.server.cpu_seconds is None
    assert set(result.series.server_rss_mb) == {None}
    assert sum(v or 0.0 for v in result.series.sent_per_s) == pytest.approx(n)
