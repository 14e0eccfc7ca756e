"""DeviceDirectory contract: users, device numbers, identity keys, removal (spec §2, §3, §6)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from protocol.signatures import IdentityKeyPair, KeyScheme, identity_key_x25519
from storage.errors import (
    DeviceLimitReached,
    DeviceNumbersExhausted,
    IdentityKeyInUse,
    IdentityKeyRetired,
    UnknownUser,
)
from storage.interfaces import Store
from storage.records import KeyUpload, NewDevice, OneTimeKey, SignedKey

from .support import START_MS, Backend, envelope, make_user, new_device, new_user


async def test_create_user_makes_device_1(store: Store) -> None:
    user = new_user()
    device = new_device(registration_id=4242, created_ms=START_MS + 7)
    record = await store.devices.create_user(user, device)
    assert (record.user, record.device) == (user, 1)
    assert record.identity_key == device.identity_key
    assert record.key_scheme == "xeddsa"
    assert record.registration_id == 4242
    assert record.created_ms == record.last_seen_ms == START_MS + 7
    assert await store.devices.get_device(user, 1) == record
    assert await store.devices.list_devices(user) == [record]


async def test_unknown_user_and_device(store: Store) -> None:
    assert await store.devices.list_devices(new_user()) is None
    assert await store.devices.get_device(new_user(), 1) is None
    user = await make_user(store)
    assert await store.devices.get_device(user, 2) is None
    with pytest.raises(UnknownUser):
        await store.devices.add_device(new_user(), new_device(), max_devices=6)


async def test_devices_are_numbered_in_order_and_listed_in_order(store: Store) -> None:
    user = await make_user(store)
    second = await store.devices.add_device(user, new_device(), max_devices=6)
    third = await store.devices.add_device(user, new_device(), max_devices=6)
    assert (second.device, third.device) == (2, 3)
    listed = await store.devices.list_devices(user)
    assert listed is not None
    assert [d.device for d in listed] == [1, 2, 3]


async def test_device_numbers_are_never_reused(store: Store) -> None:
    user = await make_user(store, devices=3)
    assert await store.devices.remove_device(user, 3)
    assert await store.devices.remove_device(user, 2)
    again = await store.devices.add_device(user, new_device(), max_devices=6)
    assert again.device == 4
    listed = await store.devices.list_devices(user)
    assert listed is not None
    assert [d.device for d in listed] == [1, 4]


async def test_device_limit_counts_active_devices(store: Store) -> None:
    user = await make_user(store, devices=3)
    with pytest.raises(DeviceLimitReached):
        await store.devices.add_device(user, new_device(), max_devices=3)
    assert await store.devices.remove_device(user, 2)
    added = await store.devices.add_device(user, new_device(), max_devices=3)
    assert added.device == 4


async def test_device_numbers_stop_at_127(store: Store) -> None:
    user = await make_user(store)
    for number in range(2, 128):
        added = await store.devices.add_device(user, new_device(), max_devices=2)
        assert added.device == number
        assert await store.devices.remove_device(user, number)
    with pytest.raises(DeviceNumbersExhausted):
        await store.devices.add_device(user, new_device(), max_devices=2)
    assert [d.device for d in await store.devices.list_devices(user) or []] == [1]


async def test_concurrent_adds_respect_the_limit(store: Store) -> None:
    user = await make_user(store)
    results = await asyncio.gather(
        *(store.devices.add_device(user, new_device(), max_devices=3) for _ in range(6)),
        return_exceptions=True,
    )
    added = sorted(r.device for r in results if not isinstance(r, BaseException))
    refused = [r for r in results if isinstance(r, BaseException)]
    assert added == [2, 3]
    assert len(refused) == 4
    assert all(isinstance(r, DeviceLimitReached) for r in refused)


async def test_identity_key_in_use_by_an_active_device(store: Store) -> None:
    device = new_device()
    user = new_user()
    await store.devices.create_user(user, device)
    with pytest.raises(IdentityKeyInUse):
        await store.devices.create_user(new_user(), device)
    with pytest.raises(IdentityKeyInUse):
        await store.devices.add_device(user, device, max_devices=6)
    # Compared in X25519 form: the same key pair in the other scheme is the same identity.
    other_scheme = replace(device, identity_key=b"\xee" * 32, key_scheme="ed25519")
    other = await make_user(store)
    with pytest.raises(IdentityKeyInUse):
        await store.devices.add_device(other, other_scheme, max_devices=6)
    assert [d.device for d in await store.devices.list_devices(other) or []] == [1]


async def test_refused_create_user_creates_no_user(store: Store) -> None:
    device = new_device()
    await store.devices.create_user(new_user(), device)
    refused = new_user()
    with pytest.raises(IdentityKeyInUse):
        await store.devices.create_user(refused, device)
    assert await store.devices.list_devices(refused) is None


async def test_concurrent_registrations_of_one_key(store: Store) -> None:
    device = new_device()
    users = [new_user() for _ in range(10)]
    results = await asyncio.gather(
        *(store.devices.create_user(user, device) for user in users), return_exceptions=True
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    assert len(created) == 1
    assert all(isinstance(r, IdentityKeyInUse) for r in results if isinstance(r, BaseException))


async def test_identity_key_of_a_removed_device_is_retired(store: Store) -> None:
    user = await make_user(store)
    device = new_device()
    added = await store.devices.add_device(user, device, max_devices=6)
    assert await store.devices.remove_device(user, added.device)
    with pytest.raises(IdentityKeyRetired):
        await store.devices.add_device(user, device, max_devices=6)
    with pytest.raises(IdentityKeyRetired):
        await store.devices.create_user(new_user(), device)
    in_other_scheme = replace(device, identity_key=b"\xee" * 32, key_scheme="ed25519")
    with pytest.raises(IdentityKeyRetired):
        await store.devices.create_user(new_user(), in_other_scheme)


def _registered(scheme: KeyScheme, identity_key: bytes) -> NewDevice:
    """The device the relay's handshake would store: its key's canonical X25519 form."""
    return NewDevice(
        identity_key=identity_key,
        key_scheme=scheme.value,
        identity_x25519=identity_key_x25519(scheme, identity_key),
        registration_id=0,
        created_ms=START_MS,
    )


@pytest.mark.parametrize("first_scheme", list(KeyScheme))
async def test_identity_keys_are_compared_in_canonical_form(
    store: Store, first_scheme: KeyScheme
) -> None:
    """One key pair as registered (either scheme) and as xeddsa with bit 255 set: one key."""
    pair = IdentityKeyPair.generate(first_scheme)
    first = _registered(first_scheme, pair.public_key)
    high = bytearray(b"\x05" + pair.x25519_public())
    high[32] |= 0x80
    other_encoding = _registered(KeyScheme.XEDDSA, bytes(high))
    assert other_encoding.identity_key != first.identity_key

    user = new_user()
    await store.devices.create_user(user, first)
    with pytest.raises(IdentityKeyInUse):
        await store.devices.create_user(new_user(), other_encoding)
    with pytest.raises(IdentityKeyInUse):
        await store.devices.add_device(user, other_encoding, max_devices=6)
    linked = await store.devices.add_device(user, new_device(), max_devices=6)
    assert await store.devices.remove_device(user, 1)
    with pytest.raises(IdentityKeyRetired):
        await store.devices.create_user(new_user(), other_encoding)
    with pytest.raises(IdentityKeyRetired):
        await store.devices.add_device(user, other_encoding, max_devices=6)
    assert [d.device for d in await store.devices.list_devices(user) or []] == [linked.device]


async def test_remove_device(store: Store) -> None:
    user = await make_user(store, devices=2)
    assert await store.devices.remove_device(user, 2)
    assert await store.devices.get_device(user, 2) is None
    assert not await store.devices.remove_device(user, 2)  # not active any more
    assert not await store.devices.remove_device(user, 9)  # never existed
    assert not await store.devices.remove_device(new_user(), 1)
    assert await store.devices.remove_device(user, 1)
    assert await store.devices.list_devices(user) == []  # the user still exists


async def test_remove_device_deletes_its_keys_and_messages(store: Store) -> None:
    user = await make_user(store, devices=2)
    upload = KeyUpload(
        signed_prekey=SignedKey(1, b"s" * 32, b"g" * 64),
        prekeys=(OneTimeKey(1, b"a" * 32),),
        pq_prekeys=(SignedKey(1, b"p" * 1569, b"g" * 64),),
        pq_last_resort=SignedKey(2, b"l" * 1569, b"g" * 64),
    )
    for device in (1, 2):
        await store.keys.upload(user, device, upload, now_ms=START_MS, max_stored=100)
        await store.messages.store([envelope(user, device)])

    assert await store.devices.remove_device(user, 2)

    counts = await store.keys.counts(user, 2)
    assert (counts.prekeys, counts.pq_prekeys, counts.signed_prekey_uploaded_ms) == (0, 0, None)
    claimed = await store.keys.claim(user, 2, low_water=0)
    assert (claimed.signed_prekey, claimed.prekey, claimed.pq_prekey) == (None, None, None)
    assert await store.messages.fetch(user, 2, after_seq=0, limit=10, now_ms=START_MS) == []
    assert (await store.messages.queue_state(user, 2, now_ms=START_MS))[0] == 0
    # Device 1 keeps everything.
    assert (await store.keys.counts(user, 1)).prekeys == 1
    assert len(await store.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS)) == 1


async def test_nothing_is_stored_for_a_removed_device(store: Store) -> None:
    """A store or upload that lost the race with a removal leaves nothing behind."""
    user = await make_user(store, devices=2)
    assert await store.devices.remove_device(user, 2)
    await store.messages.store([envelope(user, 2), envelope(user, 1)])
    upload = KeyUpload(prekeys=(OneTimeKey(1, b"a" * 32),))
    counts = await store.keys.upload(user, 2, upload, now_ms=START_MS, max_stored=100)
    assert counts.prekeys == 0
    assert (await store.messages.queue_state(user, 2, now_ms=START_MS))[0] == 0
    assert (await store.messages.queue_state(user, 1, now_ms=START_MS))[0] == 1
    assert (await store.keys.claim(user, 2, low_water=0)).prekey is None


async def test_touch_records_last_seen(store: Store) -> None:
    user = await make_user(store, devices=2)
    await store.devices.touch(user, 2, START_MS + 60_000)
    touched = await store.devices.get_device(user, 2)
    untouched = await store.devices.get_device(user, 1)
    assert touched is not None and untouched is not None
    assert touched.last_seen_ms == START_MS + 60_000
    assert touched.created_ms == START_MS
    assert untouched.last_seen_ms == START_MS


async def test_touches_in_one_turn_each_move_their_device_and_never_back(store: Store) -> None:
    """Touches made together (a reconnect storm's handshakes and closes) each land on their
    own device; an older time never moves last_seen back; a removed device keeps its own."""
    users = [await make_user(store, devices=2) for _ in range(20)]
    assert await store.devices.remove_device(users[0], 2)
    removed = await store.devices.get_device(users[0], 2)
    touches = [
        store.devices.touch(user, device, START_MS + 10_000 + 1_000 * i + device)
        for i, user in enumerate(users)
        for device in (1, 2)
    ]
    touches += [store.devices.touch(user, 1, START_MS + 5) for user in users]  # older
    await asyncio.gather(*touches)
    for i, user in enumerate(users):
        first = await store.devices.get_device(user, 1)
        assert first is not None and first.last_seen_ms == START_MS + 10_000 + 1_000 * i + 1
        second = await store.devices.get_device(user, 2)
        if i == 0:
            assert second == removed
        else:
            assert second is not None and second.last_seen_ms == START_MS + 10_000 + 1_000 * i + 2


async def test_devices_survive_reopen(backend: Backend, store: Store) -> None:
    user = await make_user(store, devices=2)
    assert await store.devices.remove_device(user, 2)
    await store.close()
    reopened = await backend.open()
    assert [d.device for d in await reopened.devices.list_devices(user) or []] == [1]
    assert (await reopened.devices.add_device(user, new_device(), max_devices=6)).device == 3
