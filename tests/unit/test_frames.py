"""Tests for protocol.frames: the checks of every frame type, through the codec, in both formats.

Spec §2 (identity-key sizes per scheme), §3 (register/auth), §4 (send: sizes,
`type` 0-255, a device named twice is `bad_frame`), §5 (ack: at most 1000 ids),
§6 (pre-keys 32 bytes or 33 starting with 0x05, PQ keys up to 2048 bytes, at
most 100 keys per list), §8 (`bad_frame` vs `too_large`).
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import msgpack
import orjson
import pytest

from protocol.codec import WireFormat, decode_client_frame, decode_server_frame, encode
from protocol.errors import ErrorCode, FrameError, FrameTooLarge, RelayError
from protocol.fields import I64_MAX, I64_MIN, U32_MAX, Limits
from protocol.frames import (
    ANSWER_TYPES,
    CLIENT_FRAMES,
    MAX_ACK_IDS,
    MAX_KEYS_PER_UPLOAD,
    MAX_PQ_KEY_BYTES,
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
    Deliver,
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
    PqPreKey,
    PreKey,
    QueueEmpty,
    Register,
    Send,
    SendMulti,
    SendMultiOk,
    SendOk,
    SignedPreKey,
)
from protocol.signatures import KeyScheme

FORMATS = [WireFormat.MSGPACK, WireFormat.JSON]
FORMAT_IDS = ["msgpack", "json"]

USER = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
ED_KEY = bytes(range(200, 232))
XED_KEY = b"\x05" + bytes(range(100, 132))
SIG = bytes(range(64))
MSG_ID = bytes(range(16))
NONCE = bytes(range(24))
EC_KEY = bytes(range(32))
EC_KEY_05 = b"\x05" + bytes(range(1, 33))
PQ_KEY = b"\x08" + bytes(1568)
RID = 21


def to_json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.urlsafe_b64encode(value).decode("ascii").rstrip("=")
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    return value


def pack(raw: Any, fmt: WireFormat) -> bytes | str:
    if fmt is WireFormat.MSGPACK:
        packed: bytes = msgpack.packb(raw, use_bin_type=True)
        return packed
    return orjson.dumps(to_json_value(raw)).decode("utf-8")


def changed(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A deep copy of `raw` with the value at `path` replaced (or deleted when `value` is DEL)."""
    out = copy.deepcopy(raw)
    target: Any = out
    for step in path[:-1]:
        target = target[step]
    if value is DEL:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


DEL = object()


def decode(raw: dict[str, Any], fmt: WireFormat, limits: Limits | None = None) -> Any:
    return decode_client_frame(pack(raw, fmt), fmt, limits)


def refused(raw: dict[str, Any], fmt: WireFormat, limits: Limits | None = None) -> RelayError:
    with pytest.raises(RelayError) as info:
        decode(raw, fmt, limits)
    return info.value


def assert_bad(raw: dict[str, Any], fmt: WireFormat, rid: int | None = RID) -> None:
    err = refused(raw, fmt)
    assert type(err) is FrameError, f"{err!r} for {raw!r}"
    assert err.code is ErrorCode.BAD_FRAME
    assert err.rid == rid


def assert_too_large(
    raw: dict[str, Any], fmt: WireFormat, rid: int | None = RID, limits: Limits | None = None
) -> None:
    err = refused(raw, fmt, limits)
    assert type(err) is FrameTooLarge, f"{err!r}"
    assert err.code is ErrorCode.TOO_LARGE
    assert err.rid == rid


fmt_param = pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)


# --- registries ---------------------------------------------------------------------


def test_client_frame_names() -> None:
    assert set(CLIENT_FRAMES) == {
        "register",
        "auth",
        "send",
        "send.multi",
        "ack",
        "keys.upload",
        "keys.fetch",
        "keys.count",
        "devices.list",
        "devices.remove",
        "backup.put",
        "backup.get",
        "backup.delete",
        "backup.recover",
    }
    for name, cls in CLIENT_FRAMES.items():
        assert name == cls.T


def test_server_frame_names() -> None:
    assert set(SERVER_PUSHES) == {
        "challenge",
        "deliver",
        "receipt",  # the delivery-receipt extension (docs/protocol.md)
        "queue_empty",
        "keys.low",
        "error",
    }
    for name, cls in SERVER_PUSHES.items():
        assert name == cls.T
    for answer in (AuthOk, SendOk, KeysUploadOk, KeysFetchOk, KeysCountOk, DevicesListOk):
        assert answer.T == "ok"
    assert EmptyOk.T == "ok"


