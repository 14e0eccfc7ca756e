"""The at-rest key material on its own: key files, the key ring's keyed hashes and sealed
text, and envelope sealing (bound to recipient, id and key id)."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import struct
import sys
import threading
from dataclasses import replace
from pathlib import Path

import nacl.bindings
import pytest

from storage.at_rest.keyring import BLIND_PREFIX, KeyRing, SealError
from storage.at_rest.master_key import (
    LocalKeyFile,
    MasterKeyError,
    create_key_file,
    fingerprint,
    read_key_file,
)
from storage.at_rest.sealing import RingSealer
from storage.at_rest.xchacha import XChaCha20Poly1305, hchacha20
from storage.records import Envelope, SharedPayload

KEY = bytes(range(32))
USER = "6f1c2a9e-8d3b-4c5a-9e7f-1a2b3c4d5e6f"


def _ring(active: int = 1) -> KeyRing:
    return KeyRing(index_key=os.urandom(32), data_keys={active: os.urandom(32)}, active_id=active)


def _envelope(**changes: object) -> Envelope:
    base = Envelope(
        id=b"\x01" * 16,
        recipient_user="b:recipient",
        recipient_device=2,
        sender_user=USER,
        sender_device=3,
        ts=1_700_000_000_123,
        server_ts=1_700_000_000_456,
        type=1,
        body=b"ciphertext body",
        nonce=b"\x07" * 16,
        expires_ms=1_800_000_000_000,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "content",
    [KEY, KEY.hex().encode() + b"\n", base64.b64encode(KEY) + b"\n", KEY.hex().upper().encode()],
    ids=["raw", "hex", "base64", "HEX"],
)
def test_a_key_file_holds_the_key_in_any_of_three_forms(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(content)
    assert read_key_file(path) == KEY


@pytest.mark.parametrize("content", [b"", b"short", KEY[:31], KEY.hex()[:-1].encode(), b"x" * 300])
def test_a_file_without_a_32_byte_key_is_refused_in_one_line(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(content)
    with pytest.raises(MasterKeyError) as caught:
        read_key_file(path)
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="does not exist"):
        read_key_file(tmp_path / "absent.key")


def test_a_created_key_file_is_private_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    key = create_key_file(path)
    assert read_key_file(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(MasterKeyError, match="exists already"):
        create_key_file(path)
    assert read_key_file(path) == key


def test_wrapping_is_bound_to_the_master_key_and_the_context() -> None:
    wrapper = LocalKeyFile(KEY)
    wrapped = wrapper.wrap(b"k" * 32, context=b"data/1")
    assert wrapper.unwrap(wrapped, context=b"data/1") == b"k" * 32
    with pytest.raises(MasterKeyError):
        wrapper.unwrap(wrapped, context=b"data/2")
    with pytest.raises(MasterKeyError):
        LocalKeyFile(os.urandom(32)).unwrap(wrapped, context=b"data/1")
    assert wrapper.key_id == fingerprint(KEY) != LocalKeyFile(os.urandom(32)).key_id
    assert KEY.hex() not in wrapper.key_id


def test_blinded_ids_are_stable_per_index_key_and_show_nothing_of_the_id() -> None:
    ring, other = _ring(), _ring()
    blinded = ring.blind_user(USER)
    assert blinded == ring.blind_user(USER) != ring.blind_user(USER.replace("6", "7"))
    assert blinded != other.blind_user(USER)
    assert blinded.startswith(BLIND_PREFIX)
    assert USER not in blinded and USER.replace("-", "") not in blinded
    assert ring.blind_nonce(b"n" * 16) == ring.blind_nonce(b"n" * 16) != ring.blind(b"x", b"n" * 16)


def test_the_keyed_hash_is_keyed_blake2b_as_stores_already_hold_it() -> None:
    """Stores written by every earlier release hold these hashes: the function must not
    change, however it is computed."""
    index_key = os.urandom(32)
    ring = KeyRing(index_key=index_key, data_keys={1: os.urandom(32)}, active_id=1)
    for label, value in ((b"user", USER.encode()), (b"nonce", b"n" * 24), (b"nonce", b"")):
        expected = hashlib.blake2b(value, key=index_key, person=label, digest_size=16).digest()
        assert ring.blind(label, value) == expected
        assert ring.blind(label, value) == expected  # the kept key schedule is not changed
    assert ring.blind_user(USER) == BLIND_PREFIX + ring.blind(b"user", USER.encode()).hex()
    for nonce in (b"n" * 24, b"m" * 16, b""):
        expected = hashlib.blake2b(nonce, key=index_key, person=b"nonce", digest_size=16)
        assert ring.blind_nonce(nonce) == expected.digest()


def test_a_sealed_row_is_xchacha20poly1305_over_the_documented_associated_data() -> None:
    """Rows written by every earlier release open with this layout, and theirs with ours:
    sealing keeps per-device parts at hand, which must not change the bytes."""
    ring = _ring()
    sealer = RingSealer(ring)
    for recipient, device, message_id in [
        ("b:first", 2, b"\x01" * 16),
        ("b:second", 7, b"\x02" * 16),
        ("b:first", 2, b"\x03" * 16),  # the first device again: its kept parts
        ("b:first", 3, b"\x04" * 16),
    ]:
        envelope = _envelope(recipient_device=device, id=message_id)
        key_id, sealed = sealer.seal(envelope, recipient)
        assert sealed is not None
        associated = (
            b"relay-envelope-v1\x00"
            + struct.pack(">IHH", key_id, device, len(recipient.encode()))
            + recipient.encode()
            + message_id
        )
        plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[24:], associated, sealed[:24], ring.data_key(key_id)
        )
        sender = envelope.sender_user.encode()
        assert plain == (
            struct.pack(">HqIH", 3, envelope.ts, 1, len(sender))
            + sender
            + struct.pack(">H", len(envelope.nonce))
            + envelope.nonce
            + envelope.body
        )


def test_receipt_tags_are_the_keyed_hash_of_recipient_device_and_id() -> None:
    """An ack finds the copies that asked for a receipt by recomputing their tags: a tag must
    stay what rows stored earlier hold, for every recipient and device."""
    ring = _ring()
    sealer = RingSealer(ring)
    for recipient, device, message_id, wanted in [
        ("b:first", 2, b"\x01" * 16, True),
        ("b:first", 2, b"\x02" * 16, True),
        ("b:first", 2, b"\x02" * 16, False),
        ("b:second", 2, b"\x01" * 16, True),
        ("b:first", 9, b"\x01" * 16, True),
    ]:
        label = b"receipt" if wanted else b"no-receipt"
        where = recipient.encode() + device.to_bytes(4, "big") + message_id
        tag = sealer.receipt_tag(recipient, device, message_id, wanted=wanted)
        assert tag == ring.blind(label, where)
    assert sealer.receipt_tag("b:first", 2, b"\x01" * 16, wanted=True) != sealer.receipt_tag(
        "b:first", 2, b"\x01" * 16, wanted=False
    )


def test_sealed_text_opens_only_under_its_index_key() -> None:
    ring = _ring()
    sealed = ring.seal_text(USER)
    assert USER not in sealed and sealed != ring.seal_text(USER)  # random nonce each time
    assert ring.open_text(sealed) == USER
    assert ring.open_text(USER) == USER  # a value never sealed comes back as it is
    with pytest.raises(SealError):
        _ring().open_text(sealed)


def test_an_envelope_opens_to_every_sealed_field() -> None:
    ring = _ring()
    sealer = RingSealer(ring)
    envelope = _envelope()
    key_id, sealed = sealer.seal(envelope, envelope.recipient_user)
    assert key_id == 1 and sealed is not None
    for secret in (envelope.body, envelope.nonce, envelope.sender_user.encode()):
        assert secret not in sealed
    opened = sealer.open(envelope.recipient_user, 2, envelope.id, key_id, sealed)
    assert opened is not None
    assert (opened.sender_user, opened.sender_device, opened.ts, opened.type) == (
        USER,
        3,
        envelope.ts,
        1,
    )
    assert (opened.nonce, opened.body) == (envelope.nonce, envelope.body)


def test_an_empty_body_and_a_long_sender_round_trip() -> None:
    sealer = RingSealer(_ring())
    envelope = _envelope(body=b"", sender_user="x" * 300, nonce=b"")
    key_id, sealed = sealer.seal(envelope, envelope.recipient_user)
    assert sealed is not None
    opened = sealer.open("b:recipient", 2, envelope.id, key_id, sealed)
    assert opened is not None and opened.body == b"" and opened.sender_user == "x" * 300


def test_the_recipient_bound_is_the_name_the_row_holds() -> None:
    """The queue seals with the recipient as its row names it (the keyed hash), which need
    not be the name the envelope carries (the real id)."""
    sealer = RingSealer(_ring())
    envelope = _envelope(recipient_user="the real id")
    key_id, sealed = sealer.seal(envelope, "b:hashed")
    assert sealed is not None
    assert sealer.open("b:hashed", 2, envelope.id, key_id, sealed) is not None
    assert sealer.open("the real id", 2, envelope.id, key_id, sealed) is None


@pytest.mark.parametrize(
    "place",
    ["another recipient", "another device", "another id", "another key id", "a flipped bit"],
)
def test_a_sealed_row_moved_or_changed_does_not_open_and_is_reported(place: str) -> None:
    ring = _ring()
    ring.install(2, os.urandom(32), active=False)
    reasons: list[str] = []
    sealer = RingSealer(ring, on_undecryptable=reasons.append)
    envelope = _envelope()
    key_id, sealed = sealer.seal(envelope, envelope.recipient_user)
    assert sealed is not None
    user, device, message_id = envelope.recipient_user, 2, envelope.id
    if place == "another recipient":
        user = "b:someone-else"
    elif place == "another device":
        device = 3
    elif place == "another id":
        message_id = b"\x02" * 16
    elif place == "another key id":
        key_id = 2
    else:
        sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
    assert sealer.open(user, device, message_id, key_id, sealed) is None
    assert reasons == ["does_not_open"]


def test_a_row_naming_an_unknown_key_is_reported_as_such() -> None:
    reasons: list[str] = []
    sealer = RingSealer(_ring(), on_undecryptable=reasons.append)
    _key_id, sealed = sealer.seal(_envelope(), "b:recipient")
    assert sealed is not None
    assert sealer.open("b:recipient", 2, b"\x01" * 16, 9, sealed) is None
    assert reasons == ["unknown_key"]


def test_sealing_follows_the_active_key() -> None:
    ring = _ring()
    sealer = RingSealer(ring)
    ring.install(5, os.urandom(32), active=True)
    key_id, sealed = sealer.seal(_envelope(), "b:recipient")
    assert key_id == 5 and sealed is not None
    assert sealer.open("b:recipient", 2, b"\x01" * 16, 5, sealed) is not None


def test_rows_sealed_on_another_thread_while_the_active_key_changes_open_with_the_key_named() -> (
    None
):
    """The embedded store seals an ack's receipts on its writer thread while the event loop
    may activate another key: every row must be sealed with the key whose id it records."""
    ring = _ring(1)
    ring.install(2, os.urandom(32), active=False)
    sealer = RingSealer(ring)
    sealed_rows: list[tuple[bytes, int, bytes | None]] = []
    sealed_payloads: list[tuple[bytes, int, bytes | None]] = []

    def seal_rows() -> None:
        for n in range(3000):
            message_id = n.to_bytes(16, "big")
            sealed_rows.append((message_id, *sealer.seal(_envelope(id=message_id), "b:recipient")))
            payload = SharedPayload(id=message_id, body=b"shared body")
            sealed_payloads.append((message_id, *sealer.seal_payload(payload)))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as the interpreter allows
    try:
        sealing = threading.Thread(target=seal_rows)
        sealing.start()
        while sealing.is_alive():
            ring.activate(2 if ring.active_id == 1 else 1)
        sealing.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(sealed_rows) == len(sealed_payloads) == 3000
    for message_id, key_id, sealed in sealed_rows:
        assert sealed is not None
        assert sealer.open("b:recipient", 2, message_id, key_id, sealed) is not None
    for payload_id, key_id, sealed in sealed_payloads:
        assert sealed is not None
        assert sealer.open_payload(payload_id, key_id, sealed) == b"shared body"


def test_hchacha20_matches_the_published_test_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    expected = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    assert hchacha20(key, nonce).hex() == expected


@pytest.mark.parametrize("size", [0, 1, 63, 64, 1024, 70_000])
def test_xchacha_is_libsodiums_xchacha20poly1305_ietf_both_ways(size: int) -> None:
    key, nonce, aad = os.urandom(32), os.urandom(24), os.urandom(40)
    plain = os.urandom(size)
    ours = XChaCha20Poly1305()
    sealed = ours.encrypt(key, nonce, plain, aad)
    assert (
        nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, aad, nonce, key) == plain
    )
    theirs = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plain, aad, nonce, key)
    assert theirs == sealed
    assert ours.decrypt(key, nonce, theirs, aad) == plain
    with pytest.raises(ValueError):
        ours.decrypt(key, nonce, theirs, aad + b"x")
    with pytest.raises(ValueError):
        ours.decrypt(key, nonce[:-1] + bytes([nonce[-1] ^ 1]), theirs, aad)


def test_sealing_nonces_never_repeat_within_a_sealer() -> None:
    sealer = RingSealer(_ring())
    nonces = {sealer.seal(_envelope(), "b:recipient")[1][:24] for _ in range(2000)}  # type: ignore[index]
    assert len(nonces) == 2000
    other = RingSealer(_ring())
    theirs, ours = other.seal(_envelope(), "b:recipient"), sealer.seal(_envelope(), "b:recipient")
    assert theirs[1][:16] != ours[1][:16]  # type: ignore[index]
