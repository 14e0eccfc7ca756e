"""Spec §2-§3: challenge, register, link, auth, every handshake error, replacement."""

from __future__ import annotations

import asyncio
import secrets
import uuid

import pytest

from protocol.payloads import auth_payload, link_payload, register_payload
from protocol.signatures import IdentityKeyPair, KeyScheme

from .support import (
    Device,
    error_of,
    is_canonical_uuid,
    link_device,
    new_user,
    now_ms,
)

PROTOS = ["msgpack", "json"]
SCHEMES = [KeyScheme.ED25519, KeyScheme.XEDDSA]
COMBOS = [(p, s) for p in PROTOS for s in SCHEMES]


async def handshake_error(dev: Device, frame: dict, code: str) -> dict:
    """Send a handshake frame, expect error `code`, then the close with 1008."""
    answer = await dev.request(frame)
    error_of(answer, code)
    if "rid" in frame and isinstance(frame["rid"], int):
        assert answer.get("rid") == frame["rid"], answer
    assert await dev.closed_code() == 1008
    return answer


def twin_key(identity: IdentityKeyPair) -> IdentityKeyPair:
    """The same X25519 key pair, in the other scheme."""
    other = KeyScheme.XEDDSA if identity.scheme == KeyScheme.ED25519 else KeyScheme.ED25519
    if other == KeyScheme.XEDDSA:
        twin = IdentityKeyPair.from_private_bytes(other, identity.x25519_private())
    else:
        # An Ed25519 seed cannot be derived from an X25519 scalar; go the other way.
        raise ValueError("only ed25519 -> xeddsa twins can be built")
    assert twin.x25519_public() == identity.x25519_public()
    return twin


# --------------------------------------------------------------------------- challenge


@pytest.mark.parametrize("proto", PROTOS)
async def test_challenge(relay, proto):
    a, b = Device(relay.url, proto=proto), Device(relay.url, proto=proto)
    ca = await a.connect()
    cb = await b.connect()
    for c in (ca, cb):
        assert c["t"] == "challenge"
        assert isinstance(c["nonce"], bytes) and len(c["nonce"]) == 32
        assert isinstance(c["server_time"], int)
        assert abs(c["server_time"] - now_ms()) < 60_000
        assert "rid" not in c
    assert ca["nonce"] != cb["nonce"], "each connection gets a fresh challenge"
    await a.close()
    await b.close()


# --------------------------------------------------------------------------- register / auth


@pytest.mark.parametrize(("proto", "scheme"), COMBOS)
async def test_register_new_user_then_auth(relay, proto, scheme):
    dev = Device(relay.url, proto=proto, scheme=scheme)
    await dev.connect()
    frame = dev.register_frame()
    answer = await dev.request(frame)
    assert answer["t"] == "ok", answer
    assert answer["rid"] == frame["rid"]
    assert is_canonical_uuid(answer["user"]), answer["user"]
    assert answer["device"] == 1
    assert answer["queued"] == 0
    assert answer["prekeys"] == 0
    assert answer["pq_prekeys"] == 0
    assert answer["rotate_signed_prekey"] is True, "no signed pre-key yet"
    dev.user, dev.device = answer["user"], answer["device"]
    # The connection is authenticated now.
    assert (await dev.sync())["t"] == "ok"
    assert (await dev.next_push("queue_empty"))["t"] == "queue_empty"
    await dev.close()

    # A later connection authenticates with `auth`.
    await dev.connect()
    frame = dev.auth_frame()
    answer = await dev.request(frame)
    assert answer["t"] == "ok", answer
    assert answer["rid"] == frame["rid"]
    assert answer["user"] == dev.user and answer["device"] == 1
    assert answer["queued"] == 0
    assert answer["rotate_signed_prekey"] is True
    await dev.next_push("queue_empty")
    await dev.close()


async def test_each_registration_is_a_new_user(relay):
    users = set()
    for _ in range(5):
        d = await new_user(relay.url)
        users.add(d.user)
        await d.close()
    assert len(users) == 5


