"""Sessions: message types, ratchet round trips, first messages, bounds, wire layout, storage."""

from __future__ import annotations

import struct

import pytest

from protocol.crypto.errors import DecryptError, SessionMismatch, StateError
from protocol.crypto.ratchet import MAX_SKIP, MAX_SKIPPED_KEYS
from protocol.crypto.session import (
    MAX_PLAINTEXT_BYTES,
    Session,
    accept_session,
    peek_base_key,
    receive,
    start_session,
)
from protocol.signatures import KeyScheme

from .test_crypto_support import bundle_of, established, flip, make_device


def _send(sender: Session, receiver: Session, plaintext: bytes) -> int:
    msg_type, body = sender.encrypt(plaintext)
    assert receiver.decrypt(msg_type, body) == plaintext
    return msg_type


@pytest.mark.parametrize(
    "schemes",
    [(KeyScheme.ED25519, KeyScheme.ED25519), (KeyScheme.XEDDSA, KeyScheme.ED25519)],
    ids=["ed25519-ed25519", "xeddsa-ed25519"],
)
def test_round_trips_both_ways_over_many_ratchet_steps(
    schemes: tuple[KeyScheme, KeyScheme],
) -> None:
    alice, bob = established(*schemes)
    for turn in range(6):
        for i in range(turn + 1):
            assert _send(alice, bob, f"a{turn}.{i}".encode()) == 2
        for i in range(3):
            assert _send(bob, alice, f"b{turn}.{i}".encode()) == 2
    assert alice.skipped_keys == bob.skipped_keys == 0


def test_initiator_sends_type_1_until_it_decrypts_a_reply() -> None:
    alice_keys, bob_keys = make_device(), make_device()
    alice = start_session(alice_keys, bundle_of(bob_keys))
    assert alice.is_initiator and alice.awaiting_reply
    first = [alice.encrypt(f"m{i}".encode()) for i in range(4)]
    assert {t for t, _ in first} == {1}
    assert len({peek_base_key(body, 1) for _, body in first}) == 1
    # Out of order: the third one starts Bob's session, the others decrypt with it.
    bob, plaintext = accept_session(bob_keys, first[2][1])
    assert plaintext == b"m2" and bob.base_key == alice.base_key
    assert bob.decrypt(*first[0]) == b"m0"
    assert bob.decrypt(*first[3]) == b"m3"
    assert bob.decrypt(*first[1]) == b"m1"
    for msg_type, body in first:  # every one of them only once
        with pytest.raises(DecryptError):
            bob.decrypt(msg_type, body)
    assert alice.encrypt(b"still waiting")[0] == 1
    reply_type, reply = bob.encrypt(b"reply")
    assert reply_type == 2
    assert alice.decrypt(reply_type, reply) == b"reply"
    assert not alice.awaiting_reply
    assert _send(alice, bob, b"now type 2") == 2


def test_first_messages_still_decrypt_after_the_initiator_moved_on() -> None:
    alice_keys, bob_keys = make_device(), make_device()
    alice = start_session(alice_keys, bundle_of(bob_keys))
    early = [alice.encrypt(b"early0"), alice.encrypt(b"early1")]
    bob, _ = accept_session(bob_keys, early[0][1])
    _send(bob, alice, b"reply")
    msg_type, body = alice.encrypt(b"later")
    assert msg_type == 2
    assert bob.decrypt(msg_type, body) == b"later"
    assert bob.decrypt(*early[1]) == b"early1"


def test_a_new_base_key_is_a_new_session() -> None:
    alice_keys, bob_keys = make_device(prekeys=3), make_device(prekeys=3)
    first = start_session(alice_keys, bundle_of(bob_keys))
    bob, _ = accept_session(bob_keys, first.encrypt(b"one")[1])
    # Alice starts over (e.g. after losing her state): another base key.
    second = start_session(alice_keys, bundle_of(bob_keys))
    msg_type, body = second.encrypt(b"two")
    with pytest.raises(SessionMismatch):
        bob.decrypt(msg_type, body)
    bob, plaintext = accept_session(bob_keys, body)
    assert plaintext == b"two" and bob.base_key == second.base_key
    _send(bob, second, b"back")
    # A type-1 body is never for the initiator's own session.
    with pytest.raises(SessionMismatch):
        second.decrypt(msg_type, body)


