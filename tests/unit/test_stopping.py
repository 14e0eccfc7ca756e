"""`storage.stopping`: a task that drops a cancellation is stopped all the same, within a
bound; one that never stops is reported, not waited for."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from storage.stopping import stop_task, stop_tasks


async def _started(coro_fn) -> asyncio.Task[None]:  # type: ignore[no-untyped-def]
    """The task, once it has reached its first suspension."""
    entered = asyncio.Event()
    task = asyncio.create_task(coro_fn(entered))
    await entered.wait()
    return task


async def _drops_the_first_cancel(entered: asyncio.Event) -> None:
    """What redis-py did under Python 3.11: the first CancelledError is caught and lost."""
    entered.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()  # waits for what never comes, until cancelled
    await asyncio.Event().wait()


async def test_a_task_that_drops_one_cancellation_is_stopped() -> None:
    task = await _started(_drops_the_first_cancel)
    assert await stop_task(task, within_s=5.0)
    assert task.cancelled()
    assert task.cancelling() >= 2  # it took a second request


async def test_a_plain_await_after_one_cancel_would_have_waited() -> None:
    task = await _started(_drops_the_first_cancel)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=0.3)
    assert not done  # the hang this module exists for
    assert await stop_task(task, within_s=5.0)


async def test_a_task_that_never_stops_is_reported_within_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    released = asyncio.Event()

    async def never_stops(entered: asyncio.Event) -> None:
        """Drops every cancellation until the test releases it."""
        entered.set()
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                continue

    task = await _started(never_stops)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with caplog.at_level(logging.WARNING, logger="relay.tasks"):
        assert not await stop_task(task, within_s=0.5)
    assert 0.5 <= loop.time() - began < 2.0
    assert not task.done()
    assert "did not stop within 0.5s" in caplog.text
    released.set()
    await asyncio.wait([task], timeout=5)
    assert task.done()


async def test_an_error_the_task_ended_with_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fails())
    await asyncio.wait([task])
    with caplog.at_level(logging.WARNING, logger="relay.tasks"):
        assert await stop_task(task)
    assert "ValueError('broken')" in caplog.text


async def test_stop_tasks_stops_them_side_by_side() -> None:
    tasks = [await _started(_drops_the_first_cancel) for _ in range(5)]
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await stop_tasks(tasks, within_s=5.0)
    assert all(t.cancelled() for t in tasks)
    assert loop.time() - began < 1.0  # not one after the other
