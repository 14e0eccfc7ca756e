"""What awaiting three calls together costs on the relay's event loop (uvloop), the way a
send's nonce claim and reads are awaited (relay/sending.py, claim_and_read):

    python benchmarks/gather_cost.py [--calls 50000]

Three forms, each on coroutines that finish without suspending (as the embedded store's
calls do): `asyncio.gather` of a task and two coroutines (before), `asyncio.gather` of
three tasks, and three tasks made at once and awaited in turn (now). Printed: process CPU
per group of three, median of 5 rounds. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import uvloop


async def _call(value: int) -> int:
    return value


async def gather_coroutines() -> list[object]:
    first = asyncio.ensure_future(_call(1))
    return await asyncio.gather(first, _call(2), _call(3), return_exceptions=True)


async def gather_tasks() -> list[object]:
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(_call(n)) for n in (1, 2, 3)]
    return await asyncio.gather(*tasks, return_exceptions=True)


async def tasks_in_turn() -> list[object]:
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(_call(n)) for n in (1, 2, 3)]
    results: list[object] = []
    for task in tasks:
        try:
            results.append(await task)
        except Exception as exc:
            results.append(exc)
    return results


FORMS: dict[str, Callable[[], Awaitable[list[object]]]] = {
    "gather(task, coroutine, coroutine)": gather_coroutines,
    "gather(task, task, task)": gather_tasks,
    "tasks awaited in turn": tasks_in_turn,
}


async def measure(calls: int) -> None:
    rounds: dict[str, list[float]] = {name: [] for name in FORMS}
    for _ in range(5):
        for name, form in FORMS.items():
            for _ in range(calls // 20):  # warm up
                await form()
            started = time.process_time()
            for _ in range(calls):
                await form()
            rounds[name].append((time.process_time() - started) / calls * 1e6)
    for name, values in rounds.items():
        print(f"{name}: {statistics.median(values):.2f} µs per group of three")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50_000)
    args = parser.parse_args()
    uvloop.run(measure(args.calls))


if __name__ == "__main__":
    main()