def test_reflected_first_message_is_refused() -> None:
    alice_keys, bob_keys = make_device(), make_device()
    alice = start_session(alice_keys, bundle_of(bob_keys))
    msg_type, body = alice.encrypt(b"to bob")
    bob, _ = accept_session(bob_keys, body)
    reply_type, reply = bob.encrypt(b"to alice")
    # Bob's own reply fed back to Bob, and Alice's message fed back to Alice.
    with pytest.raises(DecryptError):
        bob.decrypt(reply_type, reply)
    with pytest.raises(DecryptError):
        alice.decrypt(msg_type, body)
    assert alice.decrypt(reply_type, reply) == b"to alice"


def test_unknown_types_and_malformed_bodies_fail_cleanly() -> None:
    alice, bob = established()
    msg_type, body = alice.encrypt(b"ok")
    for bad_type in (0, 3, 255):
        with pytest.raises(DecryptError):
            bob.decrypt(bad_type, body)
    for bad_body in (b"", b"\x12", body[:56], b"\x22" + body[1:], body[:41]):
        with pytest.raises(DecryptError):
            bob.decrypt(2, bad_body)
    with pytest.raises(DecryptError):
        bob.decrypt(1, body)  # a type-2 body announced as type 1
    assert bob.decrypt(msg_type, body) == b"ok"


def test_wire_layout_of_both_types() -> None:
    alice_keys, bob_keys = make_device(KeyScheme.XEDDSA), make_device()
    bundle = bundle_of(bob_keys)
    alice = start_session(alice_keys, bundle)
    msg_type, body = alice.encrypt(b"abc")
    assert msg_type == 1
    assert body[0] == 0x11 and body[1] == 0x03 and body[2] == 2  # both flags; xeddsa
    at = 3
    assert body[at : at + 33] == alice_keys.identity.public_key
    at += 33
    assert struct.unpack(">I", body[at : at + 4])[0] == alice_keys.registration_id
    at += 4
    assert body[at : at + 32] == alice.base_key
    at += 32
    ids = struct.unpack(">III", body[at : at + 12])
    assert ids == (bundle.signed_prekey_id, bundle.prekey_id, bundle.pq_prekey_id)
    at += 12 + 1568
    inner = body[at:]
    assert inner[0] == 0x12 and len(inner) == 41 + 3 + 16
    assert struct.unpack(">II", inner[33:41]) == (0, 0)
    bob, _ = accept_session(bob_keys, body)
    reply_type, reply = bob.encrypt(b"de")
    assert reply_type == 2 and reply[0] == 0x12 and len(reply) == 41 + 2 + 16
    x3dh = start_session(
        make_device(KeyScheme.ED25519), bundle_of(bob_keys, prekey=False, pq=False)
    )
    _, plain = x3dh.encrypt(b"")
    assert plain[1] == 0x00 and plain[2] == 1
    assert len(plain) == 3 + 32 + 4 + 32 + 4 + 41 + 16


def test_skipping_more_than_max_skip_fails_and_changes_nothing() -> None:
    alice, bob = established()
    bodies = [alice.encrypt(f"{i}".encode()) for i in range(MAX_SKIP + 2)]
    before = bob.to_bytes()
    with pytest.raises(DecryptError):
        bob.decrypt(*bodies[MAX_SKIP + 1])  # MAX_SKIP + 1 keys to skip
    assert bob.to_bytes() == before
    assert bob.decrypt(*bodies[MAX_SKIP]) == str(MAX_SKIP).encode()
    assert bob.skipped_keys == MAX_SKIP
    assert bob.decrypt(*bodies[MAX_SKIP + 1]) == str(MAX_SKIP + 1).encode()
    assert bob.decrypt(*bodies[0]) == b"0"
    assert bob.skipped_keys == MAX_SKIP - 1


