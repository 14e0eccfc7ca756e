"""Target `frames`: the frame decoder of both sub-protocols, client and server side.

Input: one selector byte, then one WebSocket message. Selector bit 0 picks the sub-protocol
(0 msgpack, 1 JSON, whose text is the rest decoded as UTF-8), bit 1 the direction (0 a client
frame as the relay reads it, 1 a server frame as a client reads it) and bits 2..4 the answer
type a server `ok` is read as. Contract: decoding raises `FrameError` (or a subclass) and
nothing else; a frame it accepts encodes to a message that decodes to the same frame.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from protocol import frames
from protocol.codec import WireFormat, decode_client_frame, decode_server_frame, encode
from protocol.errors import ErrorCode, FrameError
from protocol.fields import Limits
from protocol.signatures import KeyScheme

ANSWERS: tuple[type[frames.Answer], ...] = tuple(dict.fromkeys(frames.ANSWER_TYPES.values()))
# Small enough that a fuzzed message reaches the body limit.
LIMITS = Limits(max_body_bytes=4096)


def _decode(selector: int, message: bytes) -> frames.ClientFrame | frames.ServerFrame:
    fmt = WireFormat.JSON if selector & 1 else WireFormat.MSGPACK
    data: bytes | str = message.decode("utf-8", "replace") if fmt is WireFormat.JSON else message
    if selector & 2:
        answer = ANSWERS[(selector >> 2) % len(ANSWERS)]
        return decode_server_frame(data, fmt, lambda _rid: answer)
    return decode_client_frame(data, fmt, LIMITS)


def check(data: bytes) -> None:
    if not data:
        return
    selector, message = data[0], data[1:]
    try:
        frame = _decode(selector, message)
    except FrameError:
        return
    fmt = WireFormat.JSON if selector & 1 else WireFormat.MSGPACK
    wire = encode(frame, fmt)
    again = _decode(selector, wire.encode("utf-8") if isinstance(wire, str) else wire)
    assert again == frame, f"{frame!r} re-decodes as {again!r}"


USER = str(uuid.UUID(int=0x1234_5678_9ABC_DEF0_1234_5678_9ABC_DEF0))
KEY32, KEY33, SIG = bytes(range(32)), b"\x05" + bytes(range(32)), bytes(range(64))


def _sample_client_frames() -> list[frames.ClientFrame]:
    message = frames.DeviceMessage(device=1, type=2, body=b"ciphertext", registration_id=7)
    signed = frames.SignedPreKey(id=1, key=KEY33, signature=SIG)
    pq = frames.PqPreKey(id=2, key=b"\x08" + bytes(64), signature=SIG)
    return [
        frames.Register(rid=1, identity_key=KEY32, key_scheme=KeyScheme.ED25519, signature=SIG),
        frames.Register(
            rid=2,
            identity_key=KEY33,
            key_scheme=KeyScheme.XEDDSA,
            signature=SIG,
            registration_id=9,
            token="invite",
            user=USER,
            link=frames.Link(device=1, signature=SIG),
        ),
        frames.Auth(rid=3, user=USER, device=2, signature=SIG),
        frames.Send(
            rid=4, id=bytes(16), to=USER, ts=1_700_000_000_000, nonce=bytes(16), devices=(message,)
        ),
        frames.Ack(ids=(bytes(16), b"\x01" * 16)),
        frames.KeysUpload(
            rid=5,
            signed_prekey=signed,
            prekeys=(frames.PreKey(id=3, key=KEY32),),
            pq_prekeys=(pq,),
            pq_last_resort=pq,
        ),
        frames.KeysFetch(rid=6, user=USER, device=1),
        frames.KeysCount(rid=7),
        frames.DevicesList(rid=8),
        frames.DevicesRemove(rid=9, device=2),
    ]


def _sample_server_frames() -> list[tuple[type[frames.Answer] | None, frames.ServerFrame]]:
    bundle = frames.Bundle(
        device=1,
        registration_id=2,
        identity_key=KEY33,
        key_scheme=KeyScheme.XEDDSA,
        signed_prekey=frames.SignedPreKey(id=1, key=KEY33, signature=SIG),
        prekey=frames.PreKey(id=3, key=KEY32),
        pq_prekey=frames.PqPreKey(id=4, key=b"\x08" * 33, signature=SIG),
    )
    info = frames.DeviceInfo(device=1, key_scheme=KeyScheme.ED25519, created=1, last_seen=2)
    answers: list[frames.Answer] = [
        frames.AuthOk(
            rid=1, user=USER, device=1, queued=0, prekeys=5, pq_prekeys=5, rotate_signed_prekey=True
        ),
        frames.SendOk(rid=2, id=bytes(16), delivered=(1,), stored=(2, 3)),
        frames.KeysUploadOk(rid=3, prekeys=10, pq_prekeys=10),
        frames.KeysFetchOk(rid=4, user=USER, devices=(bundle,)),
        frames.KeysCountOk(rid=5, prekeys=1, pq_prekeys=2, signed_prekey_age_s=60),
        frames.DevicesListOk(rid=6, devices=(info,)),
        frames.EmptyOk(rid=7),
    ]
    pushes: list[frames.ServerFrame] = [
        frames.Challenge(nonce=bytes(32), server_time=1_700_000_000_000),
        frames.Deliver(
            id=bytes(16),
            from_user=USER,
            from_device=1,
            ts=1,
            server_ts=2,
            type=1,
            body=b"body",
            nonce=bytes(16),
            online=True,
        ),
        frames.QueueEmpty(),
        frames.KeysLow(prekeys=1, pq_prekeys=0),
        frames.Error(code=ErrorCode.MISMATCHED_DEVICES, message="no", rid=4, missing=(1,)),
    ]
    return [(type(a), a) for a in answers] + [(None, p) for p in pushes]


def seeds() -> Iterator[bytes]:
    for fmt_bit, fmt in ((0, WireFormat.MSGPACK), (1, WireFormat.JSON)):
        for client in _sample_client_frames():
            wire = encode(client, fmt)
            yield bytes([fmt_bit]) + (wire.encode() if isinstance(wire, str) else wire)
        for answer, server in _sample_server_frames():
            index = ANSWERS.index(answer) if answer is not None else 0
            wire = encode(server, fmt)
            selector = fmt_bit | 2 | (index << 2)
            yield bytes([selector]) + (wire.encode() if isinstance(wire, str) else wire)
    # Near-valid: not a map, wrong message kind, unknown type, a bad field.
    yield b"\x00\x93\x01\x02\x03"
    yield b'\x01{"t":"auth","rid":1}'
    yield b'\x01{"t":"nope","rid":7}'
    yield b'\x03{"t":"ok","rid":"x"}'
    yield b"\x01[1,2,3]"
