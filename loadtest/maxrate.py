"""Find the maximum steady throughput: step the target rate up until a threshold breaks.

A step passes when the delivery p99 stays within `max_p99_ms`, no message is
lost or left unanswered (beyond `max_loss`, a fraction of those sent), and the
delivered rate reaches `min_achieved` of the target (the server kept up). In a
connect storm the stepped rate is the connect rate, and a step passes when
every device authenticated, no connection failed and the handshake p99 stays
within `max_p99_ms`: the highest such rate is the handshake rate.
The rate grows by `factor` until a step fails (or, if the first step fails,
shrinks by it until one passes), then `refine` more steps bisect between the
best passing and the lowest failing rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from loadtest.figures import MaxThroughput, RunResult, Step, Thresholds
from loadtest.workload import Scenario, Workload

__all__ = ["Thresholds", "find_max", "passed", "storm_passed"]


def passed(result: RunResult, rate: float, th: Thresholds) -> bool:
    counts = result.counts
    p99 = result.latency_ms.delivery.p99
    missing = counts.lost + counts.unanswered + counts.errors
    sent = max(1, counts.sent)
    return (
        p99 is not None
        and p99 <= th.max_p99_ms
        and missing / sent <= th.max_loss
        and counts.sent >= 0.99 * counts.scheduled
        and result.throughput.delivered_per_s >= th.min_achieved * rate
    )


def storm_passed(result: RunResult, devices: int, th: Thresholds) -> bool:
    p99 = result.latency_ms.handshake.p99
    return (
        p99 is not None
        and p99 <= th.max_p99_ms
        and result.latency_ms.handshake.count >= devices
        and not result.connection_errors
    )


def find_max(workload: Workload, run: Callable[[Workload], RunResult], th: Thresholds) -> RunResult:
    """Step up from the workload's rate; the best passing step's result, with every step."""
    storm = workload.scenario is Scenario.CONNECT_STORM
    steps: list[Step] = []
    best: RunResult | None = None
    last: RunResult | None = None
    rate = float(workload.stepped_rate)
    good, bad = 0.0, 0.0
    bisections = 0
    for _ in range(th.max_steps):
        result = run(workload.with_stepped_rate(rate))
        ok = storm_passed(result, workload.devices, th) if storm else passed(result, rate, th)
        latency = result.latency_ms.handshake if storm else result.latency_ms.delivery
        steps.append(
            Step(
                rate=rate,
                delivered_per_s=result.throughput.delivered_per_s,
                p99_ms=latency.p99,
                lost=result.counts.lost,
                errors=result.counts.errors,
                passed=ok,
            )
        )
        last = result
        if ok:
            best, good = result, rate
        else:
            bad = rate
        if not bad:
            rate = float(round(rate * th.factor))
        elif not good:
            rate = float(round(rate / th.factor))
        elif bisections < th.refine:
            # Bisect between the best passing and the lowest failing rate.
            bisections += 1
            rate = float(round((good + bad) / 2))
        else:
            break
        if rate < 1:
            break
    chosen = best if best is not None else last
    assert chosen is not None
    search = MaxThroughput(
        max_rate=max((s.rate for s in steps if s.passed), default=0.0),
        thresholds=th,
        steps=tuple(steps),
    )
    return dataclasses.replace(chosen, max_throughput=search)
