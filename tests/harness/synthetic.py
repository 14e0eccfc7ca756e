"""Synthetic load-test results: a relay and a baseline run merged by `loadtest.results`.

Both runs send RATE msg/s for DURATION s, every message answered and delivered
(so sent, ok and delivered coincide), and end at WALL s, after the wait for the
last answers; they differ in latency and server memory.
"""

from __future__ import annotations

from loadtest import report
from loadtest.figures import RunResult
from loadtest.ledger import Counts
from loadtest.recorder import Recorder
from loadtest.results import ServerTrace, merge
from loadtest.worker import Outcome
from loadtest.workload import Scenario, Workload

T0 = 1_000_000.0
RATE = 100  # msg/s in both runs: sent, ok and delivered coincide
DURATION = 5.0
WALL = 6.5  # the run's end: the traffic and then the wait for the last answers


def outcome(latency_s: float) -> Outcome:
    """One generator process: RATE msg/s for DURATION s, every message answered and delivered."""
    rec = Recorder(T0, 1.0)
    n = int(RATE * DURATION)
    for k in range(n):
        t = T0 + k / RATE
        rec.sent(t, t)
        rec.ok(t + 2 * latency_s, t)
        rec.delivered(t + latency_s, t)
    for i in range(int(DURATION)):
        rec.connections = 10
        rec.sample(T0 + i)
    rec.mark("drop", T0 + 1.5)
    rec.mark("settled", T0 + WALL)
    counts = Counts(scheduled=n, sent=n, ok=n, delivered=n)
    return Outcome(counts, rec.finish(cpu_seconds=0.4, wall_seconds=WALL), setup_seconds=0.1)


def run(latency_s: float, rss_mib: float, target: str, w: Workload) -> RunResult:
    trace = ServerTrace(
        rss={i: (rss_mib + i / 10) * 2**20 for i in range(6)},
        cpu={i: 0.25 * i for i in range(6)},
    )
    return merge(w, [outcome(latency_s)], trace, target=target, runner_cpu=0.1)


def workload(scenario: Scenario = Scenario.STEADY) -> Workload:
    return Workload(
        scenario=scenario,
        url="ws://127.0.0.1:1/v1/ws",
        devices=10,
        rate=RATE,
        duration=DURATION,
        size=100,
        procs=1,
    )


def build(scenario: Scenario = Scenario.STEADY, *, baseline: bool = True) -> report.Report:
    w = workload(scenario)
    runs = {"relay": run(0.003, 36.0, w.url, w)}
    if baseline:
        runs["baseline"] = run(0.001, 28.0, "ws://127.0.0.1:2/v1/ws", w)
    return report.build({"cores": 2}, w.as_json(), runs, ["relay-loadtest", "steady"])