def test_answer_types() -> None:
    assert dict(ANSWER_TYPES) == {
        Register: AuthOk,
        Auth: AuthOk,
        Send: SendOk,
        SendMulti: SendMultiOk,
        KeysUpload: KeysUploadOk,
        KeysFetch: KeysFetchOk,
        KeysCount: KeysCountOk,
        DevicesList: DevicesListOk,
        DevicesRemove: EmptyOk,
        BackupPut: BackupPutOk,
        BackupGet: BackupOk,
        BackupDelete: EmptyOk,
        BackupRecover: BackupOk,
    }
    assert Ack.T not in {cls.T for cls in ANSWER_TYPES}  # an ack has no answer


def test_limits_match_the_spec() -> None:
    assert MAX_ACK_IDS == 1000
    assert MAX_KEYS_PER_UPLOAD == 100
    assert MAX_PQ_KEY_BYTES == 2048


# --- register ------------------------------------------------------------------------

REGISTER_NEW: dict[str, Any] = {
    "t": "register",
    "rid": RID,
    "identity_key": XED_KEY,
    "key_scheme": "xeddsa",
    "signature": SIG,
}
REGISTER_LINKED: dict[str, Any] = {
    "t": "register",
    "rid": RID,
    "user": USER,
    "identity_key": ED_KEY,
    "key_scheme": "ed25519",
    "signature": SIG,
    "link": {"device": 1, "signature": SIG},
    "registration_id": 9,
}


@fmt_param
def test_register_valid(fmt: WireFormat) -> None:
    assert decode(REGISTER_NEW, fmt) == Register(
        rid=RID, identity_key=XED_KEY, key_scheme=KeyScheme.XEDDSA, signature=SIG
    )
    assert decode(REGISTER_LINKED, fmt) == Register(
        rid=RID,
        user=USER,
        identity_key=ED_KEY,
        key_scheme=KeyScheme.ED25519,
        signature=SIG,
        link=Link(device=1, signature=SIG),
        registration_id=9,
    )


@fmt_param
@pytest.mark.parametrize(
    ("scheme", "key", "ok"),
    [
        ("ed25519", ED_KEY, True),
        ("ed25519", b"\x05" + ED_KEY[1:], True),  # any 32 bytes
        ("ed25519", XED_KEY, False),  # 33 bytes is the xeddsa size
        ("ed25519", ED_KEY[:31], False),
        ("ed25519", b"", False),
        ("xeddsa", XED_KEY, True),
        ("xeddsa", b"\x06" + XED_KEY[1:], False),  # needs the 0x05 type byte
        ("xeddsa", b"\x00" + XED_KEY[1:], False),
        ("xeddsa", XED_KEY[1:], False),  # the bare 32-byte X25519 key
        ("xeddsa", XED_KEY + b"\x00", False),
        ("xeddsa", ED_KEY, False),
    ],
)
def test_register_identity_key_per_scheme(
    scheme: str, key: bytes, ok: bool, fmt: WireFormat
) -> None:
    for base in (REGISTER_NEW, REGISTER_LINKED):
        raw = {**base, "key_scheme": scheme, "identity_key": key}
        if ok:
            frame = decode(raw, fmt)
            assert frame.identity_key == key
            assert frame.key_scheme == scheme
        else:
            assert_bad(raw, fmt)


@fmt_param
@pytest.mark.parametrize("scheme", ["Ed25519", "XEDDSA", "curve25519", "", 1, None, True])
def test_register_unknown_key_scheme(scheme: Any, fmt: WireFormat) -> None:
    assert_bad({**REGISTER_NEW, "key_scheme": scheme}, fmt)


