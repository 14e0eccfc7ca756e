"""The device directory's committed state in memory: a send reads it without a store trip.

The embedded store owns its file, so what it committed is all there is. An entry holds a
user's active devices (or None: no such user) exactly as committed, and only while no
write for that user is in flight:

- a write (register, link, remove) drops the user's entry when it is submitted and again
  when it settles (`database.Settled`, on the event loop before its caller resumes), so
  nobody reads a state that its own completed write changed, and nothing read during the
  write is kept;
- a load (a read on the reader connection, after a miss) is kept only if no write for
  that user was submitted or settled while it ran (`_Load.raced`); a caller arriving after
  such a write starts a new load instead of sharing the raced one;
- `touch` changes only `last_seen_ms`: it updates the entry when it commits.

The number of users held is bounded (`MAX_USERS`, oldest entry evicted first); a miss
costs one read, never a wait on a commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from storage.records import DeviceRecord

MAX_USERS: Final = 65_536

Devices = tuple[DeviceRecord, ...] | None  # None: the user does not exist


@dataclass(slots=True)
class _Load:
    read: asyncio.Future[Devices]
    raced: bool = field(default=False)


class DeviceCache:
    def __init__(
        self, load: Callable[[str], asyncio.Future[Devices]], *, max_users: int = MAX_USERS
    ) -> None:
        self._load = load
        self._max_users = max_users
        self._entries: dict[str, Devices] = {}
        self._loading: dict[str, _Load] = {}

    async def devices(self, user: str) -> Devices:
        """The user's active devices as committed, from memory or one read."""
        try:
            return self._entries[user]
        except KeyError:
            pass
        load = self._loading.get(user)
        if load is None:
            load = _Load(self._load(user))
            self._loading[user] = load
            # Registered first, so it runs before any caller resumes.
            load.read.add_done_callback(lambda read: self._loaded(user, load))
        # Shielded: one caller cancelled does not cancel the read the others share.
        return await asyncio.shield(load.read)

    def changing(self, user: str) -> None:
        """A write for `user` was submitted or settled: forget what is known or being read."""
        self._entries.pop(user, None)
        self._race(user)

    def seen(self, user: str, device: int, now_ms: int) -> None:
        """A committed `touch`: the device's `last_seen_ms` moves forward, never back."""
        self._race(user)
        devices = self._entries.get(user)
        if not devices:
            return
        self._entries[user] = tuple(
            dataclasses.replace(d, last_seen_ms=max(d.last_seen_ms, now_ms))
            if d.device == device
            else d
            for d in devices
        )

    def _race(self, user: str) -> None:
        """A load running now may have read the state before this write: it is not kept,
        and later callers start their own."""
        load = self._loading.pop(user, None)
        if load is not None:
            load.raced = True

    def _loaded(self, user: str, load: _Load) -> None:
        if self._loading.get(user) is load:
            del self._loading[user]
        read = load.read
        if read.cancelled() or read.exception() is not None or load.raced:
            return  # exception() also marks it retrieved, should every caller be gone
        if len(self._entries) >= self._max_users:
            del self._entries[next(iter(self._entries))]
        self._entries[user] = read.result()
