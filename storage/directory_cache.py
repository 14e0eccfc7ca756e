"""The production device directory: PostgreSQL, with this node's copies of the users'
device lists in memory, each checked against the user's version in Redis at every read.

Why a copy is never older than a change that has finished (a device removed on another
node is refused here at once):
* add_device and remove_device take the user's row lock, make the change, replace the
  user's version with a fresh token (storage.redis_store.versions) while still holding the
  lock, and commit; when the bump fails, the change rolls back. `touch` bumps after its
  update commits (it only moves last_seen, which a lock need not guard).
* A read first reads the version. A copy made under that version is answered. Otherwise
  the rows are read after waiting for the user's row lock (list_devices_settled), so every
  change whose bump came before the version read has committed, and the copy is made under
  the version read before the rows. A change that bumps later leaves the copy under an
  old version, which no later read matches.
* Unknown users are never cached, so create_user needs no bump.
* Misses of one user under one version share one read: its rows hold every change whose
  bump came before that version was first read, and no bump came between that read and
  any later read of the same version (a bump leaves a token never seen before).
The version read is a step of the replay guard's batched script: a send that claims its
nonce and reads its recipient's devices in the same event-loop turn makes one Redis round
trip for both, and none to PostgreSQL while the copy is current. When Redis cannot be
reached the read goes to PostgreSQL uncached, as it did before the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from storage.errors import Unavailable
from storage.postgres import Database, PostgresDeviceDirectory
from storage.records import DeviceRecord, NewDevice
from storage.redis_store.versions import RedisDirectoryVersions

__all__ = ["CachedDeviceDirectory"]

MAX_CACHED_USERS: Final = 50_000  # the oldest copy is dropped to make room


@dataclass(frozen=True, slots=True)
class _Copy:
    version: bytes
    devices: tuple[DeviceRecord, ...]


class CachedDeviceDirectory:
    """The `DeviceDirectory` of the production store."""

    def __init__(
        self,
        db: Database,
        versions: RedisDirectoryVersions,
        *,
        now_ms: Callable[[], int],
        max_users: int = MAX_CACHED_USERS,
    ) -> None:
        self._versions = versions
        self._stored = PostgresDeviceDirectory(db, now_ms=now_ms, changed=self._changed)
        self._copies: dict[str, _Copy] = {}
        self._reads: dict[tuple[str, bytes], asyncio.Future[_Copy | None]] = {}
        self._max_users = max_users
        self.hits = 0  # reads answered from a copy
        self.misses = 0  # reads that went to PostgreSQL

    @property
    def stored(self) -> PostgresDeviceDirectory:
        """The directory in PostgreSQL under the copies."""
        return self._stored

    async def create_user(self, user: str, device: NewDevice) -> DeviceRecord:
        return await self._stored.create_user(user, device)

    async def add_device(self, user: str, device: NewDevice, *, max_devices: int) -> DeviceRecord:
        return await self._stored.add_device(user, device, max_devices=max_devices)

    async def get_device(self, user: str, device: int) -> DeviceRecord | None:
        return await self._stored.get_device(user, device)

    async def list_devices(self, user: str) -> list[DeviceRecord] | None:
        try:
            version = await self._versions.current(user)
        except Unavailable:
            self.misses += 1
            return await self._stored.list_devices(user)
        copy = self._copies.get(user)
        if copy is not None and copy.version == version:
            self.hits += 1
            return list(copy.devices)
        self.misses += 1
        key = (user, version)
        read = self._reads.get(key)
        if read is None:
            read = asyncio.ensure_future(self._read(user, version))
            self._reads[key] = read
            read.add_done_callback(lambda done: self._read_done(key, done))
        # Shielded: a cancelled caller leaves the read to the others waiting for it.
        fresh = await asyncio.shield(read)
        return None if fresh is None else list(fresh.devices)

    async def remove_device(self, user: str, device: int) -> bool:
        return await self._stored.remove_device(user, device)

    async def touch(self, user: str, device: int, now_ms: int) -> None:
        await self._stored.touch(user, device, now_ms)

    async def close(self) -> None:
        """Write the queued `touch` updates, then stop."""
        await self._stored.close()

    async def _read(self, user: str, version: bytes) -> _Copy | None:
        devices = await self._stored.list_devices_settled(user)
        if devices is None:
            return None
        copy = _Copy(version, tuple(devices))
        self._keep(user, copy)
        return copy

    def _read_done(self, key: tuple[str, bytes], read: asyncio.Future[_Copy | None]) -> None:
        if self._reads.get(key) is read:
            del self._reads[key]
        if not read.cancelled():
            with contextlib.suppress(Exception):
                read.exception()  # retrieved: its waiters may all have been cancelled

    def _keep(self, user: str, copy: _Copy) -> None:
        self._copies.pop(user, None)  # re-inserted last: the oldest copies go first
        while len(self._copies) >= self._max_users:
            del self._copies[next(iter(self._copies))]
        self._copies[user] = copy

    async def _changed(self, user: str) -> None:
        self._copies.pop(user, None)
        await self._versions.bump(user)
