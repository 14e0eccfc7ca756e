"""One generator process: set up its devices, run its share from `t0`, report back.

Messages to the parent (a multiprocessing queue) are tuples tagged with their
kind: `("ready", index)`, `("progress", index, Progress)`, `("result", index,
Outcome)` and `("failed", index, text)`. The parent answers `ready` with the
start instant `t0` (wall clock, shared by every process on the host) or `None`
to abandon the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from dataclasses import dataclass
from multiprocessing.queues import Queue
from typing import Any

from loadtest.device import DeviceError
from loadtest.ledger import Counts
from loadtest.recorder import Recorder, Recording
from loadtest.scenarios import Fleet, run, setup, teardown
from loadtest.spread import raise_file_limit
from loadtest.workload import Share, Workload

PROGRESS_EVERY = 1.0


@dataclass(slots=True)
class Progress:
    """Cumulative counts of one process, and its delivery latencies since the last one."""

    sent: int
    ok: int
    delivered: int
    errors: int
    connections: int
    recent: bytes


@dataclass(slots=True)
class Outcome:
    counts: Counts
    recording: Recording
    setup_seconds: float


def main(workload: Workload, share: Share, up: Queue[Any], down: Queue[Any]) -> None:
    """Process entry point (spawned by the runner)."""
    try:
        raise_file_limit()  # one socket per device connection
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(_main(workload, share, up, down))
    except DeviceError as exc:
        up.put(("failed", share.index, f"a device could not connect or register ({exc.kind})"))
    except BaseException:
        up.put(("failed", share.index, traceback.format_exc()))


async def _main(workload: Workload, share: Share, up: Queue[Any], down: Queue[Any]) -> None:
    recorder = Recorder(time.time(), workload.bucket)
    started = time.time()
    fleet = await setup(workload, share, recorder)
    setup_seconds = time.time() - started
    up.put(("ready", share.index))
    t0 = await asyncio.to_thread(down.get)
    if t0 is None:
        await teardown(fleet)
        return
    recorder.restart(t0)
    delay = t0 - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    cpu0, wall0 = time.process_time(), time.time()
    reporter = asyncio.create_task(_report(fleet, up))
    try:
        await run(fleet, t0)
    finally:
        reporter.cancel()
    cpu, wall = time.process_time() - cpu0, time.time() - wall0
    await teardown(fleet)
    outcome = Outcome(fleet.ledger.counts(), recorder.finish(cpu, wall), setup_seconds)
    up.put(("result", share.index, outcome))


async def _report(fleet: Fleet, up: Queue[Any]) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        ledger, rec = fleet.ledger, fleet.recorder
        series = rec.series
        up.put(
            (
                "progress",
                fleet.share.index,
                Progress(
                    sent=int(sum(series["sent"].values.values())),
                    ok=int(sum(series["ok"].values.values())),
                    delivered=int(sum(series["delivered"].values.values())),
                    errors=sum(ledger.errors_by_code.values())
                    + sum(rec.connection_errors.values()),
                    connections=rec.connections,
                    recent=rec.take_recent(),
                ),
            )
        )
