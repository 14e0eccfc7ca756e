"""The maximum-throughput search: step up until a threshold breaks, then bisect."""

from __future__ import annotations

from typing import Any

from loadtest.maxrate import Thresholds, find_max
from loadtest.workload import Scenario, Workload


def _result(rate: float, capacity: float) -> dict[str, Any]:
    """What a run at `rate` reports against a server that carries `capacity` msg/s."""
    delivered = min(rate, capacity)
    sent = int(rate * 10)
    return {
        "counts": {"scheduled": sent, "sent": sent, "lost": 0, "unanswered": 0, "errors": 0},
        "latency_ms": {"delivery": {"p99": 5.0 if rate <= capacity else 900.0}},
        "throughput": {"delivered_per_s": delivered},
    }


def test_steps_up_then_bisects_between_pass_and_failure() -> None:
    w = Workload(
        scenario=Scenario.STEADY, url="ws://x", devices=10, rate=1000, duration=1, size=10, procs=1
    )
    tried: list[float] = []

    def run(step: Workload) -> dict[str, Any]:
        tried.append(step.rate)
        return _result(step.rate, capacity=2600.0)

    found = find_max(w, run, Thresholds(factor=2.0, refine=2))
    # 1000, 2000 pass; 4000 fails; bisect: 3000 fails, 2500 passes.
    assert tried == [1000.0, 2000.0, 4000.0, 3000.0, 2500.0]
    assert found["max_throughput"]["max_rate"] == 2500.0
    assert [s["passed"] for s in found["max_throughput"]["steps"]] == [
        True,
        True,
        False,
        False,
        True,
    ]
    assert found["throughput"]["delivered_per_s"] == 2500.0


def test_loss_fails_a_step_even_with_low_latency() -> None:
    w = Workload(
        scenario=Scenario.STEADY, url="ws://x", devices=10, rate=100, duration=1, size=10, procs=1
    )

    def run(step: Workload) -> dict[str, Any]:
        result = _result(step.rate, capacity=1e9)
        result["counts"]["lost"] = 1
        return result

    found = find_max(w, run, Thresholds())
    steps = found["max_throughput"]["steps"]
    assert found["max_throughput"]["max_rate"] == 0.0
    assert not any(s["passed"] for s in steps)
    assert len(steps) == Thresholds().max_steps  # it kept stepping down, then gave up
    assert steps[1]["rate"] < steps[0]["rate"]


def test_steps_down_when_the_first_rate_fails() -> None:
    w = Workload(
        scenario=Scenario.STEADY, url="ws://x", devices=10, rate=1000, duration=1, size=10, procs=1
    )
    tried: list[float] = []

    def run(step: Workload) -> dict[str, Any]:
        tried.append(step.rate)
        return _result(step.rate, capacity=300.0)

    found = find_max(w, run, Thresholds(factor=2.0, refine=1))
    # 1000 and 500 fail, 250 passes; one bisection: 375 fails.
    assert tried == [1000.0, 500.0, 250.0, 375.0]
    assert found["max_throughput"]["max_rate"] == 250.0
