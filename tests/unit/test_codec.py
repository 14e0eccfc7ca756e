"""Tests for protocol.codec: every frame on the wire in both sub-protocols, bytes only.

Spec §1: `relay.v1+msgpack` carries binary messages with msgpack `bin` byte
strings; `relay.v1+json` carries text messages with unpadded base64url byte
strings; each message is one map with string keys and `t` naming the type.
"""

from __future__ import annotations

import base64
import string
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import (
    SUBPROTOCOLS,
    WireFormat,
    decode_client_frame,
    decode_server_frame,
    encode,
    select_format,
)
from protocol.errors import ErrorCode, FrameError, FrameTooLarge, RelayError, UnknownFrameType
from protocol.fields import I64_MAX, I64_MIN, U32_MAX, Limits, encode_fields
from protocol.frames import (
    CLIENT_FRAMES,
    SERVER_PUSHES,
    Ack,
    Answer,
    Auth,
    AuthOk,
    BackupDelete,
    BackupGet,
    BackupOk,
    BackupPut,
    BackupPutOk,
    BackupRecover,
    Bundle,
    Challenge,
    ClientFrame,
    Deliver,
    DeviceInfo,
    DeviceMessage,
    DevicesList,
    DevicesListOk,
    DevicesRemove,
    EmptyOk,
    Error,
    KeysCount,
    KeysCountOk,
    KeysFetch,
    KeysFetchOk,
    KeysLow,
    KeysUpload,
    KeysUploadOk,
    Link,
    MultiDevice,
    MultiRecipient,
    PqPreKey,
    PreKey,
    QueueEmpty,
    Receipt,
    Register,
    Send,
    SendMulti,
    SendMultiOk,
    SendOk,
    ServerFrame,
    SignedPreKey,
    UserDevicesProblem,
    UserOutcome,
)
from protocol.signatures import KeyScheme

FORMATS = [WireFormat.MSGPACK, WireFormat.JSON]
FORMAT_IDS = ["msgpack", "json"]

USER = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
OTHER = "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d"
ED_KEY = bytes(range(200, 232))
XED_KEY = b"\x05" + bytes(range(100, 132))
SIG = bytes(range(64))
SIG2 = bytes(range(64, 128))
MSG_ID = bytes(range(16))
MSG_ID2 = bytes(range(16, 32))
NONCE = bytes(range(24))
CHALLENGE = bytes(range(32))
EC_KEY = bytes(range(32))
EC_KEY_05 = b"\x05" + bytes(range(1, 33))
PQ_KEY = b"\x08" + bytes(1568)
TS = 1_700_000_000_000


def to_json_value(value: Any) -> Any:
    """What a wire value looks like in relay.v1+json: bytes become unpadded base64url."""
    if isinstance(value, bytes):
        return base64.urlsafe_b64encode(value).decode("ascii").rstrip("=")
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    return value


def pack(raw: Any, fmt: WireFormat) -> bytes | str:
    """A raw map as one WebSocket message of `fmt`, built without the codec under test."""
    if fmt is WireFormat.MSGPACK:
        packed: bytes = msgpack.packb(raw, use_bin_type=True)
        return packed
    return orjson.dumps(to_json_value(raw)).decode("utf-8")


def unpack(data: bytes | str, fmt: WireFormat) -> Any:
    """The raw map of an encoded message, as an independent reader sees it."""
    if fmt is WireFormat.MSGPACK:
        assert isinstance(data, bytes)
        return msgpack.unpackb(data, raw=False)
    assert isinstance(data, str)
    return orjson.loads(data)


def expected_wire(raw: dict[str, Any], fmt: WireFormat) -> Any:
    return raw if fmt is WireFormat.MSGPACK else to_json_value(raw)


def decode_server(data: bytes | str, fmt: WireFormat, answer: type[Answer] | None = None) -> Any:
    return decode_server_frame(data, fmt, lambda rid: answer)


# --- the frames and their exact wire maps --------------------------------------------

SIGNED = SignedPreKey(id=7, key=EC_KEY_05, signature=SIG)
SIGNED_RAW = {"id": 7, "key": EC_KEY_05, "signature": SIG}
PQ = PqPreKey(id=9, key=PQ_KEY, signature=SIG2)
PQ_RAW = {"id": 9, "key": PQ_KEY, "signature": SIG2}

