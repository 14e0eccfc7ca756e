"""Spec §6: keys.upload / keys.fetch / keys.count, keys.low, signed pre-key rotation."""

from __future__ import annotations

import asyncio
import secrets
import uuid

import pytest

from protocol.signatures import IdentityKeyPair, KeyScheme, verify_signature

from .support import (
    Device,
    error_of,
    link_device,
    new_user,
    pq_key_bytes,
    pq_prekey,
    prekey,
    signed_prekey,
    wait_until,
)

PROTOS = ["msgpack", "json"]
SCHEMES = [KeyScheme.ED25519, KeyScheme.XEDDSA]
COMBOS = [(p, s) for p in PROTOS for s in SCHEMES]


class Fetchers:
    """A pool of fetching devices, so one target can be fetched more than the per-target limit."""

    def __init__(self, url: str, per_fetcher: int = 5) -> None:
        self.url = url
        self.per_fetcher = per_fetcher
        self.devices: list[Device] = []
        self.uses: dict[int, int] = {}

    async def fetch(self, user: str, device: int | None = None) -> dict:
        free = [i for i in range(len(self.devices)) if self.uses[i] < self.per_fetcher]
        if free:
            i = free[0]
        else:
            self.devices.append(await new_user(self.url))
            i = len(self.devices) - 1
            self.uses[i] = 0
        self.uses[i] += 1
        return await self.devices[i].fetch(user, device)

    async def close(self) -> None:
        for d in self.devices:
            await d.close()


def bundle_of(answer: dict, device: int) -> dict:
    assert answer["t"] == "ok", answer
    matches = [b for b in answer["devices"] if b["device"] == device]
    assert len(matches) == 1, answer
    return matches[0]


# --------------------------------------------------------------------------- upload / fetch


@pytest.mark.parametrize(("proto", "scheme"), COMBOS)
async def test_upload_fetch_count_roundtrip(relay, proto, scheme):
    owner = Device(relay.url, proto=proto, scheme=scheme, registration_id=77)
    await owner.register()
    ident = owner.identity
    spk = signed_prekey(ident, 1)
    ec = [prekey(10, b"\x05" + secrets.token_bytes(32)), prekey(11, secrets.token_bytes(32))]
    pq = [pq_prekey(ident, 20), pq_prekey(ident, 21)]
    last = pq_prekey(ident, 99)
    answer = await owner.upload(signed_prekey=spk, prekeys=ec, pq_prekeys=pq, pq_last_resort=last)
    assert answer["t"] == "ok", answer
    assert answer["prekeys"] == 2 and answer["pq_prekeys"] == 2, "last resort not counted"
    count = await owner.request_ok({"t": "keys.count"})
    assert count["prekeys"] == 2 and count["pq_prekeys"] == 2
    assert isinstance(count["signed_prekey_age_s"], int)
    assert 0 <= count["signed_prekey_age_s"] < 60

    fetcher = await new_user(relay.url, proto=proto)
    answer = await fetcher.fetch(owner.user)
    assert answer["t"] == "ok", answer
    assert answer["user"] == owner.user
    assert answer["rid"] is not None
    bundle = bundle_of(answer, 1)
    assert bundle["registration_id"] == 77
    assert bundle["identity_key"] == ident.public_key
    assert bundle["key_scheme"] == scheme.value
    assert bundle["signed_prekey"] == spk, "handed back byte for byte"
    assert bundle["prekey"] in ec
    assert bundle["pq_prekey"] in pq
    # The recipient can check every signature with the identity key.
    assert verify_signature(scheme, bundle["identity_key"], spk["key"], spk["signature"])
    count = await owner.request_ok({"t": "keys.count"})
    assert count["prekeys"] == 1 and count["pq_prekeys"] == 1
    # Counts are reported at auth too.
    auth = await owner.reconnect()
    assert auth["prekeys"] == 1 and auth["pq_prekeys"] == 1
    assert auth["rotate_signed_prekey"] is False
    await owner.close()
    await fetcher.close()


async def test_registration_id_zero_when_registered_without(relay):
    owner = await new_user(relay.url)
    await owner.upload(signed_prekey=signed_prekey(owner.identity, 1))
    fetcher = await new_user(relay.url)
    bundle = bundle_of(await fetcher.fetch(owner.user), 1)
    assert bundle["registration_id"] == 0
    await owner.close()
    await fetcher.close()


