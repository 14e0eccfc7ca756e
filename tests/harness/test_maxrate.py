"""The maximum-throughput search: step up until a threshold breaks, then bisect."""

from __future__ import annotations

import dataclasses

from loadtest.figures import Latencies, Latency, MaxThroughput, RunResult, Throughput
from loadtest.ledger import Counts
from loadtest.maxrate import Thresholds, find_max
from loadtest.workload import Scenario, Workload

from .synthetic import run as synthetic_run


def _result(rate: float, capacity: float, *, lost: int = 0) -> RunResult:
    """What a run at `rate` reports against a server that carries `capacity` msg/s."""
    sent = int(rate * 10)
    p99 = 5.0 if rate <= capacity else 900.0
    w = Workload(
        scenario=Scenario.STEADY, url="ws://x", devices=10, rate=rate, duration=1, size=10, procs=1
    )
    base = synthetic_run(0.001, 30.0, "ws://x", w)
    return dataclasses.replace(
        base,
        counts=Counts(scheduled=sent, sent=sent, ok=sent, delivered=sent - lost, lost=lost),
        latency_ms=Latencies(delivery=Latency(count=sent, p99=p99)),
        throughput=Throughput(
            target_rate=rate,
            sent_per_s=rate,
            delivered_per_s=min(rate, capacity),
            measured_seconds=10.0,
        ),
    )


def _search(found: RunResult) -> MaxThroughput:
    assert found.max_throughput is not None
    return found.max_throughput


def test_steps_up_then_bisects_between_pass_and_failure() -> None:
    w = Workload(
        scenario=Scenario.STEADY, url="ws://x", devices=10, rate=1000, duration=1, size=10, procs=1
    )
    tried: list[float] = []

    def run(step: Workload) -> RunResult:
        tried.append(step.rate)
        return _result(step.rate, capacity=2600.0)

    found = find_max(w, run, Thresholds(factor=2.0, refine=2))
    # 1000, 2000 pass; 4000 fails; bisect: 3000 fails, 2500 passes.
    assert tried == [1000.0, 2000.0, 4000.0, 3000.0, 2500.0]
    assert _search(found).max_rate == 2500.0
    assert [s.passed for s in _search(found).steps] == [
        True,
        True,
        False,
        False,
        True,
    ]
    assert found.throughput.delivered_per_s == 2500.0


def test_loss_fails_a_step_even_with_low_latency() -> None:
    w = Workload(
        scenario=Scenario.STEADY, url="ws://x", devices=10, rate=100, duration=1, size=10, procs=1
    )

    def run(step: Workload) -> RunResult:
        return _result(step.rate, capacity=1e9, lost=1)

    found = find_max(w, run, Thresholds())
    steps = _search(found).steps
    assert _search(found).max_rate == 0.0
    assert not any(s.passed for s in steps)
    assert len(steps) == Thresholds().max_steps  # it kept stepping down, then gave up
    assert steps[1].rate < steps[0].rate


def test_steps_down_when_the_first_rate_fails() -> None:
    w = Workload(
        scenario=Scenario.STEADY, url="ws://x", devices=10, rate=1000, duration=1, size=10, procs=1
    )
    tried: list[float] = []

    def run(step: Workload) -> RunResult:
        tried.append(step.rate)
        return _result(step.rate, capacity=300.0)

    found = find_max(w, run, Thresholds(factor=2.0, refine=1))
    # 1000 and 500 fail, 250 passes; one bisection: 375 fails.
    assert tried == [1000.0, 500.0, 250.0, 375.0]
    assert _search(found).max_rate == 250.0