CLIENT_CASES: list[tuple[str, ClientFrame, dict[str, Any]]] = [
    (
        "register-new",
        Register(rid=1, identity_key=XED_KEY, key_scheme=KeyScheme.XEDDSA, signature=SIG),
        {"t": "register", "rid": 1, "identity_key": XED_KEY, "key_scheme": "xeddsa",
         "signature": SIG},
    ),
    (
        "register-new-full",
        Register(
            rid=2,
            identity_key=ED_KEY,
            key_scheme=KeyScheme.ED25519,
            signature=SIG,
            registration_id=0,
            token="s3cret",
        ),
        {"t": "register", "rid": 2, "identity_key": ED_KEY, "key_scheme": "ed25519",
         "signature": SIG, "registration_id": 0, "token": "s3cret"},
    ),
    (
        "register-linked",
        Register(
            rid=U32_MAX,
            identity_key=ED_KEY,
            key_scheme=KeyScheme.ED25519,
            signature=SIG,
            registration_id=12345,
            user=USER,
            link=Link(device=1, signature=SIG2),
        ),
        {"t": "register", "rid": U32_MAX, "identity_key": ED_KEY, "key_scheme": "ed25519",
         "signature": SIG, "registration_id": 12345, "user": USER,
         "link": {"device": 1, "signature": SIG2}},
    ),
    (
        "auth",
        Auth(rid=0, user=USER, device=3, signature=SIG),
        {"t": "auth", "rid": 0, "user": USER, "device": 3, "signature": SIG},
    ),
    (
        "send",
        Send(
            rid=5,
            id=MSG_ID,
            to=OTHER,
            ts=TS,
            nonce=NONCE,
            devices=(
                DeviceMessage(device=1, type=1, body=b"\x00ciphertext\xff"),
                DeviceMessage(device=2, type=255, body=b"x", registration_id=77),
            ),
        ),
        {"t": "send", "rid": 5, "id": MSG_ID, "to": OTHER, "ts": TS, "nonce": NONCE,
         "devices": [{"device": 1, "type": 1, "body": b"\x00ciphertext\xff"},
                     {"device": 2, "type": 255, "body": b"x", "registration_id": 77}]},
    ),
    (
        "send-online-empty",
        Send(rid=6, id=MSG_ID, to=USER, ts=-1, nonce=NONCE, devices=(), online=True),
        {"t": "send", "rid": 6, "id": MSG_ID, "to": USER, "ts": -1, "nonce": NONCE,
         "devices": [], "online": True},
    ),
    (
        "send-receipt",
        Send(rid=7, id=MSG_ID, to=USER, ts=TS, nonce=NONCE, devices=(), receipt=True),
        {"t": "send", "rid": 7, "id": MSG_ID, "to": USER, "ts": TS, "nonce": NONCE,
         "devices": [], "receipt": True},
    ),
    (
        "send.multi",
        SendMulti(rid=7, id=MSG_ID, ts=TS, nonce=NONCE, payload=b"shared", to=(
            MultiRecipient(user=USER, devices=(
                MultiDevice(device=1, type=3, body=b"h1"),
                MultiDevice(device=2, type=3, body=b"h2", registration_id=9),
            )),
            MultiRecipient(user=OTHER, devices=()),
        )),
        {"t": "send.multi", "rid": 7, "id": MSG_ID, "ts": TS, "nonce": NONCE,
         "payload": b"shared", "to": [
             {"user": USER, "devices": [
                 {"device": 1, "type": 3, "body": b"h1"},
                 {"device": 2, "type": 3, "body": b"h2", "registration_id": 9}]},
             {"user": OTHER, "devices": []}]},
    ),
    (
        "send.multi-online-per-device",
        SendMulti(rid=8, id=MSG_ID, ts=TS, nonce=NONCE, online=True, to=(
            MultiRecipient(user=USER, devices=(MultiDevice(device=4, type=0, body=b"t"),)),
        )),
        {"t": "send.multi", "rid": 8, "id": MSG_ID, "ts": TS, "nonce": NONCE, "online": True,
         "to": [{"user": USER, "devices": [{"device": 4, "type": 0, "body": b"t"}]}]},
    ),
    (
        "ack",
        Ack(ids=(MSG_ID, MSG_ID2)),
        {"t": "ack", "ids": [MSG_ID, MSG_ID2]},
    ),
    (
        "ack-empty",
        Ack(ids=()),
        {"t": "ack", "ids": []},
    ),
    (
        "keys.upload-full",
        KeysUpload(
            rid=8,
            signed_prekey=SIGNED,
            prekeys=(PreKey(id=1, key=EC_KEY), PreKey(id=U32_MAX, key=EC_KEY_05)),
            pq_prekeys=(PQ,),
            pq_last_resort=PqPreKey(id=10, key=b"\x08", signature=SIG),
        ),
        {"t": "keys.upload", "rid": 8, "signed_prekey": SIGNED_RAW,
         "prekeys": [{"id": 1, "key": EC_KEY}, {"id": U32_MAX, "key": EC_KEY_05}],
         "pq_prekeys": [PQ_RAW],
         "pq_last_resort": {"id": 10, "key": b"\x08", "signature": SIG}},
    ),
    (
        "keys.upload-empty",
        KeysUpload(rid=9),
        {"t": "keys.upload", "rid": 9},
    ),
    (
        "keys.upload-empty-lists",
        KeysUpload(rid=9, prekeys=(), pq_prekeys=()),
        {"t": "keys.upload", "rid": 9, "prekeys": [], "pq_prekeys": []},
    ),
    (
        "keys.fetch-all",
        KeysFetch(rid=10, user=OTHER),
        {"t": "keys.fetch", "rid": 10, "user": OTHER},
    ),
    (
        "keys.fetch-one",
        KeysFetch(rid=11, user=OTHER, device=2),
        {"t": "keys.fetch", "rid": 11, "user": OTHER, "device": 2},
    ),
    ("keys.count", KeysCount(rid=12), {"t": "keys.count", "rid": 12}),
    ("devices.list", DevicesList(rid=13), {"t": "devices.list", "rid": 13}),
    (
        "devices.remove",
        DevicesRemove(rid=14, device=4),
        {"t": "devices.remove", "rid": 14, "device": 4},
    ),
    (
        "backup.put",
        BackupPut(rid=15, version=0, blob=b"\x01sealed", access_key=ED_KEY),
        {"t": "backup.put", "rid": 15, "version": 0, "blob": b"\x01sealed",
         "access_key": ED_KEY},
    ),
    ("backup.get", BackupGet(rid=16), {"t": "backup.get", "rid": 16}),
    (
        "backup.delete",
        BackupDelete(rid=17, version=3),
        {"t": "backup.delete", "rid": 17, "version": 3},
    ),
    (
        "backup.recover",
        BackupRecover(rid=18, access_key=ED_KEY, signature=SIG),
        {"t": "backup.recover", "rid": 18, "access_key": ED_KEY, "signature": SIG},
    ),
]  # fmt: skip

BUNDLE_FULL = Bundle(
    device=1,
    registration_id=4242,
    identity_key=XED_KEY,
    key_scheme=KeyScheme.XEDDSA,
    signed_prekey=SIGNED,
    prekey=PreKey(id=3, key=EC_KEY),
    pq_prekey=PQ,
)
BUNDLE_BARE = Bundle(
    device=2,
    registration_id=0,
    identity_key=ED_KEY,
    key_scheme=KeyScheme.ED25519,
    signed_prekey=SIGNED,
)