async def test_upload_answer_counts_and_empty_upload(relay):
    owner = await new_user(relay.url)
    answer = await owner.upload()
    assert answer["t"] == "ok" and answer["prekeys"] == 0 and answer["pq_prekeys"] == 0
    answer = await owner.upload(prekeys=[prekey(i) for i in range(5)])
    assert (answer["prekeys"], answer["pq_prekeys"]) == (5, 0)
    answer = await owner.upload(pq_prekeys=[pq_prekey(owner.identity, i) for i in range(3)])
    assert (answer["prekeys"], answer["pq_prekeys"]) == (5, 3)
    await owner.close()


async def test_signed_prekey_age_absent_without_signed_prekey(relay):
    owner = await new_user(relay.url)
    await owner.upload(prekeys=[prekey(1)])
    count = await owner.request_ok({"t": "keys.count"})
    assert "signed_prekey_age_s" not in count
    assert count["prekeys"] == 1 and count["pq_prekeys"] == 0
    await owner.close()


async def test_one_time_keys_handed_out_once_then_last_resort(relay):
    owner = await new_user(relay.url)
    ident = owner.identity
    ec = [prekey(i) for i in range(1, 4)]
    pq = [pq_prekey(ident, i) for i in range(1, 3)]
    last = pq_prekey(ident, 500)
    ok = await owner.upload(
        signed_prekey=signed_prekey(ident, 1), prekeys=ec, pq_prekeys=pq, pq_last_resort=last
    )
    assert ok["t"] == "ok", ok
    pool = Fetchers(relay.url, per_fetcher=2)
    bundles = [bundle_of(await pool.fetch(owner.user), 1) for _ in range(5)]
    handed_ec = [b["prekey"] for b in bundles if "prekey" in b]
    assert sorted(k["id"] for k in handed_ec) == [1, 2, 3]
    assert all(k in ec for k in handed_ec)
    assert all("prekey" not in b for b in bundles[3:]), "absent, not null"
    handed_pq = [b["pq_prekey"] for b in bundles]
    assert sorted(k["id"] for k in handed_pq[:2]) == [1, 2]
    assert handed_pq[2:] == [last, last, last], "the last-resort key when none is left"
    count = await owner.request_ok({"t": "keys.count"})
    assert count["prekeys"] == 0 and count["pq_prekeys"] == 0
    await owner.close()
    await pool.close()


async def test_no_pq_at_all_means_no_pq_prekey(relay):
    owner = await new_user(relay.url)
    await owner.upload(signed_prekey=signed_prekey(owner.identity, 1))
    fetcher = await new_user(relay.url)
    bundle = bundle_of(await fetcher.fetch(owner.user), 1)
    assert "prekey" not in bundle and "pq_prekey" not in bundle
    for value in bundle.values():
        assert value is not None
    await owner.close()
    await fetcher.close()


async def test_concurrent_fetches_hand_each_key_once(relay):
    owner = await new_user(relay.url)
    ident = owner.identity
    await owner.upload(
        signed_prekey=signed_prekey(ident, 1),
        prekeys=[prekey(i) for i in range(10)],
        pq_prekeys=[pq_prekey(ident, i) for i in range(10)],
    )
    fetchers = await asyncio.gather(*(new_user(relay.url) for _ in range(16)))
    answers = await asyncio.gather(*(f.fetch(owner.user) for f in fetchers for _ in range(2)))
    bundles = [bundle_of(a, 1) for a in answers]
    ec_ids = [b["prekey"]["id"] for b in bundles if "prekey" in b]
    pq_ids = [b["pq_prekey"]["id"] for b in bundles if "pq_prekey" in b]
    assert sorted(ec_ids) == list(range(10)), ec_ids
    assert sorted(pq_ids) == list(range(10)), pq_ids
    await asyncio.gather(*(f.close() for f in fetchers))
    await owner.close()


