"""The data keys and the index key, kept wrapped in the store's `data_keys` table and held
unwrapped in a `KeyRing` while a node runs.

* First start of an encrypted store: an index key and a first data key are made and stored.
* Every start checks that the master key is the one the keys are wrapped under, and stops
  (MasterKeyError, exit 2) before serving when it is not.
* `refresh` (every minute, and on SIGHUP) picks up keys other nodes or `relay keys` made,
  and makes a new active data key once the active one is older than the rotation period.
  Two nodes rotating at once collide on the key id; one wins and the other adopts its key.
* A retired data key is deleted once no stored row uses it and it has been retired for
  longer than RETIRED_GRACE_MS (every node has refreshed since, so none still seals with it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import nacl.utils

from storage.at_rest.keyring import KeyRing
from storage.at_rest.master_key import KEY_BYTES, KeyWrapper, MasterKeyError
from storage.interfaces import DataKeyTable
from storage.records import WrappedKey

__all__ = [
    "DATA",
    "INDEX",
    "REFRESH_INTERVAL_S",
    "RETIRED_GRACE_MS",
    "DataKeyVault",
    "KeyStatus",
]

DATA: Final = "data"
INDEX: Final = "index"
ACTIVE: Final = "active"
RETIRED: Final = "retired"
REFRESH_INTERVAL_S: Final = 60.0
RETIRED_GRACE_MS: Final = 3_600_000  # far longer than a refresh interval
_CREATE_ATTEMPTS: Final = 5

log = logging.getLogger(__name__)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _context(key: WrappedKey) -> bytes:
    return f"{key.purpose}/{key.id}".encode()


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """One key as `relay keys status` shows it."""

    id: int
    purpose: str
    state: str
    created_ms: int
    retired_ms: int | None
    rows: int


class DataKeyVault:
    """Opens the stored keys with the master key; rotates data keys and the master key."""

    def __init__(
        self,
        table: DataKeyTable,
        wrapper: KeyWrapper,
        ring: KeyRing,
        *,
        rotation_ms: int,
        now_ms: Callable[[], int],
    ) -> None:
        self._table = table
        self._wrapper = wrapper
        self._ring = ring
        self._rotation_ms = rotation_ms
        self._now_ms = now_ms
        self._active_created_ms = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        table: DataKeyTable,
        wrapper: KeyWrapper,
        *,
        rotation_ms: int,
        now_ms: Callable[[], int] = _wall_ms,
    ) -> DataKeyVault:
        """The vault with every stored key unwrapped, creating the first keys of a new store.
        Raises MasterKeyError when the master key does not open them, Unavailable when the
        store does not answer."""
        for _ in range(_CREATE_ATTEMPTS):
            stored = await table.wrapped_keys()
            _check_master(stored, wrapper)
            index = [k for k in stored if k.purpose == INDEX]
            active = [k for k in stored if k.purpose == DATA and k.state == ACTIVE]
            if index and active:
                keys = {k.id: wrapper.unwrap(k.wrapped, context=_context(k)) for k in stored}
                ring = KeyRing(
                    index_key=keys[index[0].id],
                    data_keys={k.id: keys[k.id] for k in stored if k.purpose == DATA},
                    active_id=active[0].id,
                )
                vault = cls(table, wrapper, ring, rotation_ms=rotation_ms, now_ms=now_ms)
                vault._active_created_ms = active[0].created_ms
                return vault
            next_id = max((k.id for k in stored), default=0) + 1
            if not index:
                await table.insert_key(_new_key(wrapper, next_id, INDEX, now_ms()), replacing=None)
            else:
                await table.insert_key(_new_key(wrapper, next_id, DATA, now_ms()), replacing=None)
        raise MasterKeyError("could not create the first keys of the store (busy); start again")

    @property
    def ring(self) -> KeyRing:
        return self._ring

    @property
    def master_key_id(self) -> str:
        return self._wrapper.key_id

    async def load(self, key_ids: Iterable[int]) -> None:
        """Unwrap data keys this node has not seen yet (made by another node). Never raises:
        a key that cannot be had leaves its rows unopened, which is reported where they are."""
        wanted = set(key_ids) - self._ring.known_ids()
        if not wanted:
            return
        try:
            await self._reload()
        except Exception:
            log.exception("could not load data keys %s", sorted(wanted))

    async def refresh(self) -> None:
        """Pick up keys made elsewhere; rotate the active data key when it is due."""
        await self._reload()
        if self._now_ms() - self._active_created_ms >= self._rotation_ms:
            await self._rotate(only_when_due=True)

    async def rotate_data(self) -> int:
        """A new active data key now; the previous one is retired (it still opens its rows).
        The id of the data key active afterwards (another node's, if it rotated first)."""
        return await self._rotate(only_when_due=False)

    async def _rotate(self, *, only_when_due: bool) -> int:
        """With `only_when_due`, the age is judged on the active key read here, so nodes that
        find the key due at once make one new key between them, not one each."""
        async with self._lock:
            for _ in range(_CREATE_ATTEMPTS):
                stored = await self._table.wrapped_keys()
                _check_master(stored, self._wrapper)
                active = next((k for k in stored if k.purpose == DATA and k.state == ACTIVE), None)
                if (
                    only_when_due
                    and active is not None
                    and self._now_ms() - active.created_ms < self._rotation_ms
                ):
                    await self._reload_locked()  # another node rotated first: adopt its key
                    return self._ring.active_id
                next_id = max((k.id for k in stored), default=0) + 1
                new = _new_key(self._wrapper, next_id, DATA, self._now_ms())
                replacing = None if active is None else active.id
                if await self._table.insert_key(new, replacing=replacing):
                    key = self._wrapper.unwrap(new.wrapped, context=_context(new))
                    self._ring.install(new.id, key, active=True)
                    self._active_created_ms = new.created_ms
                    log.info("data key %d is active now (was %s)", new.id, replacing)
                    return new.id
            await self._reload_locked()
            return self._ring.active_id

    async def rotate_master(self, new_wrapper: KeyWrapper) -> int:
        """Re-wrap every key under `new_wrapper` in one transaction; rows are untouched. The
        number of keys re-wrapped."""
        async with self._lock:
            stored = await self._table.wrapped_keys()
            _check_master(stored, self._wrapper)
            rewrapped = [
                WrappedKey(
                    id=k.id,
                    purpose=k.purpose,
                    state=k.state,
                    created_ms=k.created_ms,
                    retired_ms=k.retired_ms,
                    master_key_id=new_wrapper.key_id,
                    wrapped=new_wrapper.wrap(
                        self._wrapper.unwrap(k.wrapped, context=_context(k)), context=_context(k)
                    ),
                )
                for k in stored
            ]
            await self._table.rewrap(self._wrapper.key_id, rewrapped)
            self._wrapper = new_wrapper
            return len(rewrapped)

    async def use_master(self, wrapper: KeyWrapper) -> None:
        """Take a new master key (SIGHUP after `relay keys rotate-master`), once it is shown
        to be the one the stored keys are wrapped by; else MasterKeyError and no change."""
        async with self._lock:
            _check_master(await self._table.wrapped_keys(), wrapper)
            self._wrapper = wrapper
            await self._reload_locked()

    async def status(self) -> list[KeyStatus]:
        stored = await self._table.wrapped_keys()
        usage = await self._table.usage()
        return [
            KeyStatus(
                id=k.id,
                purpose=k.purpose,
                state=k.state,
                created_ms=k.created_ms,
                retired_ms=k.retired_ms,
                rows=usage.get(k.id, 0),
            )
            for k in stored
        ]

    async def delete_unused(self) -> list[int]:
        """Delete the retired data keys no row uses any more (the purge task)."""
        deleted = await self._table.delete_retired(self._now_ms() - RETIRED_GRACE_MS)
        for key_id in deleted:
            self._ring.forget(key_id)
        return deleted

    async def _reload(self) -> None:
        async with self._lock:
            await self._reload_locked()

    async def _reload_locked(self) -> None:
        stored = await self._table.wrapped_keys()
        _check_master(stored, self._wrapper)
        known = self._ring.known_ids()
        for k in stored:
            if k.purpose != DATA:
                continue
            if k.id not in known:
                key = self._wrapper.unwrap(k.wrapped, context=_context(k))
                self._ring.install(k.id, key, active=k.state == ACTIVE)
            elif k.state == ACTIVE and self._ring.active_id != k.id:
                self._ring.activate(k.id)
            if k.state == ACTIVE:
                self._active_created_ms = k.created_ms


def _new_key(wrapper: KeyWrapper, key_id: int, purpose: str, now_ms: int) -> WrappedKey:
    draft = WrappedKey(
        id=key_id,
        purpose=purpose,
        state=ACTIVE,
        created_ms=now_ms,
        retired_ms=None,
        master_key_id=wrapper.key_id,
        wrapped=b"",
    )
    wrapped = wrapper.wrap(nacl.utils.random(KEY_BYTES), context=_context(draft))
    return WrappedKey(
        id=key_id,
        purpose=purpose,
        state=ACTIVE,
        created_ms=now_ms,
        retired_ms=None,
        master_key_id=wrapper.key_id,
        wrapped=wrapped,
    )


def _check_master(stored: list[WrappedKey], wrapper: KeyWrapper) -> None:
    others = sorted({k.master_key_id for k in stored} - {wrapper.key_id})
    if others:
        raise MasterKeyError(
            f"the store's keys are wrapped by master key {', '.join(others)},"
            f" not by the one given ({wrapper.key_id})"
        )