@pytest.mark.parametrize(("proto", "scheme"), COMBOS)
async def test_link_second_device(relay, proto, scheme):
    other = KeyScheme.XEDDSA if scheme == KeyScheme.ED25519 else KeyScheme.ED25519
    first = await new_user(relay.url, proto=proto, scheme=other)
    second = Device(relay.url, proto=proto, scheme=scheme)
    await second.connect()
    frame = second.register_frame(link_by=first)
    assert frame["link"]["device"] == 1
    answer = await second.request(frame)
    assert answer["t"] == "ok", answer
    assert answer["user"] == first.user
    assert answer["device"] == 2
    assert answer["queued"] == 0
    assert answer["rotate_signed_prekey"] is True
    second.user, second.device = answer["user"], answer["device"]
    listed = await first.request_ok({"t": "devices.list"})
    by_number = {d["device"]: d for d in listed["devices"]}
    assert sorted(by_number) == [1, 2]
    assert by_number[1]["key_scheme"] == other.value
    assert by_number[2]["key_scheme"] == scheme.value
    await second.close()
    assert (await second.reconnect())["device"] == 2
    # A third device, linked by device 2.
    third = await link_device(second, proto=proto, scheme=scheme)
    assert third.device == 3 and third.user == first.user
    for d in (first, second, third):
        await d.close()


async def test_link_while_linking_device_offline(relay):
    first = await new_user(relay.url)
    await first.close()
    second = await link_device(first)
    assert second.device == 2
    await second.close()


async def test_registration_id_optional(relay):
    with_id = Device(relay.url, registration_id=4242)
    await with_id.register()
    assert with_id.device == 1
    await with_id.close()


# --------------------------------------------------------------------------- handshake errors


@pytest.mark.parametrize(("proto", "scheme"), COMBOS)
async def test_register_bad_signature(relay, proto, scheme):
    dev = Device(relay.url, proto=proto, scheme=scheme)
    await dev.connect()
    frame = dev.register_frame()
    frame["signature"] = bytes(64)
    await handshake_error(dev, frame, "auth_failed")


@pytest.mark.parametrize("bits", [0x20, 0x40, 0x60], ids=["S+2^253", "S+2^254", "S+both"])
async def test_xeddsa_signature_with_large_s_rejected(relay, bits):
    """libsignal refuses an XEdDSA signature whose S is 2^253 or more."""
    dev = Device(relay.url, scheme=KeyScheme.XEDDSA)
    await dev.connect()
    frame = dev.register_frame()
    sig = bytearray(frame["signature"])
    sig[63] |= bits
    frame["signature"] = bytes(sig)
    await handshake_error(dev, frame, "auth_failed")


async def test_xeddsa_signature_with_flipped_sign_bit_rejected(relay):
    dev = await new_user(relay.url, scheme=KeyScheme.XEDDSA)
    await dev.close()
    await dev.connect()
    frame = dev.auth_frame()
    sig = bytearray(frame["signature"])
    sig[63] ^= 0x80
    frame["signature"] = bytes(sig)
    await handshake_error(dev, frame, "auth_failed")


async def test_register_signature_over_another_challenge(relay):
    dev = Device(relay.url)
    await dev.connect()
    frame = dev.register_frame()
    frame["signature"] = dev.identity.sign(
        register_payload(secrets.token_bytes(32), dev.identity.public_key)
    )
    await handshake_error(dev, frame, "auth_failed")


async def test_register_signed_by_another_key(relay):
    dev = Device(relay.url)
    await dev.connect()
    frame = dev.register_frame()
    other = IdentityKeyPair.generate(KeyScheme.ED25519)
    frame["signature"] = other.sign(
        register_payload(dev.challenge["nonce"], dev.identity.public_key)
    )
    await handshake_error(dev, frame, "auth_failed")


async def test_register_signature_for_another_purpose(relay):
    """A link or auth signature over the same bytes never passes as a register signature."""
    dev = Device(relay.url)
    await dev.connect()
    frame = dev.register_frame()
    frame["signature"] = dev.identity.sign(dev.challenge["nonce"] + dev.identity.public_key)
    await handshake_error(dev, frame, "auth_failed")