async def test_fetch_all_devices_and_one(relay):
    first = await new_user(relay.url, scheme=KeyScheme.XEDDSA)
    second = await link_device(first)
    third = Device(relay.url, scheme=KeyScheme.XEDDSA, registration_id=3)
    await third.register(link_by=first)
    for d in (first, third):
        await d.upload(signed_prekey=signed_prekey(d.identity, d.device), prekeys=[prekey(1)])
    fetcher = await new_user(relay.url)
    answer = await fetcher.fetch(first.user)
    assert answer["t"] == "ok", answer
    assert sorted(b["device"] for b in answer["devices"]) == [1, 3], "no signed pre-key: left out"
    b3 = bundle_of(answer, 3)
    assert b3["identity_key"] == third.identity.public_key and b3["registration_id"] == 3
    one = await fetcher.fetch(first.user, 3)
    assert one["t"] == "ok" and [b["device"] for b in one["devices"]] == [3]
    assert "prekey" not in one["devices"][0], "its only one-time key went to the first fetch"
    none = await fetcher.fetch(first.user, 2)
    assert none["t"] == "ok" and none["user"] == first.user and none["devices"] == []
    for d in (first, second, third, fetcher):
        await d.close()


async def test_fetch_unknown_device_and_user(relay):
    owner = await new_user(relay.url)
    await owner.upload(signed_prekey=signed_prekey(owner.identity, 1))
    fetcher = await new_user(relay.url)
    error_of(await fetcher.fetch(owner.user, 5), "unknown_device")
    error_of(await fetcher.fetch(str(uuid.uuid4())), "unknown_user")
    error_of(await fetcher.fetch(str(uuid.uuid4()), 1), "unknown_user")
    await owner.close()
    await fetcher.close()


async def test_fetch_removed_device(relay):
    first = await new_user(relay.url)
    second = await link_device(first)
    for d in (first, second):
        await d.upload(signed_prekey=signed_prekey(d.identity, 1), prekeys=[prekey(1)])
    assert (await first.request({"t": "devices.remove", "device": 2}))["t"] == "ok"
    assert await second.closed_code() == 4002
    fetcher = await new_user(relay.url)
    error_of(await fetcher.fetch(first.user, 2), "unknown_device")
    answer = await fetcher.fetch(first.user)
    assert [b["device"] for b in answer["devices"]] == [1]
    await first.close()
    await fetcher.close()


# --------------------------------------------------------------------------- upload rules


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("field", ["signed_prekey", "pq_prekeys", "pq_last_resort"])
async def test_bad_signature(relay, scheme, field):
    owner = await new_user(relay.url, scheme=scheme)
    ident = owner.identity
    other = IdentityKeyPair.generate(scheme)
    if field == "signed_prekey":
        bad = signed_prekey(other, 1)
        fields = {"signed_prekey": bad}
    elif field == "pq_prekeys":
        fields = {"pq_prekeys": [pq_prekey(ident, 1), pq_prekey(other, 2)]}
    else:
        fields = {"pq_last_resort": pq_prekey(other, 1)}
    # All or nothing: the good keys in the same upload are not stored either.
    answer = await owner.upload(prekeys=[prekey(1), prekey(2)], **fields)
    error_of(answer, "bad_signature")
    count = await owner.request_ok({"t": "keys.count"})
    assert count["prekeys"] == 0 and count["pq_prekeys"] == 0
    assert "signed_prekey_age_s" not in count
    await owner.close()


async def test_signature_over_other_bytes_is_bad(relay):
    owner = await new_user(relay.url)
    key = b"\x05" + secrets.token_bytes(32)
    spk = {"id": 1, "key": key, "signature": owner.identity.sign(key[1:])}
    error_of(await owner.upload(signed_prekey=spk), "bad_signature")
    zero = {"id": 1, "key": key, "signature": bytes(64)}
    error_of(await owner.upload(signed_prekey=zero), "bad_signature")
    await owner.close()


async def test_signed_prekey_rejected_keeps_the_old_one(relay):
    owner = await new_user(relay.url)
    good = signed_prekey(owner.identity, 1)
    assert (await owner.upload(signed_prekey=good))["t"] == "ok"
    bad = signed_prekey(IdentityKeyPair.generate(KeyScheme.ED25519), 2)
    error_of(await owner.upload(signed_prekey=bad), "bad_signature")
    fetcher = await new_user(relay.url)
    assert bundle_of(await fetcher.fetch(owner.user), 1)["signed_prekey"] == good
    await owner.close()
    await fetcher.close()


