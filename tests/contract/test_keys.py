"""KeyStore contract: uploads all or nothing, claims at most once, low water (spec §6)."""

from __future__ import annotations

import asyncio

import pytest

from storage.errors import KeyIdConflict, TooManyPreKeys
from storage.interfaces import Store
from storage.records import KeyUpload, OneTimeKey, SignedKey

from .support import START_MS, Backend, make_user

SIG = b"g" * 64


def ec(key_id: int, fill: int = 0) -> OneTimeKey:
    return OneTimeKey(key_id, bytes([fill]) * 31 + key_id.to_bytes(1, "big"))


def pq(key_id: int, fill: int = 0) -> SignedKey:
    return SignedKey(key_id, b"\x08" + bytes([fill]) * 1567 + key_id.to_bytes(1, "big"), SIG)


def signed(key_id: int) -> SignedKey:
    return SignedKey(key_id, b"\x05" + key_id.to_bytes(32, "big"), SIG)


async def upload(store: Store, user: str, upload: KeyUpload, *, max_stored: int = 1000) -> None:
    await store.keys.upload(user, 1, upload, now_ms=START_MS, max_stored=max_stored)


async def test_upload_returns_counts(store: Store) -> None:
    user = await make_user(store)
    counts = await store.keys.upload(
        user,
        1,
        KeyUpload(
            signed_prekey=signed(1),
            prekeys=tuple(ec(i) for i in range(1, 4)),
            pq_prekeys=tuple(pq(i) for i in range(1, 3)),
            pq_last_resort=pq(99),
        ),
        now_ms=START_MS + 5,
        max_stored=1000,
    )
    assert (counts.prekeys, counts.pq_prekeys) == (3, 2)  # the last resort is not counted
    assert counts.signed_prekey_uploaded_ms == START_MS + 5
    assert await store.keys.counts(user, 1) == counts


async def test_counts_without_keys(store: Store) -> None:
    user = await make_user(store)
    counts = await store.keys.counts(user, 1)
    assert (counts.prekeys, counts.pq_prekeys, counts.signed_prekey_uploaded_ms) == (0, 0, None)


async def test_claim_hands_keys_out_oldest_first_and_once(store: Store) -> None:
    user = await make_user(store)
    await upload(store, user, KeyUpload(signed_prekey=signed(7), prekeys=(ec(5), ec(2))))
    await upload(store, user, KeyUpload(prekeys=(ec(1),), pq_prekeys=(pq(9), pq(3))))
    first = await store.keys.claim(user, 1, low_water=0)
    second = await store.keys.claim(user, 1, low_water=0)
    third = await store.keys.claim(user, 1, low_water=0)
    assert [c.prekey for c in (first, second, third)] == [ec(5), ec(2), ec(1)]
    assert [c.pq_prekey for c in (first, second, third)] == [pq(9), pq(3), None]
    assert first.signed_prekey == third.signed_prekey == signed(7)
    assert (first.counts.prekeys, first.counts.pq_prekeys) == (2, 1)
    assert (third.counts.prekeys, third.counts.pq_prekeys) == (0, 0)
    empty = await store.keys.claim(user, 1, low_water=0)
    assert (empty.prekey, empty.pq_prekey) == (None, None)
    assert (await store.keys.counts(user, 1)).prekeys == 0


async def test_claim_gives_the_last_resort_key_when_pq_keys_run_out(store: Store) -> None:
    user = await make_user(store)
    await upload(store, user, KeyUpload(signed_prekey=signed(1)))
    await upload(store, user, KeyUpload(pq_prekeys=(pq(1),), pq_last_resort=pq(50)))
    assert (await store.keys.claim(user, 1, low_water=0)).pq_prekey == pq(1)
    for _ in range(3):  # the last-resort key is handed out again and again, never deleted
        claimed = await store.keys.claim(user, 1, low_water=0)
        assert claimed.pq_prekey == pq(50)
        assert claimed.counts.pq_prekeys == 0


async def test_claim_of_a_device_without_keys(store: Store) -> None:
    user = await make_user(store)
    claimed = await store.keys.claim(user, 1, low_water=10)
    assert (claimed.signed_prekey, claimed.prekey, claimed.pq_prekey) == (None, None, None)
    assert claimed.counts.signed_prekey_uploaded_ms is None
    assert not claimed.fell_below_low_water


async def test_signed_and_last_resort_keys_are_replaced(store: Store) -> None:
    user = await make_user(store)
    await upload(store, user, KeyUpload(signed_prekey=signed(1), pq_last_resort=pq(1)))
    counts = await store.keys.upload(
        user,
        1,
        KeyUpload(signed_prekey=signed(2), pq_last_resort=pq(2, fill=7)),
        now_ms=START_MS + 1000,
        max_stored=1000,
    )
    assert counts.signed_prekey_uploaded_ms == START_MS + 1000
    assert counts.pq_prekeys == 0
    claimed = await store.keys.claim(user, 1, low_water=0)
    assert claimed.signed_prekey == signed(2)
    assert claimed.pq_prekey == pq(2, fill=7)