@fmt_param
@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("signature",), SIG[:63]),
        (("signature",), SIG + b"\x00"),
        (("signature",), b""),
        (("signature",), DEL),
        (("identity_key",), DEL),
        (("key_scheme",), DEL),
        (("registration_id",), -1),
        (("registration_id",), U32_MAX + 1),
        (("registration_id",), True),
        (("registration_id",), "9"),
        (("registration_id",), 9.0),
        (("user",), USER.upper()),
        (("user",), USER.replace("-", "")),
        (("user",), "{" + USER + "}"),
        (("user",), 7),
        (("user",), DEL),  # link without user
        (("link",), DEL),  # user without link
        (("link",), [1, SIG]),
        (("link",), "1"),
        (("link",), {}),
        (("link", "device"), DEL),
        (("link", "device"), -1),
        (("link", "device"), U32_MAX + 1),
        (("link", "device"), "1"),
        (("link", "signature"), SIG[:63]),
        (("link", "signature"), DEL),
        (("token",), 5),
        (("token",), "x" * 257),
    ],
    ids=lambda v: str(v)[:20],
)
def test_register_linked_refused(path: tuple[Any, ...], value: Any, fmt: WireFormat) -> None:
    assert_bad(changed(REGISTER_LINKED, path, value), fmt)


@fmt_param
def test_register_token(fmt: WireFormat) -> None:
    assert decode({**REGISTER_NEW, "token": "x" * 256}, fmt).token == "x" * 256
    assert decode({**REGISTER_NEW, "token": ""}, fmt).token == ""
    assert_bad({**REGISTER_NEW, "token": "x" * 257}, fmt)
    assert_bad({**REGISTER_NEW, "token": b"tok"}, WireFormat.MSGPACK)


@fmt_param
def test_register_registration_id_bounds(fmt: WireFormat) -> None:
    assert decode({**REGISTER_NEW, "registration_id": 0}, fmt).registration_id == 0
    assert decode({**REGISTER_NEW, "registration_id": U32_MAX}, fmt).registration_id == U32_MAX


# --- auth ----------------------------------------------------------------------------

AUTH: dict[str, Any] = {"t": "auth", "rid": RID, "user": USER, "device": 2, "signature": SIG}


@fmt_param
def test_auth_valid(fmt: WireFormat) -> None:
    assert decode(AUTH, fmt) == Auth(rid=RID, user=USER, device=2, signature=SIG)


@fmt_param
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("user", USER.upper()),
        ("user", USER.replace("-", "")),
        ("user", "urn:uuid:" + USER),
        ("user", USER[:35]),
        ("user", ""),
        ("user", 1),
        ("device", "2"),
        ("device", True),
        ("device", 2.0),
        ("device", -1),
        ("device", U32_MAX + 1),
        ("device", None),
        ("signature", SIG[:63]),
        ("signature", SIG + SIG),
        ("signature", None),
        ("user", DEL),
        ("device", DEL),
        ("signature", DEL),
    ],
    ids=lambda v: str(v)[:20],
)
def test_auth_refused(key: str, value: Any, fmt: WireFormat) -> None:
    assert_bad(changed(AUTH, (key,), value), fmt)


# --- send ----------------------------------------------------------------------------

SEND: dict[str, Any] = {
    "t": "send",
    "rid": RID,
    "id": MSG_ID,
    "to": USER,
    "ts": 1_700_000_000_000,
    "nonce": NONCE,
    "devices": [
        {"device": 1, "type": 1, "body": b"one"},
        {"device": 2, "type": 2, "body": b"two", "registration_id": 5},
    ],
}


@fmt_param
def test_send_valid(fmt: WireFormat) -> None:
    assert decode(SEND, fmt) == Send(
        rid=RID,
        id=MSG_ID,
        to=USER,
        ts=1_700_000_000_000,
        nonce=NONCE,
        devices=(
            DeviceMessage(device=1, type=1, body=b"one"),
            DeviceMessage(device=2, type=2, body=b"two", registration_id=5),
        ),
    )


@fmt_param
@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("ts",), I64_MIN),
        (("ts",), I64_MAX),
        (("ts",), 0),
        (("devices", 0, "type"), 0),
        (("devices", 0, "type"), 255),
        (("devices", 0, "body"), b"\x00"),
        (("devices", 0, "device"), 0),
        (("devices", 0, "device"), U32_MAX),
        (("devices", 1, "registration_id"), 0),
        (("devices", 1, "registration_id"), U32_MAX),
        (("online",), True),
        (("online",), False),
        (("receipt",), True),
        (("receipt",), False),
        (("devices",), []),
    ],
    ids=lambda v: str(v)[:20],
)
def test_send_accepted(path: tuple[Any, ...], value: Any, fmt: WireFormat) -> None:
    raw = changed(SEND, path, value)
    frame = decode(raw, fmt)
    assert frame == Send(
        rid=RID,
        id=MSG_ID,
        to=USER,
        ts=raw["ts"],
        nonce=NONCE,
        devices=tuple(DeviceMessage(**d) for d in raw["devices"]),
        online=raw.get("online", False),
        receipt=raw.get("receipt", False),
    )
    # The edge value itself came through, unchanged, where it was sent.
    at: Any = frame
    for step in path:
        at = at[step] if isinstance(step, int) else getattr(at, step)
    assert at == (tuple(value) if isinstance(value, list) else value)
    assert type(at) is type(value) or isinstance(value, list)
    # And the frame survives a round trip through the encoder.
    assert decode_client_frame(encode(frame, fmt), fmt) == frame