async def test_prekey_id_conflict_and_noop(relay):
    owner = await new_user(relay.url)
    k5 = prekey(5)
    assert (await owner.upload(prekeys=[k5]))["prekeys"] == 1
    # Same id, same key: a no-op.
    answer = await owner.upload(prekeys=[k5])
    assert answer["t"] == "ok" and answer["prekeys"] == 1, answer
    # Same id, other key: conflict, and the whole upload is refused.
    answer = await owner.upload(prekeys=[prekey(6), prekey(5)])
    error_of(answer, "conflict")
    count = await owner.request_ok({"t": "keys.count"})
    assert count["prekeys"] == 1
    await owner.close()


async def test_pq_prekey_id_conflict_and_noop(relay):
    owner = await new_user(relay.url)
    k = pq_prekey(owner.identity, 5)
    assert (await owner.upload(pq_prekeys=[k]))["pq_prekeys"] == 1
    answer = await owner.upload(pq_prekeys=[k])
    assert answer["t"] == "ok" and answer["pq_prekeys"] == 1, answer
    answer = await owner.upload(
        prekeys=[prekey(1)],
        pq_prekeys=[pq_prekey(owner.identity, 6), pq_prekey(owner.identity, 5)],
    )
    error_of(answer, "conflict")
    count = await owner.request_ok({"t": "keys.count"})
    assert count["pq_prekeys"] == 1 and count["prekeys"] == 0
    await owner.close()


async def test_ec_and_pq_ids_are_separate(relay):
    owner = await new_user(relay.url)
    answer = await owner.upload(prekeys=[prekey(1)], pq_prekeys=[pq_prekey(owner.identity, 1)])
    assert answer["t"] == "ok" and (answer["prekeys"], answer["pq_prekeys"]) == (1, 1), answer
    await owner.close()


async def test_handed_out_id_may_be_uploaded_again(relay):
    owner = await new_user(relay.url)
    await owner.upload(signed_prekey=signed_prekey(owner.identity, 1), prekeys=[prekey(5)])
    fetcher = await new_user(relay.url)
    assert bundle_of(await fetcher.fetch(owner.user), 1)["prekey"]["id"] == 5
    fresh = prekey(5)
    answer = await owner.upload(prekeys=[fresh])
    assert answer["t"] == "ok" and answer["prekeys"] == 1, answer
    assert bundle_of(await fetcher.fetch(owner.user), 1)["prekey"] == fresh
    await owner.close()
    await fetcher.close()


async def test_too_many_keys_in_one_list(relay):
    owner = await new_user(relay.url)
    error_of(await owner.upload(prekeys=[prekey(i) for i in range(101)]), "too_large")
    error_of(
        await owner.upload(pq_prekeys=[pq_prekey(owner.identity, i) for i in range(101)]),
        "too_large",
    )
    count = await owner.request_ok({"t": "keys.count"})
    assert count["prekeys"] == 0 and count["pq_prekeys"] == 0
    answer = await owner.upload(prekeys=[prekey(i) for i in range(100)])
    assert answer["t"] == "ok" and answer["prekeys"] == 100
    await owner.close()


async def test_stored_prekey_cap(relay):
    owner = await new_user(relay.url)
    for batch in range(9):
        answer = await owner.upload(prekeys=[prekey(batch * 100 + i) for i in range(100)])
        assert answer["t"] == "ok", answer
    assert answer["prekeys"] == 900
    answer = await owner.upload(prekeys=[prekey(900 + i) for i in range(50)])
    assert answer["prekeys"] == 950
    # 950 + 100 > 1000: refused as a whole.
    error_of(await owner.upload(prekeys=[prekey(2000 + i) for i in range(100)]), "too_large")
    assert (await owner.request_ok({"t": "keys.count"}))["prekeys"] == 950
    answer = await owner.upload(prekeys=[prekey(3000 + i) for i in range(50)])
    assert answer["t"] == "ok" and answer["prekeys"] == 1000
    error_of(await owner.upload(prekeys=[prekey(4000)]), "too_large")
    # Re-uploading an existing key is a no-op, not a new key.
    assert (await owner.request_ok({"t": "keys.count"}))["prekeys"] == 1000
    await owner.close()


