"""X3DH and PQXDH: both sides derive one secret; bundles are verified; pre-keys are consumed."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from protocol.crypto import agreement, primitives
from protocol.crypto.bundle import verify_bundle
from protocol.crypto.errors import DecryptError, UntrustedBundle
from protocol.crypto.session import accept_session, peek_identity, peek_prekey_header, start_session
from protocol.crypto.wire import PreKeyHeader
from protocol.signatures import KeyScheme, identity_key_x25519

from .test_crypto_support import bundle_of, flip, make_device, replace_bundle

SCHEME_PAIRS = list(itertools.product(KeyScheme, KeyScheme))


def _pair_id(pair: tuple[KeyScheme, KeyScheme]) -> str:
    return f"{pair[0].value}-to-{pair[1].value}"


@pytest.mark.parametrize("schemes", SCHEME_PAIRS, ids=_pair_id)
@pytest.mark.parametrize("one_time", [True, False], ids=["with-opk", "without-opk"])
@pytest.mark.parametrize("pq", [True, False], ids=["pqxdh", "x3dh"])
def test_both_sides_derive_the_same_secret(
    schemes: tuple[KeyScheme, KeyScheme], one_time: bool, pq: bool
) -> None:
    alice, bob = make_device(schemes[0]), make_device(schemes[1])
    initiated = agreement.initiate(alice, verify_bundle(bundle_of(bob, prekey=one_time, pq=pq)))
    header = initiated.header
    assert (header.prekey_id is not None) is one_time
    assert (header.pq_prekey_id is not None) is pq
    assert (header.kem_ciphertext is not None) is pq
    alice_x25519 = identity_key_x25519(header.key_scheme, header.identity_key)
    responded = agreement.respond(bob, header, alice_x25519)
    assert len(initiated.secret) == 32
    assert responded.secret == initiated.secret
    # AD: Encode(IK_A) || Encode(IK_B), initiator first.
    expected_ad = b"\x05" + alice.identity.x25519_public() + b"\x05" + bob.identity.x25519_public()
    assert initiated.associated_data == responded.associated_data == expected_ad


def test_each_dh_and_the_kem_secret_matter() -> None:
    alice, bob = make_device(), make_device()
    full = agreement.initiate(alice, verify_bundle(bundle_of(bob)))
    alice_x25519 = alice.identity.x25519_public()
    # Without the one-time key the responder computes another secret.
    no_opk = agreement.respond(bob, replace_header(full.header, prekey_id=None), alice_x25519)
    assert no_opk.secret != full.secret
    # A ciphertext for another encapsulation gives another KEM secret, so another SK.
    other_ct = primitives.kem_encapsulate(next(iter(bob.pq_prekeys.values())).public[1:])[1]
    no_pq = agreement.respond(
        bob, replace_header(full.header, kem_ciphertext=other_ct), alice_x25519
    )
    assert no_pq.secret != full.secret


def replace_header(header: PreKeyHeader, **changes: Any) -> PreKeyHeader:
    return dataclasses.replace(header, **changes)


def test_x3dh_and_pqxdh_use_distinct_info_strings() -> None:
    infos = {agreement.X3DH_INFO, agreement.PQXDH_INFO}
    assert len(infos) == 2
    assert all(len(info) >= 8 for info in infos)
    assert agreement.PQXDH_INFO.endswith(b"ML-KEM-1024")


@pytest.mark.parametrize("scheme", list(KeyScheme))
def test_tampered_signed_prekey_signature_is_untrusted(scheme: KeyScheme) -> None:
    alice, bob = make_device(), make_device(scheme)
    bundle = bundle_of(bob)
    for changed in (
        replace_bundle(bundle, signed_prekey_signature=flip(bundle.signed_prekey_signature, 5)),
        replace_bundle(bundle, signed_prekey=flip(bundle.signed_prekey, 7)),
        replace_bundle(bundle, identity_key=make_device(scheme).identity.public_key),
        replace_bundle(bundle, signed_prekey_signature=b""),
    ):
        with pytest.raises(UntrustedBundle):
            start_session(alice, changed)


@pytest.mark.parametrize("scheme", list(KeyScheme))
def test_tampered_pq_prekey_signature_is_untrusted(scheme: KeyScheme) -> None:
    alice, bob = make_device(), make_device(scheme)
    bundle = bundle_of(bob)
    assert bundle.pq_prekey is not None and bundle.pq_prekey_signature is not None
    for changed in (
        replace_bundle(bundle, pq_prekey_signature=flip(bundle.pq_prekey_signature, 9)),
        replace_bundle(bundle, pq_prekey=flip(bundle.pq_prekey, 100)),
        replace_bundle(bundle, pq_prekey_signature=None),
        replace_bundle(bundle, pq_prekey_id=None),
    ):
        with pytest.raises(UntrustedBundle):
            start_session(alice, changed)


def test_signed_pq_key_that_is_not_ml_kem_is_refused_not_downgraded() -> None:
    alice, bob = make_device(), make_device()
    odd_key = b"\x07" + bytes(100)
    bundle = replace_bundle(
        bundle_of(bob), pq_prekey=odd_key, pq_prekey_signature=bob.identity.sign(odd_key)
    )
    with pytest.raises(UntrustedBundle):
        start_session(alice, bundle)


def test_malformed_bundle_fields_are_untrusted() -> None:
    alice, bob = make_device(), make_device(KeyScheme.XEDDSA)
    bundle = bundle_of(bob)
    for changed in (
        replace_bundle(bundle, identity_key=b"\x06" + bundle.identity_key[1:]),
        replace_bundle(bundle, identity_key=bundle.identity_key[:32]),
        replace_bundle(bundle, prekey=None),
        replace_bundle(bundle, prekey=b"\x05" + bytes(30)),
        replace_bundle(bundle, prekey=bytes(32)),  # small order
        replace_bundle(bundle, signed_prekey_id=-1),
        replace_bundle(bundle, registration_id=2**32),
    ):
        with pytest.raises(UntrustedBundle):
            start_session(alice, changed)


def test_small_order_signed_prekey_is_untrusted() -> None:
    alice, bob = make_device(), make_device()
    small_order = b"\x05" + bytes(32)  # u = 0
    bundle = replace_bundle(
        bundle_of(bob),
        signed_prekey=small_order,
        signed_prekey_signature=bob.identity.sign(small_order),
    )
    with pytest.raises(UntrustedBundle):
        start_session(alice, bundle)


def test_raw_32_byte_prekeys_are_accepted() -> None:
    alice, bob = make_device(), make_device()
    raw_spk = bob.signed_prekey.public[1:]
    raw_opk = next(iter(bob.prekeys.values())).public[1:]
    bundle = replace_bundle(
        bundle_of(bob),
        signed_prekey=raw_spk,
        signed_prekey_signature=bob.identity.sign(raw_spk),
        prekey=raw_opk,
    )
    _, body = start_session(alice, bundle).encrypt(b"raw keys")
    assert accept_session(bob, body)[1] == b"raw keys"


@pytest.mark.parametrize("pq", [True, False], ids=["pqxdh", "x3dh"])
def test_accept_consumes_one_time_keys_but_never_the_last_resort(pq: bool) -> None:
    alice, bob = make_device(), make_device()
    bundle = bundle_of(bob, pq=pq)
    prekeys, pq_prekeys = set(bob.prekeys), set(bob.pq_prekeys)
    _, body = start_session(alice, bundle).encrypt(b"first")
    header = peek_prekey_header(body, 1)
    assert header is not None and header.registration_id == alice.registration_id
    assert peek_identity(body, 1) == alice.identity.public_key
    assert peek_identity(body, 2) is None and peek_identity(b"junk", 1) is None
    session, plaintext = accept_session(bob, body)
    assert plaintext == b"first"
    assert session.remote_identity_key == alice.identity.public_key
    assert session.remote_registration_id == alice.registration_id
    assert set(bob.prekeys) == prekeys - {bundle.prekey_id}
    assert set(bob.pq_prekeys) == (pq_prekeys - {bundle.pq_prekey_id} if pq else pq_prekeys)
    # The one-time key is gone: the same first message cannot start a session again.
    with pytest.raises(DecryptError):
        accept_session(bob, body)


def test_last_resort_pq_key_is_kept() -> None:
    alice, bob = make_device(), make_device()
    last_resort = bob.pq_last_resort
    _, body = start_session(alice, bundle_of(bob, last_resort=True)).encrypt(b"lr")
    assert accept_session(bob, body)[1] == b"lr"
    assert bob.pq_last_resort == last_resort
    _, body = start_session(make_device(), bundle_of(bob, prekey=False, last_resort=True)).encrypt(
        b"again"
    )
    assert accept_session(bob, body)[1] == b"again"


def test_previous_signed_prekey_still_accepts_late_first_messages() -> None:
    alice, bob = make_device(), make_device()
    _, body = start_session(alice, bundle_of(bob)).encrypt(b"late")
    bob.rotate_signed_prekey(1)
    assert accept_session(bob, body)[1] == b"late"
    _, stale = start_session(make_device(), bundle_of(bob, prekey=False)).encrypt(b"stale")
    bob.rotate_signed_prekey(2)
    bob.rotate_signed_prekey(3)
    with pytest.raises(DecryptError):
        accept_session(bob, stale)


def test_failed_accept_leaves_the_keys_unchanged() -> None:
    alice, bob = make_device(), make_device()
    _, body = start_session(alice, bundle_of(bob)).encrypt(b"x")
    before = bob.to_bytes()
    with pytest.raises(DecryptError):
        accept_session(bob, body[:-1] + bytes([body[-1] ^ 1]))
    assert bob.to_bytes() == before
    with pytest.raises(DecryptError):
        accept_session(make_device(), body)  # addressed to another device
    assert accept_session(bob, body)[1] == b"x"


def test_previous_last_resort_pq_key_still_accepts_late_first_messages() -> None:
    alice, bob = make_device(), make_device()
    _, body = start_session(alice, bundle_of(bob, prekey=False, last_resort=True)).encrypt(b"pq")
    bob.rotate_pq_last_resort()
    assert accept_session(bob, body)[1] == b"pq"