@fmt_param
@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("id",), MSG_ID[:15]),
        (("id",), MSG_ID + b"\x00"),
        (("id",), b""),
        (("id",), USER),  # the UUID as text is not its 16 bytes
        (("nonce",), NONCE[:23]),
        (("nonce",), NONCE + b"\x00"),
        (("nonce",), MSG_ID),
        (("to",), USER.upper()),
        (("to",), USER.replace("-", "")),
        (("to",), MSG_ID),
        (("ts",), 1.5),
        (("ts",), 1.0),
        (("ts",), "1700000000000"),
        (("ts",), True),
        (("ts",), None),
        (("rid",), DEL),
        (("id",), DEL),
        (("to",), DEL),
        (("ts",), DEL),
        (("nonce",), DEL),
        (("devices",), DEL),
        (("devices",), {"device": 1, "type": 1, "body": b"x"}),
        (("devices",), None),
        (("devices", 0), [1, 1, b"x"]),
        (("devices", 0), None),
        (("devices", 0, "device"), DEL),
        (("devices", 0, "device"), -1),
        (("devices", 0, "device"), U32_MAX + 1),
        (("devices", 0, "device"), "1"),
        (("devices", 0, "type"), DEL),
        (("devices", 0, "type"), -1),
        (("devices", 0, "type"), 256),
        (("devices", 0, "type"), "1"),
        (("devices", 0, "type"), True),
        (("devices", 0, "type"), 1.0),
        (("devices", 0, "body"), DEL),
        (("devices", 0, "body"), b""),
        (("devices", 0, "body"), None),
        (("devices", 1, "registration_id"), -1),
        (("devices", 1, "registration_id"), U32_MAX + 1),
        (("devices", 1, "registration_id"), None),
        (("devices", 1, "registration_id"), False),
        (("online",), 1),
        (("online",), "true"),
        (("online",), None),
        (("receipt",), 1),
        (("receipt",), "true"),
        (("receipt",), None),
    ],
    ids=lambda v: str(v)[:20],
)
def test_send_refused(path: tuple[Any, ...], value: Any, fmt: WireFormat) -> None:
    raw = changed(SEND, path, value)
    assert_bad(raw, fmt, rid=None if path == ("rid",) else RID)


def test_send_body_as_msgpack_str_is_refused() -> None:
    assert_bad(changed(SEND, ("devices", 0, "body"), "one"), WireFormat.MSGPACK)


def test_send_ts_beyond_i64() -> None:
    # msgpack can carry a uint64; JSON (orjson) can too. Neither fits `ts`.
    for fmt in FORMATS:
        assert_bad(changed(SEND, ("ts",), I64_MAX + 1), fmt)
        assert_bad(changed(SEND, ("ts",), 2**64 - 1), fmt)


@fmt_param
def test_send_device_named_twice(fmt: WireFormat) -> None:
    raw = changed(SEND, ("devices", 1, "device"), 1)
    assert_bad(raw, fmt)
    same = {"device": 3, "type": 1, "body": b"x"}
    assert_bad(changed(SEND, ("devices",), [same, dict(same)]), fmt)
    assert_bad(changed(SEND, ("devices",), [same, {**same, "body": b"y", "type": 2}]), fmt)


@fmt_param
def test_send_receipt_of_an_online_message_is_refused(fmt: WireFormat) -> None:
    """An online message is never stored: a receipt could never follow (docs/protocol.md)."""
    assert_bad({**SEND, "online": True, "receipt": True}, fmt, rid=RID)
    assert decode({**SEND, "online": True, "receipt": False}, fmt).online


