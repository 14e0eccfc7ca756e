"""Property tests: any interleaving of sends, reordering, loss and duplication; any tampered byte.

A conversation is a random program run against two real sessions. Each
message delivered for the first time must decrypt to its plaintext; a
duplicate must fail with DecryptError and leave the session working; lost
messages are simply never delivered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crypto.device_keys import DeviceKeys
from protocol.crypto.errors import DecryptError
from protocol.crypto.session import Session, accept_session, start_session
from protocol.signatures import KeyScheme

from .test_crypto_support import bundle_of, established, flip, make_device

ALICE, BOB = 0, 1


@dataclass
class Wire:
    """Messages one side has sent: (type, body, plaintext), and which were delivered."""

    sent: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    delivered: set[int] = field(default_factory=set)


@dataclass
class Conversation:
    """Alice has started a session; Bob has none until her first message reaches him."""

    bob_keys: DeviceKeys
    sessions: list[Session | None]
    wires: tuple[Wire, Wire] = field(default_factory=lambda: (Wire(), Wire()))
    counter: int = 0

    def send(self, side: int) -> None:
        session = self.sessions[side]
        if session is None:
            return  # Bob cannot write before Alice's first message arrived
        self.counter += 1
        plaintext = f"{side}:{self.counter}".encode()
        msg_type, body = session.encrypt(plaintext)
        self.wires[side].sent.append((msg_type, body, plaintext))

    def deliver(self, side: int, pick: int) -> None:
        """Deliver message ``pick`` (modulo) sent by ``side`` (or, if none, to ``side``)."""
        if not self.wires[side].sent:
            side = 1 - side  # nothing sent this way yet: deliver the other way
        wire = self.wires[side]
        if not wire.sent:
            return
        index = pick % len(wire.sent)
        msg_type, body, plaintext = wire.sent[index]
        receiver = 1 - side
        session = self.sessions[receiver]
        if index in wire.delivered:
            assert session is not None
            before = session.to_bytes()
            try:
                session.decrypt(msg_type, body)
            except DecryptError:
                assert session.to_bytes() == before
                return
            raise AssertionError("a duplicate decrypted twice")
        if session is None:
            assert receiver == BOB and msg_type == 1
            session, result = accept_session(self.bob_keys, body)
            self.sessions[BOB] = session
        else:
            result = session.decrypt(msg_type, body)
        assert result == plaintext
        wire.delivered.add(index)

    def persist(self, side: int) -> None:
        session = self.sessions[side]
        if session is not None:
            self.sessions[side] = Session.from_bytes(session.to_bytes())


steps = st.lists(
    st.tuples(
        st.sampled_from(["send", "deliver", "deliver", "deliver", "persist"]),
        st.sampled_from([ALICE, BOB]),
        st.integers(0, 1000),
    ),
    min_size=20,
    max_size=80,
)


@settings(max_examples=80, deadline=None)
@given(program=steps, alice_scheme=st.sampled_from(list(KeyScheme)))
def test_any_interleaving_decrypts_each_message_exactly_once(
    program: list[tuple[str, int, int]], alice_scheme: KeyScheme
) -> None:
    alice_keys, bob_keys = make_device(alice_scheme, prekeys=1, pq=1), make_device(prekeys=1, pq=1)
    conversation = Conversation(bob_keys, [start_session(alice_keys, bundle_of(bob_keys)), None])
    for action, side, argument in program:
        if action == "send":
            for _ in range(1 + argument % 3):
                conversation.send(side)
        elif action == "deliver":
            conversation.deliver(side, argument)
        else:
            conversation.persist(side)
    # Alice speaks once more and, when Bob has a session, both still talk after everything.
    conversation.send(ALICE)
    conversation.deliver(ALICE, len(conversation.wires[ALICE].sent) - 1)
    conversation.send(BOB)
    conversation.deliver(BOB, len(conversation.wires[BOB].sent) - 1)
    conversation.send(ALICE)
    conversation.deliver(ALICE, len(conversation.wires[ALICE].sent) - 1)
    alice = conversation.sessions[ALICE]
    assert alice is not None and not alice.awaiting_reply


@settings(max_examples=60, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["first", "prekey-again", "ratchet"]))
def test_any_single_tampered_byte_fails_and_changes_nothing(data: st.DataObject, kind: str) -> None:
    alice_keys, bob_keys = make_device(prekeys=1, pq=1), make_device(prekeys=1, pq=1)
    alice = start_session(alice_keys, bundle_of(bob_keys))
    msg_type, body = alice.encrypt(b"first message")
    receiver: Session | None = None
    if kind != "first":
        receiver, _ = accept_session(bob_keys, body)
        if kind == "prekey-again":
            msg_type, body = alice.encrypt(b"second message, still type 1")
        else:
            reply_type, reply = receiver.encrypt(b"reply")
            alice.decrypt(reply_type, reply)
            msg_type, body = alice.encrypt(b"a ratchet message")
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    tampered = flip(body, index, mask)
    if receiver is None:
        keys_before = bob_keys.to_bytes()
        try:
            accept_session(bob_keys, tampered)
        except DecryptError:
            pass
        else:
            raise AssertionError(f"tampered byte {index} accepted")
        assert bob_keys.to_bytes() == keys_before
        assert accept_session(bob_keys, body)[1] == b"first message"
        return
    state_before = receiver.to_bytes()
    try:
        receiver.decrypt(msg_type, tampered)
    except DecryptError:
        pass
    else:
        raise AssertionError(f"tampered byte {index} accepted")
    assert receiver.to_bytes() == state_before
    assert receiver.decrypt(msg_type, body).endswith(b"message" if kind == "ratchet" else b"type 1")


@settings(max_examples=40, deadline=None)
@given(
    extra=st.binary(min_size=1, max_size=64),
    cut=st.integers(1, 80),
)
def test_truncated_or_extended_bodies_fail(extra: bytes, cut: int) -> None:
    alice, bob = established()
    msg_type, body = alice.encrypt(b"whole")
    for changed in (body[:-cut] if cut < len(body) else b"", body + extra):
        try:
            bob.decrypt(msg_type, changed)
        except DecryptError:
            continue
        raise AssertionError("a truncated or extended body decrypted")
    assert bob.decrypt(msg_type, body) == b"whole"
