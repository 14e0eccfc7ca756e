"""Tests for protocol.payloads: the exact bytes each identity key signs (spec §2)."""

from __future__ import annotations

import pytest

from protocol.payloads import auth_payload, link_payload, register_payload

USER = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
USER_BYTES = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
CHALLENGE = bytes(range(32))
XEDDSA_KEY = b"\x05" + bytes(range(100, 132))
ED25519_KEY = bytes(range(200, 232))


def test_register_payload() -> None:
    assert register_payload(CHALLENGE, XEDDSA_KEY) == (
        b"relay-register-v1\x00"
        + bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
        + bytes.fromhex("05646566676869")
        + bytes.fromhex("6a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80818283")
    )


def test_register_payload_ed25519_key() -> None:
    payload = register_payload(b"\xaa" * 32, ED25519_KEY)
    assert payload == b"relay-register-v1\x00" + b"\xaa" * 32 + ED25519_KEY
    assert len(payload) == 18 + 32 + 32


def test_link_payload() -> None:
    assert link_payload(USER, XEDDSA_KEY) == b"relay-link-v1\x00" + USER_BYTES + XEDDSA_KEY
    assert link_payload(USER, ED25519_KEY).hex() == (
        "72656c61792d6c696e6b2d763100"
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
        "c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7"
    )


def test_auth_payload() -> None:
    assert auth_payload(CHALLENGE, USER, 1) == (
        b"relay-auth-v1\x00" + CHALLENGE + USER_BYTES + b"\x00\x00\x00\x01"
    )
    assert auth_payload(b"\x01\x02", USER, 127).hex() == (
        "72656c61792d617574682d76310001020f1e2d3c4b5a69788796a5b4c3d2e1f00000007f"
    )
    assert auth_payload(b"", USER, 0x01020304)[-4:] == b"\x01\x02\x03\x04"


def test_contexts_differ_so_signatures_cannot_be_replayed() -> None:
    register = register_payload(CHALLENGE, XEDDSA_KEY)
    link = link_payload(USER, XEDDSA_KEY)
    auth = auth_payload(CHALLENGE, USER, 1)
    assert len({register[:14], link[:14], auth[:14]}) == 3


def test_malformed_user_is_rejected() -> None:
    with pytest.raises(ValueError):
        link_payload("not-a-uuid", XEDDSA_KEY)
    with pytest.raises(ValueError):
        auth_payload(CHALLENGE, "not-a-uuid", 1)


@pytest.mark.parametrize("device", [-1, 2**32])
def test_device_out_of_range_is_rejected(device: int) -> None:
    with pytest.raises(OverflowError):
        auth_payload(CHALLENGE, USER, device)