@fmt_param
def test_send_without_receipt_encodes_as_v1(fmt: WireFormat) -> None:
    """A v1 client's send has no `receipt` key: its bytes are unchanged by the extension."""
    frame = decode(SEND, fmt)
    assert not frame.receipt
    assert encode(frame, fmt) == pack(SEND, fmt)  # byte for byte what a v1 client sends
    assert encode(decode({**SEND, "receipt": False}, fmt), fmt) == pack(SEND, fmt)


@fmt_param
def test_send_device_count_limit(fmt: WireFormat) -> None:
    def entries(n: int) -> list[dict[str, Any]]:
        return [{"device": i, "type": 1, "body": b"x"} for i in range(1, n + 1)]

    frame = decode(changed(SEND, ("devices",), entries(127)), fmt)
    assert len(frame.devices) == 127
    assert_too_large(changed(SEND, ("devices",), entries(128)), fmt)


@fmt_param
def test_send_body_limit(fmt: WireFormat) -> None:
    limits = Limits(max_body_bytes=64)
    at_limit = changed(SEND, ("devices", 1, "body"), b"b" * 64)
    assert decode(at_limit, fmt, limits).devices[1].body == b"b" * 64
    over = changed(SEND, ("devices", 1, "body"), b"b" * 65)
    assert_too_large(over, fmt, limits=limits)
    # The default limit lets the same body through.
    assert decode(over, fmt).devices[1].body == b"b" * 65


@fmt_param
def test_send_online_absent_is_false(fmt: WireFormat) -> None:
    assert decode(SEND, fmt).online is False
    assert decode({**SEND, "online": True}, fmt).online is True


# --- ack -----------------------------------------------------------------------------


@fmt_param
def test_ack(fmt: WireFormat) -> None:
    assert decode({"t": "ack", "ids": [MSG_ID]}, fmt) == Ack(ids=(MSG_ID,))
    ids = [i.to_bytes(16, "big") for i in range(MAX_ACK_IDS)]
    assert decode({"t": "ack", "ids": ids}, fmt) == Ack(ids=tuple(ids))


@fmt_param
def test_ack_too_many_ids(fmt: WireFormat) -> None:
    ids = [i.to_bytes(16, "big") for i in range(MAX_ACK_IDS + 1)]
    assert_too_large({"t": "ack", "ids": ids}, fmt, rid=None)
    # A rid on an ack is not a usable rid: the error still carries none.
    assert_too_large({"t": "ack", "rid": 3, "ids": ids}, fmt, rid=None)


@fmt_param
@pytest.mark.parametrize(
    "ids",
    [[MSG_ID[:15]], [MSG_ID + b"\x00"], [b""], [MSG_ID, 1], [None], None, MSG_ID, {"a": MSG_ID}],
    ids=lambda v: str(v)[:20],
)
def test_ack_refused(ids: Any, fmt: WireFormat) -> None:
    assert_bad({"t": "ack", "ids": ids}, fmt, rid=None)
    assert_bad({"t": "ack", "rid": 3, "ids": ids}, fmt, rid=None)


def test_ack_id_as_msgpack_str_is_refused() -> None:
    assert_bad({"t": "ack", "ids": ["0123456789abcdef"]}, WireFormat.MSGPACK, rid=None)


# --- keys.upload ---------------------------------------------------------------------

UPLOAD: dict[str, Any] = {
    "t": "keys.upload",
    "rid": RID,
    "signed_prekey": {"id": 1, "key": EC_KEY_05, "signature": SIG},
    "prekeys": [{"id": 2, "key": EC_KEY}, {"id": 3, "key": EC_KEY_05}],
    "pq_prekeys": [{"id": 4, "key": PQ_KEY, "signature": SIG}],
    "pq_last_resort": {"id": 5, "key": PQ_KEY, "signature": SIG},
}


@fmt_param
def test_keys_upload_valid(fmt: WireFormat) -> None:
    assert decode(UPLOAD, fmt) == KeysUpload(
        rid=RID,
        signed_prekey=SignedPreKey(id=1, key=EC_KEY_05, signature=SIG),
        prekeys=(PreKey(id=2, key=EC_KEY), PreKey(id=3, key=EC_KEY_05)),
        pq_prekeys=(PqPreKey(id=4, key=PQ_KEY, signature=SIG),),
        pq_last_resort=PqPreKey(id=5, key=PQ_KEY, signature=SIG),
    )
    assert decode({"t": "keys.upload", "rid": RID}, fmt) == KeysUpload(rid=RID)


