"""Encode and decode frames for both sub-protocols; the only module that imports msgpack and orjson.

`relay.v1+msgpack` carries binary WebSocket messages with msgpack `bin` byte
strings; `relay.v1+json` carries text messages with unpadded base64url byte
strings. Both decode into the same typed frames.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import orjson

from protocol.errors import FrameError, UnknownFrameType
from protocol.fields import U32_MAX, DecodeContext, Limits, decode_fields, encode_fields
from protocol.frames import (
    CLIENT_FRAMES,
    SERVER_PUSHES,
    Answer,
    ClientFrame,
    Error,
    Push,
    ServerFrame,
)


class WireFormat(enum.StrEnum):
    MSGPACK = "relay.v1+msgpack"
    JSON = "relay.v1+json"

    @property
    def binary(self) -> bool:
        return self is WireFormat.MSGPACK


SUBPROTOCOLS = (WireFormat.MSGPACK, WireFormat.JSON)


def select_format(offered: list[str]) -> WireFormat | None:
    """The client's first preference among ours; msgpack if it offers none; None if only unknown."""
    if not offered:
        return WireFormat.MSGPACK
    for name in offered:
        if name in SUBPROTOCOLS:
            return WireFormat(name)
    return None


# One packer for every frame instead of one per call (msgpack.packb makes a Packer, and its
# buffer, each time). Safe to share between threads: a wire map holds only dicts, lists,
# str, bytes, int and bool, which `pack` writes without running Python code, so it never
# lets the GIL go in the middle of a frame; it resets its buffer after each one.
_PACK = msgpack.Packer(use_bin_type=True).pack


def encode(frame: ServerFrame | ClientFrame, fmt: WireFormat) -> bytes | str:
    """One frame as one WebSocket message: bytes for msgpack, str for JSON."""
    if fmt is WireFormat.MSGPACK:
        packed: bytes = _PACK(encode_fields(frame, False, {"t": frame.T}))
        return packed
    return orjson.dumps(encode_fields(frame, True, {"t": frame.T})).decode("utf-8")


def load_map(data: bytes | str, fmt: WireFormat) -> Mapping[str, Any]:
    """The raw map of one message, or `bad_frame` (wrong message kind, bad encoding, not a map)."""
    if fmt.binary:
        if not isinstance(data, bytes):
            raise FrameError("this connection speaks relay.v1+msgpack: send binary messages")
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True, timestamp=0)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise FrameError("not a msgpack message") from exc
    else:
        if not isinstance(data, str):
            raise FrameError("this connection speaks relay.v1+json: send text messages")
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise FrameError("not a JSON message") from exc
    if not isinstance(value, dict):
        raise FrameError("a frame is a map")
    return value


def usable_rid(raw: Mapping[str, Any]) -> int | None:
    rid = raw.get("rid")
    if type(rid) is int and 0 <= rid <= U32_MAX:
        return rid
    return None


_DEFAULT_LIMITS = Limits()


@functools.lru_cache(maxsize=64)
def _client_context(limits: Limits, binary_as_text: bool) -> DecodeContext:
    """One context per configuration, not one per frame (limits are frozen and hashable)."""
    return DecodeContext(limits=limits, binary_as_text=binary_as_text)


def decode_client_frame(
    data: bytes | str, fmt: WireFormat, limits: Limits | None = None
) -> ClientFrame:
    """A client frame, checked; errors carry the request's `rid` when it had a usable one."""
    raw = load_map(data, fmt)
    kind = raw.get("t")
    cls = CLIENT_FRAMES.get(kind) if isinstance(kind, str) else None
    rid = usable_rid(raw) if cls is None or cls.T != "ack" else None
    if not isinstance(kind, str):
        raise FrameError("t must name the frame type", rid=rid)
    if cls is None:
        raise UnknownFrameType(f"unknown frame type {kind[:64]!r}", rid=rid)
    ctx = _client_context(limits or _DEFAULT_LIMITS, not fmt.binary)
    try:
        frame: ClientFrame = decode_fields(cls, raw, ctx, "")
    except FrameError as exc:
        exc.rid = rid
        raise
    return frame


# What a client accepts from the server: any body size (its own limits are the server's).
_SERVER_CONTEXTS: dict[WireFormat, DecodeContext] = {
    fmt: DecodeContext(limits=Limits(max_body_bytes=U32_MAX), binary_as_text=not fmt.binary)
    for fmt in WireFormat
}


def decode_server_frame(
    data: bytes | str,
    fmt: WireFormat,
    answer_type: Callable[[int], type[Answer] | None],
) -> ServerFrame:
    """A server frame as a client sees it; `answer_type` says which `ok` a `rid` expects."""
    raw = load_map(data, fmt)
    kind = raw.get("t")
    ctx = _SERVER_CONTEXTS[fmt]
    if kind == "ok":
        rid = usable_rid(raw)
        cls = answer_type(rid) if rid is not None else None
        if cls is None:
            raise FrameError("an ok frame for no pending request")
        answer: Answer = decode_fields(cls, raw, ctx, "")
        return answer
    push_cls = SERVER_PUSHES.get(kind) if isinstance(kind, str) else None
    if push_cls is None:
        raise UnknownFrameType(f"unknown frame type {str(kind)[:64]!r}")
    push: Push | Error = decode_fields(push_cls, raw, ctx, "")
    return push
