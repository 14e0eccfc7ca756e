"""relay.frame_deadline: a frame that hangs is cancelled and its connection goes on; nothing
else is cancelled by it."""

from __future__ import annotations

import asyncio

import pytest

from relay.frame_deadline import FrameDeadline

LIMIT_S = 0.05


async def test_a_hanging_frame_is_cancelled_and_the_task_goes_on() -> None:
    loop = asyncio.get_running_loop()
    deadline = FrameDeadline(LIMIT_S)
    started = loop.time()
    deadline.start()
    with pytest.raises(asyncio.CancelledError):
        await loop.create_future()  # a store call that never answers
    assert loop.time() - started >= LIMIT_S * 0.9  # uvloop's clock has ms resolution
    assert deadline.expired()
    deadline.finish()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    # The next frame runs to its end.
    deadline.start()
    done = loop.create_future()
    loop.call_soon(done.set_result, "answered")
    assert await done == "answered"
    deadline.finish()
    assert not deadline.expired()
    deadline.close()


async def test_frames_that_end_in_time_are_never_cancelled() -> None:
    """Frames of a quarter of the limit each, back to back over twice the limit: the timer
    fires while later frames run and moves on to their deadlines."""
    loop = asyncio.get_running_loop()
    deadline = FrameDeadline(LIMIT_S)
    begun = loop.time()
    frames = 0
    while loop.time() - begun < 2 * LIMIT_S:
        deadline.start()
        store_call = loop.create_future()
        loop.call_later(LIMIT_S / 4, store_call.set_result, None)
        await store_call
        deadline.finish()
        frames += 1
    assert frames >= 6
    assert not deadline.expired()
    deadline.close()


async def test_a_cancellation_from_elsewhere_is_not_the_deadlines() -> None:
    deadline_seen: list[bool] = []
    in_frame = asyncio.Event()

    async def frame_loop() -> None:
        deadline = FrameDeadline(60.0)
        deadline.start()
        in_frame.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            deadline_seen.append(deadline.expired())
            raise
        finally:
            deadline.close()

    task = asyncio.create_task(frame_loop())
    await in_frame.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadline_seen == [False]