EC_KEY_PATHS = [("signed_prekey", "key"), ("prekeys", 0, "key"), ("prekeys", 1, "key")]


@fmt_param
@pytest.mark.parametrize("path", EC_KEY_PATHS, ids=lambda p: ".".join(map(str, p)))
@pytest.mark.parametrize(
    ("key", "ok"),
    [
        (bytes(32), True),
        (b"\x05" * 32, True),
        (b"\x05" + bytes(32), True),
        (b"\x05" + b"\xff" * 32, True),
        (b"\x00" + bytes(32), False),  # 33 bytes must start with 0x05
        (b"\x08" + bytes(32), False),
        (bytes(31), False),
        (b"\x05" + bytes(30), False),
        (b"\x05" + bytes(33), False),
        (bytes(34), False),
        (b"", False),
    ],
    ids=lambda v: v.hex()[:6] + f"-{len(v)}" if isinstance(v, bytes) else str(v),
)
def test_keys_upload_ec_key_sizes(
    path: tuple[Any, ...], key: bytes, ok: bool, fmt: WireFormat
) -> None:
    raw = changed(UPLOAD, path, key)
    if ok:
        assert isinstance(decode(raw, fmt), KeysUpload)
    else:
        assert_bad(raw, fmt)


PQ_KEY_PATHS = [("pq_prekeys", 0, "key"), ("pq_last_resort", "key")]


@fmt_param
@pytest.mark.parametrize("path", PQ_KEY_PATHS, ids=lambda p: ".".join(map(str, p)))
@pytest.mark.parametrize(
    ("size", "ok"), [(1, True), (32, True), (1569, True), (2048, True), (0, False), (2049, False)]
)
def test_keys_upload_pq_key_sizes(
    path: tuple[Any, ...], size: int, ok: bool, fmt: WireFormat
) -> None:
    raw = changed(UPLOAD, path, b"\x08" * size)
    if ok:
        frame = decode(raw, fmt)
        assert isinstance(frame, KeysUpload)
        assert frame.pq_prekeys is not None
        assert frame.pq_last_resort is not None
        key = frame.pq_prekeys[0].key if path[0] == "pq_prekeys" else frame.pq_last_resort.key
        assert key == b"\x08" * size
    else:
        assert_bad(raw, fmt)


@fmt_param
@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("signed_prekey", "signature"), SIG[:63]),
        (("signed_prekey", "signature"), SIG + b"\x00"),
        (("signed_prekey", "signature"), DEL),
        (("signed_prekey", "id"), DEL),
        (("signed_prekey", "id"), -1),
        (("signed_prekey", "id"), U32_MAX + 1),
        (("signed_prekey", "id"), "1"),
        (("signed_prekey", "key"), DEL),
        (("signed_prekey",), [1, EC_KEY, SIG]),
        (("signed_prekey",), "x"),
        (("prekeys",), {"id": 2, "key": EC_KEY}),
        (("prekeys",), "x"),
        (("prekeys", 0), None),
        (("prekeys", 0, "id"), DEL),
        (("prekeys", 0, "id"), True),
        (("prekeys", 0, "id"), 2.0),
        (("prekeys", 0, "key"), DEL),
        (("pq_prekeys", 0, "signature"), DEL),
        (("pq_prekeys", 0, "signature"), SIG[:63]),
        (("pq_prekeys", 0, "id"), U32_MAX + 1),
        (("pq_prekeys", 0, "key"), DEL),
        (("pq_prekeys",), {}),
        (("pq_last_resort", "signature"), DEL),
        (("pq_last_resort", "signature"), SIG[:32]),
        (("pq_last_resort", "id"), -5),
        (("pq_last_resort",), []),
    ],
    ids=lambda v: str(v)[:20],
)
def test_keys_upload_refused(path: tuple[Any, ...], value: Any, fmt: WireFormat) -> None:
    assert_bad(changed(UPLOAD, path, value), fmt)


@fmt_param
def test_keys_upload_id_bounds(fmt: WireFormat) -> None:
    raw = changed(UPLOAD, ("prekeys", 0, "id"), U32_MAX)
    raw = changed(raw, ("prekeys", 1, "id"), 0)
    frame = decode(raw, fmt)
    assert [p.id for p in frame.prekeys] == [U32_MAX, 0]


