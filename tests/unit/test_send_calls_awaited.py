"""How a send awaits its claim and reads (relay/sending.py): tasks made at once and awaited
in turn, with what asyncio.gather(return_exceptions=True) gave: a call's exception or own
cancellation as its result, the caller's cancellation raised, and no task left running or
with an exception nobody took."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from relay.sending import _abandon, _outcome


async def _fails() -> None:
    raise ValueError("store said no")


async def test_a_result_and_an_exception_come_back_as_results() -> None:
    async def value() -> int:
        return 7

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(value()), loop.create_task(_fails())]
    results = [await _outcome(task) for task in tasks]
    assert results[0] == 7
    assert isinstance(results[1], ValueError)


async def test_a_call_cancelled_by_another_comes_back_as_its_result() -> None:
    never = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        await never

    task = asyncio.get_running_loop().create_task(waits())
    asyncio.get_running_loop().call_soon(task.cancel)
    assert isinstance(await _outcome(task), asyncio.CancelledError)


async def test_the_callers_cancellation_is_raised_and_abandoned_tasks_stop() -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    never = loop.create_future()

    async def hangs() -> None:
        started.set()
        await never

    tasks = [loop.create_task(hangs()), loop.create_task(hangs())]

    async def send() -> None:
        try:
            for task in tasks:
                await _outcome(task)
        except asyncio.CancelledError:
            for task in tasks:
                _abandon(task)
            raise

    sending = loop.create_task(send())
    await started.wait()
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    await asyncio.wait(tasks, timeout=5)
    assert all(task.cancelled() for task in tasks)


async def test_an_abandoned_failed_task_is_not_reported_as_never_retrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = asyncio.get_running_loop().create_task(_fails())
    await asyncio.wait([task], timeout=5)
    _abandon(task)
    del task
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert "never retrieved" not in caplog.text