@pytest.mark.parametrize(("proto", "scheme"), COMBOS)
async def test_auth_bad_signature(relay, proto, scheme):
    dev = await new_user(relay.url, proto=proto, scheme=scheme)
    await dev.close()
    await dev.connect()
    frame = dev.auth_frame()
    sig = bytearray(frame["signature"])
    sig[5] ^= 0x01
    frame["signature"] = bytes(sig)
    await handshake_error(dev, frame, "auth_failed")


async def test_auth_unknown_user(relay):
    dev = Device(relay.url, user=str(uuid.uuid4()), device=1)
    await dev.connect()
    await handshake_error(dev, dev.auth_frame(), "auth_failed")


async def test_auth_unknown_device(relay):
    dev = await new_user(relay.url)
    await dev.close()
    ghost = Device(relay.url, identity=dev.identity, user=dev.user, device=2)
    await ghost.connect()
    await handshake_error(ghost, ghost.auth_frame(), "auth_failed")


async def test_auth_as_another_device_of_the_user(relay):
    first = await new_user(relay.url)
    second = await link_device(first)
    await second.close()
    # Device 1's key claims to be device 2.
    impostor = Device(relay.url, identity=first.identity, user=first.user, device=2)
    await impostor.connect()
    await handshake_error(impostor, impostor.auth_frame(), "auth_failed")
    await first.close()


async def test_auth_signature_is_bound_to_the_challenge(relay):
    dev = await new_user(relay.url)
    await dev.close()
    old = await dev.connect()
    stale_sig = dev.identity.sign(auth_payload(old["nonce"], dev.user, dev.device))
    await dev.close()
    await dev.connect()
    frame = dev.auth_frame()
    frame["signature"] = stale_sig
    await handshake_error(dev, frame, "auth_failed")


async def test_auth_signature_for_another_device_number(relay):
    dev = await new_user(relay.url)
    await dev.close()
    await dev.connect()
    frame = dev.auth_frame()
    frame["signature"] = dev.identity.sign(auth_payload(dev.challenge["nonce"], dev.user, 2))
    await handshake_error(dev, frame, "auth_failed")


async def test_link_to_unknown_user(relay):
    first = await new_user(relay.url)
    dev = Device(relay.url)
    await dev.connect()
    stranger = str(uuid.uuid4())
    frame = dev.register_frame(link_by=first, user=stranger)
    await handshake_error(dev, frame, "auth_failed")
    await first.close()


async def test_link_with_bad_link_signature(relay):
    first = await new_user(relay.url)
    dev = Device(relay.url)
    await dev.connect()
    frame = dev.register_frame(link_by=first)
    frame["link"]["signature"] = bytes(64)
    await handshake_error(dev, frame, "auth_failed")
    await first.close()


async def test_link_signed_by_the_new_device_itself(relay):
    first = await new_user(relay.url)
    dev = Device(relay.url)
    await dev.connect()
    frame = dev.register_frame(link_by=first)
    frame["link"]["signature"] = dev.identity.sign(
        link_payload(first.user, dev.identity.public_key)
    )
    await handshake_error(dev, frame, "auth_failed")
    await first.close()


async def test_link_signature_for_another_key(relay):
    first = await new_user(relay.url)
    dev = Device(relay.url)
    await dev.connect()
    frame = dev.register_frame(link_by=first)
    other_key = IdentityKeyPair.generate(KeyScheme.ED25519).public_key
    frame["link"]["signature"] = first.identity.sign(link_payload(first.user, other_key))
    await handshake_error(dev, frame, "auth_failed")
    await first.close()


async def test_link_naming_a_device_that_never_existed(relay):
    first = await new_user(relay.url)
    dev = Device(relay.url)
    await dev.connect()
    frame = dev.register_frame(link_by=first)
    frame["link"]["device"] = 9
    await handshake_error(dev, frame, "forbidden")
    await first.close()