async def test_a_device_without_signed_prekey_gives_no_bundle_and_keeps_its_keys(
    store: Store,
) -> None:
    user = await make_user(store)
    await upload(store, user, KeyUpload(prekeys=(ec(1),), pq_prekeys=(pq(1),)))
    claimed = await store.keys.claim(user, 1, low_water=0)
    assert (claimed.signed_prekey, claimed.prekey, claimed.pq_prekey) == (None, None, None)
    counts = await store.keys.counts(user, 1)
    assert (counts.prekeys, counts.pq_prekeys) == (1, 1)


async def test_same_id_with_the_same_key_is_a_no_op(store: Store) -> None:
    user = await make_user(store)
    await upload(store, user, KeyUpload(signed_prekey=signed(1)))
    await upload(store, user, KeyUpload(prekeys=(ec(1), ec(2)), pq_prekeys=(pq(1),)))
    again = await store.keys.upload(
        user,
        1,
        KeyUpload(prekeys=(ec(2), ec(3), ec(3)), pq_prekeys=(pq(1),)),
        now_ms=START_MS,
        max_stored=1000,
    )
    assert (again.prekeys, again.pq_prekeys) == (3, 1)
    claims = [await store.keys.claim(user, 1, low_water=0) for _ in range(4)]
    assert [c.prekey for c in claims] == [ec(1), ec(2), ec(3), None]


@pytest.mark.parametrize("kind", ["prekeys", "pq_prekeys"])
async def test_same_id_with_another_key_conflicts_and_stores_nothing(
    store: Store, kind: str
) -> None:
    user = await make_user(store)
    await upload(
        store, user, KeyUpload(signed_prekey=signed(1), prekeys=(ec(1),), pq_prekeys=(pq(1),))
    )
    conflicting = (
        KeyUpload(signed_prekey=signed(2), prekeys=(ec(2), ec(1, fill=9)), pq_prekeys=(pq(2),))
        if kind == "prekeys"
        else KeyUpload(signed_prekey=signed(2), prekeys=(ec(2),), pq_prekeys=(pq(2), pq(1, fill=9)))
    )
    with pytest.raises(KeyIdConflict):
        await store.keys.upload(user, 1, conflicting, now_ms=START_MS + 1, max_stored=1000)
    counts = await store.keys.counts(user, 1)
    assert (counts.prekeys, counts.pq_prekeys) == (1, 1)
    assert counts.signed_prekey_uploaded_ms == START_MS
    claimed = await store.keys.claim(user, 1, low_water=0)
    assert (claimed.signed_prekey, claimed.prekey, claimed.pq_prekey) == (signed(1), ec(1), pq(1))


@pytest.mark.parametrize("kind", ["prekeys", "pq_prekeys"])
async def test_one_upload_naming_an_id_twice_with_different_keys_conflicts(
    store: Store, kind: str
) -> None:
    user = await make_user(store)
    bad = (
        KeyUpload(prekeys=(ec(1), ec(1, fill=9)))
        if kind == "prekeys"
        else KeyUpload(pq_prekeys=(pq(1), pq(1, fill=9)))
    )
    with pytest.raises(KeyIdConflict):
        await upload(store, user, bad)
    counts = await store.keys.counts(user, 1)
    assert (counts.prekeys, counts.pq_prekeys) == (0, 0)


async def test_ec_and_pq_ids_are_separate(store: Store) -> None:
    user = await make_user(store)
    counts = await store.keys.upload(
        user, 1, KeyUpload(prekeys=(ec(1),), pq_prekeys=(pq(1),)), now_ms=0, max_stored=1000
    )
    assert (counts.prekeys, counts.pq_prekeys) == (1, 1)


@pytest.mark.parametrize("kind", ["prekeys", "pq_prekeys"])
async def test_too_many_stored_keys(store: Store, kind: str) -> None:
    def keys(ids: range) -> KeyUpload:
        if kind == "prekeys":
            return KeyUpload(prekeys=tuple(ec(i) for i in ids))
        return KeyUpload(pq_prekeys=tuple(pq(i) for i in ids))

    user = await make_user(store)
    await upload(store, user, keys(range(1, 4)), max_stored=5)
    with pytest.raises(TooManyPreKeys):
        await upload(store, user, keys(range(4, 7)), max_stored=5)
    counts = await store.keys.counts(user, 1)
    assert getattr(counts, kind) == 3
    # Exactly the cap is allowed; ids already stored do not count twice.
    await upload(store, user, keys(range(1, 6)), max_stored=5)
    assert getattr(await store.keys.counts(user, 1), kind) == 5