@fmt_param
def test_keys_upload_list_limits(fmt: WireFormat) -> None:
    prekeys = [{"id": i, "key": EC_KEY} for i in range(MAX_KEYS_PER_UPLOAD)]
    pq = [{"id": i, "key": b"\x08" * 8, "signature": SIG} for i in range(MAX_KEYS_PER_UPLOAD)]
    frame = decode({"t": "keys.upload", "rid": RID, "prekeys": prekeys, "pq_prekeys": pq}, fmt)
    assert len(frame.prekeys) == 100
    assert len(frame.pq_prekeys) == 100
    extra_ec = [*prekeys, {"id": 100, "key": EC_KEY}]
    extra_pq = [*pq, {"id": 100, "key": b"\x08", "signature": SIG}]
    assert_too_large({"t": "keys.upload", "rid": RID, "prekeys": extra_ec}, fmt)
    assert_too_large({"t": "keys.upload", "rid": RID, "pq_prekeys": extra_pq}, fmt)
    # too_large is decided on the count, before the entries are looked at.
    assert_too_large({"t": "keys.upload", "rid": RID, "prekeys": [None] * 101}, fmt)


# --- keys.fetch, keys.count, devices.* -------------------------------------------------


@fmt_param
def test_keys_fetch(fmt: WireFormat) -> None:
    base = {"t": "keys.fetch", "rid": RID, "user": USER}
    assert decode(base, fmt) == KeysFetch(rid=RID, user=USER)
    assert decode({**base, "device": 3}, fmt) == KeysFetch(rid=RID, user=USER, device=3)
    for device in (-1, U32_MAX + 1, "3", True, 3.0, None):
        assert_bad({**base, "device": device}, fmt)
    for user in (USER.upper(), USER.replace("-", ""), "", 1, None):
        assert_bad({**base, "user": user}, fmt)
    assert_bad({"t": "keys.fetch", "rid": RID}, fmt)


@fmt_param
@pytest.mark.parametrize(("t", "cls"), [("keys.count", KeysCount), ("devices.list", DevicesList)])
def test_requests_without_fields(t: str, cls: type[Any], fmt: WireFormat) -> None:
    assert decode({"t": t, "rid": RID}, fmt) == cls(rid=RID)
    assert decode({"t": t, "rid": RID, "device": "ignored"}, fmt) == cls(rid=RID)
    assert_bad({"t": t}, fmt, rid=None)


@fmt_param
def test_devices_remove(fmt: WireFormat) -> None:
    assert decode({"t": "devices.remove", "rid": RID, "device": 2}, fmt) == DevicesRemove(
        rid=RID, device=2
    )
    assert_bad({"t": "devices.remove", "rid": RID}, fmt)
    for device in (-1, U32_MAX + 1, "2", False, 2.5, None, [2]):
        assert_bad({"t": "devices.remove", "rid": RID, "device": device}, fmt)


# --- server frames, as the client checks them ------------------------------------------


def decode_server(raw: dict[str, Any], fmt: WireFormat, answer: type[Answer] | None = None) -> Any:
    return decode_server_frame(pack(raw, fmt), fmt, lambda rid: answer)


def assert_server_bad(
    raw: dict[str, Any], fmt: WireFormat, answer: type[Answer] | None = None
) -> None:
    with pytest.raises(FrameError) as info:
        decode_server(raw, fmt, answer)
    assert info.value.code is ErrorCode.BAD_FRAME


CHALLENGE_RAW: dict[str, Any] = {"t": "challenge", "nonce": bytes(32), "server_time": 5}
DELIVER_RAW: dict[str, Any] = {
    "t": "deliver",
    "id": MSG_ID,
    "from": USER,
    "from_device": 1,
    "ts": 1,
    "server_ts": 2,
    "type": 1,
    "body": b"x",
    "nonce": NONCE,
}


@fmt_param
def test_server_challenge(fmt: WireFormat) -> None:
    assert decode_server(CHALLENGE_RAW, fmt) == Challenge(nonce=bytes(32), server_time=5)
    for nonce in (bytes(31), bytes(33), bytes(24), DEL):
        assert_server_bad(changed(CHALLENGE_RAW, ("nonce",), nonce), fmt)
    assert_server_bad(changed(CHALLENGE_RAW, ("server_time",), DEL), fmt)
    assert_server_bad(changed(CHALLENGE_RAW, ("server_time",), 5.0), fmt)


