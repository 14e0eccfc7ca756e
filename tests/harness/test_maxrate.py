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


def _storm_result(step: Workload, capacity: float, *, failed: int = 0) -> RunResult:
    """A connect storm at the step's connect rate against a relay that keeps up to `capacity`."""
    p99 = 20.0 if step.connect_rate <= capacity else 1300.0
    base = synthetic_run(0.001, 30.0, "ws://x", step)
    return dataclasses.replace(
        base,
        latency_ms=Latencies(handshake=Latency(count=step.devices - failed, p99=p99)),
        connection_errors={"connect:TimeoutError": failed} if failed else {},
    )


def test_a_connect_storm_steps_the_connect_rate_on_the_handshake_p99() -> None:
    w = Workload(
        scenario=Scenario.CONNECT_STORM,
        url="ws://x",
        devices=3000,
        rate=5,
        duration=1,
        size=10,
        procs=1,
        connect_rate=1000,
    )
    tried: list[float] = []

    def run(step: Workload) -> RunResult:
        tried.append(step.connect_rate)
        assert step.rate == 5  # the message rate is not what is stepped
        return _storm_result(step, capacity=2600.0)

    found = find_max(w, run, Thresholds(max_p99_ms=100.0, factor=2.0, refine=2))
    assert tried == [1000.0, 2000.0, 4000.0, 3000.0, 2500.0]
    assert _search(found).max_rate == 2500.0
    assert [s.p99_ms for s in _search(found).steps] == [20.0, 20.0, 1300.0, 1300.0, 20.0]


def test_a_failed_connection_fails_a_connect_storm_step() -> None:
    w = Workload(
        scenario=Scenario.CONNECT_STORM,
        url="ws://x",
        devices=100,
        rate=1,
        duration=1,
        size=10,
        procs=1,
        connect_rate=100,
    )
    found = find_max(w, lambda step: _storm_result(step, 1e9, failed=1), Thresholds(max_steps=3))
    assert _search(found).max_rate == 0.0
    assert not any(s.passed for s in _search(found).steps)
