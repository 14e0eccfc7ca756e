"""End-to-end crypto of the client: pre-keys, X3DH/PQXDH and the Double Ratchet (Sans-I/O).

Modules: ``primitives`` (the library calls), ``keys`` (a device's private key
material), ``bundle`` (a fetched remote bundle and its checks), ``agreement``
(X3DH/PQXDH), ``ratchet`` (the Double Ratchet), ``wire`` (the body formats of
message types 1 and 2), ``session`` (the API a client uses), ``state``
(msgpack of stored state), ``fingerprint`` (safety numbers) and ``errors``.
docs/encryption.md describes the construction and formats.
"""

from protocol.crypto.bundle import RemoteBundle
from protocol.crypto.device_keys import DeviceKeys, OneTimePreKey, PQPreKey, SignedPreKeyPair
from protocol.crypto.errors import (
    CryptoError,
    DecryptError,
    SessionMismatch,
    StateError,
    UntrustedBundle,
)
from protocol.crypto.session import (
    Session,
    accept_session,
    peek_base_key,
    peek_identity,
    peek_prekey_header,
    receive,
    start_session,
)

__all__ = [
    "CryptoError",
    "DecryptError",
    "DeviceKeys",
    "OneTimePreKey",
    "PQPreKey",
    "RemoteBundle",
    "Session",
    "SessionMismatch",
    "SignedPreKeyPair",
    "StateError",
    "UntrustedBundle",
    "accept_session",
    "peek_base_key",
    "peek_identity",
    "peek_prekey_header",
    "receive",
    "start_session",
]
