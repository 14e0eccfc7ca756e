"""Calls of one event-loop turn go out together (storage/turn_batches.py): one batch on the
wire at a time, in the order the calls were made; a batch the backend did not answer fails
its own callers and no others; a worker that stops leaves nobody waiting."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from storage.errors import Unavailable
from storage.turn_batches import TurnBatches, answer

BOUND_S = 5.0


@dataclass(slots=True)
class _Call:
    value: int
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _Backend:
    """Records each batch; answers every call with its value doubled, except that a batch
    holding a value in `down` raises Unavailable after answering the calls before it, and
    a batch holding `crash` raises RuntimeError."""

    def __init__(self, *, down: frozenset[int] = frozenset(), crash: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.down = down
        self.crash = crash

    async def send(self, batch: list[_Call]) -> None:
        self.batches.append([call.value for call in batch])
        await asyncio.sleep(0)  # on the wire: the next calls queue meanwhile
        for call in batch:
            if call.value == self.crash:
                raise RuntimeError("the sender broke")
            if call.value in self.down:
                raise Unavailable("backend did not answer")
            answer(call.future, call.value * 2)


def _batches(backend: _Backend, max_batch: int = 100) -> TurnBatches[_Call]:
    return TurnBatches(
        backend.send, max_batch=max_batch, name="test-batches", closed_message="closed"
    )


async def _settled(calls: list[_Call]) -> list[object]:
    async with asyncio.timeout(BOUND_S):
        done = await asyncio.gather(*(c.future for c in calls), return_exceptions=True)
    return list(done)


async def test_the_calls_of_one_turn_are_one_batch_in_order() -> None:
    backend = _Backend()
    batches = _batches(backend)
    calls = [_Call(n) for n in range(5)]
    for call in calls:
        batches.add(call)
    assert await _settled(calls) == [0, 2, 4, 6, 8]
    assert backend.batches == [[0, 1, 2, 3, 4]]
    await batches.close()


async def test_calls_made_while_a_batch_is_on_the_wire_form_the_next_one() -> None:
    backend = _Backend()
    batches = _batches(backend, max_batch=3)
    first = [_Call(n) for n in range(4)]
    for call in first:
        batches.add(call)
    await asyncio.sleep(0)  # the worker takes the first batch
    later = [_Call(n) for n in range(10, 12)]
    for call in later:
        batches.add(call)
    await _settled(first + later)
    assert backend.batches == [[0, 1, 2], [3, 10, 11]]
    await batches.close()


async def test_a_batch_the_backend_did_not_answer_fails_its_own_calls_only() -> None:
    backend = _Backend(down=frozenset({2}))
    batches = _batches(backend, max_batch=3)
    calls = [_Call(n) for n in range(6)]
    for call in calls:
        batches.add(call)
    results = await _settled(calls)
    # The call answered before the failure keeps its answer; the rest of that batch fail.
    assert results[:2] == [0, 2]
    assert isinstance(results[2], Unavailable)
    assert results[3:] == [6, 8, 10]
    assert backend.batches == [[0, 1, 2], [3, 4, 5]]
    # The same worker goes on: a call made afterwards is answered.
    again = _Call(7)
    batches.add(again)
    assert await _settled([again]) == [14]
    await batches.close()


async def test_a_sender_that_breaks_fails_every_queued_call_and_a_new_call_starts_again() -> None:
    backend = _Backend(crash=1)
    batches = _batches(backend, max_batch=2)
    calls = [_Call(n) for n in range(4)]
    for call in calls:
        batches.add(call)
    results = await _settled(calls)
    assert results[0] == 0
    assert all(isinstance(r, Unavailable) for r in results[1:])
    later = _Call(5)
    batches.add(later)
    assert await _settled([later]) == [10]
    await batches.close()


async def test_close_sends_what_is_queued_then_refuses() -> None:
    backend = _Backend()
    batches = _batches(backend)
    call = _Call(3)
    batches.add(call)
    await batches.close()
    assert call.future.result() == 6
    with pytest.raises(Unavailable):
        batches.add(_Call(4))