def test_stored_skipped_keys_are_bounded_oldest_dropped_first() -> None:
    alice, bob = established()
    chains = []
    for _ in range(3):
        chain = [alice.encrypt(b"x") for _ in range(MAX_SKIP + 1)]
        assert bob.decrypt(*chain[-1]) == b"x"  # skips MAX_SKIP keys of this chain
        chains.append(chain)
        _send(bob, alice, b"turn")  # Alice's next chain has a new ratchet key
        assert bob.skipped_keys <= MAX_SKIPPED_KEYS
    assert bob.skipped_keys == MAX_SKIPPED_KEYS
    with pytest.raises(DecryptError):
        bob.decrypt(*chains[0][0])  # dropped: the oldest chain's keys went first
    assert bob.decrypt(*chains[1][0]) == b"x"
    assert bob.decrypt(*chains[2][5]) == b"x"


def test_sessions_survive_storage_at_any_point() -> None:
    alice_keys, bob_keys = make_device(), make_device()
    alice = start_session(alice_keys, bundle_of(bob_keys))
    alice = Session.from_bytes(alice.to_bytes())
    _, body = alice.encrypt(b"one")
    skipped = alice.encrypt(b"two")
    bob, _ = accept_session(bob_keys, body)
    bob = Session.from_bytes(bob.to_bytes())
    assert bob.decrypt(*skipped) == b"two"
    pending = alice.encrypt(b"three")
    alice = Session.from_bytes(alice.to_bytes())
    assert alice.awaiting_reply
    bob = Session.from_bytes(bob.to_bytes())
    assert bob.decrypt(*pending) == b"three"
    out_of_order = [bob.encrypt(f"r{i}".encode()) for i in range(3)]
    assert alice.decrypt(*out_of_order[2]) == b"r2"
    alice = Session.from_bytes(alice.to_bytes())
    assert alice.skipped_keys == 2 and not alice.awaiting_reply
    assert alice.decrypt(*out_of_order[0]) == b"r0"
    restored = Session.from_bytes(alice.to_bytes())
    assert restored.to_bytes() == alice.to_bytes()
    assert restored.remote_identity_key == bob_keys.identity.public_key
    assert restored.remote_registration_id == bob_keys.registration_id
    assert _send(restored, bob, b"after restore") == 2


def test_from_bytes_refuses_malformed_state() -> None:
    alice, _ = established()
    data = alice.to_bytes()
    for bad in (b"", b"\x80", data[:-3], data + b"\x00", b"\x81\xa1v\x02"):
        with pytest.raises(StateError):
            Session.from_bytes(bad)


def test_plaintext_size_is_bounded() -> None:
    alice, _ = established()
    with pytest.raises(ValueError):
        alice.encrypt(bytes(MAX_PLAINTEXT_BYTES + 1))


def test_repr_shows_no_key_material() -> None:
    alice, _ = established()
    text = repr(alice)
    assert "root" not in text and alice.base_key.hex() in text


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_every_byte_of_every_body_kind_is_authenticated(mask: int) -> None:
    alice_keys, bob_keys = make_device(prekeys=1, pq=1), make_device(prekeys=1, pq=1)
    alice = start_session(alice_keys, bundle_of(bob_keys))
    first_type, first = alice.encrypt(b"first")
    keys_before = bob_keys.to_bytes()
    for index in range(len(first)):
        with pytest.raises(DecryptError):
            accept_session(bob_keys, flip(first, index, mask))
    assert bob_keys.to_bytes() == keys_before
    bob, _ = accept_session(bob_keys, first)
    again_type, again = alice.encrypt(b"again")
    reply_type, reply = bob.encrypt(b"reply")
    for receiver, msg_type, body in ((bob, again_type, again), (alice, reply_type, reply)):
        before = receiver.to_bytes()
        for index in range(len(body)):
            with pytest.raises(DecryptError):
                receiver.decrypt(msg_type, flip(body, index, mask))
        assert receiver.to_bytes() == before
        assert receiver.decrypt(msg_type, body) in (b"again", b"reply")
    assert first_type == again_type == 1 and reply_type == 2


