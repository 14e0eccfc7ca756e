"""A remote device's pre-key bundle, as ``keys.fetch`` hands it out, and its checks.

Nothing from a bundle is used before :func:`verify_bundle` has checked every
key's form and both signatures against the remote identity key (the relay
checks them on upload too, but the client does not trust the relay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocol.crypto import primitives
from protocol.crypto.errors import UntrustedBundle
from protocol.signatures import KeyScheme, identity_key_x25519, verify_signature

__all__ = ["RemoteBundle", "VerifiedBundle", "verify_bundle"]

_U32_MAX: Final = 2**32 - 1


@dataclass(frozen=True)
class RemoteBundle:
    """One device entry of a ``keys.fetch`` answer (spec §6), keys byte for byte as fetched."""

    device: int
    registration_id: int
    identity_key: bytes
    key_scheme: KeyScheme
    signed_prekey_id: int
    signed_prekey: bytes
    signed_prekey_signature: bytes
    prekey_id: int | None = None
    prekey: bytes | None = None
    pq_prekey_id: int | None = None
    pq_prekey: bytes | None = None
    pq_prekey_signature: bytes | None = None


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signatures verified, with its keys in raw form."""

    bundle: RemoteBundle
    identity_x25519: bytes
    signed_prekey: bytes
    prekey: bytes | None
    pq_prekey: bytes | None


def _check_u32(name: str, value: int | None) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U32_MAX:
        raise UntrustedBundle(f"{name} is not an unsigned 32-bit integer")


def verify_bundle(bundle: RemoteBundle) -> VerifiedBundle:
    """Check a bundle's key forms and signatures; any failure is :class:`UntrustedBundle`."""
    for name in ("device", "registration_id", "signed_prekey_id", "prekey_id", "pq_prekey_id"):
        _check_u32(name, getattr(bundle, name))
    try:
        scheme = KeyScheme(bundle.key_scheme)
        identity = identity_key_x25519(scheme, bundle.identity_key)
        signed_prekey = primitives.decode_ec_public(bundle.signed_prekey)
    except (ValueError, TypeError) as exc:
        raise UntrustedBundle("malformed identity key or signed pre-key") from exc
    if not verify_signature(
        scheme, bundle.identity_key, bundle.signed_prekey, bundle.signed_prekey_signature
    ):
        raise UntrustedBundle("signed pre-key signature does not verify")

    prekey: bytes | None = None
    if (bundle.prekey_id is None) != (bundle.prekey is None):
        raise UntrustedBundle("one-time pre-key without its id, or id without key")
    if bundle.prekey is not None:
        try:
            prekey = primitives.decode_ec_public(bundle.prekey)
        except (ValueError, TypeError) as exc:
            raise UntrustedBundle("malformed one-time pre-key") from exc

    pq_prekey: bytes | None = None
    pq_fields = (bundle.pq_prekey_id, bundle.pq_prekey, bundle.pq_prekey_signature)
    if any(field is None for field in pq_fields) and any(field is not None for field in pq_fields):
        raise UntrustedBundle("PQ pre-key without its id or signature")
    if bundle.pq_prekey is not None and bundle.pq_prekey_signature is not None:
        if not verify_signature(
            scheme, bundle.identity_key, bundle.pq_prekey, bundle.pq_prekey_signature
        ):
            raise UntrustedBundle("PQ pre-key signature does not verify")
        try:
            pq_prekey = primitives.decode_kem_public(bundle.pq_prekey)
        except (ValueError, TypeError) as exc:
            # Signed but of a kind this client cannot use: refuse rather than fall back to X3DH.
            raise UntrustedBundle("PQ pre-key is not an ML-KEM-1024 key") from exc
    return VerifiedBundle(bundle, identity, signed_prekey, prekey, pq_prekey)
