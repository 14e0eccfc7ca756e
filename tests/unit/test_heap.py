"""relay.heap: the heap is trimmed once after a burst of closed connections, never during it."""

from __future__ import annotations

import asyncio

import pytest

from relay.heap import HeapTrimmer, _malloc_trim


class Trims:
    def __init__(self) -> None:
        self.calls = 0
        self.done = asyncio.Event()

    def __call__(self, pad: int) -> int:
        assert pad == 0
        self.calls += 1
        self.done.set()
        return 1


async def test_trimmed_once_after_a_burst_when_no_longer_opening() -> None:
    trims = Trims()
    opening = [500]
    heap = HeapTrimmer(lambda: opening[0], trim=trims, burst=10, check_after_s=0.01)
    for _ in range(30):
        heap.connection_ended()
    # Still opening: the check keeps coming back without trimming.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(trims.done.wait()), 0.2)
    assert trims.calls == 0
    opening[0] = 0
    await asyncio.wait_for(trims.done.wait(), 5)
    assert trims.calls == 1 and heap.trims == 1


async def test_no_trim_below_a_burst() -> None:
    trims = Trims()
    heap = HeapTrimmer(lambda: 0, trim=trims, burst=10, check_after_s=0.01)
    for _ in range(9):
        heap.connection_ended()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(trims.done.wait()), 0.2)


def test_glibc_trim_is_found_on_linux() -> None:
    trim = _malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
