"""Tests for the canonical X25519 form of identity keys (spec §3.3: compared canonically)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.signatures import (
    IdentityKeyPair,
    KeyScheme,
    canonical_x25519,
    identity_key_x25519,
    is_valid_identity_key,
    verify_signature,
)

P = 2**255 - 19


def _encode(value: int) -> bytes:
    return value.to_bytes(32, "little")


def _with_bit_255(key: bytes) -> bytes:
    """An xeddsa key (0x05 + u) with bit 255 of u set: the same key pair."""
    out = bytearray(key)
    out[32] |= 0x80
    return bytes(out)


@pytest.mark.parametrize(
    ("encoded", "canonical"),
    [
        (_encode(9), _encode(9)),
        (_encode(9 | 1 << 255), _encode(9)),  # bit 255 set
        (_encode(P), _encode(0)),  # u = p
        (_encode(P + 9), _encode(9)),  # u >= p
        (_encode(P + 18), _encode(18)),  # the largest 255-bit value
        (_encode((P + 9) | 1 << 255), _encode(9)),  # both at once
        (_encode(P - 1), _encode(P - 1)),  # the largest canonical value
    ],
    ids=["canonical", "bit-255", "p", "above-p", "2^255-1", "bit-255-and-above-p", "p-1"],
)
def test_canonical_x25519_vectors(encoded: bytes, canonical: bytes) -> None:
    assert canonical_x25519(encoded) == canonical


@given(st.binary(min_size=32, max_size=32))
def test_canonical_x25519_is_idempotent_and_below_p(u: bytes) -> None:
    canonical = canonical_x25519(u)
    assert canonical_x25519(canonical) == canonical
    assert int.from_bytes(canonical, "little") < P


@pytest.mark.parametrize("length", [0, 31, 33])
def test_canonical_x25519_wrong_length(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        canonical_x25519(bytes(length))


@given(st.binary(min_size=32, max_size=32))
def test_xeddsa_bit_255_is_the_same_identity_and_signs_for_both(private: bytes) -> None:
    pair = IdentityKeyPair.from_private_bytes(KeyScheme.XEDDSA, private)
    other = _with_bit_255(pair.public_key)
    assert other != pair.public_key
    assert identity_key_x25519(KeyScheme.XEDDSA, other) == pair.x25519_public()
    signature = pair.sign(b"message")
    assert verify_signature(KeyScheme.XEDDSA, other, b"message", signature)


@given(st.binary(min_size=32, max_size=32))
def test_xeddsa_with_bit_255_matches_the_ed25519_form_of_one_key_pair(private: bytes) -> None:
    """The xeddsa key of an ed25519 key pair, written with bit 255 set, is that same identity."""
    ed = IdentityKeyPair.from_private_bytes(KeyScheme.ED25519, private)
    xeddsa_key = _with_bit_255(b"\x05" + ed.x25519_public())
    assert identity_key_x25519(KeyScheme.XEDDSA, xeddsa_key) == ed.x25519_public()


@pytest.mark.parametrize("small", range(19))
def test_xeddsa_u_at_or_above_p_is_its_reduced_value(small: int) -> None:
    assert identity_key_x25519(KeyScheme.XEDDSA, b"\x05" + _encode(P + small)) == _encode(small)


@pytest.mark.parametrize("sign", [0, 1])
@pytest.mark.parametrize("small", range(19))
def test_ed25519_non_canonical_encodings_are_refused(small: int, sign: int) -> None:
    """Only y < 19 has a second encoding (y + p); with x = 0 (y = ±1) the sign bit makes one
    too. None of these is a usable key: libsodium refuses them all, so the ed25519 scheme
    has no second encoding of a valid key."""
    for y in (small, P + small):
        encoded = bytearray(_encode(y))
        encoded[31] |= sign << 7
        assert not is_valid_identity_key(KeyScheme.ED25519, bytes(encoded))


@given(st.binary(min_size=32, max_size=32))
def test_ed25519_sign_bit_names_the_same_x25519_identity(private: bytes) -> None:
    """A and -A share their Montgomery u: one identity, as spec §3.3 compares them."""
    pair = IdentityKeyPair.from_private_bytes(KeyScheme.ED25519, private)
    negated = bytearray(pair.public_key)
    negated[31] ^= 0x80
    assert identity_key_x25519(KeyScheme.ED25519, bytes(negated)) == pair.x25519_public()


@given(st.binary(min_size=32, max_size=32))
def test_x25519_form_is_always_canonical(private: bytes) -> None:
    for scheme in KeyScheme:
        form = IdentityKeyPair.from_private_bytes(scheme, private).x25519_public()
        assert canonical_x25519(form) == form
