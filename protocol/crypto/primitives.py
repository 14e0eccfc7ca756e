"""The few primitives the end-to-end crypto is built from, each from a well-kept library.

X25519, XChaCha20-Poly1305 and randomness come from PyNaCl (libsodium); HKDF
and ML-KEM-1024 from ``cryptography`` (PyNaCl has neither); HMAC-SHA256 from
the standard library. Every function checks its input lengths itself, since
PyNaCl's bindings do not always do so, and reports bad input as ``ValueError``
so that callers can turn it into their own error once.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import nacl.bindings as sodium
import nacl.exceptions
import nacl.utils
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "AEAD_KEY_BYTES",
    "AEAD_NONCE_BYTES",
    "AEAD_TAG_BYTES",
    "EC_KEY_TYPE",
    "KEM_CIPHERTEXT_BYTES",
    "KEM_KEY_TYPE",
    "KEM_PUBLIC_BYTES",
    "KEM_SEED_BYTES",
    "KEY_BYTES",
    "aead_decrypt",
    "aead_encrypt",
    "decode_ec_public",
    "decode_kem_public",
    "encode_ec_public",
    "encode_kem_public",
    "hkdf_sha256",
    "hmac_sha256",
    "kem_decapsulate",
    "kem_encapsulate",
    "kem_generate",
    "kem_public_from_seed",
    "random_bytes",
    "x25519",
    "x25519_generate",
    "x25519_public",
]

KEY_BYTES: Final = 32
# libsignal's type bytes for serialised public keys: Curve25519 ("DJB") and ML-KEM-1024.
EC_KEY_TYPE: Final = 0x05
KEM_KEY_TYPE: Final = 0x08
KEM_PUBLIC_BYTES: Final = 1568
KEM_CIPHERTEXT_BYTES: Final = 1568
KEM_SEED_BYTES: Final = 64
AEAD_KEY_BYTES: Final = 32
AEAD_NONCE_BYTES: Final = 24
AEAD_TAG_BYTES: Final = 16
_HKDF_MAX_BYTES: Final = 255 * 32


def random_bytes(count: int) -> bytes:
    """``count`` bytes from libsodium's CSPRNG."""
    return nacl.utils.random(count)


def x25519_generate() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair ``(private, public)``; the private scalar is stored clamped."""
    private = bytearray(random_bytes(KEY_BYTES))
    private[0] &= 0xF8
    private[31] &= 0x7F
    private[31] |= 0x40
    clamped = bytes(private)
    return clamped, sodium.crypto_scalarmult_base(clamped)


def x25519_public(private: bytes) -> bytes:
    """The public key of an X25519 private scalar."""
    if len(private) != KEY_BYTES:
        raise ValueError("X25519 private key must be 32 bytes")
    return sodium.crypto_scalarmult_base(bytes(private))


def x25519(private: bytes, public: bytes) -> bytes:
    """X25519 (RFC 7748); an all-zero result (a small-order peer key) is ``ValueError``."""
    if len(private) != KEY_BYTES or len(public) != KEY_BYTES:
        raise ValueError("X25519 keys must be 32 bytes")
    try:
        return sodium.crypto_scalarmult(bytes(private), bytes(public))
    except nacl.exceptions.CryptoError as exc:
        # libsodium refuses to return the all-zero output of a small-order point.
        raise ValueError("X25519 with a small-order public key") from exc


def encode_ec_public(public: bytes) -> bytes:
    """libsignal's serialised form of an X25519 public key: ``0x05`` + 32 bytes."""
    if len(public) != KEY_BYTES:
        raise ValueError("X25519 public key must be 32 bytes")
    return bytes([EC_KEY_TYPE]) + public


def decode_ec_public(data: bytes) -> bytes:
    """The raw 32-byte X25519 key of a wire key: 33 bytes starting ``0x05``, or 32 raw bytes."""
    if len(data) == KEY_BYTES + 1 and data[0] == EC_KEY_TYPE:
        return bytes(data[1:])
    if len(data) == KEY_BYTES:
        return bytes(data)
    raise ValueError("EC public key must be 32 bytes, or 33 starting with 0x05")


