"""Tests for protocol.fields: the per-field checks every frame decoder is built from.

Spec §1: byte strings are msgpack `bin` (JSON: unpadded base64url); missing or
mistyped keys are `bad_frame`; unknown keys are ignored; optional keys, when
present, are checked like required ones. §8: a body or list above its limit is
`too_large`.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ErrorCode, FrameError, FrameTooLarge, RelayError, UnknownFrameType
from protocol.fields import (
    I64_MAX,
    I64_MIN,
    U32_MAX,
    Bin,
    Choice,
    DecodeContext,
    Flag,
    Int,
    Limits,
    Many,
    Nested,
    Text,
    b64url_decode,
    b64url_encode,
    decode_fields,
    encode_fields,
    is_canonical_uuid,
    optional,
    wire,
)
from protocol.signatures import KeyScheme

BINARY = DecodeContext(limits=Limits(), binary_as_text=False)
TEXT = DecodeContext(limits=Limits(), binary_as_text=True)
USER = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def _bad(spec: Any, value: Any, ctx: DecodeContext = BINARY) -> FrameError:
    """Decode `value` expecting exactly `bad_frame` (not a subclass such as too_large)."""
    with pytest.raises(FrameError) as info:
        spec.decode(value, ctx, "f")
    assert type(info.value) is FrameError
    assert info.value.code is ErrorCode.BAD_FRAME
    return info.value


def _too_large(spec: Any, value: Any, ctx: DecodeContext = BINARY) -> FrameTooLarge:
    with pytest.raises(FrameTooLarge) as info:
        spec.decode(value, ctx, "f")
    assert info.value.code is ErrorCode.TOO_LARGE
    return info.value


# --- the error tree -------------------------------------------------------------


def test_error_tree_codes() -> None:
    assert FrameError("x").code is ErrorCode.BAD_FRAME
    assert UnknownFrameType("x").code is ErrorCode.UNKNOWN_TYPE
    assert FrameTooLarge("x").code is ErrorCode.TOO_LARGE
    assert issubclass(UnknownFrameType, FrameError)
    assert issubclass(FrameTooLarge, FrameError)
    assert issubclass(FrameError, RelayError)
    assert FrameError("x").rid is None
    assert FrameError("x", rid=7).rid == 7


def test_wire_code_strings() -> None:
    assert ErrorCode.BAD_FRAME.value == "bad_frame"
    assert ErrorCode.UNKNOWN_TYPE.value == "unknown_type"
    assert ErrorCode.TOO_LARGE.value == "too_large"


# --- base64url ---------------------------------------------------------------------


def test_b64url_encode_is_unpadded_url_alphabet() -> None:
    assert b64url_encode(b"") == ""
    assert b64url_encode(b"\x00") == "AA"
    assert b64url_encode(b"\x00\x00") == "AAA"
    assert b64url_encode(b"\x00\x00\x00") == "AAAA"
    assert b64url_encode(b"\xfb\xff") == "-_8"
    assert b64url_encode(b"\xfb\xef\xbe") == "----"
    assert b64url_encode(b"\xff\xff\xff") == "____"


@given(st.binary(max_size=200))
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text
    assert "+" not in text
    assert "/" not in text
    assert text == base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert b64url_decode(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "AA==",  # padded
        "AAA=",  # padded
        "AA=",  # partial padding
        "+/8",  # standard alphabet for b"\xfb\xff"
        "++++",  # standard alphabet
        "////",  # standard alphabet
        "A",  # length 1 mod 4 can never be valid
        "AAAAA",
        "AB",  # stray bits: canonical form of b"\x00" is "AA"
        "AAB",  # stray bits: canonical form of b"\x00\x00" is "AAA"
        "AA AA",  # whitespace
        "AAAA\n",
        "!!!!",
        "ÄÄÄÄ",  # not ASCII
        "AA.A",
    ],
)
def test_b64url_decode_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(text)


# --- Bin -----------------------------------------------------------------------


def test_bin_binary_accepts_bytes_in_range() -> None:
    spec = Bin(2, 4)
    for n in (2, 3, 4):
        assert spec.decode(b"x" * n, BINARY, "f") == b"x" * n
    for n in (0, 1, 5):
        _bad(spec, b"x" * n)


def test_bin_exact_size_message_names_size() -> None:
    err = _bad(Bin(16, 16), b"x" * 15)
    assert "16" in err.message
    assert "15" in err.message


@pytest.mark.parametrize("value", ["abcd", 1, 1.5, True, None, [1, 2], {"a": 1}, bytearray(b"ab")])
def test_bin_binary_refuses_non_bytes(value: Any) -> None:
    _bad(Bin(1), value)


def test_bin_text_accepts_base64url() -> None:
    spec = Bin(2, 2)
    assert spec.decode("-_8", TEXT, "f") == b"\xfb\xff"


@pytest.mark.parametrize("value", [b"\xfb\xff", 1, None, True, ["-_8"], "+/8", "-_8=", "-_", ""])
def test_bin_text_refuses(value: Any) -> None:
    _bad(Bin(2, 2), value, TEXT)


def test_bin_text_size_checked_after_decoding() -> None:
    spec = Bin(3, 3)
    assert spec.decode("AAAA", TEXT, "f") == b"\x00\x00\x00"
    _bad(spec, "AAA", TEXT)  # 2 bytes
    _bad(spec, "AAAAAA", TEXT)  # 4 bytes


def test_bin_default_min_is_one() -> None:
    _bad(Bin(), b"")
    _bad(Bin(), "", TEXT)
    assert Bin().decode(b"\x00", BINARY, "f") == b"\x00"


@pytest.mark.parametrize("ctx", [BINARY, TEXT], ids=["msgpack", "json"])
def test_bin_body_limit(ctx: DecodeContext) -> None:
    limit = 1000
    ctx = DecodeContext(limits=Limits(max_body_bytes=limit), binary_as_text=ctx.binary_as_text)
    spec = Bin(1, body=True)

    def value(n: int) -> Any:
        raw = b"\x01" * n
        return b64url_encode(raw) if ctx.binary_as_text else raw

    assert spec.decode(value(limit), ctx, "f") == b"\x01" * limit
    assert spec.decode(value(1), ctx, "f") == b"\x01"
    _too_large(spec, value(limit + 1), ctx)
    _bad(spec, value(0), ctx)  # empty is a size error, not too_large


def test_bin_default_body_limit_is_256_kib() -> None:
    assert Limits().max_body_bytes == 256 * 1024


def test_bin_encode() -> None:
    assert Bin().encode(b"\xfb\xff", binary_as_text=False) == b"\xfb\xff"
    assert Bin().encode(b"\xfb\xff", binary_as_text=True) == "-_8"


# --- Int ----------------------------------------------------------------------


def test_int_u32_bounds() -> None:
    spec = Int()
    assert spec.decode(0, BINARY, "f") == 0
    assert spec.decode(U32_MAX, BINARY, "f") == U32_MAX
    _bad(spec, -1)
    _bad(spec, U32_MAX + 1)


def test_int_custom_bounds() -> None:
    spec = Int(0, 255)
    assert spec.decode(255, BINARY, "f") == 255
    _bad(spec, 256)
    _bad(spec, -1)
    ts = Int(I64_MIN, I64_MAX)
    assert ts.decode(I64_MIN, BINARY, "f") == I64_MIN
    assert ts.decode(I64_MAX, BINARY, "f") == I64_MAX
    _bad(ts, I64_MAX + 1)
    _bad(ts, I64_MIN - 1)


@pytest.mark.parametrize("value", [True, False, 1.0, 0.5, "1", b"\x01", None, [1], {"a": 1}])
def test_int_refuses_non_integers(value: Any) -> None:
    _bad(Int(), value)


# --- Text ----------------------------------------------------------------------


def test_text_length() -> None:
    spec = Text(4)
    assert spec.decode("", BINARY, "f") == ""
    assert spec.decode("abcd", BINARY, "f") == "abcd"
    assert spec.decode("ääää", BINARY, "f") == "ääää"  # characters, not bytes
    _bad(spec, "abcde")


@pytest.mark.parametrize("value", [b"abc", 1, None, True, ["a"]])
def test_text_refuses_non_strings(value: Any) -> None:
    _bad(Text(), value)
    _bad(Text(), value, TEXT)


def test_text_user_id_canonical() -> None:
    spec = Text(36, user_id=True)
    assert spec.decode(USER, BINARY, "f") == USER


@pytest.mark.parametrize(
    "value",
    [
        USER.upper(),
        USER.replace("-", ""),
        "{" + USER + "}",
        "urn:uuid:" + USER,
        USER[:-1],
        USER + "0",
        USER[:-1] + "g",
        "",
        "not-a-uuid",
        " " + USER[1:],
    ],
)
def test_text_user_id_refuses_non_canonical(value: str) -> None:
    _bad(Text(36, user_id=True), value)


@given(st.uuids())
def test_canonical_uuid_property(value: uuid.UUID) -> None:
    assert is_canonical_uuid(str(value))
    assert not is_canonical_uuid(value.hex)
    if any(c.isalpha() for c in str(value)):
        assert not is_canonical_uuid(str(value).upper())


# --- Flag, Choice --------------------------------------------------------------------


def test_flag() -> None:
    assert Flag().decode(True, BINARY, "f") is True
    assert Flag().decode(False, BINARY, "f") is False


@pytest.mark.parametrize("value", [0, 1, "true", None, b"\x01", 1.0])
def test_flag_refuses(value: Any) -> None:
    _bad(Flag(), value)


def test_choice() -> None:
    spec = Choice(KeyScheme)
    assert spec.decode("ed25519", BINARY, "f") is KeyScheme.ED25519
    assert spec.decode("xeddsa", TEXT, "f") is KeyScheme.XEDDSA
    encoded = spec.encode(KeyScheme.XEDDSA, binary_as_text=False)
    assert encoded == "xeddsa"
    assert type(encoded) is str


@pytest.mark.parametrize("value", ["Ed25519", "ED25519", "curve25519", "", b"ed25519", 1, None])
def test_choice_refuses(value: Any) -> None:
    _bad(Choice(KeyScheme), value)


# --- Many ----------------------------------------------------------------------------


def test_many_limit() -> None:
    spec = Many(Int(), 3)
    assert spec.decode([], BINARY, "f") == ()
    assert spec.decode([1, 2, 3], BINARY, "f") == (1, 2, 3)
    err = _too_large(spec, [1, 2, 3, 4])
    assert err.rid is None


@pytest.mark.parametrize("value", [None, 1, "abc", b"abc", {"a": 1}, True])
def test_many_refuses_non_lists(value: Any) -> None:
    _bad(Many(Int(), 3), value)


def test_many_checks_every_item_and_names_it() -> None:
    err = _bad(Many(Int(), 3), [1, "2", 3])
    assert "f[1]" in err.message


def test_many_encode() -> None:
    assert Many(Bin(), 3).encode((b"\xfb\xff",), binary_as_text=True) == ["-_8"]
    assert Many(Bin(), 3).encode((b"\xfb\xff",), binary_as_text=False) == [b"\xfb\xff"]


# --- decode_fields / encode_fields ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Inner:
    n: int = wire(Int(0, 9))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outer:
    a: int = wire(Int())
    data: bytes = wire(Bin(2, 2))
    sender: str = wire(Text(), name="from")
    inner: _Inner | None = optional(Nested(_Inner))  # noqa: RUF009
    items: tuple[int, ...] | None = optional(Many(Int(), 2))
    flag: bool = optional(Flag(), default=False)

    def check(self) -> None:
        if self.a == 13:
            raise FrameError("unlucky")


def _outer_map(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"a": 1, "data": b"ab", "from": "x"}
    base.update(over)
    return base


def test_decode_fields_minimal() -> None:
    obj = decode_fields(_Outer, _outer_map(), BINARY, "")
    assert obj == _Outer(a=1, data=b"ab", sender="x")


def test_decode_fields_full() -> None:
    raw = _outer_map(inner={"n": 3}, items=[1, 2], flag=True)
    obj = decode_fields(_Outer, raw, BINARY, "")
    assert obj == _Outer(a=1, data=b"ab", sender="x", inner=_Inner(n=3), items=(1, 2), flag=True)


def test_decode_fields_ignores_unknown_keys() -> None:
    raw = _outer_map(zzz=[1, {"q": None}], sender="ignored: the wire key is 'from'")
    assert decode_fields(_Outer, raw, BINARY, "") == _Outer(a=1, data=b"ab", sender="x")


@pytest.mark.parametrize("key", ["a", "data", "from"])
def test_decode_fields_missing_required(key: str) -> None:
    raw = _outer_map()
    del raw[key]
    with pytest.raises(FrameError) as info:
        decode_fields(_Outer, raw, BINARY, "")
    assert type(info.value) is FrameError
    assert key in info.value.message


def test_decode_fields_wire_name_not_attribute_name() -> None:
    raw = _outer_map()
    del raw["from"]
    raw["sender"] = "x"
    with pytest.raises(FrameError):
        decode_fields(_Outer, raw, BINARY, "")


@pytest.mark.parametrize("key", ["inner", "items", "flag"])
def test_decode_fields_optional_null_is_bad_frame(key: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_fields(_Outer, _outer_map(**{key: None}), BINARY, "")
    assert type(info.value) is FrameError


def test_decode_fields_nested_errors_name_the_path() -> None:
    with pytest.raises(FrameError) as info:
        decode_fields(_Outer, _outer_map(inner={"n": 10}), BINARY, "")
    assert "inner.n" in info.value.message
    with pytest.raises(FrameError) as info:
        decode_fields(_Outer, _outer_map(inner={}), BINARY, "")
    assert "inner.n" in info.value.message
    with pytest.raises(FrameError):
        decode_fields(_Outer, _outer_map(inner=[3]), BINARY, "")


def test_decode_fields_optional_list_limit_is_too_large() -> None:
    with pytest.raises(FrameTooLarge):
        decode_fields(_Outer, _outer_map(items=[1, 2, 3]), BINARY, "")


@pytest.mark.parametrize("value", [None, [], "map", b"map", 1])
def test_decode_fields_needs_a_map(value: Any) -> None:
    with pytest.raises(FrameError):
        decode_fields(_Outer, value, BINARY, "")


def test_decode_fields_runs_check() -> None:
    with pytest.raises(FrameError, match="unlucky"):
        decode_fields(_Outer, _outer_map(a=13), BINARY, "")


def test_encode_fields_omits_defaults_and_uses_wire_names() -> None:
    obj = _Outer(a=1, data=b"\xfb\xff", sender="x")
    assert encode_fields(obj, binary_as_text=False) == {"a": 1, "data": b"\xfb\xff", "from": "x"}
    assert encode_fields(obj, binary_as_text=True) == {"a": 1, "data": "-_8", "from": "x"}


def test_encode_fields_full() -> None:
    obj = _Outer(a=0, data=b"ab", sender="x", inner=_Inner(n=0), items=(), flag=True)
    assert encode_fields(obj, binary_as_text=False) == {
        "a": 0,
        "data": b"ab",
        "from": "x",
        "inner": {"n": 0},
        "items": [],
        "flag": True,
    }
