"""Run one workload against one server: spawn the generator processes, watch, merge.

The generator processes register their devices, report `ready`, and all start at
the same wall-clock instant. Meanwhile this process draws the progress line and
samples the server's memory and CPU once per interval.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from typing import Any

from loadtest import worker
from loadtest.device import HANDSHAKE_TIMEOUT, OPEN_TIMEOUT
from loadtest.figures import RunResult
from loadtest.probe import Probe
from loadtest.progress import ProgressLine
from loadtest.results import ServerTrace, merge
from loadtest.spread import connections_per_process
from loadtest.workload import Scenario, Workload, split

START_MARGIN = 0.5
MIN_CLOSE_RATE = 100.0  # connections a second a busy relay closes at least, for the deadline


class RunFailed(Exception):
    """A generator process failed or the run did not finish in time."""


def expected_seconds(w: Workload) -> float:
    """An upper bound of the measured phase, for the run's deadline."""
    if w.scenario is Scenario.CONNECT_STORM:
        # A connection may finish its handshake up to the device's timeouts after its
        # scheduled instant, and every connection is closed before the process reports.
        late = OPEN_TIMEOUT + HANDSHAKE_TIMEOUT
        return w.devices / w.connect_rate + late + w.hold + w.devices / MIN_CLOSE_RATE
    if w.scenario is Scenario.OFFLINE_DRAIN:
        return 3 * w.grace + w.devices * w.queue / 50
    return w.duration


def run_workload(w: Workload, probe: Probe | None, *, target: str, label: str) -> RunResult:
    """Run `w` against its URL and return the merged result."""
    ctx = multiprocessing.get_context("spawn")
    shares = split(w, connections_per_process())
    up: Any = ctx.Queue()
    downs: list[Any] = [ctx.Queue() for _ in shares]
    procs = [
        ctx.Process(target=worker.main, args=(w, s, up, d), daemon=True)
        for s, d in zip(shares, downs, strict=True)
    ]
    cpu0 = time.process_time()
    for p in procs:
        p.start()
    try:
        return _drive(w, probe, shares, up, downs, procs, target, label, cpu0)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()


def _drive(
    w: Workload,
    probe: Probe | None,
    shares: list[Any],
    up: Any,
    downs: list[Any],
    procs: list[Any],
    target: str,
    label: str,
    cpu0: float,
) -> RunResult:
    setup_deadline = time.time() + 60 + w.devices / 20
    ready: set[int] = set()
    while len(ready) < len(shares):
        msg = _get(up, setup_deadline, procs)
        if msg[0] == "failed":
            for d in downs:
                d.put(None)
            raise RunFailed(f"generator {msg[1]} failed during setup:\n{msg[2]}")
        if msg[0] == "ready":
            ready.add(msg[1])
    t0 = time.time() + START_MARGIN
    for d in downs:
        d.put(t0)
    trace = ServerTrace()
    outcomes: dict[int, worker.Outcome] = {}
    deadline = t0 + expected_seconds(w) + 2 * w.grace + 60
    next_tick = t0
    with ProgressLine(label) as line:
        while len(outcomes) < len(shares):
            now = time.time()
            if now >= next_tick:
                if probe is not None:
                    sample = probe.sample()
                    if sample is not None:
                        i = int((now - t0) // w.bucket)
                        trace.rss[i] = sample.rss_bytes
                        trace.cpu[i] = sample.cpu_seconds
                if now >= t0:
                    line.tick()
                next_tick += w.bucket
            msg = _get(up, min(deadline, next_tick), procs, allow_timeout=True)
            if msg is None:
                if time.time() >= deadline:
                    raise RunFailed(f"the run did not finish within {deadline - t0:.0f} s")
                continue
            if msg[0] == "failed":
                raise RunFailed(f"generator {msg[1]} failed:\n{msg[2]}")
            if msg[0] == "progress":
                line.update(msg[1], msg[2])
            elif msg[0] == "result":
                outcomes[msg[1]] = msg[2]
    return merge(
        w,
        [outcomes[i] for i in sorted(outcomes)],
        trace,
        target=target,
        runner_cpu=time.process_time() - cpu0,
    )


def _get(up: Any, deadline: float, procs: list[Any], *, allow_timeout: bool = False) -> Any:
    """The next message from a generator, or None at `deadline` (when allowed)."""
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            if allow_timeout:
                return None
            raise RunFailed("generator processes did not get ready in time")
        try:
            return up.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead:
            raise RunFailed(f"a generator process died with exit code {dead[0].exitcode}")
