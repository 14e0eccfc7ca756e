"""Calls made in the same event-loop turn, sent to a backend together.

The first call wakes a worker task; by the time it runs, the calls of that turn are queued,
and they go out as one batch (one Redis script call, one SQL statement). One batch is on the
wire at a time: calls made meanwhile form the next one, so calls reach the backend in the
order they were made. Each call carries the future its caller awaits; the batch's sender
settles them (`answer`, `fail`). A sender that raises `Unavailable` (the backend did not
answer) fails the calls of its batch it has not settled, and the next batch goes out as
usual; if the worker itself stops, every queued caller gets `Unavailable` rather than waiting
for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from storage.errors import Unavailable

__all__ = ["Call", "TurnBatches", "answer", "fail"]

T = TypeVar("T")


class Call(Protocol):
    """One queued call: what its caller awaits."""

    @property
    def future(self) -> asyncio.Future[Any]: ...


C = TypeVar("C", bound=Call)


class TurnBatches(Generic[C]):
    """Queues calls and hands them to `send` in batches of at most `max_batch`."""

    def __init__(
        self,
        send: Callable[[list[C]], Awaitable[None]],
        *,
        max_batch: int,
        name: str,
        closed_message: str,
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._name = name
        self._closed_message = closed_message
        self._pending: list[C] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def add(self, call: C) -> None:
        """Queue `call` for the next batch. Raises Unavailable once closed."""
        if self._closed:
            raise Unavailable(self._closed_message)
        self._pending.append(call)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=self._name)
        self._wakeup.set()

    async def close(self) -> None:
        """Send what is queued, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            await asyncio.shield(self._worker)

    async def _run(self) -> None:
        while True:
            # Woken by the first call; runs once the calls of that event-loop turn are in.
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    await self._send(batch)
                except Unavailable as exc:  # this batch failed; the next may not
                    for call in batch:
                        fail(call.future, exc)
                except BaseException as exc:  # cancelled: nobody may wait forever
                    stopped = Unavailable(f"{self._name} stopped: {exc!r}")
                    for call in [*batch, *self._pending]:
                        fail(call.future, stopped)
                    self._pending.clear()
                    raise
            if self._closed:
                return


def answer(future: asyncio.Future[T], value: T) -> None:
    """Answer one caller, unless it stopped waiting (cancelled)."""
    if not future.done():
        future.set_result(value)


def fail(future: asyncio.Future[Any], error: BaseException) -> None:
    """Fail one caller, unless it stopped waiting (cancelled)."""
    if not future.done():
        future.set_exception(error)
