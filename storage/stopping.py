"""Stopping a background task for good.

`task.cancel()` asks once. Code that catches the CancelledError where it lands lets the task
run on, and an `await task` after it then waits for ever: redis-py does so now and then under
Python 3.11 (a cancellation that arrives as a command's write completes is dropped), which
hung shutdowns. So the request is repeated until the task has ended, within a bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["stop_task", "stop_tasks"]

log = logging.getLogger("relay.tasks")

ASK_AGAIN_S = 0.1


async def stop_task(task: asyncio.Task[Any], *, within_s: float = 5.0) -> bool:
    """Cancel `task` and wait until it has ended, asking again every ASK_AGAIN_S; False when
    it still runs after `within_s` (it is left cancelled). An error it ended with is logged,
    not raised: the caller is stopping it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning("task %s did not stop within %.1fs", task.get_name(), within_s)
            return False
        task.cancel()
        await asyncio.wait([task], timeout=min(ASK_AGAIN_S, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s had failed: %r", task.get_name(), task.exception())
    return True


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], *, within_s: float = 5.0) -> bool:
    """`stop_task` for each, side by side; True when all of them ended."""
    results = await asyncio.gather(*(stop_task(t, within_s=within_s) for t in tasks))
    return all(results)