SERVER_CASES: list[tuple[str, ServerFrame, dict[str, Any]]] = [
    (
        "challenge",
        Challenge(nonce=CHALLENGE, server_time=TS),
        {"t": "challenge", "nonce": CHALLENGE, "server_time": TS},
    ),
    (
        "error-plain",
        Error(code=ErrorCode.BAD_FRAME, message="nope"),
        {"t": "error", "code": "bad_frame", "message": "nope"},
    ),
    (
        "error-rate-limited",
        Error(code=ErrorCode.RATE_LIMITED, message="slow down", rid=3, retry_after_ms=1500),
        {"t": "error", "code": "rate_limited", "message": "slow down", "rid": 3,
         "retry_after_ms": 1500},
    ),
    (
        "error-mismatched",
        Error(code=ErrorCode.MISMATCHED_DEVICES, message="m", rid=0, missing=(2, 5), extra=()),
        {"t": "error", "code": "mismatched_devices", "message": "m", "rid": 0,
         "missing": [2, 5], "extra": []},
    ),
    (
        "error-stale",
        Error(code=ErrorCode.STALE_DEVICES, message="s", rid=4, stale=(1,)),
        {"t": "error", "code": "stale_devices", "message": "s", "rid": 4, "stale": [1]},
    ),
    (
        "auth-ok",
        AuthOk(rid=1, user=USER, device=1, queued=3, prekeys=100, pq_prekeys=0,
               rotate_signed_prekey=False),
        {"t": "ok", "rid": 1, "user": USER, "device": 1, "queued": 3, "prekeys": 100,
         "pq_prekeys": 0, "rotate_signed_prekey": False},
    ),
    (
        "send-ok",
        SendOk(rid=5, id=MSG_ID, delivered=(1, 3), stored=(2,)),
        {"t": "ok", "rid": 5, "id": MSG_ID, "delivered": [1, 3], "stored": [2]},
    ),
    (
        "send-ok-empty",
        SendOk(rid=5, id=MSG_ID, delivered=(), stored=()),
        {"t": "ok", "rid": 5, "id": MSG_ID, "delivered": [], "stored": []},
    ),
    (
        "send.multi-ok",
        SendMultiOk(rid=7, id=MSG_ID, users=(
            UserOutcome(user=USER, delivered=(1,), stored=(2, 3)),
            UserOutcome(user=OTHER, delivered=(), stored=()),
        )),
        {"t": "ok", "rid": 7, "id": MSG_ID, "users": [
            {"user": USER, "delivered": [1], "stored": [2, 3]},
            {"user": OTHER, "delivered": [], "stored": []}]},
    ),
    (
        "error-multi-devices",
        Error(code=ErrorCode.MISMATCHED_DEVICES, message="m", rid=7, users=(
            UserDevicesProblem(user=USER, missing=(2,), extra=(), stale=(1,)),
        )),
        {"t": "error", "code": "mismatched_devices", "message": "m", "rid": 7, "users": [
            {"user": USER, "missing": [2], "extra": [], "stale": [1]}]},
    ),
    (
        "error-unknown-users",
        Error(code=ErrorCode.UNKNOWN_USER, message="u", rid=7, unknown_users=(OTHER,)),
        {"t": "error", "code": "unknown_user", "message": "u", "rid": 7,
         "unknown_users": [OTHER]},
    ),
    (
        "keys.upload-ok",
        KeysUploadOk(rid=8, prekeys=100, pq_prekeys=50),
        {"t": "ok", "rid": 8, "prekeys": 100, "pq_prekeys": 50},
    ),
    (
        "keys.fetch-ok",
        KeysFetchOk(rid=10, user=OTHER, devices=(BUNDLE_FULL, BUNDLE_BARE)),
        {"t": "ok", "rid": 10, "user": OTHER, "devices": [
            {"device": 1, "registration_id": 4242, "identity_key": XED_KEY,
             "key_scheme": "xeddsa", "signed_prekey": SIGNED_RAW,
             "prekey": {"id": 3, "key": EC_KEY}, "pq_prekey": PQ_RAW},
            {"device": 2, "registration_id": 0, "identity_key": ED_KEY,
             "key_scheme": "ed25519", "signed_prekey": SIGNED_RAW},
        ]},
    ),
    (
        "keys.fetch-ok-none",
        KeysFetchOk(rid=10, user=OTHER, devices=()),
        {"t": "ok", "rid": 10, "user": OTHER, "devices": []},
    ),
    (
        "keys.count-ok",
        KeysCountOk(rid=12, prekeys=9, pq_prekeys=10, signed_prekey_age_s=0),
        {"t": "ok", "rid": 12, "prekeys": 9, "pq_prekeys": 10, "signed_prekey_age_s": 0},
    ),
    (
        "keys.count-ok-no-signed",
        KeysCountOk(rid=12, prekeys=0, pq_prekeys=0),
        {"t": "ok", "rid": 12, "prekeys": 0, "pq_prekeys": 0},
    ),
    (
        "devices.list-ok",
        DevicesListOk(rid=13, devices=(
            DeviceInfo(device=1, key_scheme=KeyScheme.XEDDSA, created=TS, last_seen=TS + 1),
            DeviceInfo(device=3, key_scheme=KeyScheme.ED25519, created=0, last_seen=0),
        )),
        {"t": "ok", "rid": 13, "devices": [
            {"device": 1, "key_scheme": "xeddsa", "created": TS, "last_seen": TS + 1},
            {"device": 3, "key_scheme": "ed25519", "created": 0, "last_seen": 0},
        ]},
    ),
    ("empty-ok", EmptyOk(rid=14), {"t": "ok", "rid": 14}),
    (
        "deliver",
        Deliver(id=MSG_ID, from_user=USER, from_device=2, ts=TS, server_ts=TS + 5, type=2,
                body=b"\xffcipher", nonce=NONCE),
        {"t": "deliver", "id": MSG_ID, "from": USER, "from_device": 2, "ts": TS,
         "server_ts": TS + 5, "type": 2, "body": b"\xffcipher", "nonce": NONCE},
    ),
    (
        "deliver-online",
        Deliver(id=MSG_ID, from_user=USER, from_device=2, ts=TS, server_ts=TS, type=0,
                body=b"t", nonce=NONCE, online=True),
        {"t": "deliver", "id": MSG_ID, "from": USER, "from_device": 2, "ts": TS,
         "server_ts": TS, "type": 0, "body": b"t", "nonce": NONCE, "online": True},
    ),
    (
        "receipt",
        Receipt(id=MSG_ID2, message_id=MSG_ID, user=USER, device=3, server_ts=TS + 7),
        {"t": "receipt", "id": MSG_ID2, "message_id": MSG_ID, "user": USER, "device": 3,
         "server_ts": TS + 7},
    ),
    ("queue-empty", QueueEmpty(), {"t": "queue_empty"}),
    (
        "error-backup-conflict",
        Error(code=ErrorCode.CONFLICT, message="v", rid=6, version=4),
        {"t": "error", "code": "conflict", "message": "v", "rid": 6, "version": 4},
    ),
    ("backup.put-ok", BackupPutOk(rid=15, version=1), {"t": "ok", "rid": 15, "version": 1}),
    (
        "backup-ok",
        BackupOk(rid=16, user=USER, version=2, blob=b"\x01sealed", updated=TS),
        {"t": "ok", "rid": 16, "user": USER, "version": 2, "blob": b"\x01sealed",
         "updated": TS},
    ),
    (
        "keys.low",
        KeysLow(prekeys=9, pq_prekeys=10),
        {"t": "keys.low", "prekeys": 9, "pq_prekeys": 10},
    ),
]  # fmt: skip


def _ids(cases: list[tuple[str, Any, Any]]) -> list[str]:
    return [c[0] for c in cases]


def test_cases_cover_every_frame_type() -> None:
    client_types = {type(frame) for _, frame, _ in CLIENT_CASES}
    assert client_types == set(CLIENT_FRAMES.values())
    server_types = {type(frame) for _, frame, _ in SERVER_CASES}
    assert set(SERVER_PUSHES.values()) <= server_types
    assert {
        AuthOk,
        SendOk,
        SendMultiOk,
        KeysUploadOk,
        KeysFetchOk,
        KeysCountOk,
        DevicesListOk,
        EmptyOk,
    } <= server_types


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(("name", "frame", "raw"), CLIENT_CASES, ids=_ids(CLIENT_CASES))
def test_client_frame_wire_map(
    name: str, frame: ClientFrame, raw: dict[str, Any], fmt: WireFormat
) -> None:
    data = encode(frame, fmt)
    assert isinstance(data, bytes if fmt is WireFormat.MSGPACK else str)
    assert unpack(data, fmt) == expected_wire(raw, fmt)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(("name", "frame", "raw"), CLIENT_CASES, ids=_ids(CLIENT_CASES))
