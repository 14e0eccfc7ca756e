"""Find the maximum steady throughput: step the target rate up until a threshold breaks.

A step passes when the delivery p99 stays within `max_p99_ms`, no message is
lost or left unanswered (beyond `max_loss`, a fraction of those sent), and the
delivered rate reaches `min_achieved` of the target (the server kept up).
The rate grows by `factor` until a step fails (or, if the first step fails,
shrinks by it until one passes), then `refine` more steps bisect between the
best passing and the lowest failing rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadtest.workload import Workload


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    max_p99_ms: float = 100.0
    max_loss: float = 0.0
    min_achieved: float = 0.95
    factor: float = 1.5
    refine: int = 2
    max_steps: int = 12


def passed(result: dict[str, Any], rate: float, th: Thresholds) -> bool:
    counts = result["counts"]
    p99 = result["latency_ms"]["delivery"].get("p99")
    missing = counts["lost"] + counts["unanswered"] + counts["errors"]
    sent = max(1, counts["sent"])
    return (
        p99 is not None
        and p99 <= th.max_p99_ms
        and missing / sent <= th.max_loss
        and counts["sent"] >= 0.99 * counts["scheduled"]
        and result["throughput"]["delivered_per_s"] >= th.min_achieved * rate
    )


def find_max(
    workload: Workload, run: Callable[[Workload], dict[str, Any]], th: Thresholds
) -> dict[str, Any]:
    """Step up from `workload.rate`; the best passing step's result, with every step."""
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    rate = float(workload.rate)
    good, bad = 0.0, 0.0
    bisections = 0
    for _ in range(th.max_steps):
        result = run(workload.with_rate(rate))
        ok = passed(result, rate, th)
        steps.append(
            {
                "rate": rate,
                "delivered_per_s": result["throughput"]["delivered_per_s"],
                "p99_ms": result["latency_ms"]["delivery"].get("p99"),
                "lost": result["counts"]["lost"],
                "errors": result["counts"]["errors"],
                "passed": ok,
            }
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
    chosen = dict(chosen)
    chosen["max_throughput"] = {
        "max_rate": max((s["rate"] for s in steps if s["passed"]), default=0.0),
        "thresholds": {
            "max_p99_ms": th.max_p99_ms,
            "max_loss": th.max_loss,
            "min_achieved": th.min_achieved,
            "factor": th.factor,
            "refine": th.refine,
        },
        "steps": steps,
    }
    return chosen
