"""The bound on how long one frame may hold its connection, one timer per connection.

A store that hangs instead of failing must not hold a connection forever: a frame still being
handled `limit_s` after it started is cancelled and answered `unavailable`, and the
connection goes on. An `asyncio.timeout` per frame would schedule and cancel a timer on every
send and ack; here a connection keeps at most one timer, armed when a frame starts and none
is armed; when it fires for a frame that ended meanwhile, it is moved to the deadline of the
frame running then (or dropped if none is).
"""

from __future__ import annotations

import asyncio


class FrameDeadline:
    """Used by one task (the connection's frame loop): `start` and `finish` around each frame;
    on CancelledError, `expired()` tells whether the deadline caused it."""

    def __init__(self, limit_s: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a frame deadline belongs to a task")
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._limit_s = limit_s
        self._started: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._cancelled = False

    def start(self) -> None:
        """A frame starts: it may run for `limit_s`."""
        now = self._loop.time()
        self._started = now
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._limit_s, self._check)

    def finish(self) -> None:
        """The frame is done (its timer, if any, finds nothing to cancel)."""
        self._started = None

    def expired(self) -> bool:
        """Whether the task's cancellation came from this deadline; it is then taken back, so
        the task goes on with its next frame."""
        if not self._cancelled:
            return False
        self._cancelled = False
        self._task.uncancel()
        return True

    def close(self) -> None:
        """The connection's frame loop is over."""
        self._started = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        started = self._started
        if started is None:
            return  # idle: the next frame arms a timer again
        due = started + self._limit_s
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self._cancelled = True
        self._task.cancel()