def test_client_frame_round_trip(
    name: str, frame: ClientFrame, raw: dict[str, Any], fmt: WireFormat
) -> None:
    assert decode_client_frame(encode(frame, fmt), fmt) == frame
    # An independently built message decodes to the same frame.
    assert decode_client_frame(pack(raw, fmt), fmt) == frame


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(("name", "frame", "raw"), SERVER_CASES, ids=_ids(SERVER_CASES))
def test_server_frame_wire_map(
    name: str, frame: ServerFrame, raw: dict[str, Any], fmt: WireFormat
) -> None:
    data = encode(frame, fmt)
    assert isinstance(data, bytes if fmt is WireFormat.MSGPACK else str)
    assert unpack(data, fmt) == expected_wire(raw, fmt)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(("name", "frame", "raw"), SERVER_CASES, ids=_ids(SERVER_CASES))
def test_server_frame_round_trip(
    name: str, frame: ServerFrame, raw: dict[str, Any], fmt: WireFormat
) -> None:
    asked: list[int] = []

    def answer_type(rid: int) -> type[Answer] | None:
        asked.append(rid)
        return type(frame) if raw["t"] == "ok" else None  # type: ignore[return-value]

    assert decode_server_frame(encode(frame, fmt), fmt, answer_type) == frame
    assert decode_server_frame(pack(raw, fmt), fmt, answer_type) == frame
    if raw["t"] == "ok":
        assert asked == [raw["rid"], raw["rid"]]


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_msgpack_byte_strings_are_bin_and_text_is_str(fmt: WireFormat) -> None:
    frame = Deliver(id=MSG_ID, from_user=USER, from_device=1, ts=1, server_ts=2, type=1,
                    body=b"abc", nonce=NONCE)  # fmt: skip
    data = encode(frame, fmt)
    if fmt is WireFormat.MSGPACK:
        assert isinstance(data, bytes)
        # raw=True shows the msgpack types: bin stays bytes, str becomes bytes too, so
        # compare against raw=False: only bin decodes to bytes there.
        wire = msgpack.unpackb(data, raw=False)
        assert {k for k, v in wire.items() if isinstance(v, bytes)} == {"id", "body", "nonce"}
        assert all(isinstance(k, str) for k in wire)
        # 0xc4 is bin 8: the 3-byte body is written as bin, not as str (0xa3).
        assert b"\xc4\x03abc" in data
    else:
        assert isinstance(data, str)
        wire = orjson.loads(data)
        assert wire["body"] == "YWJj"
        assert wire["id"] == "AAECAwQFBgcICQoLDA0ODw"
        assert "=" not in data


def test_json_base64url_alphabet_on_the_wire() -> None:
    body = b"\xfb\xff\xbf"  # standard base64 "+/+/", base64url "-_-_"
    frame = Deliver(id=MSG_ID, from_user=USER, from_device=1, ts=1, server_ts=2, type=1,
                    body=body, nonce=NONCE)  # fmt: skip
    wire = orjson.loads(encode(frame, WireFormat.JSON))
    assert wire["body"] == "-_-_"
    assert decode_server(encode(frame, WireFormat.JSON), WireFormat.JSON).body == body


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_deliver_online_false_is_absent(fmt: WireFormat) -> None:
    frame = Deliver(id=MSG_ID, from_user=USER, from_device=1, ts=1, server_ts=2, type=1,
                    body=b"abc", nonce=NONCE, online=False)  # fmt: skip
    wire = unpack(encode(frame, fmt), fmt)
    assert "online" not in wire
    assert "from" in wire
    assert "from_user" not in wire


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_deliver_online_false_on_the_wire_decodes(fmt: WireFormat) -> None:
    raw = {"t": "deliver", "id": MSG_ID, "from": USER, "from_device": 2, "ts": TS,
           "server_ts": TS, "type": 0, "body": b"t", "nonce": NONCE, "online": False}  # fmt: skip
    frame = decode_server(pack(raw, fmt), fmt)
    assert isinstance(frame, Deliver)
    assert frame.online is False


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_absent_optionals_are_absent_not_null(fmt: WireFormat) -> None:
    cases: list[tuple[ServerFrame | ClientFrame, set[str]]] = [
        (KeysCountOk(rid=1, prekeys=0, pq_prekeys=0), {"signed_prekey_age_s"}),
        (Error(code=ErrorCode.INTERNAL, message="x"), {"rid", "retry_after_ms", "missing",
                                                       "extra", "stale"}),
        (KeysFetchOk(rid=1, user=USER, devices=(BUNDLE_BARE,)), set()),
        (KeysUpload(rid=1), {"signed_prekey", "prekeys", "pq_prekeys", "pq_last_resort"}),
        (KeysFetch(rid=1, user=USER), {"device"}),
        (Register(rid=1, identity_key=ED_KEY, key_scheme=KeyScheme.ED25519, signature=SIG),
         {"registration_id", "token", "user", "link"}),
        (Send(rid=1, id=MSG_ID, to=USER, ts=0, nonce=NONCE, devices=()), {"online", "receipt"}),
    ]  # fmt: skip
    for frame, absent in cases:
        text = encode(frame, fmt)
        wire = unpack(text, fmt)
        assert not absent & set(wire), frame
        assert None not in wire.values()
        if fmt is WireFormat.JSON:
            assert isinstance(text, str)
            assert "null" not in text
    bundle = unpack(encode(cases[2][0], fmt), fmt)["devices"][0]
    assert "prekey" not in bundle
    assert "pq_prekey" not in bundle


# --- select_format ------------------------------------------------------------------


def test_subprotocol_names() -> None:
    assert WireFormat.MSGPACK.value == "relay.v1+msgpack"
    assert WireFormat.JSON.value == "relay.v1+json"
    assert SUBPROTOCOLS == (WireFormat.MSGPACK, WireFormat.JSON)
    assert WireFormat.MSGPACK.binary
    assert not WireFormat.JSON.binary


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ([], WireFormat.MSGPACK),
        (["relay.v1+msgpack"], WireFormat.MSGPACK),
        (["relay.v1+json"], WireFormat.JSON),
        (["relay.v1+json", "relay.v1+msgpack"], WireFormat.JSON),
        (["relay.v1+msgpack", "relay.v1+json"], WireFormat.MSGPACK),
        (["chat", "relay.v1+json", "relay.v1+msgpack"], WireFormat.JSON),
        (["relay.v2+json", "relay.v1+msgpack"], WireFormat.MSGPACK),
        (["chat"], None),
        (["relay.v1", "relay.v1+JSON", "RELAY.V1+MSGPACK", "relay.v2+msgpack"], None),
    ],
)
def test_select_format(offered: list[str], chosen: WireFormat | None) -> None:
    assert select_format(offered) is chosen


# --- wire-level errors ---------------------------------------------------------------


def _decode_error(data: Any, fmt: WireFormat, limits: Limits | None = None) -> RelayError:
    with pytest.raises(RelayError) as info:
        decode_client_frame(data, fmt, limits)
    return info.value


def assert_bad_frame(data: Any, fmt: WireFormat, rid: int | None = None) -> None:
    err = _decode_error(data, fmt)
    assert type(err) is FrameError, err
    assert err.code is ErrorCode.BAD_FRAME
    assert err.rid == rid


