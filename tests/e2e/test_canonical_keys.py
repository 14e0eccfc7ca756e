"""Spec §3.3: identity keys compare in their canonical X25519 form (bit 255 cleared, u reduced
mod p), so one key pair is one identity in every encoding: register, link and retirement,
both schemes, on a real relay with each store."""

from __future__ import annotations

import pytest

from protocol.signatures import IdentityKeyPair, KeyScheme

from .support import Device, error_of, link_device, new_user, signed_prekey

P = 2**255 - 19


def high_bit(pair: IdentityKeyPair) -> IdentityKeyPair:
    """The same xeddsa key pair, its public key sent with bit 255 of u set (as an independent
    client could): X25519 and the XEdDSA check ignore that bit, so it signs for both."""
    assert pair.scheme == KeyScheme.XEDDSA
    public = bytearray(pair.public_key)
    public[32] |= 0x80
    return IdentityKeyPair(KeyScheme.XEDDSA, pair.private_bytes, bytes(public), pair.private_bytes)


def xeddsa_twin(pair: IdentityKeyPair) -> IdentityKeyPair:
    """The xeddsa form of any key pair (an ed25519 one included)."""
    return IdentityKeyPair.from_private_bytes(KeyScheme.XEDDSA, pair.x25519_private())


def base_point_pair(u: int) -> IdentityKeyPair:
    """XEdDSA private key 1, whose public u is 9 (the base point), sent as ``u``: 9 or p + 9."""
    one = (1).to_bytes(32, "little")
    return IdentityKeyPair(KeyScheme.XEDDSA, one, b"\x05" + u.to_bytes(32, "little"), one)


async def refused(dev: Device, frame: dict, code: str) -> None:
    """The handshake frame is answered `code`, then the connection closed with 1008."""
    if dev.ws is None or dev.is_closed:
        await dev.connect()
    error_of(await dev.request(frame), code)
    assert await dev.closed_code() == 1008


async def register_refused(url: str, identity: IdentityKeyPair, code: str, **link: Device) -> None:
    dev = Device(url, identity=identity, scheme=identity.scheme)
    await dev.connect()
    await refused(dev, dev.register_frame(link_by=link.get("link_by")), code)


async def test_key_with_bit_255_set_is_one_identity_with_its_key(relay):
    pair = IdentityKeyPair.generate(KeyScheme.XEDDSA)
    first = await new_user(relay.url, identity=pair, scheme=KeyScheme.XEDDSA)
    await register_refused(relay.url, high_bit(pair), "conflict")
    await register_refused(relay.url, high_bit(pair), "conflict", link_by=first)
    await first.close()


async def test_key_with_bit_255_set_first_then_its_canonical_encoding(relay):
    pair = IdentityKeyPair.generate(KeyScheme.XEDDSA)
    first = await new_user(relay.url, identity=high_bit(pair), scheme=KeyScheme.XEDDSA)
    # It registers, authenticates, and is handed out byte for byte as it was sent.
    await first.close()
    again = Device(relay.url, identity=high_bit(pair), scheme=KeyScheme.XEDDSA)
    again.user, again.device = first.user, first.device
    await again.auth()
    upload = {"t": "keys.upload", "signed_prekey": signed_prekey(again.identity, 1)}
    assert (await again.request(upload))["t"] == "ok"
    other = await new_user(relay.url)
    fetched = await other.request({"t": "keys.fetch", "user": first.user})
    assert [d["identity_key"] for d in fetched["devices"]] == [high_bit(pair).public_key]
    await register_refused(relay.url, pair, "conflict")
    await register_refused(relay.url, pair, "conflict", link_by=other)
    await again.close()
    await other.close()


async def test_u_at_or_above_p_is_its_reduced_value(relay):
    first = await new_user(relay.url, identity=base_point_pair(9), scheme=KeyScheme.XEDDSA)
    await register_refused(relay.url, base_point_pair(P + 9), "conflict")
    await first.close()


async def test_ed25519_key_then_its_xeddsa_form_with_bit_255_set(relay):
    ed = IdentityKeyPair.generate(KeyScheme.ED25519)
    first = await new_user(relay.url, identity=ed, scheme=KeyScheme.ED25519)
    await register_refused(relay.url, high_bit(xeddsa_twin(ed)), "conflict")
    await register_refused(relay.url, high_bit(xeddsa_twin(ed)), "conflict", link_by=first)
    await first.close()


async def test_linking_ones_own_key_in_another_encoding_is_conflict(relay):
    pair = IdentityKeyPair.generate(KeyScheme.XEDDSA)
    first = await new_user(relay.url, identity=pair, scheme=KeyScheme.XEDDSA)
    await register_refused(relay.url, high_bit(pair), "conflict", link_by=first)
    devices = await first.request({"t": "devices.list"})
    assert [d["device"] for d in devices["devices"]] == [1]
    await first.close()


@pytest.mark.parametrize("scheme", [KeyScheme.ED25519, KeyScheme.XEDDSA])
async def test_removed_device_key_in_another_encoding_is_forbidden(relay, scheme):
    first = await new_user(relay.url)
    pair = IdentityKeyPair.generate(scheme)
    second = await link_device(first, identity=pair, scheme=scheme)
    assert (await first.request({"t": "devices.remove", "device": 2}))["t"] == "ok"
    assert await second.closed_code() == 4002
    other_encoding = high_bit(xeddsa_twin(pair) if scheme == KeyScheme.ED25519 else pair)
    await register_refused(relay.url, other_encoding, "forbidden")
    await register_refused(relay.url, other_encoding, "forbidden", link_by=first)
    # The user links other keys as before, under a new number.
    third = await link_device(first)
    assert third.device == 3
    await first.close()
    await third.close()
