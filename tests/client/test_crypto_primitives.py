"""The primitives against published vectors (RFC 5869, RFC 7748) and their input checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol.crypto import primitives

VECTORS = Path(__file__).resolve().parent / "vectors"
HKDF_VECTORS: list[dict[str, Any]] = json.loads((VECTORS / "rfc5869-hkdf-sha256.json").read_text())[
    "vectors"
]
X25519_VECTORS: dict[str, Any] = json.loads((VECTORS / "rfc7748-x25519.json").read_text())


def test_the_vector_files_hold_every_case() -> None:
    assert [v["case"] for v in HKDF_VECTORS] == [1, 2, 3]
    assert len(X25519_VECTORS["scalar_mult"]) == 2


@pytest.mark.parametrize("vector", HKDF_VECTORS, ids=lambda v: f"case-{v['case']}")
def test_hkdf_sha256_rfc5869(vector: dict[str, Any]) -> None:
    okm = primitives.hkdf_sha256(
        bytes.fromhex(vector["ikm"]),
        salt=bytes.fromhex(vector["salt"]),
        info=bytes.fromhex(vector["info"]),
        length=vector["length"],
    )
    assert okm.hex() == vector["okm"]


@pytest.mark.parametrize("vector", HKDF_VECTORS, ids=lambda v: f"case-{v['case']}")
def test_hkdf_extract_step_matches_rfc5869_prk(vector: dict[str, Any]) -> None:
    # HKDF-Extract is HMAC(salt, IKM); an empty salt stands for HashLen zero bytes.
    salt = bytes.fromhex(vector["salt"]) or bytes(32)
    assert primitives.hmac_sha256(salt, bytes.fromhex(vector["ikm"])).hex() == vector["prk"]


def test_hkdf_refuses_impossible_lengths() -> None:
    with pytest.raises(ValueError):
        primitives.hkdf_sha256(b"k", salt=b"", info=b"", length=0)
    with pytest.raises(ValueError):
        primitives.hkdf_sha256(b"k", salt=b"", info=b"", length=255 * 32 + 1)


@pytest.mark.parametrize("index", [0, 1])
def test_x25519_rfc7748_scalar_mult(index: int) -> None:
    vector = X25519_VECTORS["scalar_mult"][index]
    out = primitives.x25519(bytes.fromhex(vector["scalar"]), bytes.fromhex(vector["u"]))
    assert out.hex() == vector["output"]


def test_x25519_rfc7748_diffie_hellman() -> None:
    dh = X25519_VECTORS["diffie_hellman"]
    alice, bob = bytes.fromhex(dh["alice_private"]), bytes.fromhex(dh["bob_private"])
    assert primitives.x25519_public(alice).hex() == dh["alice_public"]
    assert primitives.x25519_public(bob).hex() == dh["bob_public"]
    assert primitives.x25519(alice, bytes.fromhex(dh["bob_public"])).hex() == dh["shared_secret"]
    assert primitives.x25519(bob, bytes.fromhex(dh["alice_public"])).hex() == dh["shared_secret"]


def test_x25519_refuses_small_order_and_wrong_lengths() -> None:
    private, _ = primitives.x25519_generate()
    with pytest.raises(ValueError):
        primitives.x25519(private, bytes(32))  # u = 0 has order 4: all-zero output
    with pytest.raises(ValueError):
        primitives.x25519(private, b"\x09" * 31)
    with pytest.raises(ValueError):
        primitives.x25519(private[:31], b"\x09" + bytes(31))


def test_generated_x25519_keys_are_clamped_and_agree() -> None:
    a_private, a_public = primitives.x25519_generate()
    b_private, b_public = primitives.x25519_generate()
    assert a_private[0] & 0x07 == 0 and a_private[31] & 0xC0 == 0x40
    assert primitives.x25519(a_private, b_public) == primitives.x25519(b_private, a_public)


def test_ec_key_encoding_accepts_33_with_prefix_and_32_raw() -> None:
    raw = primitives.x25519_generate()[1]
    wire = primitives.encode_ec_public(raw)
    assert wire == b"\x05" + raw
    assert primitives.decode_ec_public(wire) == raw
    assert primitives.decode_ec_public(raw) == raw
    for bad in (b"\x06" + raw, raw[:31], wire + b"\x00", b""):
        with pytest.raises(ValueError):
            primitives.decode_ec_public(bad)


def test_ml_kem_1024_round_trip_and_wire_form() -> None:
    seed, public = primitives.kem_generate()
    assert len(seed) == 64 and len(public) == 1568
    assert primitives.kem_public_from_seed(seed) == public
    wire = primitives.encode_kem_public(public)
    assert len(wire) == 1569 and wire[0] == 0x08
    assert primitives.decode_kem_public(wire) == public
    shared, ciphertext = primitives.kem_encapsulate(public)
    assert len(shared) == 32 and len(ciphertext) == 1568
    assert primitives.kem_decapsulate(seed, ciphertext) == shared
    # Implicit rejection: a tampered ciphertext gives an unrelated secret, not an error.
    tampered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    assert primitives.kem_decapsulate(seed, tampered) != shared


def test_ml_kem_refuses_malformed_keys() -> None:
    public = primitives.kem_generate()[1]
    for bad in (public, b"\x05" + public, b"\x08" + public[:-1], b"\x08" + b"\xff" * 1568):
        with pytest.raises(ValueError):
            primitives.decode_kem_public(bad)
    with pytest.raises(ValueError):
        primitives.kem_decapsulate(bytes(63), bytes(1568))
    with pytest.raises(ValueError):
        primitives.kem_decapsulate(primitives.kem_generate()[0], bytes(1567))


def test_aead_round_trip_and_every_input_is_authenticated() -> None:
    key, nonce = primitives.random_bytes(32), primitives.random_bytes(24)
    sealed = primitives.aead_encrypt(key, nonce, b"plaintext", b"ad")
    assert len(sealed) == len(b"plaintext") + 16
    assert primitives.aead_decrypt(key, nonce, sealed, b"ad") == b"plaintext"
    with pytest.raises(ValueError):
        primitives.aead_decrypt(key, nonce, sealed, b"ae")
    with pytest.raises(ValueError):
        primitives.aead_decrypt(key, nonce, bytes([sealed[0] ^ 1]) + sealed[1:], b"ad")
    with pytest.raises(ValueError):
        primitives.aead_decrypt(key, bytes(24), sealed, b"ad")
    with pytest.raises(ValueError):
        primitives.aead_decrypt(key, nonce, sealed[:15], b"ad")