@fmt_param
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("from", USER.upper()),
        ("from", DEL),
        ("from_user", USER),  # the attribute name is not the wire key
        ("id", MSG_ID[:15]),
        ("nonce", NONCE[:23]),
        ("type", 256),
        ("body", b""),
        ("from_device", -1),
        ("online", 1),
        ("online", None),
    ],
)
def test_server_deliver_refused(key: str, value: Any, fmt: WireFormat) -> None:
    raw = changed(DELIVER_RAW, (key,), value)
    if key == "from_user":
        del raw["from"]
    assert_server_bad(raw, fmt)


@fmt_param
def test_server_deliver_fields(fmt: WireFormat) -> None:
    frame = decode_server(DELIVER_RAW, fmt)
    assert isinstance(frame, Deliver)
    assert frame.from_user == USER
    assert frame.online is False
    assert decode_server({**DELIVER_RAW, "online": True}, fmt).online is True


@fmt_param
def test_server_error(fmt: WireFormat) -> None:
    raw = {"t": "error", "code": "stale_devices", "message": "m", "rid": 1, "stale": [2]}
    assert decode_server(raw, fmt) == Error(
        code=ErrorCode.STALE_DEVICES, message="m", rid=1, stale=(2,)
    )
    assert_server_bad({**raw, "code": "no_such_code"}, fmt)
    assert_server_bad({**raw, "message": None}, fmt)
    assert_server_bad({**raw, "retry_after_ms": -1}, fmt)
    assert_server_bad({**raw, "missing": [1, "2"]}, fmt)
    assert_server_bad({**raw, "rid": None}, fmt)


@fmt_param
def test_server_keys_low_and_queue_empty(fmt: WireFormat) -> None:
    assert decode_server({"t": "keys.low", "prekeys": 9, "pq_prekeys": 10}, fmt) == KeysLow(
        prekeys=9, pq_prekeys=10
    )
    assert_server_bad({"t": "keys.low", "prekeys": 9}, fmt)
    assert decode_server({"t": "queue_empty", "extra": 1}, fmt) == QueueEmpty()


@fmt_param
def test_server_bundle_checks(fmt: WireFormat) -> None:
    bundle = {
        "device": 1,
        "registration_id": 2,
        "identity_key": XED_KEY,
        "key_scheme": "xeddsa",
        "signed_prekey": {"id": 1, "key": EC_KEY, "signature": SIG},
    }
    raw = {"t": "ok", "rid": 1, "user": USER, "devices": [bundle]}
    frame = decode_server(raw, fmt, KeysFetchOk)
    assert frame == KeysFetchOk(
        rid=1,
        user=USER,
        devices=(
            Bundle(
                device=1,
                registration_id=2,
                identity_key=XED_KEY,
                key_scheme=KeyScheme.XEDDSA,
                signed_prekey=SignedPreKey(id=1, key=EC_KEY, signature=SIG),
            ),
        ),
    )
    for path, value in [
        (("devices", 0, "prekey"), {"id": 1, "key": b"\x00" + EC_KEY}),
        (("devices", 0, "prekey"), None),
        (("devices", 0, "pq_prekey"), None),
        (("devices", 0, "pq_prekey"), {"id": 1, "key": PQ_KEY}),
        (("devices", 0, "signed_prekey"), DEL),
        (("devices", 0, "registration_id"), DEL),
        (("devices", 0, "key_scheme"), "rsa"),
    ]:
        assert_server_bad(changed(raw, path, value), fmt, KeysFetchOk)


@fmt_param
def test_server_keys_count_age(fmt: WireFormat) -> None:
    base = {"t": "ok", "rid": 1, "prekeys": 0, "pq_prekeys": 0}
    assert decode_server(base, fmt, KeysCountOk).signed_prekey_age_s is None
    assert decode_server({**base, "signed_prekey_age_s": 7}, fmt, KeysCountOk) == KeysCountOk(
        rid=1, prekeys=0, pq_prekeys=0, signed_prekey_age_s=7
    )
    assert_server_bad({**base, "signed_prekey_age_s": -1}, fmt, KeysCountOk)
    assert_server_bad({**base, "signed_prekey_age_s": None}, fmt, KeysCountOk)
