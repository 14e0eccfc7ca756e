"""Tests for protocol.signatures: libsignal vectors, round trips, malformed input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.bindings as sodium
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.signatures import (
    IDENTITY_KEY_LENGTH,
    SIGNATURE_LENGTH,
    IdentityKeyPair,
    KeyScheme,
    identity_key_x25519,
    is_valid_identity_key,
    verify_signature,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "vectors" / "xeddsa-libsignal.json"
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493

private_keys = st.binary(min_size=32, max_size=32)
messages = st.binary(max_size=2048)


def _load_vectors() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())["vectors"]
    return vectors


VECTORS = _load_vectors()
VALID_VECTORS = [v for v in VECTORS if v["valid"]]


def _vector_id(index: int, vector: dict[str, Any]) -> str:
    outcome = "valid" if vector["valid"] else "tampered-" + vector["tamper"].replace(" ", "-")
    return f"{vector['kind']}-{index}-{outcome}"


def _fields(vector: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    return (
        bytes.fromhex(vector["identity_key"]),
        bytes.fromhex(vector["message"]),
        bytes.fromhex(vector["signature"]),
    )


def _with_s(signature: bytes, s: int) -> bytes:
    """``signature`` with S replaced by ``s``, keeping its XEdDSA sign bit."""
    sign_bit = signature[63] & 0x80
    out = bytearray(signature[:32] + s.to_bytes(32, "little"))
    assert out[63] & 0x80 == 0
    out[63] |= sign_bit
    return bytes(out)


def _s_of(signature: bytes) -> int:
    return int.from_bytes(signature[32:], "little") & ((1 << 255) - 1)


# --- libsignal vectors --------------------------------------------------------


def test_vectors_cover_valid_and_tampered() -> None:
    assert len(VALID_VECTORS) > 0
    assert len(VALID_VECTORS) < len(VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=[_vector_id(i, v) for i, v in enumerate(VECTORS)])
def test_libsignal_vector(vector: dict[str, Any]) -> None:
    key, message, signature = _fields(vector)
    assert verify_signature(KeyScheme.XEDDSA, key, message, signature) is vector["valid"]


@pytest.mark.parametrize(
    "vector", VALID_VECTORS, ids=[_vector_id(i, v) for i, v in enumerate(VALID_VECTORS)]
)
def test_libsignal_vector_flipped_sign_bit_fails(vector: dict[str, Any]) -> None:
    key, message, signature = _fields(vector)
    flipped = signature[:63] + bytes([signature[63] ^ 0x80])
    assert verify_signature(KeyScheme.XEDDSA, key, message, flipped) is False


def test_libsignal_vectors_have_both_sign_bits() -> None:
    bits = {_fields(v)[2][63] & 0x80 for v in VALID_VECTORS}
    assert bits == {0x00, 0x80}


# --- round trips --------------------------------------------------------------


@pytest.mark.parametrize("scheme", list(KeyScheme))
@settings(max_examples=50, deadline=None)
@given(private=private_keys, message=messages)
def test_sign_verify_round_trip(scheme: KeyScheme, private: bytes, message: bytes) -> None:
    pair = IdentityKeyPair.from_private_bytes(scheme, private)
    signature = pair.sign(message)
    assert len(signature) == SIGNATURE_LENGTH
    assert len(pair.public_key) == IDENTITY_KEY_LENGTH[scheme]
    assert verify_signature(scheme, pair.public_key, message, signature)
    assert not verify_signature(scheme, pair.public_key, message + b"\x00", signature)


@pytest.mark.parametrize("scheme", list(KeyScheme))
def test_signature_does_not_verify_under_other_key(scheme: KeyScheme) -> None:
    signer, other = IdentityKeyPair.generate(scheme), IdentityKeyPair.generate(scheme)
    signature = signer.sign(b"message")
    assert not verify_signature(scheme, other.public_key, b"message", signature)


def test_xeddsa_signature_does_not_verify_as_ed25519_and_vice_versa() -> None:
    xeddsa = IdentityKeyPair.generate(KeyScheme.XEDDSA)
    ed25519 = IdentityKeyPair.generate(KeyScheme.ED25519)
    assert not verify_signature(KeyScheme.ED25519, xeddsa.public_key, b"m", xeddsa.sign(b"m"))
    assert not verify_signature(KeyScheme.XEDDSA, ed25519.public_key, b"m", ed25519.sign(b"m"))


def test_xeddsa_signs_with_both_sign_bits() -> None:
    """The verifier recovers the Edwards sign bit from the signature: test both values."""
    seen: dict[int, IdentityKeyPair] = {}
    for _ in range(200):
        pair = IdentityKeyPair.generate(KeyScheme.XEDDSA)
        seen.setdefault(pair.sign(b"probe")[63] & 0x80, pair)
        if len(seen) == 2:
            break
    assert set(seen) == {0x00, 0x80}
    for sign_bit, pair in seen.items():
        for message in (b"", b"probe", bytes(range(256))):
            signature = pair.sign(message)
            assert signature[63] & 0x80 == sign_bit
            assert verify_signature(KeyScheme.XEDDSA, pair.public_key, message, signature)
            flipped = signature[:63] + bytes([signature[63] ^ 0x80])
            assert not verify_signature(KeyScheme.XEDDSA, pair.public_key, message, flipped)


def test_xeddsa_signatures_are_randomised() -> None:
    pair = IdentityKeyPair.generate(KeyScheme.XEDDSA)
    assert pair.sign(b"same") != pair.sign(b"same")


@pytest.mark.parametrize("scheme", list(KeyScheme))
def test_from_private_bytes_round_trip(scheme: KeyScheme) -> None:
    pair = IdentityKeyPair.generate(scheme)
    again = IdentityKeyPair.from_private_bytes(scheme, pair.private_bytes)
    assert again.scheme is scheme
    assert again.public_key == pair.public_key
    assert again.private_bytes == pair.private_bytes


def test_xeddsa_private_key_is_clamped_like_libsignal() -> None:
    pair = IdentityKeyPair.from_private_bytes(KeyScheme.XEDDSA, b"\xff" * 32)
    assert pair.private_bytes == b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert pair.public_key[0] == 0x05
    assert pair.public_key[1:] == sodium.crypto_scalarmult_base(pair.private_bytes)


def test_ed25519_key_pair_matches_pynacl() -> None:
    pair = IdentityKeyPair.generate(KeyScheme.ED25519)
    signing_key = nacl.signing.SigningKey(pair.private_bytes)
    assert pair.public_key == bytes(signing_key.verify_key)
    assert pair.sign(b"m") == signing_key.sign(b"m").signature


@pytest.mark.parametrize("scheme", list(KeyScheme))
def test_repr_hides_private_key(scheme: KeyScheme) -> None:
    pair = IdentityKeyPair.generate(scheme)
    assert pair.private_bytes.hex() not in repr(pair)
    assert pair.public_key.hex() in repr(pair)


@pytest.mark.parametrize("scheme", list(KeyScheme))
def test_from_private_bytes_rejects_wrong_length(scheme: KeyScheme) -> None:
    with pytest.raises(ValueError):
        IdentityKeyPair.from_private_bytes(scheme, bytes(31))


# --- one key pair, one identity: the X25519 form -------------------------------


@pytest.mark.parametrize(
    "vector", VALID_VECTORS[:6], ids=[_vector_id(i, v) for i, v in enumerate(VALID_VECTORS[:6])]
)
def test_xeddsa_x25519_form_is_key_without_prefix(vector: dict[str, Any]) -> None:
    key = _fields(vector)[0]
    assert identity_key_x25519(KeyScheme.XEDDSA, key) == key[1:]


def test_ed25519_x25519_form_matches_pynacl() -> None:
    verify_key = nacl.signing.SigningKey.generate().verify_key
    assert identity_key_x25519(KeyScheme.ED25519, bytes(verify_key)) == bytes(
        verify_key.to_curve25519_public_key()
    )


@settings(max_examples=25, deadline=None)
@given(private=private_keys)
def test_same_key_pair_is_same_identity_in_both_schemes(private: bytes) -> None:
    ed25519 = IdentityKeyPair.from_private_bytes(KeyScheme.ED25519, private)
    # The Ed25519 key pair's X25519 private scalar, used as an XEdDSA key pair.
    xeddsa = IdentityKeyPair.from_private_bytes(KeyScheme.XEDDSA, ed25519.x25519_private())
    ed_form = identity_key_x25519(KeyScheme.ED25519, ed25519.public_key)
    assert ed_form == ed25519.x25519_public()
    assert identity_key_x25519(KeyScheme.XEDDSA, xeddsa.public_key) == ed_form
    assert xeddsa.x25519_public() == ed_form
    assert sodium.crypto_scalarmult_base(ed25519.x25519_private()) == ed_form


@settings(max_examples=25, deadline=None)
@given(private=private_keys)
def test_xeddsa_edwards_key_converts_back_to_its_x25519_key(private: bytes) -> None:
    pair = IdentityKeyPair.from_private_bytes(KeyScheme.XEDDSA, private)
    a = sodium.crypto_core_ed25519_scalar_reduce(pair.private_bytes + bytes(32))
    edwards = sodium.crypto_scalarmult_ed25519_base_noclamp(a)
    assert identity_key_x25519(KeyScheme.ED25519, edwards) == pair.public_key[1:]


# --- malformed input: False, never an exception ---------------------------------


def _valid_xeddsa() -> tuple[bytes, bytes, bytes]:
    return _fields(VALID_VECTORS[0])


def test_xeddsa_short_key() -> None:
    key, message, signature = _valid_xeddsa()
    assert verify_signature(KeyScheme.XEDDSA, key[:32], message, signature) is False
    assert verify_signature(KeyScheme.XEDDSA, key[1:], message, signature) is False
    assert verify_signature(KeyScheme.XEDDSA, b"", message, signature) is False


def test_xeddsa_long_key() -> None:
    key, message, signature = _valid_xeddsa()
    assert verify_signature(KeyScheme.XEDDSA, key + b"\x00", message, signature) is False


@pytest.mark.parametrize("prefix", [0x00, 0x04, 0x06, 0x85])
def test_xeddsa_wrong_prefix(prefix: int) -> None:
    key, message, signature = _valid_xeddsa()
    wrong = bytes([prefix]) + key[1:]
    assert verify_signature(KeyScheme.XEDDSA, wrong, message, signature) is False


@pytest.mark.parametrize("scheme", list(KeyScheme))
@pytest.mark.parametrize("length", [0, 32, 63, 65, 128])
def test_wrong_signature_length(scheme: KeyScheme, length: int) -> None:
    pair = IdentityKeyPair.generate(scheme)
    signature = pair.sign(b"m")
    bad = (signature * 2)[:length]
    assert verify_signature(scheme, pair.public_key, b"m", bad) is False


def test_xeddsa_s_at_or_above_2_253_is_rejected() -> None:
    """The same signature with S + kL (same group element) is refused once S >= 2^253."""
    key, message, signature = _valid_xeddsa()
    s = _s_of(signature)
    k = -(-(2**253 - s) // L)  # smallest k with s + kL >= 2^253
    big = s + k * L
    assert 2**253 <= big < 2**255
    malleated = _with_s(signature, big)
    assert malleated[63] & 0x60
    assert verify_signature(KeyScheme.XEDDSA, key, message, malleated) is False


@pytest.mark.parametrize("top_bits", [0x20, 0x40, 0x60])
def test_xeddsa_top_bits_of_s_are_rejected(top_bits: int) -> None:
    key, message, signature = _valid_xeddsa()
    bad = signature[:63] + bytes([signature[63] | top_bits])
    assert verify_signature(KeyScheme.XEDDSA, key, message, bad) is False


def test_xeddsa_non_reduced_s_is_rejected() -> None:
    """S in [L, 2^253): libsignal would accept it; libsodium refuses malleated S."""
    key, message, signature = _valid_xeddsa()
    s = _s_of(signature)
    assert s < L
    malleated = _with_s(signature, s + L)
    assert verify_signature(KeyScheme.XEDDSA, key, message, malleated) is False


@pytest.mark.parametrize("sign_bit", [0x00, 0x80])
@pytest.mark.parametrize("high_bit", [0x00, 0x80])
def test_xeddsa_u_minus_one(sign_bit: int, high_bit: int) -> None:
    """u = p - 1 has no Edwards image (y would divide by zero)."""
    _, message, signature = _valid_xeddsa()
    u = bytearray((P - 1).to_bytes(32, "little"))
    u[31] |= high_bit  # bit 255 of u is ignored, as in curve25519-dalek
    key = b"\x05" + bytes(u)
    sig = signature[:63] + bytes([(signature[63] & 0x7F) | sign_bit])
    assert verify_signature(KeyScheme.XEDDSA, key, message, sig) is False


@pytest.mark.parametrize(
    "u",
    [
        bytes(32),  # u = 0: low order
        (1).to_bytes(32, "little"),  # u = 1: y = 0
        P.to_bytes(32, "little"),  # u = p, i.e. 0 unreduced
        b"\xff" * 32,
        (2).to_bytes(32, "little"),  # on the twist, not the curve
    ],
    ids=["zero", "one", "p", "all-ff", "twist"],
)
def test_xeddsa_degenerate_keys(u: bytes) -> None:
    _, message, signature = _valid_xeddsa()
    assert verify_signature(KeyScheme.XEDDSA, b"\x05" + u, message, signature) is False


def test_ed25519_malformed_keys() -> None:
    pair = IdentityKeyPair.generate(KeyScheme.ED25519)
    signature = pair.sign(b"m")
    identity_point = b"\x01" + bytes(31)
    not_on_curve = (2).to_bytes(32, "little")
    for key in (b"", pair.public_key[:31], pair.public_key + b"\x00", identity_point, not_on_curve):
        assert verify_signature(KeyScheme.ED25519, key, b"m", signature) is False


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(list(KeyScheme)),
    key=st.one_of(st.binary(max_size=40), st.binary(min_size=32, max_size=32).map(b"\x05".__add__)),
    message=st.binary(max_size=64),
    signature=st.one_of(st.binary(max_size=70), st.binary(min_size=64, max_size=64)),
)
def test_verify_never_raises(
    scheme: KeyScheme, key: bytes, message: bytes, signature: bytes
) -> None:
    assert verify_signature(scheme, key, message, signature) in (True, False)


# --- identity key validation ------------------------------------------------------


def test_is_valid_identity_key() -> None:
    xeddsa = IdentityKeyPair.generate(KeyScheme.XEDDSA).public_key
    ed25519 = IdentityKeyPair.generate(KeyScheme.ED25519).public_key
    assert is_valid_identity_key(KeyScheme.XEDDSA, xeddsa)
    assert is_valid_identity_key(KeyScheme.ED25519, ed25519)
    assert not is_valid_identity_key(KeyScheme.XEDDSA, ed25519)
    assert not is_valid_identity_key(KeyScheme.ED25519, xeddsa)
    assert not is_valid_identity_key(KeyScheme.XEDDSA, b"\x06" + xeddsa[1:])
    assert not is_valid_identity_key(KeyScheme.XEDDSA, b"")
    assert not is_valid_identity_key(KeyScheme.ED25519, b"\x01" + bytes(31))  # small order


@pytest.mark.parametrize(
    ("scheme", "key"),
    [
        (KeyScheme.XEDDSA, bytes(32)),
        (KeyScheme.XEDDSA, b"\x05" + bytes(31)),
        (KeyScheme.XEDDSA, b"\x04" + bytes(32)),
        (KeyScheme.ED25519, bytes(31)),
        (KeyScheme.ED25519, b"\x05" + bytes(32)),
        (KeyScheme.ED25519, b"\x01" + bytes(31)),
    ],
    ids=["xeddsa-short", "xeddsa-prefix-short", "xeddsa-prefix", "ed-short", "ed-long", "ed-small"],
)
def test_identity_key_x25519_rejects_malformed(scheme: KeyScheme, key: bytes) -> None:
    with pytest.raises(ValueError):
        identity_key_x25519(scheme, key)