def test_receive_keeps_replaces_or_refuses_sessions() -> None:
    alice_keys, bob_keys = make_device(prekeys=3), make_device(prekeys=3)
    alice = start_session(alice_keys, bundle_of(bob_keys))
    first, second = alice.encrypt(b"one"), alice.encrypt(b"two")
    with pytest.raises(DecryptError):
        receive(bob_keys, None, 2, bob_keys.to_bytes()[:80])  # type 2 without a session
    bob, plaintext = receive(bob_keys, None, *second)
    assert plaintext == b"two"
    same, plaintext = receive(bob_keys, bob, *first)
    assert same is bob and plaintext == b"one"
    with pytest.raises(DecryptError):
        receive(bob_keys, bob, *first)  # a duplicate never starts a session again
    restarted = start_session(alice_keys, bundle_of(bob_keys))
    replaced, plaintext = receive(bob_keys, bob, *restarted.encrypt(b"three"))
    assert replaced is not bob and replaced.base_key == restarted.base_key
    assert plaintext == b"three"


@pytest.mark.parametrize("alice_first", [True, False], ids=["alice-first", "bob-first"])
def test_simultaneous_starts_converge_on_one_session(alice_first: bool) -> None:
    alice_keys, bob_keys = make_device(prekeys=3), make_device(prekeys=3)
    alice: Session = start_session(alice_keys, bundle_of(bob_keys))
    bob: Session = start_session(bob_keys, bundle_of(alice_keys))
    from_alice, from_bob = alice.encrypt(b"hi bob"), bob.encrypt(b"hi alice")
    if alice_first:
        bob, to_bob = receive(bob_keys, bob, *from_alice)
        alice, to_alice = receive(alice_keys, alice, *from_bob)
    else:
        alice, to_alice = receive(alice_keys, alice, *from_bob)
        bob, to_bob = receive(bob_keys, bob, *from_alice)
    assert (to_alice, to_bob) == (b"hi alice", b"hi bob")
    assert alice.base_key == bob.base_key
    assert alice.is_initiator != bob.is_initiator
    for _ in range(2):
        msg_type, body = alice.encrypt(b"ping")
        bob, plaintext = receive(bob_keys, bob, msg_type, body)
        assert plaintext == b"ping"
        msg_type, body = bob.encrypt(b"pong")
        alice, plaintext = receive(alice_keys, alice, msg_type, body)
        assert plaintext == b"pong"
    assert not alice.awaiting_reply and not bob.awaiting_reply


def test_replayed_first_message_of_a_replaced_session_is_refused() -> None:
    alice_keys, bob_keys = make_device(prekeys=0), make_device(prekeys=0)

    def fresh() -> Session:  # no one-time keys at all: only the last-resort PQ key
        return start_session(alice_keys, bundle_of(bob_keys, prekey=False, last_resort=True))

    old = fresh()
    old_first = old.encrypt(b"old")
    bob, _ = receive(bob_keys, None, *old_first)
    new = fresh()
    bob, plaintext = receive(bob_keys, bob, *new.encrypt(b"new"))
    assert plaintext == b"new" and bob.retired_base_keys == (old.base_key,)
    bob = Session.from_bytes(bob.to_bytes())
    # Nothing was consumed, so accept_session alone would start the old session again.
    assert accept_session(bob_keys, old_first[1])[1] == b"old"
    before = bob.to_bytes()
    with pytest.raises(DecryptError):
        receive(bob_keys, bob, *old_first)
    assert bob.to_bytes() == before
    newest = fresh()
    bob, _ = receive(bob_keys, bob, *newest.encrypt(b"newest"))
    assert bob.retired_base_keys == (new.base_key, old.base_key)