async def test_stored_pq_prekey_cap(relay):
    owner = await new_user(relay.url)
    ident = owner.identity
    for batch in range(10):
        answer = await owner.upload(
            pq_prekeys=[pq_prekey(ident, batch * 100 + i) for i in range(100)]
        )
        assert answer["t"] == "ok", answer
    assert answer["pq_prekeys"] == 1000
    error_of(await owner.upload(pq_prekeys=[pq_prekey(ident, 5000)]), "too_large")
    # The last-resort key is not one of them.
    answer = await owner.upload(pq_last_resort=pq_prekey(ident, 6000))
    assert answer["t"] == "ok" and answer["pq_prekeys"] == 1000, answer
    await owner.close()


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"prekeys": [{"id": 1, "key": secrets.token_bytes(31)}]}, id="ec-31"),
        pytest.param({"prekeys": [{"id": 1, "key": b"\x07" + bytes(32)}]}, id="ec-33-not-05"),
        pytest.param({"prekeys": [{"id": 1, "key": bytes(34)}]}, id="ec-34"),
        pytest.param({"prekeys": [{"id": -1, "key": bytes(32)}]}, id="id-negative"),
        pytest.param({"prekeys": [{"id": 2**32, "key": bytes(32)}]}, id="id-over-u32"),
        pytest.param({"prekeys": [{"key": bytes(32)}]}, id="id-missing"),
        pytest.param({"prekeys": {"id": 1, "key": bytes(32)}}, id="not-a-list"),
        pytest.param({"signed_prekey": {"id": 1, "key": bytes(32)}}, id="spk-no-signature"),
        pytest.param({"signed_prekey": [1, 2]}, id="spk-not-a-map"),
        pytest.param({"pq_prekeys": [{"id": 1, "key": b"\x08", "signature": 5}]}, id="pq-sig-int"),
    ],
)
async def test_malformed_upload_is_bad_frame(relay, bad):
    owner = await new_user(relay.url)
    error_of(await owner.upload(**bad), "bad_frame")
    await owner.close()


async def test_pq_key_size_limit(relay):
    owner = await new_user(relay.url)
    too_big = pq_prekey(owner.identity, 1, b"\x08" + secrets.token_bytes(2048))
    error_of(await owner.upload(pq_prekeys=[too_big]), "bad_frame")
    fits = pq_prekey(owner.identity, 2, b"\x08" + secrets.token_bytes(2047))
    assert (await owner.upload(pq_prekeys=[fits]))["pq_prekeys"] == 1
    await owner.close()


async def test_key_ids_full_u32_range(relay):
    owner = await new_user(relay.url)
    ident = owner.identity
    spk = signed_prekey(ident, 2**32 - 1)
    keys = [prekey(0), prekey(2**32 - 1)]
    assert (await owner.upload(signed_prekey=spk, prekeys=keys))["prekeys"] == 2
    fetcher = await new_user(relay.url)
    bundle = bundle_of(await fetcher.fetch(owner.user), 1)
    assert bundle["signed_prekey"] == spk
    await owner.close()
    await fetcher.close()


async def test_rotation_replaces_signed_prekey_and_last_resort(relay):
    owner = await new_user(relay.url)
    ident = owner.identity
    await owner.upload(signed_prekey=signed_prekey(ident, 1), pq_last_resort=pq_prekey(ident, 1))
    new_spk, new_last = signed_prekey(ident, 2), pq_prekey(ident, 2, pq_key_bytes())
    answer = await owner.upload(signed_prekey=new_spk, pq_last_resort=new_last)
    assert answer["t"] == "ok" and answer["pq_prekeys"] == 0
    fetcher = await new_user(relay.url)
    bundle = bundle_of(await fetcher.fetch(owner.user), 1)
    assert bundle["signed_prekey"] == new_spk
    assert bundle["pq_prekey"] == new_last
    await owner.close()
    await fetcher.close()


# --------------------------------------------------------------------------- keys.low