def test_text_message_on_msgpack_connection() -> None:
    text = pack({"t": "keys.count", "rid": 1}, WireFormat.JSON)
    assert_bad_frame(text, WireFormat.MSGPACK)


def test_binary_message_on_json_connection() -> None:
    data = pack({"t": "keys.count", "rid": 1}, WireFormat.MSGPACK)
    assert_bad_frame(data, WireFormat.JSON)
    json_bytes = pack({"t": "keys.count", "rid": 1}, WireFormat.JSON)
    assert isinstance(json_bytes, str)
    assert_bad_frame(json_bytes.encode(), WireFormat.JSON)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x81", b"\x81\xa1t", b"\xff\xff\xff", b"\x82\xa1t\xaakeys.count",
     b"\x81\xa1t\xaakeys.count\x00", b"\x81\xc4\x01t\xaakeys.count", b"\x81\x01\x02",
     b"\xd9\x02\xff\xfe"],
    ids=["empty", "never-used", "truncated-map", "truncated-key", "fixint-junk",
         "map-short", "trailing", "bin-key", "int-key", "bad-utf8"],
)  # fmt: skip
def test_garbage_msgpack(data: bytes) -> None:
    assert_bad_frame(data, WireFormat.MSGPACK)


@pytest.mark.parametrize(
    "data", ["", "{", "{'t': 'ack'}", "nul", '{"t":"ack","ids":[]}x', "\ud800", "[1,"]
)
def test_garbage_json(data: str) -> None:
    assert_bad_frame(data, WireFormat.JSON)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("value", [[], [{"t": "keys.count", "rid": 1}], 1, "keys.count", None,
                                   True, 1.5])  # fmt: skip
def test_top_level_must_be_a_map(value: Any, fmt: WireFormat) -> None:
    assert_bad_frame(pack(value, fmt), fmt)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_t_missing_or_not_a_string(fmt: WireFormat) -> None:
    assert_bad_frame(pack({}, fmt), fmt)
    assert_bad_frame(pack({"rid": 1}, fmt), fmt, rid=1)
    for t in (1, None, True, ["keys.count"], {"x": 1}):
        assert_bad_frame(pack({"t": t, "rid": 2}, fmt), fmt, rid=2)
        assert_bad_frame(pack({"t": t}, fmt), fmt)


def test_t_as_msgpack_bin_is_not_a_string() -> None:
    data = msgpack.packb({"t": b"keys.count", "rid": 3}, use_bin_type=True)
    assert_bad_frame(data, WireFormat.MSGPACK, rid=3)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("t", ["hello", "", "ok", "error", "deliver", "challenge", "queue_empty",
                               "keys.low", "KEYS.COUNT", "keys.count ", "x" * 1000])  # fmt: skip
def test_unknown_type(t: str, fmt: WireFormat) -> None:
    err = _decode_error(pack({"t": t, "rid": 42}, fmt), fmt)
    assert type(err) is UnknownFrameType
    assert err.code is ErrorCode.UNKNOWN_TYPE
    assert err.rid == 42
    assert len(err.message) < 200
    err = _decode_error(pack({"t": t}, fmt), fmt)
    assert type(err) is UnknownFrameType
    assert err.rid is None


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("rid", [-1, U32_MAX + 1, True, 1.0, "1", None, [1]])
def test_unknown_type_with_unusable_rid(rid: Any, fmt: WireFormat) -> None:
    err = _decode_error(pack({"t": "nope", "rid": rid}, fmt), fmt)
    assert type(err) is UnknownFrameType
    assert err.rid is None


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("rid", [-1, U32_MAX + 1, I64_MIN, True, False, 1.0, "1", None, [1]])
def test_unusable_rid_is_bad_frame_without_rid(rid: Any, fmt: WireFormat) -> None:
    assert_bad_frame(pack({"t": "keys.count", "rid": rid}, fmt), fmt)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_rid_bounds(fmt: WireFormat) -> None:
    for rid in (0, 1, U32_MAX):
        assert decode_client_frame(pack({"t": "keys.count", "rid": rid}, fmt), fmt) == (
            KeysCount(rid=rid)
        )


def test_msgpack_uint64_rid() -> None:
    data = msgpack.packb({"t": "keys.count", "rid": 2**64 - 1})
    assert_bad_frame(data, WireFormat.MSGPACK)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(("name", "frame", "raw"), CLIENT_CASES, ids=_ids(CLIENT_CASES))
def test_missing_required_key_is_bad_frame_with_rid(
    name: str, frame: ClientFrame, raw: dict[str, Any], fmt: WireFormat
) -> None:
    required = {
        "register": {"rid", "identity_key", "key_scheme", "signature"},
        "auth": {"rid", "user", "device", "signature"},
        "send": {"rid", "id", "to", "ts", "nonce", "devices"},
        "send.multi": {"rid", "id", "ts", "nonce", "to"},
        "ack": {"ids"},
        "keys.upload": {"rid"},
        "keys.fetch": {"rid", "user"},
        "keys.count": {"rid"},
        "devices.list": {"rid"},
        "devices.remove": {"rid", "device"},
        "backup.put": {"rid", "version", "blob", "access_key"},
        "backup.get": {"rid"},
        "backup.delete": {"rid", "version"},
        "backup.recover": {"rid", "access_key", "signature"},
    }[raw["t"]]
    for key in required:
        broken = {k: v for k, v in raw.items() if k != key}
        rid = None if key == "rid" or raw["t"] == "ack" else raw["rid"]
        assert_bad_frame(pack(broken, fmt), fmt, rid=rid)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(("name", "frame", "raw"), CLIENT_CASES, ids=_ids(CLIENT_CASES))
def test_unknown_keys_are_ignored(
    name: str, frame: ClientFrame, raw: dict[str, Any], fmt: WireFormat
) -> None:
    extra = dict(raw, zz_future={"nested": [1, None, b"\x00"]}, x=None, _=1.5)
    assert decode_client_frame(pack(extra, fmt), fmt) == frame


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_unknown_keys_inside_nested_maps_are_ignored(fmt: WireFormat) -> None:
    raw = {"t": "send", "rid": 1, "id": MSG_ID, "to": USER, "ts": 0, "nonce": NONCE,
           "devices": [{"device": 1, "type": 1, "body": b"x", "later": "v2"}]}  # fmt: skip
    frame = decode_client_frame(pack(raw, fmt), fmt)
    assert isinstance(frame, Send)
    assert frame.devices == (DeviceMessage(device=1, type=1, body=b"x"),)


