"""Identity-key signature schemes: Ed25519 and libsignal's XEdDSA.

Spec §2 lets a device identify itself with either a plain Ed25519 key or a
libsignal Curve25519 key (``0x05`` + 32-byte X25519 key) that signs with
XEdDSA. The server only ever verifies; :class:`IdentityKeyPair` is the client
side, for tests and the client SDK.

Both schemes are built on PyNaCl (libsodium) alone. XEdDSA verification follows
libsignal's ``PublicKey::verify_signature``: the Montgomery ``u`` becomes the
Edwards ``y = (u - 1) / (u + 1)``, the sign bit comes from ``signature[63]``,
and the rest is an Ed25519 check. libsodium's Ed25519 check is slightly
stricter than curve25519-dalek's (it also wants ``S < L`` and rejects
small-order keys and ``R``); an honest signer never produces those, so every
signature libsignal makes verifies, and only malleated signatures or
degenerate keys are refused in addition.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Final

import nacl.bindings as sodium
import nacl.exceptions
import nacl.utils

__all__ = [
    "IDENTITY_KEY_LENGTH",
    "SIGNATURE_LENGTH",
    "IdentityKeyPair",
    "KeyScheme",
    "canonical_x25519",
    "identity_key_x25519",
    "is_valid_identity_key",
    "verify_signature",
]


class KeyScheme(enum.StrEnum):
    """The identity-key schemes of spec §2, as named on the wire."""

    ED25519 = "ed25519"
    XEDDSA = "xeddsa"


IDENTITY_KEY_LENGTH: Final[dict[KeyScheme, int]] = {
    KeyScheme.ED25519: 32,
    KeyScheme.XEDDSA: 33,
}
SIGNATURE_LENGTH: Final = 64

# libsignal's type byte for a serialised Curve25519 ("DJB") public key.
_DJB_TYPE: Final = 0x05
_KEY_BYTES: Final = 32
# The field prime of Curve25519 / Ed25519.
_P: Final = 2**255 - 19
# XEdDSA's nonce-hash prefix: 0xFE followed by 31 bytes of 0xFF (2^256 - 2, little-endian).
_XEDDSA_NONCE_PREFIX: Final = b"\xfe" + b"\xff" * 31


def verify_signature(
    scheme: KeyScheme, identity_key: bytes, message: bytes, signature: bytes
) -> bool:
    """Check ``signature`` over ``message``; any malformed input is simply ``False``.

    Never raises, so callers can treat every bad key or signature from a peer
    the same way: as a failed verification.
    """
    try:
        if len(signature) != SIGNATURE_LENGTH:
            return False
        if scheme == KeyScheme.ED25519:
            if len(identity_key) != IDENTITY_KEY_LENGTH[KeyScheme.ED25519]:
                return False
            return _ed25519_verify(bytes(identity_key), bytes(message), bytes(signature))
        if scheme == KeyScheme.XEDDSA:
            return _xeddsa_verify(bytes(identity_key), bytes(message), bytes(signature))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return False


def identity_key_x25519(scheme: KeyScheme, identity_key: bytes) -> bytes:
    """The 32-byte X25519 (Montgomery ``u``) form of an identity key, canonical.

    One key pair is one identity in either scheme and in any encoding: this form
    is what X3DH uses and what the relay compares and stores as unique.
    Raises ``ValueError`` for a key of the wrong length or prefix, or an Ed25519
    key libsodium cannot convert (non-canonical, small-order, not on the curve).
    """
    if scheme == KeyScheme.XEDDSA:
        if len(identity_key) != IDENTITY_KEY_LENGTH[KeyScheme.XEDDSA]:
            raise ValueError("xeddsa identity key must be 33 bytes")
        if identity_key[0] != _DJB_TYPE:
            raise ValueError("xeddsa identity key must start with 0x05")
        return canonical_x25519(bytes(identity_key[1:]))
    if scheme == KeyScheme.ED25519:
        if len(identity_key) != IDENTITY_KEY_LENGTH[KeyScheme.ED25519]:
            raise ValueError("ed25519 identity key must be 32 bytes")
        try:
            # libsodium refuses y >= p and small-order points (x = 0 among them), and its
            # output is already canonical; A and -A (the sign bit) share one u, as they must.
            montgomery = sodium.crypto_sign_ed25519_pk_to_curve25519(bytes(identity_key))
        except nacl.exceptions.CryptoError as exc:
            raise ValueError("ed25519 identity key cannot be converted to X25519") from exc
        return canonical_x25519(montgomery)
    raise ValueError(f"unknown key scheme: {scheme!r}")


def canonical_x25519(u_bytes: bytes) -> bytes:
    """The canonical encoding of a Montgomery ``u``: bit 255 cleared, reduced mod ``p``.

    X25519 reads ``u`` that way (RFC 7748 §5), and so does the XEdDSA check above, so
    encodings that differ only there belong to one key pair: spec §3.3 compares keys in
    this form. Raises ``ValueError`` unless ``u_bytes`` is 32 bytes.
    """
    if len(u_bytes) != _KEY_BYTES:
        raise ValueError("an X25519 key is 32 bytes")
    u = (int.from_bytes(u_bytes, "little") & ((1 << 255) - 1)) % _P
    return u.to_bytes(_KEY_BYTES, "little")


def is_valid_identity_key(scheme: KeyScheme, identity_key: bytes) -> bool:
    """Whether ``identity_key`` is well-formed for ``scheme``, for validating uploads."""
    try:
        identity_key_x25519(scheme, identity_key)
    except (ValueError, TypeError):
        return False
    return True


def _ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """libsodium's detached Ed25519 verification (via ``crypto_sign_open``)."""
    try:
        sodium.crypto_sign_open(signature + message, public_key)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def _xeddsa_verify(identity_key: bytes, message: bytes, signature: bytes) -> bool:
    """libsignal's XEdDSA verification, with libsodium doing the Ed25519 part."""
    if len(identity_key) != IDENTITY_KEY_LENGTH[KeyScheme.XEDDSA]:
        return False
    if identity_key[0] != _DJB_TYPE:
        return False
    sign_bit = signature[63] & 0x80
    edwards_key = _montgomery_to_edwards(identity_key[1:], sign_bit)
    if edwards_key is None:
        return False
    cleared = bytearray(signature)
    cleared[63] &= 0x7F
    # libsignal refuses S >= 2^253 outright (dalek does not need S < L).
    if cleared[63] & 0xE0:
        return False
    return _ed25519_verify(edwards_key, message, bytes(cleared))


