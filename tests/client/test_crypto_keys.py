"""DeviceKeys: generation, signatures over the uploaded bytes, fresh ids, rotation, storage."""

from __future__ import annotations

import msgpack
import pytest

from protocol.crypto import primitives
from protocol.crypto.device_keys import MAX_ONE_TIME_PREKEYS, DeviceKeys
from protocol.crypto.errors import StateError
from protocol.signatures import KeyScheme, verify_signature

from .test_crypto_support import NOW_MS, make_device


@pytest.mark.parametrize("scheme", list(KeyScheme))
def test_generate_makes_signed_well_formed_keys(scheme: KeyScheme) -> None:
    keys = DeviceKeys.generate(scheme, prekeys=3, pq_prekeys=2, now_ms=NOW_MS)
    identity = keys.identity
    assert identity.scheme == scheme
    assert 1 <= keys.registration_id <= 16380
    assert keys.previous_signed_prekey is None
    assert keys.signed_prekey.created_ms == NOW_MS
    spk = keys.signed_prekey
    assert spk.public == b"\x05" + primitives.x25519_public(spk.private)
    assert verify_signature(scheme, identity.public_key, spk.public, spk.signature)
    assert len(keys.prekeys) == 3 and len(keys.pq_prekeys) == 2
    for key_id, prekey in keys.prekeys.items():
        assert prekey.id == key_id
        assert prekey.public == b"\x05" + primitives.x25519_public(prekey.private)
    for pq in [*keys.pq_prekeys.values(), keys.pq_last_resort]:
        assert len(pq.public) == 1569 and pq.public[0] == 0x08
        assert primitives.kem_public_from_seed(pq.private) == pq.public[1:]
        assert verify_signature(scheme, identity.public_key, pq.public, pq.signature)
    assert keys.pq_last_resort.id not in keys.pq_prekeys


def test_default_counts_are_one_hundred() -> None:
    keys = DeviceKeys.generate(KeyScheme.ED25519, now_ms=NOW_MS)
    assert len(keys.prekeys) == 100 and len(keys.pq_prekeys) == 100


def test_new_prekeys_have_fresh_ids_and_are_kept() -> None:
    keys = make_device(prekeys=2, pq=2)
    before = set(keys.prekeys)
    created = keys.new_prekeys(5)
    assert len(created) == 5
    assert {k.id for k in created}.isdisjoint(before)
    assert set(keys.prekeys) == before | {k.id for k in created}
    pq_before = {*keys.pq_prekeys, keys.pq_last_resort.id}
    pq_created = keys.new_pq_prekeys(3)
    assert {k.id for k in pq_created}.isdisjoint(pq_before)
    assert all(keys.pq_prekeys[k.id] == k for k in pq_created)
    # Ids handed out and consumed are not reused by the next batch.
    for key in created:
        del keys.prekeys[key.id]
    again = keys.new_prekeys(5)
    assert {k.id for k in again}.isdisjoint({k.id for k in created})


def test_ids_wrap_within_range_and_skip_held_ones() -> None:
    keys = make_device(prekeys=0, pq=0)
    keys.next_prekey_id = 0xFFFFFF
    first = keys.new_prekeys(1)[0]
    assert first.id == 0xFFFFFF
    keys.next_prekey_id = 0xFFFFFF  # would collide: the held id is skipped
    assert keys.new_prekeys(1)[0].id == 1


def test_one_time_prekeys_are_bounded() -> None:
    keys = make_device(prekeys=0, pq=0)
    with pytest.raises(ValueError):
        keys.new_prekeys(MAX_ONE_TIME_PREKEYS + 1)
    with pytest.raises(ValueError):
        keys.new_pq_prekeys(-1)
    assert keys.prekeys == {}


def test_rotation_keeps_the_previous_signed_prekey() -> None:
    keys = make_device()
    old = keys.signed_prekey
    new = keys.rotate_signed_prekey(NOW_MS + 1000)
    assert keys.signed_prekey == new and keys.previous_signed_prekey == old
    assert new.id != old.id and new.created_ms == NOW_MS + 1000
    assert verify_signature(
        keys.identity.scheme, keys.identity.public_key, new.public, new.signature
    )
    assert keys.find_signed_prekey(old.id) == old
    newest = keys.rotate_signed_prekey(NOW_MS + 2000)
    assert keys.previous_signed_prekey == new
    assert keys.find_signed_prekey(old.id) is None
    assert keys.find_signed_prekey(newest.id) == newest


@pytest.mark.parametrize("scheme", list(KeyScheme))
def test_to_bytes_round_trip(scheme: KeyScheme) -> None:
    keys = make_device(scheme)
    keys.rotate_signed_prekey(NOW_MS + 5)
    restored = DeviceKeys.from_bytes(keys.to_bytes())
    assert restored.identity.public_key == keys.identity.public_key
    assert restored.identity.private_bytes == keys.identity.private_bytes
    assert restored.registration_id == keys.registration_id
    assert restored.signed_prekey == keys.signed_prekey
    assert restored.previous_signed_prekey == keys.previous_signed_prekey
    assert restored.prekeys == keys.prekeys and restored.pq_prekeys == keys.pq_prekeys
    assert restored.pq_last_resort == keys.pq_last_resort
    assert restored.next_prekey_id == keys.next_prekey_id
    assert restored.to_bytes() == keys.to_bytes()


def test_repr_shows_no_private_key() -> None:
    keys = make_device()
    text = repr(keys)
    assert keys.identity.private_bytes.hex() not in text
    assert keys.signed_prekey.private.hex() not in text


def _record(keys: DeviceKeys) -> dict[str, object]:
    record: dict[str, object] = msgpack.unpackb(keys.to_bytes(), raw=False)
    return record


def test_from_bytes_refuses_malformed_state() -> None:
    keys = make_device()
    bad_version = {**_record(keys), "v": 2}
    wrong_private = _record(keys)
    signed = dict(wrong_private["signed_prekey"])  # type: ignore[call-overload]
    signed["private"] = primitives.x25519_generate()[0]
    wrong_private["signed_prekey"] = signed
    bad_scheme = {**_record(keys), "scheme": "rsa"}
    missing = _record(keys)
    del missing["pq_last_resort"]
    for data in (
        b"",
        b"\xc1",
        msgpack.packb([1, 2, 3]),
        msgpack.packb(bad_version),
        msgpack.packb(wrong_private),
        msgpack.packb(bad_scheme),
        msgpack.packb(missing),
        keys.to_bytes() + b"\x00",
    ):
        with pytest.raises(StateError):
            DeviceKeys.from_bytes(data)


def test_pq_last_resort_rotation_keeps_the_previous_one() -> None:
    keys = make_device(pq=2)
    old = keys.pq_last_resort
    new = keys.rotate_pq_last_resort()
    assert keys.pq_last_resort == new and keys.previous_pq_last_resort == old
    assert new.id != old.id and new.id not in keys.pq_prekeys
    assert keys.find_pq_prekey(old.id) == old and keys.find_pq_prekey(new.id) == new
    created = keys.new_pq_prekeys(3)
    assert {k.id for k in created}.isdisjoint({old.id, new.id})
    restored = DeviceKeys.from_bytes(keys.to_bytes())
    assert restored.previous_pq_last_resort == old