async def test_link_naming_a_removed_device(relay):
    first = await new_user(relay.url)
    second = await link_device(first)
    assert (await first.request({"t": "devices.remove", "device": 2}))["t"] == "ok"
    assert await second.closed_code() == 4002
    dev = Device(relay.url)
    await dev.connect()
    await handshake_error(dev, dev.register_frame(link_by=second), "forbidden")
    await first.close()


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_identity_key_in_use_is_conflict(relay, scheme):
    first = await new_user(relay.url, scheme=scheme)
    again = Device(relay.url, identity=first.identity, scheme=scheme)
    await again.connect()
    await handshake_error(again, again.register_frame(), "conflict")
    # Nor can it be linked to the same (or any) user as another device.
    again = Device(relay.url, identity=first.identity, scheme=scheme)
    await again.connect()
    await handshake_error(again, again.register_frame(link_by=first), "conflict")
    await first.close()


async def test_identity_key_conflict_across_schemes(relay):
    """Keys compare in X25519 form: one key pair is one identity in either scheme."""
    first = await new_user(relay.url, scheme=KeyScheme.ED25519)
    twin = twin_key(first.identity)
    dev = Device(relay.url, identity=twin, scheme=KeyScheme.XEDDSA)
    await dev.connect()
    await handshake_error(dev, dev.register_frame(), "conflict")
    await first.close()


async def test_identity_key_conflict_across_schemes_reverse(relay):
    ed = IdentityKeyPair.generate(KeyScheme.ED25519)
    first = await new_user(relay.url, identity=twin_key(ed), scheme=KeyScheme.XEDDSA)
    dev = Device(relay.url, identity=ed, scheme=KeyScheme.ED25519)
    await dev.connect()
    await handshake_error(dev, dev.register_frame(), "conflict")
    await first.close()


async def test_signature_checked_before_key_conflict(relay):
    first = await new_user(relay.url)
    again = Device(relay.url, identity=first.identity)
    await again.connect()
    frame = again.register_frame()
    frame["signature"] = bytes(64)
    await handshake_error(again, frame, "auth_failed")
    await first.close()


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda f: f.pop("signature"), id="missing-signature"),
        pytest.param(lambda f: f.pop("identity_key"), id="missing-identity-key"),
        pytest.param(lambda f: f.pop("key_scheme"), id="missing-scheme"),
        pytest.param(lambda f: f.update(key_scheme="rsa"), id="unknown-scheme"),
        pytest.param(lambda f: f.update(identity_key=b"\x05" + bytes(32)), id="ed25519-33-bytes"),
        pytest.param(lambda f: f.update(signature=bytes(63)), id="short-signature"),
        pytest.param(lambda f: f.update(registration_id=-1), id="negative-registration-id"),
        pytest.param(lambda f: f.update(registration_id=2**32), id="registration-id-over-u32"),
        pytest.param(lambda f: f.update(token=5), id="token-not-a-string"),
        pytest.param(lambda f: f.update(link={"device": 1}), id="link-without-signature"),
    ],
)
async def test_malformed_register_is_bad_frame(relay, mutate):
    dev = Device(relay.url, scheme=KeyScheme.ED25519)
    await dev.connect()
    frame = dev.register_frame()
    mutate(frame)
    await handshake_error(dev, frame, "bad_frame")


async def test_xeddsa_key_must_be_33_bytes_with_0x05(relay):
    dev = Device(relay.url, scheme=KeyScheme.XEDDSA)
    await dev.connect()
    frame = dev.register_frame()
    frame["identity_key"] = frame["identity_key"][1:]
    await handshake_error(dev, frame, "bad_frame")


async def test_malformed_auth_is_bad_frame(relay):
    dev = await new_user(relay.url)
    await dev.close()
    await dev.connect()
    frame = dev.auth_frame()
    frame["device"] = "1"
    await handshake_error(dev, frame, "bad_frame")


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize(
    "frame",
    [
        {"t": "keys.count", "rid": 77},
        {"t": "devices.list", "rid": 78},
        {"t": "keys.fetch", "rid": 79, "user": "00000000-0000-4000-8000-000000000000"},
    ],
)
async def test_request_before_handshake_is_unauthenticated(relay, proto, frame):
    dev = Device(relay.url, proto=proto)
    await dev.connect()
    await handshake_error(dev, frame, "unauthenticated")