def _montgomery_to_edwards(u_bytes: bytes, sign_bit: int) -> bytes | None:
    """Compressed Edwards point for Montgomery ``u``, as curve25519-dalek computes it.

    Like dalek's ``FieldElement::from_bytes``, bit 255 of ``u`` is ignored and
    values at or above ``p`` are taken mod ``p``. ``None`` when ``u = -1``,
    where the birational map is undefined. Whether ``y`` is on the curve at all
    is left to libsodium's decompression during verification.
    """
    u = int.from_bytes(canonical_x25519(u_bytes), "little")
    denominator = (u + 1) % _P
    if denominator == 0:
        return None
    y = (u - 1) * pow(denominator, _P - 2, _P) % _P
    encoded = bytearray(y.to_bytes(_KEY_BYTES, "little"))
    encoded[31] |= sign_bit & 0x80
    return bytes(encoded)


def _clamp(scalar: bytes) -> bytes:
    """X25519 clamping, which libsignal applies to every private key it holds."""
    clamped = bytearray(scalar)
    clamped[0] &= 0xF8
    clamped[31] &= 0x7F
    clamped[31] |= 0x40
    return bytes(clamped)


def _reduce(wide: bytes) -> bytes:
    """Reduce a 64-byte little-endian integer mod L (the Ed25519 group order)."""
    return sodium.crypto_core_ed25519_scalar_reduce(wide)


