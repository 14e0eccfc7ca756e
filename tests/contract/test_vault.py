"""The data-key vault over each backend's real key table: rotation when due (nodes racing
agree on one new key), master-key rotation and the keys it refuses, and the purge of a
retired key once no stored message uses it."""

from __future__ import annotations

import asyncio
import os

import pytest

from storage.at_rest.master_key import LocalKeyFile, MasterKeyError
from storage.at_rest.sealing import RingSealer
from storage.at_rest.vault import RETIRED_GRACE_MS, DataKeyVault

from .support import DAY_MS, Backend, envelope, make_user

ROTATION_MS = DAY_MS


async def _vault(backend: Backend, master: LocalKeyFile) -> DataKeyVault:
    store = await backend.open()
    return await DataKeyVault.open(
        store.data_keys,  # type: ignore[attr-defined]
        master,
        rotation_ms=ROTATION_MS,
        now_ms=backend.clock.now_ms,
    )


async def test_a_due_data_key_is_replaced_once_by_racing_nodes(backend: Backend) -> None:
    master = LocalKeyFile(os.urandom(32))
    first, second = await _vault(backend, master), await _vault(backend, master)
    original = first.ring.active_id
    assert second.ring.active_id == original

    backend.clock.advance(ROTATION_MS / 1000 - 1)
    await asyncio.gather(first.refresh(), second.refresh())
    assert first.ring.active_id == second.ring.active_id == original

    backend.clock.advance(1)
    await asyncio.gather(first.refresh(), second.refresh())
    assert first.ring.active_id == second.ring.active_id != original
    statuses = await first.status()
    data = [s for s in statuses if s.purpose == "data"]
    assert [(s.id, s.state) for s in data] == [
        (original, "retired"),
        (first.ring.active_id, "active"),
    ]
    # The retired key still opens what it sealed.
    assert first.ring.data_key(original) == second.ring.data_key(original) is not None


async def test_rotate_master_rewraps_every_key_and_the_old_master_is_refused(
    backend: Backend,
) -> None:
    old, new = LocalKeyFile(os.urandom(32)), LocalKeyFile(os.urandom(32))
    rotating, serving = await _vault(backend, old), await _vault(backend, old)
    user = "6f1c2a9e-8d3b-4c5a-9e7f-1a2b3c4d5e6f"
    blinded = rotating.ring.blind_user(user)

    assert await rotating.rotate_master(new) == 2  # the index key and the data key
    assert rotating.master_key_id == new.key_id

    with pytest.raises(MasterKeyError, match=new.key_id):
        await _vault(backend, old)
    reopened = await _vault(backend, new)
    assert reopened.ring.blind_user(user) == blinded  # the same index key, rewrapped
    assert reopened.ring.active_key == rotating.ring.active_key

    # A node still on the old key keeps what it holds; its refresh says why it cannot go on.
    with pytest.raises(MasterKeyError):
        await serving.refresh()
    with pytest.raises(MasterKeyError):
        await serving.use_master(LocalKeyFile(os.urandom(32)))
    assert serving.master_key_id == old.key_id
    await serving.use_master(new)
    assert serving.master_key_id == new.key_id
    await serving.refresh()


async def test_a_retired_key_goes_once_no_message_uses_it_and_the_grace_is_over(
    backend: Backend,
) -> None:
    store = await backend.open()
    vault = await DataKeyVault.open(
        store.data_keys,  # type: ignore[attr-defined]
        LocalKeyFile(os.urandom(32)),
        rotation_ms=ROTATION_MS,
        now_ms=backend.clock.now_ms,
    )
    store.use_sealer(RingSealer(vault.ring, load_keys=vault.load))  # type: ignore[attr-defined]
    user = await make_user(store)
    old = vault.ring.active_id
    sealed_early = envelope(user, 1)
    await store.messages.store([sealed_early])
    new = await vault.rotate_data()

    backend.clock.advance(RETIRED_GRACE_MS / 1000 + 1)
    assert await vault.delete_unused() == []  # a stored message still uses it
    await store.messages.ack(user, 1, [sealed_early.id])
    assert await vault.delete_unused() == [old]
    assert vault.ring.data_key(old) is None and vault.ring.active_id == new
    assert [s.id for s in await vault.status() if s.purpose == "data"] == [new]


async def test_a_retired_key_is_kept_through_the_grace_even_when_unused(
    backend: Backend,
) -> None:
    vault = await _vault(backend, LocalKeyFile(os.urandom(32)))
    old = vault.ring.active_id
    await vault.rotate_data()
    backend.clock.advance(RETIRED_GRACE_MS / 1000 - 1)
    assert await vault.delete_unused() == []  # a node may still be sealing with it
    backend.clock.advance(2)
    assert await vault.delete_unused() == [old]