async def test_send_before_handshake_is_unauthenticated(relay):
    target = await new_user(relay.url)
    dev = Device(relay.url)
    await dev.connect()
    await handshake_error(dev, dev.send_frame(target), "unauthenticated")
    await target.close()


@pytest.mark.parametrize("proto", PROTOS)
async def test_ack_before_handshake_is_unauthenticated_without_rid(relay, proto):
    dev = Device(relay.url, proto=proto)
    await dev.connect()
    await dev.ack(b"\x01" * 16)
    error = await dev.next_push("error")
    assert error["code"] == "unauthenticated"
    assert "rid" not in error
    assert await dev.closed_code() == 1008


@pytest.mark.parametrize("proto", PROTOS)
async def test_unknown_type_before_handshake_closes(relay, proto):
    dev = Device(relay.url, proto=proto)
    await dev.connect()
    await dev.send_raw({"t": "hello", "rid": 5})
    error = await dev.next_push("error")
    assert error["code"] == "unknown_type"
    assert await dev.closed_code() == 1008


@pytest.mark.parametrize("proto", PROTOS)
async def test_garbage_before_handshake_closes(relay, proto):
    dev = Device(relay.url, proto=proto)
    await dev.connect()
    await dev.send_raw(b"\xc1\x00\xff" if proto == "msgpack" else "]]]")
    error = await dev.next_push("error")
    assert error["code"] == "bad_frame"
    assert "rid" not in error
    assert await dev.closed_code() == 1008


async def test_register_after_handshake_is_forbidden(relay):
    dev = await new_user(relay.url)
    other = Device(relay.url)
    other.challenge = dev.challenge
    answer = await dev.request(other.register_frame())
    error_of(answer, "forbidden")
    # Still connected and working.
    assert (await dev.sync())["t"] == "ok"
    await dev.close()


async def test_auth_after_handshake_is_forbidden(relay):
    dev = await new_user(relay.url)
    answer = await dev.request(dev.auth_frame())
    error_of(answer, "forbidden")
    assert (await dev.sync())["t"] == "ok"
    await dev.close()


async def test_auth_after_register_on_same_connection_is_forbidden(relay):
    dev = Device(relay.url)
    await dev.register()
    error_of(await dev.request(dev.register_frame()), "forbidden")
    assert (await dev.sync())["t"] == "ok"
    await dev.close()


# --------------------------------------------------------------------------- limits


async def test_device_limit(relay):
    first = await new_user(relay.url)
    devs = [first]
    for n in range(2, 7):
        d = await link_device(first)
        assert d.device == n
        devs.append(d)
    extra = Device(relay.url)
    await extra.connect()
    await handshake_error(extra, extra.register_frame(link_by=first), "forbidden")
    # Removing one makes room; numbers are never reused.
    assert (await first.request({"t": "devices.remove", "device": 6}))["t"] == "ok"
    assert await devs[-1].closed_code() == 4002
    d = await link_device(first)
    assert d.device == 7
    devs[-1] = d
    for d in devs:
        await d.close()


async def test_device_limit_configurable(relay_factory):
    r = relay_factory(max_devices=2)
    first = await new_user(r.url)
    second = await link_device(first)
    extra = Device(r.url)
    await extra.connect()
    await handshake_error(extra, extra.register_frame(link_by=second), "forbidden")
    await first.close()
    await second.close()


async def test_device_numbers_used_up(relay):
    """Numbers stay within 1-127 and are never reused: after 127, linking is forbidden."""
    first = await new_user(relay.url)
    for n in range(2, 128):
        d = await link_device(first)
        assert d.device == n
        assert (await first.request({"t": "devices.remove", "device": n}))["t"] == "ok"
        assert await d.closed_code() == 4002
    extra = Device(relay.url)
    await extra.connect()
    await handshake_error(extra, extra.register_frame(link_by=first), "forbidden")
    await first.close()


