"""`Flag`: `asyncio.Event`'s set/clear/wait for the flags every connection holds.

An `asyncio.Event` carries an instance dict and a waiter deque from birth, about
800 bytes; a connection holds four of them (its writer's wake-up and room, its
pump's wake-up, its reader's end), nearly always with nobody waiting. A `Flag`
is a slotted object that makes a waiter list only while someone waits, so an
idle connection pays about 56 bytes a flag.
"""

from __future__ import annotations

import asyncio


class Flag:
    __slots__ = ("_is_set", "_waiters")

    def __init__(self, *, is_set: bool = False) -> None:
        self._is_set = is_set
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        if self._is_set:
            return
        self._is_set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._is_set = False

    async def wait(self) -> None:
        """Return once the flag is set (at once if it is); cancelling one waiter leaves the
        others waiting."""
        if self._is_set:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
                if not self._waiters:
                    self._waiters = None