_REG = {"identity_key": ED_KEY, "key_scheme": "ed25519", "signature": SIG}
_LINKED = {**_REG, "user": USER, "link": {"device": 1, "signature": SIG}}


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize(
    ("t", "valid", "key"),
    [
        ("register", {**_REG, "registration_id": 1}, "registration_id"),
        ("register", {**_REG, "token": "tok"}, "token"),
        ("register", _LINKED, "user"),
        ("register", _LINKED, "link"),
        ("send", {"id": MSG_ID, "to": USER, "ts": 0, "nonce": NONCE, "devices": [],
                  "online": True}, "online"),
        ("keys.upload", {"signed_prekey": SIGNED_RAW}, "signed_prekey"),
        ("keys.upload", {"prekeys": [{"id": 1, "key": EC_KEY}]}, "prekeys"),
        ("keys.upload", {"pq_prekeys": [PQ_RAW]}, "pq_prekeys"),
        ("keys.upload", {"pq_last_resort": PQ_RAW}, "pq_last_resort"),
        ("keys.fetch", {"user": USER, "device": 1}, "device"),
    ],
)  # fmt: skip
def test_optional_key_with_null_is_bad_frame(
    t: str, valid: dict[str, Any], key: str, fmt: WireFormat
) -> None:
    raw = {"t": t, "rid": 77, **valid}
    assert type(decode_client_frame(pack(raw, fmt), fmt)) is CLIENT_FRAMES[t]
    raw[key] = None
    assert_bad_frame(pack(raw, fmt), fmt, rid=77)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_device_registration_id_null_is_bad_frame(fmt: WireFormat) -> None:
    entry = {"device": 1, "type": 1, "body": b"x", "registration_id": None}
    raw = {"t": "send", "rid": 3, "id": MSG_ID, "to": USER, "ts": 0, "nonce": NONCE,
           "devices": [entry]}  # fmt: skip
    assert_bad_frame(pack(raw, fmt), fmt, rid=3)


def test_string_where_bin_expected_in_msgpack() -> None:
    raw = {"t": "auth", "rid": 9, "user": USER, "device": 1,
           "signature": to_json_value(SIG)}  # fmt: skip
    assert_bad_frame(msgpack.packb(raw, use_bin_type=True), WireFormat.MSGPACK, rid=9)
    # A 64-character str is not 64 bytes of bin either.
    raw["signature"] = "a" * 64
    assert_bad_frame(msgpack.packb(raw, use_bin_type=True), WireFormat.MSGPACK, rid=9)
    # Without use_bin_type, msgpack writes bytes as (raw) str: refused too.
    raw["signature"] = SIG  # valid UTF-8, so it arrives as a str
    assert_bad_frame(msgpack.packb(raw, use_bin_type=False), WireFormat.MSGPACK, rid=9)
    raw["signature"] = b"\xff" * 64  # not UTF-8: the message itself is unreadable
    assert_bad_frame(msgpack.packb(raw, use_bin_type=False), WireFormat.MSGPACK)


def test_bin_where_str_expected_in_msgpack() -> None:
    raw = {"t": "auth", "rid": 9, "user": USER.encode(), "device": 1, "signature": SIG}
    assert_bad_frame(msgpack.packb(raw, use_bin_type=True), WireFormat.MSGPACK, rid=9)
    raw = {"t": "register", "rid": 9, "identity_key": ED_KEY, "key_scheme": b"ed25519",
           "signature": SIG}  # fmt: skip
    assert_bad_frame(msgpack.packb(raw, use_bin_type=True), WireFormat.MSGPACK, rid=9)


def _auth_json(signature: Any) -> str:
    raw = {"t": "auth", "rid": 9, "user": USER, "device": 1, "signature": signature}
    return orjson.dumps(raw).decode()


def test_json_signature_base64url_accepted() -> None:
    frame = decode_client_frame(_auth_json(to_json_value(SIG)), WireFormat.JSON)
    assert isinstance(frame, Auth)
    assert frame.signature == SIG


@pytest.mark.parametrize(
    "signature",
    [
        base64.b64encode(SIG).decode(),  # padded standard base64 (64 bytes → "==")
        base64.urlsafe_b64encode(SIG).decode(),  # padded base64url
        base64.b64encode(b"\xfb" * 64).decode().rstrip("="),  # standard alphabet "+"
        base64.b64encode(b"\xff" * 64).decode().rstrip("="),  # standard alphabet "/"
        to_json_value(SIG)[:-1] + "B",  # stray bits in the last character
        to_json_value(SIG) + "A",  # length 1 mod 4
        " " + to_json_value(SIG),
        "not base64 at all!",
        list(SIG),
        None,
        64,
    ],
    ids=["std-padded", "url-padded", "std-plus", "std-slash", "stray-bits", "len-1-mod-4",
         "space", "junk", "int-list", "null", "int"],
)  # fmt: skip
def test_json_signature_refused(signature: Any) -> None:
    assert_bad_frame(_auth_json(signature), WireFormat.JSON, rid=9)


def test_body_over_limit_is_too_large() -> None:
    limits = Limits(max_body_bytes=100)
    for fmt in FORMATS:
        for size, ok in ((100, True), (101, False)):
            raw = {"t": "send", "rid": 4, "id": MSG_ID, "to": USER, "ts": 0, "nonce": NONCE,
                   "devices": [{"device": 1, "type": 1, "body": b"b" * size}]}  # fmt: skip
            if ok:
                frame = decode_client_frame(pack(raw, fmt), fmt, limits)
                assert isinstance(frame, Send)
                assert frame.devices[0].body == b"b" * size
            else:
                err = _decode_error(pack(raw, fmt), fmt, limits)
                assert type(err) is FrameTooLarge
                assert err.code is ErrorCode.TOO_LARGE
                assert err.rid == 4


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_default_body_limit(fmt: WireFormat) -> None:
    def send(size: int) -> bytes | str:
        raw = {"t": "send", "rid": 4, "id": MSG_ID, "to": USER, "ts": 0, "nonce": NONCE,
               "devices": [{"device": 1, "type": 1, "body": b"b" * size}]}  # fmt: skip
        return pack(raw, fmt)

    assert isinstance(decode_client_frame(send(256 * 1024), fmt), Send)
    err = _decode_error(send(256 * 1024 + 1), fmt)
    assert type(err) is FrameTooLarge
    assert err.rid == 4


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_ack_errors_never_carry_rid(fmt: WireFormat) -> None:
    too_many = {"t": "ack", "rid": 5, "ids": [MSG_ID] * 1001}
    err = _decode_error(pack(too_many, fmt), fmt)
    assert type(err) is FrameTooLarge
    assert err.code is ErrorCode.TOO_LARGE
    assert err.rid is None
    assert_bad_frame(pack({"t": "ack", "rid": 5, "ids": [b"short"]}, fmt), fmt)
    assert_bad_frame(pack({"t": "ack", "rid": 5}, fmt), fmt)
    assert_bad_frame(pack({"t": "ack", "rid": 5, "ids": None}, fmt), fmt)
    ok = decode_client_frame(pack({"t": "ack", "rid": 5, "ids": [MSG_ID] * 1000}, fmt), fmt)
    assert ok == Ack(ids=(MSG_ID,) * 1000)


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"\x91" * 100_000 + b"\x00", WireFormat.MSGPACK),
        (b"\x81\xa1x" * 50_000 + b"\x00", WireFormat.MSGPACK),
        ("[" * 100_000 + "]" * 100_000, WireFormat.JSON),
        ('{"t":' * 50_000 + "1" + "}" * 50_000, WireFormat.JSON),
    ],
    ids=["msgpack-arrays", "msgpack-maps", "json-arrays", "json-maps"],
)
def test_deep_nesting_is_bad_frame(data: bytes | str, fmt: WireFormat) -> None:
    assert_bad_frame(data, fmt)