@pytest.mark.parametrize("proto", PROTOS)
async def test_keys_low_pushed_once_when_falling_below(relay, proto):
    owner = await new_user(relay.url, proto=proto)
    await owner.upload(
        signed_prekey=signed_prekey(owner.identity, 1), prekeys=[prekey(i) for i in range(11)]
    )
    pool = Fetchers(relay.url)
    await pool.fetch(owner.user)  # 11 -> 10: not below the mark
    await owner.sync()
    await owner.no_push("keys.low", timeout=0.3)
    await pool.fetch(owner.user)  # 10 -> 9
    low = await owner.next_push("keys.low")
    assert low == {"t": "keys.low", "prekeys": 9, "pq_prekeys": 0}
    await pool.fetch(owner.user)  # 9 -> 8: no second push
    await pool.fetch(owner.user)  # 8 -> 7
    await owner.no_push("keys.low", timeout=0.5)
    count = await owner.request_ok({"t": "keys.count"})
    assert count["prekeys"] == 7
    await owner.close()
    await pool.close()


async def test_keys_low_for_pq_prekeys(relay):
    owner = await new_user(relay.url)
    ident = owner.identity
    await owner.upload(
        signed_prekey=signed_prekey(ident, 1),
        pq_prekeys=[pq_prekey(ident, i) for i in range(10)],
        pq_last_resort=pq_prekey(ident, 100),
    )
    pool = Fetchers(relay.url)
    await pool.fetch(owner.user)  # pq 10 -> 9
    low = await owner.next_push("keys.low")
    assert low["pq_prekeys"] == 9 and low["prekeys"] == 0
    await owner.close()
    await pool.close()


async def test_keys_low_again_after_refill(relay):
    owner = await new_user(relay.url)
    await owner.upload(
        signed_prekey=signed_prekey(owner.identity, 1), prekeys=[prekey(i) for i in range(10)]
    )
    pool = Fetchers(relay.url)
    await pool.fetch(owner.user)
    assert (await owner.next_push("keys.low"))["prekeys"] == 9
    assert (await owner.upload(prekeys=[prekey(100 + i) for i in range(3)]))["prekeys"] == 12
    for _ in range(2):
        await pool.fetch(owner.user)  # 12 -> 10
    await owner.no_push("keys.low", timeout=0.3)
    await pool.fetch(owner.user)  # 10 -> 9 again
    assert (await owner.next_push("keys.low"))["prekeys"] == 9
    await owner.close()
    await pool.close()


async def test_keys_low_not_pushed_for_kind_never_uploaded(relay):
    owner = await new_user(relay.url)
    await owner.upload(
        signed_prekey=signed_prekey(owner.identity, 1), prekeys=[prekey(i) for i in range(20)]
    )
    pool = Fetchers(relay.url)
    await pool.fetch(owner.user)  # 19 EC left, PQ never uploaded
    await owner.sync()
    await owner.no_push("keys.low", timeout=0.5)
    await owner.close()
    await pool.close()


async def test_keys_low_water_configurable(relay_factory):
    r = relay_factory(prekey_low_water=3)
    owner = await new_user(r.url)
    await owner.upload(
        signed_prekey=signed_prekey(owner.identity, 1), prekeys=[prekey(i) for i in range(4)]
    )
    fetcher = await new_user(r.url)
    await fetcher.fetch(owner.user)  # 4 -> 3
    await owner.no_push("keys.low", timeout=0.3)
    await fetcher.fetch(owner.user)  # 3 -> 2
    assert (await owner.next_push("keys.low"))["prekeys"] == 2
    await owner.close()
    await fetcher.close()


# --------------------------------------------------------------------------- rotation flag


async def test_rotate_signed_prekey_after_interval(relay_factory):
    r = relay_factory(signed_prekey_rotation=1, rate_requests=100000, rate_requests_burst=100000)
    owner = await new_user(r.url)
    assert owner.auth_answer["rotate_signed_prekey"] is True, "missing"
    await owner.upload(signed_prekey=signed_prekey(owner.identity, 1))
    auth = await owner.reconnect()
    assert auth["rotate_signed_prekey"] is False, "fresh"

    async def due() -> bool:
        return (await owner.reconnect())["rotate_signed_prekey"] is True

    await wait_until(due, timeout=15, what="rotate_signed_prekey to become true")
    count = await owner.request_ok({"t": "keys.count"})
    assert count["signed_prekey_age_s"] >= 1
    # Rotating clears it.
    await owner.upload(signed_prekey=signed_prekey(owner.identity, 2))
    assert (await owner.reconnect())["rotate_signed_prekey"] is False
    await owner.close()
