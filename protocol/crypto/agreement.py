"""X3DH and PQXDH: the shared secret that starts a session, as Signal specifies them.

With Alice the initiator and Bob the responder::

    DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B)
    SS  = ML-KEM-1024 shared secret encapsulated to PQPK_B          (PQXDH only)
    SK  = HKDF-SHA256(salt = 32 zero bytes, ikm = F || DH1 || DH2 || DH3 [|| DH4] [|| SS],
                      info = X3DH_INFO or PQXDH_INFO, 32 bytes),   F = 32 bytes 0xFF
    AD  = Encode(IK_A) || Encode(IK_B),   Encode(K) = 0x05 || X25519 form of K

PQXDH runs whenever the bundle offers a PQ pre-key, X3DH only when it does not.
Identity keys of either scheme enter the DH in their X25519 form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocol.crypto import primitives
from protocol.crypto.bundle import VerifiedBundle
from protocol.crypto.device_keys import DeviceKeys, SignedPreKeyPair
from protocol.crypto.wire import PreKeyHeader

__all__ = [
    "PQXDH_INFO",
    "X3DH_INFO",
    "InitiatorAgreement",
    "ResponderAgreement",
    "associated_data",
    "initiate",
    "respond",
]

X3DH_INFO: Final = b"RelayX3DH_CURVE25519_SHA-256"
PQXDH_INFO: Final = b"RelayPQXDH_CURVE25519_SHA-256_ML-KEM-1024"
_F: Final = b"\xff" * primitives.KEY_BYTES
_SALT: Final = bytes(32)


@dataclass(frozen=True)
class InitiatorAgreement:
    """The initiator's result: the secret, the AD, and the header its type-1 messages carry."""

    secret: bytes
    associated_data: bytes
    header: PreKeyHeader
    remote_signed_prekey: bytes


@dataclass(frozen=True)
class ResponderAgreement:
    """The responder's result: the secret, the AD and the signed pre-key that was used."""

    secret: bytes
    associated_data: bytes
    signed_prekey: SignedPreKeyPair


def associated_data(initiator_x25519: bytes, responder_x25519: bytes) -> bytes:
    """``Encode(IK_A) || Encode(IK_B)``: both identities, initiator first."""
    return primitives.encode_ec_public(initiator_x25519) + primitives.encode_ec_public(
        responder_x25519
    )


def _derive(dh_outputs: list[bytes], kem_secret: bytes | None) -> bytes:
    ikm = _F + b"".join(dh_outputs) + (kem_secret or b"")
    info = X3DH_INFO if kem_secret is None else PQXDH_INFO
    return primitives.hkdf_sha256(ikm, salt=_SALT, info=info, length=32)


def initiate(own: DeviceKeys, remote: VerifiedBundle) -> InitiatorAgreement:
    """Alice's side. A small-order remote key is ``ValueError``."""
    bundle = remote.bundle
    identity_private = own.identity.x25519_private()
    ephemeral_private, ephemeral_public = primitives.x25519_generate()
    dh = [
        primitives.x25519(identity_private, remote.signed_prekey),
        primitives.x25519(ephemeral_private, remote.identity_x25519),
        primitives.x25519(ephemeral_private, remote.signed_prekey),
    ]
    if remote.prekey is not None:
        dh.append(primitives.x25519(ephemeral_private, remote.prekey))
    kem_secret: bytes | None = None
    kem_ciphertext: bytes | None = None
    if remote.pq_prekey is not None:
        kem_secret, kem_ciphertext = primitives.kem_encapsulate(remote.pq_prekey)
    header = PreKeyHeader(
        identity_key=own.identity.public_key,
        key_scheme=own.identity.scheme,
        registration_id=own.registration_id,
        base_key=ephemeral_public,
        signed_prekey_id=bundle.signed_prekey_id,
        prekey_id=bundle.prekey_id if remote.prekey is not None else None,
        pq_prekey_id=bundle.pq_prekey_id if remote.pq_prekey is not None else None,
        kem_ciphertext=kem_ciphertext,
    )
    return InitiatorAgreement(
        secret=_derive(dh, kem_secret),
        associated_data=associated_data(own.identity.x25519_public(), remote.identity_x25519),
        header=header,
        remote_signed_prekey=remote.signed_prekey,
    )


def respond(own: DeviceKeys, header: PreKeyHeader, initiator_x25519: bytes) -> ResponderAgreement:
    """Bob's side, from a type-1 header. Unknown pre-key ids or bad keys are ``ValueError``.

    Nothing is consumed here: the caller removes the one-time keys once the
    first message has decrypted.
    """
    signed_prekey = own.find_signed_prekey(header.signed_prekey_id)
    if signed_prekey is None:
        raise ValueError("unknown signed pre-key id")
    dh = [
        primitives.x25519(signed_prekey.private, initiator_x25519),
        primitives.x25519(own.identity.x25519_private(), header.base_key),
        primitives.x25519(signed_prekey.private, header.base_key),
    ]
    if header.prekey_id is not None:
        prekey = own.prekeys.get(header.prekey_id)
        if prekey is None:
            raise ValueError("unknown or already used one-time pre-key id")
        dh.append(primitives.x25519(prekey.private, header.base_key))
    kem_secret: bytes | None = None
    if header.pq_prekey_id is not None:
        pq_prekey = own.find_pq_prekey(header.pq_prekey_id)
        if pq_prekey is None or header.kem_ciphertext is None:
            raise ValueError("unknown or already used PQ pre-key id")
        kem_secret = primitives.kem_decapsulate(pq_prekey.private, header.kem_ciphertext)
    return ResponderAgreement(
        secret=_derive(dh, kem_secret),
        associated_data=associated_data(initiator_x25519, own.identity.x25519_public()),
        signed_prekey=signed_prekey,
    )