class IdentityKeyPair:
    """A device's long-term identity key pair, in either scheme (client side).

    The private key never leaves the client; the server only sees
    :attr:`public_key` and signatures.
    """

    __slots__ = ("_private", "_public", "_scheme", "_secret_key")

    def __init__(self, scheme: KeyScheme, private: bytes, public: bytes, secret_key: bytes) -> None:
        """Use :meth:`generate` or :meth:`from_private_bytes` instead."""
        self._scheme = scheme
        self._private = private
        self._public = public
        # ed25519: libsodium's 64-byte secret key (seed || public); xeddsa: the clamped scalar.
        self._secret_key = secret_key

    @classmethod
    def generate(cls, scheme: KeyScheme) -> IdentityKeyPair:
        """A fresh random key pair."""
        return cls.from_private_bytes(scheme, nacl.utils.random(_KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, scheme: KeyScheme, private: bytes) -> IdentityKeyPair:
        """Rebuild a key pair from :attr:`private_bytes` (an xeddsa scalar is clamped)."""
        if len(private) != _KEY_BYTES:
            raise ValueError("private key must be 32 bytes")
        private = bytes(private)
        if scheme == KeyScheme.ED25519:
            public, secret_key = sodium.crypto_sign_seed_keypair(private)
            return cls(KeyScheme.ED25519, private, public, secret_key)
        if scheme == KeyScheme.XEDDSA:
            clamped = _clamp(private)
            public = bytes([_DJB_TYPE]) + sodium.crypto_scalarmult_base(clamped)
            return cls(KeyScheme.XEDDSA, clamped, public, clamped)
        raise ValueError(f"unknown key scheme: {scheme!r}")

    def __repr__(self) -> str:
        """Show the public half only, so keys never end up in logs."""
        return f"IdentityKeyPair(scheme={self._scheme.value!r}, public_key={self._public.hex()})"

    @property
    def scheme(self) -> KeyScheme:
        """The signature scheme this key pair signs with."""
        return self._scheme

    @property
    def public_key(self) -> bytes:
        """The identity key as sent on the wire (32 bytes, or 0x05 + 32 bytes)."""
        return self._public

    @property
    def private_bytes(self) -> bytes:
        """The 32-byte private key: an Ed25519 seed, or a clamped X25519 scalar."""
        return self._private

    def x25519_private(self) -> bytes:
        """The X25519 private scalar, for X3DH with the same identity."""
        if self._scheme == KeyScheme.ED25519:
            return sodium.crypto_sign_ed25519_sk_to_curve25519(self._secret_key)
        return self._private

    def x25519_public(self) -> bytes:
        """The X25519 public key; equals ``identity_key_x25519(scheme, public_key)``."""
        return identity_key_x25519(self._scheme, self._public)

    def sign(self, message: bytes) -> bytes:
        """A 64-byte signature over ``message`` that :func:`verify_signature` accepts."""
        if self._scheme == KeyScheme.ED25519:
            return sodium.crypto_sign(bytes(message), self._secret_key)[:SIGNATURE_LENGTH]
        return self._xeddsa_sign(bytes(message))

    def _xeddsa_sign(self, message: bytes) -> bytes:
        """libsignal's ``PrivateKey::calculate_signature``, step for step."""
        key_data = self._private
        a = _reduce(key_data + bytes(_KEY_BYTES))
        cap_a = sodium.crypto_scalarmult_ed25519_base_noclamp(a)
        sign_bit = cap_a[31] & 0x80
        r = _reduce(
            hashlib.sha512(
                _XEDDSA_NONCE_PREFIX + key_data + message + nacl.utils.random(64)
            ).digest()
        )
        cap_r = sodium.crypto_scalarmult_ed25519_base_noclamp(r)
        h = _reduce(hashlib.sha512(cap_r + cap_a + message).digest())
        s = sodium.crypto_core_ed25519_scalar_add(sodium.crypto_core_ed25519_scalar_mul(h, a), r)
        signature = bytearray(cap_r + s)
        signature[63] = (signature[63] & 0x7F) | sign_bit
        return bytes(signature)
