"""`relay.flag.Flag`: the Event semantics the connection's writer, pump and reader rely on."""

from __future__ import annotations

import asyncio

import pytest

from relay.flag import Flag


async def _waiting(flag: Flag) -> asyncio.Task[None]:
    """A task blocked in `flag.wait()` (its waiter registered) when this returns."""
    entered = asyncio.Event()

    async def wait() -> None:
        entered.set()
        await flag.wait()  # registers before its first suspension, in the same step

    task = asyncio.create_task(wait())
    await entered.wait()
    return task


async def test_wait_returns_at_once_when_set() -> None:
    flag = Flag(is_set=True)
    await asyncio.wait_for(flag.wait(), 1)
    assert flag.is_set()


async def test_set_wakes_every_waiter_and_clear_makes_the_next_wait_block() -> None:
    flag = Flag()
    waiters = [await _waiting(flag) for _ in range(3)]
    assert not any(w.done() for w in waiters)
    flag.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    flag.clear()
    late = await _waiting(flag)
    assert not late.done() and not flag.is_set()
    flag.set()
    await asyncio.wait_for(late, 1)


async def test_a_cancelled_waiter_leaves_the_others_waiting() -> None:
    flag = Flag()
    first, second = await _waiting(flag), await _waiting(flag)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not second.done()
    flag.set()
    await asyncio.wait_for(second, 1)


async def test_a_timed_out_wait_forgets_its_waiter() -> None:
    flag = Flag()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flag.wait(), 0.01)
    assert flag._waiters is None
    flag.set()
    await asyncio.wait_for(flag.wait(), 1)