async def test_registration_token(relay_factory):
    r = relay_factory(registration_token="s3cret-token")
    dev = Device(r.url)
    await dev.connect()
    await handshake_error(dev, dev.register_frame(), "forbidden")
    dev = Device(r.url)
    await dev.connect()
    await handshake_error(dev, dev.register_frame(token="wrong"), "forbidden")
    # The token is checked before the signature.
    dev = Device(r.url)
    await dev.connect()
    frame = dev.register_frame()
    frame["signature"] = bytes(64)
    await handshake_error(dev, frame, "forbidden")
    dev = Device(r.url)
    answer = await dev.register(token="s3cret-token")
    assert answer["device"] == 1
    # Linking a device with the token works too; auth needs no token.
    second = Device(r.url)
    await second.register(link_by=dev, token="s3cret-token")
    assert second.device == 2
    await dev.close()
    assert (await dev.reconnect())["device"] == 1
    await dev.close()
    await second.close()


async def test_options_from_environment(relay_factory):
    """Every option can also be given as RELAY_<NAME>."""
    r = relay_factory(env={"RELAY_REGISTRATION_TOKEN": "env-token", "RELAY_MAX_DEVICES": "1"})
    dev = Device(r.url)
    await dev.connect()
    await handshake_error(dev, dev.register_frame(), "forbidden")
    dev = Device(r.url)
    await dev.register(token="env-token")
    extra = Device(r.url)
    await extra.connect()
    await handshake_error(extra, extra.register_frame(link_by=dev, token="env-token"), "forbidden")
    await dev.close()


async def test_handshake_timeout(relay_factory):
    r = relay_factory(handshake_timeout=1)
    dev = Device(r.url)
    await dev.connect()
    assert await dev.closed_code(timeout=6) == 1008
    # A connection that does authenticate in time stays open.
    ok = await new_user(r.url)
    assert (await ok.sync())["t"] == "ok"
    other = Device(r.url)
    await other.connect()
    assert await other.closed_code(timeout=6) == 1008
    assert not ok.is_closed
    assert (await ok.sync())["t"] == "ok"
    await ok.close()


async def test_handshake_timeout_default_is_not_short(relay):
    """With the default (10 s), an idle unauthenticated connection survives a bit."""
    dev = Device(relay.url)
    await dev.connect()
    await dev.no_push(timeout=1.5)
    assert not dev.is_closed
    await dev.register()
    await dev.close()


# --------------------------------------------------------------------------- replacement


@pytest.mark.parametrize("proto", PROTOS)
async def test_newest_connection_replaces_older(relay, proto):
    first = await new_user(relay.url, proto=proto)
    copy = Device(relay.url, proto=proto, identity=first.identity, user=first.user, device=1)
    await copy.auth()
    assert await first.closed_code() == 4001
    assert (await copy.sync())["t"] == "ok"
    third = Device(relay.url, proto=proto, identity=first.identity, user=first.user, device=1)
    await third.auth()
    assert await copy.closed_code() == 4001
    assert (await third.sync())["t"] == "ok"
    await third.close()


async def test_replacement_only_affects_the_same_device(relay):
    first = await new_user(relay.url)
    second = await link_device(first)
    copy = Device(relay.url, identity=second.identity, user=second.user, device=2)
    await copy.auth()
    assert await second.closed_code() == 4001
    assert not first.is_closed
    assert (await first.sync())["t"] == "ok"
    await first.close()
    await copy.close()


async def test_replaced_connection_messages_go_to_new_one(relay):
    target = await new_user(relay.url)
    sender = await new_user(relay.url)
    copy = Device(relay.url, identity=target.identity, user=target.user, device=1, auto_ack=True)
    await copy.auth()
    assert await target.closed_code() == 4001
    answer = await sender.send_message(target)
    assert answer["t"] == "ok" and answer["delivered"] == [1], answer
    got = await copy.next_push("deliver")
    assert got["id"] == answer["id"]
    await sender.close()
    await copy.close()


async def test_many_concurrent_handshakes(relay):
    devs = await asyncio.gather(*(new_user(relay.url) for _ in range(30)))
    assert len({d.user for d in devs}) == 30
    await asyncio.gather(*(d.close() for d in devs))