@pytest.mark.parametrize(
    "ext",
    [msgpack.ExtType(5, MSG_ID), msgpack.ExtType(0, b""), msgpack.Timestamp(1, 0)],
    ids=["ext-16", "ext-empty", "timestamp"],
)
@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"t": "ack"}, "ids"),
        ({"t": "keys.count"}, "rid"),
        ({"t": "devices.remove", "rid": 2}, "device"),
        ({"t": "auth", "rid": 2, "user": USER, "device": 1}, "signature"),
        ({"t": "send", "rid": 2, "id": MSG_ID, "to": USER, "ts": 0, "nonce": NONCE}, "devices"),
        ({"t": "send", "rid": 2, "id": MSG_ID, "to": USER, "nonce": NONCE, "devices": []}, "ts"),
    ],
)  # fmt: skip
def test_msgpack_extension_types_are_refused(raw: dict[str, Any], key: str, ext: Any) -> None:
    data = msgpack.packb({**raw, key: ext}, use_bin_type=True, datetime=False)
    rid = None if key == "rid" or raw["t"] == "ack" else raw["rid"]
    assert_bad_frame(data, WireFormat.MSGPACK, rid=rid)


def test_msgpack_bin_map_keys_do_not_name_fields() -> None:
    raw = {"t": "devices.remove", "rid": 2, b"device": 1}
    assert_bad_frame(msgpack.packb(raw, use_bin_type=True), WireFormat.MSGPACK, rid=2)
    nested = {"t": "send", "rid": 2, "id": MSG_ID, "to": USER, "ts": 0, "nonce": NONCE,
              "devices": [{b"device": 1, "type": 1, "body": b"x"}]}  # fmt: skip
    assert_bad_frame(msgpack.packb(nested, use_bin_type=True), WireFormat.MSGPACK, rid=2)


# --- server frames as the client decodes them --------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_server_ok_for_no_pending_request(fmt: WireFormat) -> None:
    with pytest.raises(FrameError):
        decode_server(pack({"t": "ok", "rid": 1}, fmt), fmt, None)
    with pytest.raises(FrameError):
        decode_server(pack({"t": "ok"}, fmt), fmt, EmptyOk)
    with pytest.raises(FrameError):
        decode_server(pack({"t": "ok", "rid": -1}, fmt), fmt, EmptyOk)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_server_ok_checked_against_the_expected_answer(fmt: WireFormat) -> None:
    # An `ok` that lacks the fields of the answer its request expects is bad_frame.
    with pytest.raises(FrameError):
        decode_server(pack({"t": "ok", "rid": 5}, fmt), fmt, SendOk)
    frame = decode_server(pack({"t": "ok", "rid": 5}, fmt), fmt, EmptyOk)
    assert frame == EmptyOk(rid=5)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("t", ["send", "nope", 1, None, "register"])
def test_server_unknown_type(t: Any, fmt: WireFormat) -> None:
    with pytest.raises(UnknownFrameType):
        decode_server(pack({"t": t}, fmt), fmt)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_server_deliver_null_online_is_bad_frame(fmt: WireFormat) -> None:
    raw = {"t": "deliver", "id": MSG_ID, "from": USER, "from_device": 2, "ts": TS,
           "server_ts": TS, "type": 0, "body": b"t", "nonce": NONCE, "online": None}  # fmt: skip
    with pytest.raises(FrameError):
        decode_server(pack(raw, fmt), fmt)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_server_keys_count_null_age_is_bad_frame(fmt: WireFormat) -> None:
    raw = {"t": "ok", "rid": 1, "prekeys": 0, "pq_prekeys": 0, "signed_prekey_age_s": None}
    with pytest.raises(FrameError):
        decode_server(pack(raw, fmt), fmt, KeysCountOk)


def test_server_messages_of_the_wrong_kind() -> None:
    with pytest.raises(FrameError):
        decode_server(pack({"t": "queue_empty"}, WireFormat.JSON), WireFormat.MSGPACK)
    with pytest.raises(FrameError):
        decode_server(pack({"t": "queue_empty"}, WireFormat.MSGPACK), WireFormat.JSON)


def test_server_body_is_not_limited_by_the_client_body_limit() -> None:
    body = b"z" * (256 * 1024 + 1)
    frame = Deliver(id=MSG_ID, from_user=USER, from_device=1, ts=1, server_ts=2, type=1,
                    body=body, nonce=NONCE)  # fmt: skip
    for fmt in FORMATS:
        assert decode_server(encode(frame, fmt), fmt) == frame


# --- properties -------------------------------------------------------------------------

FRAME_KEYS = sorted(
    {"t", "rid", "id", "ids", "to", "ts", "nonce", "devices", "device", "type", "body",
     "registration_id", "online", "user", "identity_key", "key_scheme", "signature", "token",
     "link", "signed_prekey", "prekeys", "pq_prekeys", "pq_last_resort", "key"}
)  # fmt: skip
FRAME_TYPES = [*sorted(CLIENT_FRAMES), "ok", "deliver", "nope"]

small_bytes = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([MSG_ID, NONCE, SIG, ED_KEY, XED_KEY, EC_KEY, EC_KEY_05, CHALLENGE]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from([USER, OTHER, USER.upper(), "ed25519", "xeddsa", *FRAME_TYPES]),
    small_bytes,
)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.sampled_from(FRAME_KEYS) | st.text(max_size=8), children, max_size=8),
    )


values = st.recursive(scalars, _extend, max_leaves=20)
small_values = st.recursive(scalars, _extend, max_leaves=4)
frame_like = st.fixed_dictionaries(
    {"t": st.sampled_from(FRAME_TYPES)},
    optional={k: small_values for k in FRAME_KEYS if k != "t"},
)


def _decodes_or_relay_error(data: bytes | str, fmt: WireFormat) -> None:
    try:
        frame = decode_client_frame(data, fmt)
    except RelayError as exc:
        assert isinstance(exc.code, ErrorCode)
        assert exc.rid is None or (type(exc.rid) is int and 0 <= exc.rid <= U32_MAX)
        return
    assert type(frame) in CLIENT_FRAMES.values()
    # Whatever decodes re-encodes to a message that decodes to the same frame.
    assert decode_client_frame(encode(frame, fmt), fmt) == frame


PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    _decodes_or_relay_error(data, WireFormat.MSGPACK)
    _decodes_or_relay_error(data, WireFormat.JSON)


@PROPERTY
@given(st.text(max_size=300))
def test_random_text_never_crashes(data: str) -> None:
    _decodes_or_relay_error(data, WireFormat.JSON)
    _decodes_or_relay_error(data, WireFormat.MSGPACK)


