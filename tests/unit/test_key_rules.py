"""The key upload rules shared by every backend (`storage.key_rules`), without a database."""

from __future__ import annotations

import pytest

from storage.errors import KeyIdConflict, TooManyPreKeys
from storage.key_rules import StoredKeys, fell_below_low_water, named_ids, plan_upload
from storage.records import KeyUpload, OneTimeKey, SignedKey

SIG = b"s" * 64


def ec(key_id: int, fill: int = 0) -> OneTimeKey:
    return OneTimeKey(key_id, bytes([fill]) * 32)


def pq(key_id: int, fill: int = 0, sig: bytes = SIG) -> SignedKey:
    return SignedKey(key_id, b"\x08" + bytes([fill]) * 32, sig)


def test_new_keys_are_planned_in_upload_order_with_the_signed_keys() -> None:
    upload = KeyUpload(
        signed_prekey=SignedKey(7, b"\x05" * 33, SIG),
        prekeys=(ec(3), ec(1), ec(2)),
        pq_prekeys=(pq(9), pq(4)),
        pq_last_resort=pq(100, fill=1),
    )
    plan = plan_upload(upload, StoredKeys(), max_stored=10)
    assert [k.id for k in plan.prekeys] == [3, 1, 2]
    assert [k.id for k in plan.pq_prekeys] == [9, 4]
    assert plan.signed_prekey == upload.signed_prekey
    assert plan.pq_last_resort == upload.pq_last_resort


def test_an_id_stored_with_the_same_key_is_a_no_op() -> None:
    stored = StoredKeys(prekeys={1: ec(1).key}, pq_prekeys={4: pq(4).key}, prekey_count=1)
    plan = plan_upload(
        KeyUpload(prekeys=(ec(1), ec(2)), pq_prekeys=(pq(4, sig=b"t" * 64),)),
        stored,
        max_stored=10,
    )
    assert plan.prekeys == (ec(2),)
    assert plan.pq_prekeys == ()  # the signature is not compared: the stored key stays


def test_an_id_repeated_with_the_same_key_counts_once_and_keeps_the_first_signature() -> None:
    first, again = pq(5, sig=b"a" * 64), pq(5, sig=b"b" * 64)
    plan = plan_upload(KeyUpload(pq_prekeys=(first, again)), StoredKeys(), max_stored=1)
    assert plan.pq_prekeys == (first,)


@pytest.mark.parametrize(
    ("upload", "stored", "message"),
    [
        (KeyUpload(prekeys=(ec(1), ec(1, fill=9))), StoredKeys(), "named twice"),
        (KeyUpload(pq_prekeys=(pq(2), pq(2, fill=9))), StoredKeys(), "named twice"),
        (KeyUpload(prekeys=(ec(1, fill=9),)), StoredKeys(prekeys={1: ec(1).key}), "stored"),
        (KeyUpload(pq_prekeys=(pq(2, fill=9),)), StoredKeys(pq_prekeys={2: pq(2).key}), "stored"),
    ],
)
def test_an_id_with_another_key_is_a_conflict(
    upload: KeyUpload, stored: StoredKeys, message: str
) -> None:
    with pytest.raises(KeyIdConflict, match=message):
        plan_upload(upload, stored, max_stored=100)


def test_ec_and_pq_ids_are_separate_namespaces() -> None:
    plan = plan_upload(
        KeyUpload(prekeys=(ec(1),), pq_prekeys=(pq(1, fill=5),)),
        StoredKeys(pq_prekeys={2: pq(2).key}),
        max_stored=5,
    )
    assert (len(plan.prekeys), len(plan.pq_prekeys)) == (1, 1)


@pytest.mark.parametrize("pq_side", [False, True])
def test_the_cap_counts_stored_keys_and_new_ones_but_not_no_ops(pq_side: bool) -> None:
    def upload(*ids: int) -> KeyUpload:
        if pq_side:
            return KeyUpload(pq_prekeys=tuple(pq(i) for i in ids))
        return KeyUpload(prekeys=tuple(ec(i) for i in ids))

    held = {1: (pq(1) if pq_side else ec(1)).key}
    stored = (
        StoredKeys(pq_prekeys=held, pq_prekey_count=3)
        if pq_side
        else StoredKeys(prekeys=held, prekey_count=3)
    )
    # 3 stored + 2 new = 5: at the cap; the stored id 1 is a no-op and does not count.
    plan = plan_upload(upload(1, 2, 3), stored, max_stored=5)
    assert len(plan.pq_prekeys if pq_side else plan.prekeys) == 2
    with pytest.raises(TooManyPreKeys, match="more than 5"):
        plan_upload(upload(1, 2, 3, 4), stored, max_stored=5)


def test_named_ids_lists_both_kinds_in_order() -> None:
    assert named_ids(KeyUpload(prekeys=(ec(3), ec(1)), pq_prekeys=(pq(2),))) == ([3, 1], [2])


@pytest.mark.parametrize(
    ("low_water", "before", "after", "fell"),
    [
        (5, (5, 9), (4, 9), True),  # EC fell from the mark
        (5, (9, 5), (9, 4), True),  # PQ fell from the mark
        (5, (4, 9), (3, 9), False),  # already below: told before
        (5, (6, 9), (5, 9), False),  # reached the mark, not below it
        (0, (1, 1), (0, 0), False),  # no low-water mark: never told
    ],
)
def test_low_water_is_crossed_once(
    low_water: int, before: tuple[int, int], after: tuple[int, int], fell: bool
) -> None:
    assert fell_below_low_water(low_water, before, after) is fell
