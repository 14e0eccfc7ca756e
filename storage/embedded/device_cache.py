"""The device directory's committed state in memory: a send reads it without a store trip.

The embedded store owns its file, so what it committed is all there is. An entry holds a
user's active devices (or None: no such user), read on the reader connection at the first
miss. A write for the user (register, link, removal) drops the entry when it settles
(`database.Settled`: on the event loop, after its commit and before its caller resumes),
so nobody is answered from a state older than an answered write: a miss read while the
write was still queued, kept meanwhile, goes with it. `touch` changes only `last_seen_ms`:
it updates the entry when it settles.

Reads and settles both run on the event loop, so there is nothing to lock. The number of
users held is bounded (`MAX_USERS`, the oldest entry evicted first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Final

from storage.records import DeviceRecord

MAX_USERS: Final = 65_536

Devices = tuple[DeviceRecord, ...] | None  # None: the user does not exist


class DeviceCache:
    def __init__(self, load: Callable[[str], Devices], *, max_users: int = MAX_USERS) -> None:
        self._load = load  # a read of the committed state; raises Unavailable
        self._max_users = max_users
        self._entries: dict[str, Devices] = {}

    def devices(self, user: str) -> Devices:
        """The user's active devices as committed, from memory or one read."""
        try:
            return self._entries[user]
        except KeyError:
            pass
        devices = self._load(user)
        if len(self._entries) >= self._max_users:
            del self._entries[next(iter(self._entries))]
        self._entries[user] = devices
        return devices

    def changed(self, user: str) -> None:
        """A write for `user` settled (committed or not): read again at the next ask."""
        self._entries.pop(user, None)

    def clear(self) -> None:
        """Every entry goes: the users were renamed (encryption at rest blinded their ids)."""
        self._entries.clear()

    def seen(self, user: str, device: int, now_ms: int) -> None:
        """A committed `touch`: the device's `last_seen_ms` moves forward, never back."""
        devices = self._entries.get(user)
        if not devices:
            return
        self._entries[user] = tuple(
            dataclasses.replace(d, last_seen_ms=max(d.last_seen_ms, now_ms))
            if d.device == device
            else d
            for d in devices
        )