async def test_a_handed_out_id_may_be_uploaded_again_with_a_new_key(store: Store) -> None:
    user = await make_user(store)
    await upload(store, user, KeyUpload(signed_prekey=signed(1)))
    await upload(store, user, KeyUpload(prekeys=(ec(1),), pq_prekeys=(pq(1),)))
    claimed = await store.keys.claim(user, 1, low_water=0)
    assert (claimed.prekey, claimed.pq_prekey) == (ec(1), pq(1))
    await upload(store, user, KeyUpload(prekeys=(ec(1, fill=5),), pq_prekeys=(pq(1, fill=5),)))
    again = await store.keys.claim(user, 1, low_water=0)
    assert (again.prekey, again.pq_prekey) == (ec(1, fill=5), pq(1, fill=5))


async def test_devices_have_their_own_keys(store: Store) -> None:
    user = await make_user(store, devices=2)
    for device in (1, 2):
        await store.keys.upload(
            user, device, KeyUpload(signed_prekey=signed(1)), now_ms=START_MS, max_stored=1000
        )
    await upload(store, user, KeyUpload(prekeys=(ec(1),)))
    assert (await store.keys.claim(user, 2, low_water=0)).prekey is None
    assert (await store.keys.counts(user, 1)).prekeys == 1
    # The same id on another device is no conflict.
    await store.keys.upload(
        user, 2, KeyUpload(prekeys=(ec(1, fill=3),)), now_ms=START_MS, max_stored=1000
    )
    assert (await store.keys.claim(user, 2, low_water=0)).prekey == ec(1, fill=3)


@pytest.mark.parametrize("kind", ["prekeys", "pq_prekeys"])
async def test_fell_below_low_water_once(store: Store, kind: str) -> None:
    user = await make_user(store)
    await upload(store, user, KeyUpload(signed_prekey=signed(1)))
    if kind == "prekeys":
        await upload(store, user, KeyUpload(prekeys=tuple(ec(i) for i in range(1, 5))))
    else:
        await upload(store, user, KeyUpload(pq_prekeys=tuple(pq(i) for i in range(1, 5))))
    flags = [(await store.keys.claim(user, 1, low_water=3)).fell_below_low_water for _ in range(6)]
    # 4 -> 3 no, 3 -> 2 yes, 2 -> 1 no, 1 -> 0 no, then nothing left to take.
    assert flags == [False, True, False, False, False, False]


async def test_low_water_zero_never_fires(store: Store) -> None:
    user = await make_user(store)
    await upload(store, user, KeyUpload(signed_prekey=signed(1)))
    await upload(store, user, KeyUpload(prekeys=(ec(1),), pq_prekeys=(pq(1),)))
    claimed = await store.keys.claim(user, 1, low_water=0)
    assert claimed.prekey == ec(1)
    assert not claimed.fell_below_low_water


async def test_concurrent_claims_hand_each_key_out_once(store: Store) -> None:
    user = await make_user(store)
    await upload(store, user, KeyUpload(signed_prekey=signed(1)))
    for ids in (range(1, 26), range(26, 51)):
        await upload(
            store,
            user,
            KeyUpload(
                prekeys=tuple(ec(i) for i in ids),
                pq_prekeys=tuple(pq(i) for i in ids),
                pq_last_resort=pq(200, fill=200),
            ),
        )
    assert (await store.keys.counts(user, 1)).prekeys == 50

    claims = await asyncio.gather(*(store.keys.claim(user, 1, low_water=10) for _ in range(200)))

    ec_keys = [c.prekey for c in claims if c.prekey is not None]
    pq_keys = [c.pq_prekey for c in claims]
    assert len(ec_keys) == 50
    assert {k.id for k in ec_keys} == set(range(1, 51))
    assert sum(1 for c in claims if c.prekey is None) == 150
    one_time_pq = [k for k in pq_keys if k != pq(200, fill=200)]
    assert len(one_time_pq) == 50
    assert {k.id for k in one_time_pq if k is not None} == set(range(1, 51))
    assert pq_keys.count(pq(200, fill=200)) == 150
    assert sum(c.fell_below_low_water for c in claims) == 1  # both kinds cross 10 together
    counts = await store.keys.counts(user, 1)
    assert (counts.prekeys, counts.pq_prekeys) == (0, 0)


async def test_keys_survive_reopen(backend: Backend, store: Store) -> None:
    user = await make_user(store)
    await upload(store, user, KeyUpload(signed_prekey=signed(1), prekeys=(ec(1), ec(2))))
    assert (await store.keys.claim(user, 1, low_water=0)).prekey == ec(1)
    await store.close()
    reopened = await backend.open()
    claimed = await reopened.keys.claim(user, 1, low_water=0)
    assert (claimed.signed_prekey, claimed.prekey) == (signed(1), ec(2))