@PROPERTY
@given(values)
def test_random_msgpack_structures_never_crash(value: Any) -> None:
    _decodes_or_relay_error(msgpack.packb(value, use_bin_type=True), WireFormat.MSGPACK)


@PROPERTY
@given(frame_like, st.sampled_from(FORMATS))
def test_random_frame_like_maps_never_crash(raw: dict[str, Any], fmt: WireFormat) -> None:
    try:
        data = pack(raw, fmt)
    except (TypeError, orjson.JSONEncodeError):  # e.g. ints beyond 64 bits in JSON
        return
    _decodes_or_relay_error(data, fmt)


@PROPERTY
@given(frame_like, st.binary(max_size=8))
def test_corrupted_valid_messages_never_crash(raw: dict[str, Any], junk: bytes) -> None:
    data = msgpack.packb(raw, use_bin_type=True)
    for cut in (len(data) // 2, len(data) - 1):
        _decodes_or_relay_error(data[:cut] + junk, WireFormat.MSGPACK)


@PROPERTY
@given(st.sampled_from([c[2] for c in CLIENT_CASES]), st.data())
def test_mutated_valid_frames_never_crash(raw: dict[str, Any], data: st.DataObject) -> None:
    mutated = dict(raw)
    key = data.draw(st.sampled_from(sorted(mutated)))
    mutated[key] = data.draw(values)
    fmt = data.draw(st.sampled_from(FORMATS))
    try:
        message = pack(mutated, fmt)
    except (TypeError, orjson.JSONEncodeError):
        return
    _decodes_or_relay_error(message, fmt)


uuid_text = st.uuids().map(str)
u32 = st.integers(min_value=0, max_value=U32_MAX)


@st.composite
def send_frames(draw: Callable[..., Any]) -> Send:
    device_numbers = draw(st.lists(u32, unique=True, max_size=6))
    devices = tuple(
        DeviceMessage(
            device=n,
            type=draw(st.integers(min_value=0, max_value=255)),
            body=draw(st.binary(min_size=1, max_size=300)),
            registration_id=draw(st.none() | u32),
        )
        for n in device_numbers
    )
    return Send(
        rid=draw(u32),
        id=draw(st.binary(min_size=16, max_size=16)),
        to=draw(uuid_text),
        ts=draw(st.integers(min_value=I64_MIN, max_value=I64_MAX)),
        nonce=draw(st.binary(min_size=24, max_size=24)),
        devices=devices,
        online=draw(st.booleans()),
    )


@PROPERTY
@given(send_frames(), st.sampled_from(FORMATS))
def test_send_round_trip_property(frame: Send, fmt: WireFormat) -> None:
    data = encode(frame, fmt)
    assert decode_client_frame(data, fmt) == frame
    wire = unpack(data, fmt)
    assert wire["t"] == "send"
    assert ("online" in wire) is frame.online
    assert wire["to"] == frame.to
    assert wire["id"] == (frame.id if fmt is WireFormat.MSGPACK else to_json_value(frame.id))
    for entry, device in zip(wire["devices"], frame.devices, strict=True):
        assert ("registration_id" in entry) is (device.registration_id is not None)


@PROPERTY
@given(
    st.builds(
        Deliver,
        id=st.binary(min_size=16, max_size=16),
        from_user=uuid_text,
        from_device=u32,
        ts=st.integers(min_value=I64_MIN, max_value=I64_MAX),
        server_ts=st.integers(min_value=I64_MIN, max_value=I64_MAX),
        type=st.integers(min_value=0, max_value=255),
        body=st.binary(min_size=1, max_size=300),
        nonce=st.binary(min_size=24, max_size=24),
        online=st.booleans(),
    ),
    st.sampled_from(FORMATS),
)
def test_deliver_round_trip_property(frame: Deliver, fmt: WireFormat) -> None:
    assert decode_server(encode(frame, fmt), fmt) == frame


@PROPERTY
@given(send_frames())
def test_msgpack_bytes_are_the_maps_in_field_order(frame: Send) -> None:
    """The encoder's shortcuts (fields written as they are, one shared packer) give the same
    bytes as packing the documented map: `t` first, then the fields in their order."""
    expected = msgpack.packb({"t": frame.T, **encode_fields(frame, False)}, use_bin_type=True)
    assert encode(frame, WireFormat.MSGPACK) == expected
    assert list(unpack(expected, WireFormat.MSGPACK)) == ["t", *encode_fields(frame, False)]


def test_frames_encoded_on_several_threads_at_once_are_whole() -> None:
    """The shared packer never mixes two frames: encoding from several threads at once gives
    each frame's own bytes."""
    frames = [
        Deliver(
            id=bytes([n]) * 16,
            from_user="0b7a2c3e-1111-4222-8333-444455556666",
            from_device=n,
            ts=n,
            server_ts=n,
            type=1,
            body=bytes([n]) * (200 + 300 * n),
            nonce=bytes([n]) * 24,
        )
        for n in range(4)
    ]
    expected = [encode(frame, WireFormat.MSGPACK) for frame in frames]
    mismatches: list[int] = []

    def encode_many(n: int) -> None:
        for _ in range(3000):
            if encode(frames[n], WireFormat.MSGPACK) != expected[n]:
                mismatches.append(n)

    threads = [threading.Thread(target=encode_many, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []


def test_json_output_is_ascii_safe_text() -> None:
    frame = Error(code=ErrorCode.BAD_FRAME, message="naïve ✓")
    data = encode(frame, WireFormat.JSON)
    assert isinstance(data, str)
    assert orjson.loads(data)["message"] == "naïve ✓"
    assert set(to_json_value(bytes(range(256)))) <= set(string.ascii_letters + string.digits + "-_")


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_backup_blob_limit_is_configurable(fmt: WireFormat) -> None:
    """A blob above the configured backup limit is `too_large`; the body limit does not
    apply to it, nor the backup limit to message bodies."""
    limits = Limits(max_body_bytes=10, max_backup_bytes=100)

    def put(size: int) -> bytes | str:
        raw = {"t": "backup.put", "rid": 1, "version": 0, "blob": bytes(size), "access_key": ED_KEY}
        return pack(raw, fmt)

    frame = decode_client_frame(put(100), fmt, limits)
    assert isinstance(frame, BackupPut) and len(frame.blob) == 100
    with pytest.raises(FrameTooLarge) as exc:
        decode_client_frame(put(101), fmt, limits)
    assert exc.value.code is ErrorCode.TOO_LARGE and exc.value.rid == 1
    with pytest.raises(FrameError):
        decode_client_frame(put(0), fmt, limits)
    short_key = {"t": "backup.put", "rid": 2, "version": 0, "blob": b"x", "access_key": b"k"}
    with pytest.raises(FrameError) as bad:
        decode_client_frame(pack(short_key, fmt), fmt, limits)
    assert bad.value.code is ErrorCode.BAD_FRAME
