"""Builders shared by the test_crypto_* modules (this module holds no tests itself)."""

from __future__ import annotations

import dataclasses
from typing import Any

from protocol.crypto.device_keys import DeviceKeys
from protocol.crypto.session import RemoteBundle, Session, accept_session, start_session
from protocol.signatures import KeyScheme

NOW_MS = 1_700_000_000_000


def make_device(
    scheme: KeyScheme = KeyScheme.XEDDSA, *, prekeys: int = 2, pq: int = 2
) -> DeviceKeys:
    """A device with a few pre-keys (ML-KEM key generation is the slow part)."""
    return DeviceKeys.generate(scheme, prekeys=prekeys, pq_prekeys=pq, now_ms=NOW_MS)


def bundle_of(
    keys: DeviceKeys, *, prekey: bool = True, pq: bool = True, last_resort: bool = False
) -> RemoteBundle:
    """What ``keys.fetch`` would hand out for ``keys``' device."""
    fields: dict[str, Any] = {}
    if prekey:
        one_time = next(iter(keys.prekeys.values()))
        fields.update(prekey_id=one_time.id, prekey=one_time.public)
    if pq:
        pq_key = keys.pq_last_resort if last_resort else next(iter(keys.pq_prekeys.values()))
        fields.update(
            pq_prekey_id=pq_key.id, pq_prekey=pq_key.public, pq_prekey_signature=pq_key.signature
        )
    return RemoteBundle(
        device=1,
        registration_id=keys.registration_id,
        identity_key=keys.identity.public_key,
        key_scheme=keys.identity.scheme,
        signed_prekey_id=keys.signed_prekey.id,
        signed_prekey=keys.signed_prekey.public,
        signed_prekey_signature=keys.signed_prekey.signature,
        **fields,
    )


def replace_bundle(bundle: RemoteBundle, **changes: Any) -> RemoteBundle:
    """``bundle`` with some fields changed."""
    return dataclasses.replace(bundle, **changes)


def established(
    alice_scheme: KeyScheme = KeyScheme.ED25519, bob_scheme: KeyScheme = KeyScheme.XEDDSA
) -> tuple[Session, Session]:
    """Alice (initiator) and Bob (responder) after one message each way."""
    alice_keys, bob_keys = make_device(alice_scheme), make_device(bob_scheme)
    alice = start_session(alice_keys, bundle_of(bob_keys))
    msg_type, body = alice.encrypt(b"hello bob")
    assert msg_type == 1
    bob, plaintext = accept_session(bob_keys, body)
    assert plaintext == b"hello bob"
    reply_type, reply = bob.encrypt(b"hello alice")
    assert reply_type == 2
    assert alice.decrypt(reply_type, reply) == b"hello alice"
    return alice, bob


def flip(body: bytes, index: int, mask: int = 0x01) -> bytes:
    """``body`` with the byte at ``index`` xor-ed with ``mask`` (non-zero)."""
    changed = bytearray(body)
    changed[index] ^= mask
    return bytes(changed)
