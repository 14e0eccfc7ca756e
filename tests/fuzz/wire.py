"""Target `wire`: the client SDK's message body parsers and the sessions that read them.

Input: one mode byte, then the mode's choices (see `Reader`).

- mode 0/1: the rest is a type-1 (pre-key) / type-2 (ratchet) body for
  `parse_prekey_message` / `parse_ratchet_message`, which raise only `ValueError`; a body
  they accept encodes back to the same bytes (one body, one reading).
- mode 2/3: a genuine type-1 body (read by a fresh responder, `accept_session`) or type-2
  body (read by the established initiator, `Session.decrypt`) is tampered: bytes XORed at
  a fuzzed offset, cut, or extended. A tampered body is refused with `DecryptError`, and
  nothing else is raised.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

from protocol.crypto.bundle import RemoteBundle
from protocol.crypto.device_keys import DeviceKeys
from protocol.crypto.errors import DecryptError
from protocol.crypto.session import Session, accept_session, start_session
from protocol.crypto.wire import (
    PREKEY_MESSAGE_TYPE,
    RATCHET_MESSAGE_TYPE,
    RatchetMessage,
    encode_preamble,
    encode_ratchet_header,
    parse_prekey_message,
    parse_ratchet_message,
)
from protocol.signatures import KeyScheme
from tests.fuzz.reader import Reader


def _parse_prekey(body: bytes) -> None:
    try:
        parsed = parse_prekey_message(body)
    except ValueError:
        return
    again = encode_preamble(parsed.header) + _ratchet_bytes(parsed.message)
    assert parsed.preamble + parsed.message.header_bytes + parsed.message.ciphertext == body
    assert again == body, "a pre-key body re-encodes to other bytes"


def _parse_ratchet(body: bytes) -> None:
    try:
        parsed = parse_ratchet_message(body)
    except ValueError:
        return
    assert _ratchet_bytes(parsed) == body, "a ratchet body re-encodes to other bytes"


def _ratchet_bytes(message: RatchetMessage) -> bytes:
    header_bytes = encode_ratchet_header(message.header)
    assert header_bytes == message.header_bytes
    return header_bytes + message.ciphertext


@dataclass(frozen=True)
class Conversation:
    """Two devices after one message each way, and one body of each type not yet read."""

    responder_keys: bytes  # Bob's keys before he read `first` (DeviceKeys.to_bytes)
    first: bytes  # Alice's type-1 body to Bob
    initiator: bytes  # Alice's session after Bob's reply (Session.to_bytes)
    second: bytes  # Bob's next type-2 body to Alice, not yet read


@functools.cache
def conversation() -> Conversation:
    alice_keys = DeviceKeys.generate(KeyScheme.ED25519, prekeys=1, pq_prekeys=1, now_ms=0)
    bob_keys = DeviceKeys.generate(KeyScheme.XEDDSA, prekeys=1, pq_prekeys=1, now_ms=0)
    bob_bundle = bundle_of(bob_keys)
    responder_keys = bob_keys.to_bytes()
    alice = start_session(alice_keys, bob_bundle)
    msg_type, first = alice.encrypt(b"first message")
    assert msg_type == PREKEY_MESSAGE_TYPE
    bob, _ = accept_session(bob_keys, first)
    _, reply = bob.encrypt(b"reply")
    alice.decrypt(RATCHET_MESSAGE_TYPE, reply)
    msg_type, second = bob.encrypt(b"second message")
    assert msg_type == RATCHET_MESSAGE_TYPE
    return Conversation(responder_keys, first, alice.to_bytes(), second)


def bundle_of(keys: DeviceKeys) -> RemoteBundle:
    """The bundle a relay would hand out for `keys` (one EC and one PQ one-time pre-key)."""
    prekey, pq = next(iter(keys.prekeys.values())), next(iter(keys.pq_prekeys.values()))
    return RemoteBundle(
        device=1,
        registration_id=keys.registration_id,
        identity_key=keys.identity.public_key,
        key_scheme=keys.identity.scheme,
        signed_prekey_id=keys.signed_prekey.id,
        signed_prekey=keys.signed_prekey.public,
        signed_prekey_signature=keys.signed_prekey.signature,
        prekey_id=prekey.id,
        prekey=prekey.public,
        pq_prekey_id=pq.id,
        pq_prekey=pq.public,
        pq_prekey_signature=pq.signature,
    )


def tamper(body: bytes, r: Reader) -> bytes:
    """`body` changed as the input says: 0 XOR a run of bytes, 1 cut, 2 extend."""
    how, offset = r.byte() % 3, r.u16() % (len(body) + 1)
    if how == 1:
        return body[:offset]
    if how == 2:
        return body[:offset] + r.rest()[:64] + body[offset:]
    mask = r.rest()[: len(body) - offset]
    changed = bytearray(body)
    for i, value in enumerate(mask):
        changed[offset + i] ^= value
    return bytes(changed)


def _tampered_prekey_body(r: Reader) -> None:
    talk = conversation()
    body = tamper(talk.first, r)
    if body == talk.first:
        return
    try:
        accept_session(DeviceKeys.from_bytes(talk.responder_keys), body)
    except DecryptError:
        return
    raise AssertionError("a tampered pre-key body decrypts")


def _tampered_ratchet_body(r: Reader) -> None:
    talk = conversation()
    body = tamper(talk.second, r)
    if body == talk.second:
        return
    try:
        Session.from_bytes(talk.initiator).decrypt(RATCHET_MESSAGE_TYPE, body)
    except DecryptError:
        return
    raise AssertionError("a tampered ratchet body decrypts")


def check(data: bytes) -> None:
    r = Reader(data)
    mode = r.byte() % 4
    if mode == 0:
        _parse_prekey(r.rest())
    elif mode == 1:
        _parse_ratchet(r.rest())
    elif mode == 2:
        _tampered_prekey_body(r)
    else:
        _tampered_ratchet_body(r)


def seeds() -> Iterator[bytes]:
    talk = conversation()
    yield b"\x00" + talk.first
    yield b"\x01" + talk.second
    yield b"\x00" + talk.first[:60]
    yield b"\x00\x11\x00\x01" + bytes(32) + bytes(8) + bytes(32) + talk.second
    yield b"\x00\x11\x01\x02" + b"\x05" + bytes(32) + bytes(44) + talk.second
    yield b"\x00\x11\x04\x01" + bytes(100)
    yield b"\x01" + talk.second[:56]
    yield b"\x01\x22" + talk.second[1:]
    for mode in (2, 3):
        for how in range(3):
            for offset in (0, 1, 3, 40, 41, 200, 1700):
                yield bytes([mode, how, offset >> 8, offset & 0xFF, 1, 0x80])