def encode_kem_public(public: bytes) -> bytes:
    """libsignal's serialised form of an ML-KEM-1024 public key: ``0x08`` + 1568 bytes."""
    if len(public) != KEM_PUBLIC_BYTES:
        raise ValueError("ML-KEM-1024 public key must be 1568 bytes")
    return bytes([KEM_KEY_TYPE]) + public


def decode_kem_public(data: bytes) -> bytes:
    """The raw ML-KEM-1024 public key of a wire key (``0x08`` + 1568 bytes), checked."""
    if len(data) != KEM_PUBLIC_BYTES + 1 or data[0] != KEM_KEY_TYPE:
        raise ValueError("PQ public key must be 1569 bytes starting with 0x08")
    raw = bytes(data[1:])
    # Parsing refuses a key whose coefficients are not reduced (FIPS 203 input check).
    mlkem.MLKEM1024PublicKey.from_public_bytes(raw)
    return raw


def kem_generate() -> tuple[bytes, bytes]:
    """A fresh ML-KEM-1024 key pair ``(64-byte seed, 1568-byte public key)``."""
    private = mlkem.MLKEM1024PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def kem_public_from_seed(seed: bytes) -> bytes:
    """The public key of an ML-KEM-1024 seed (to check stored key material)."""
    if len(seed) != KEM_SEED_BYTES:
        raise ValueError("ML-KEM-1024 seed must be 64 bytes")
    return mlkem.MLKEM1024PrivateKey.from_seed_bytes(bytes(seed)).public_key().public_bytes_raw()


def kem_encapsulate(public: bytes) -> tuple[bytes, bytes]:
    """Encapsulate to a raw ML-KEM-1024 public key: ``(32-byte shared secret, ciphertext)``."""
    key = mlkem.MLKEM1024PublicKey.from_public_bytes(bytes(public))
    shared, ciphertext = key.encapsulate()
    return shared, ciphertext


def kem_decapsulate(seed: bytes, ciphertext: bytes) -> bytes:
    """The shared secret of ``ciphertext``; a tampered one yields an unrelated secret."""
    if len(seed) != KEM_SEED_BYTES:
        raise ValueError("ML-KEM-1024 seed must be 64 bytes")
    if len(ciphertext) != KEM_CIPHERTEXT_BYTES:
        raise ValueError("ML-KEM-1024 ciphertext must be 1568 bytes")
    private = mlkem.MLKEM1024PrivateKey.from_seed_bytes(bytes(seed))
    return private.decapsulate(bytes(ciphertext))


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869); an empty ``salt`` means the RFC's default of zero bytes."""
    if not 0 < length <= _HKDF_MAX_BYTES:
        raise ValueError("HKDF-SHA256 output must be 1 to 8160 bytes")
    kdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info)
    return kdf.derive(bytes(ikm))


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` under ``key``."""
    return hmac.new(key, data, hashlib.sha256).digest()


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """XChaCha20-Poly1305 (IETF): ciphertext followed by the 16-byte tag."""
    return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        bytes(plaintext), bytes(associated_data), bytes(nonce), bytes(key)
    )


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Open an XChaCha20-Poly1305 ciphertext; any forgery or damage is ``ValueError``."""
    if len(key) != AEAD_KEY_BYTES or len(nonce) != AEAD_NONCE_BYTES:
        raise ValueError("bad AEAD key or nonce length")
    if len(ciphertext) < AEAD_TAG_BYTES:
        raise ValueError("ciphertext shorter than its tag")
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(ciphertext), bytes(associated_data), bytes(nonce), bytes(key)
        )
    except nacl.exceptions.CryptoError as exc:
        raise ValueError("ciphertext does not authenticate") from exc
