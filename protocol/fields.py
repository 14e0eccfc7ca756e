"""Field specifications: how each frame field is checked when it comes off the wire.

Frames declare their fields with `wire(...)`/`optional(...)`; the generic
decoder in `codec` walks them. A field of the wrong type or size is
`bad_frame`; a body or list above its (configurable) limit is `too_large`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from protocol.errors import FrameError, FrameTooLarge

U32_MAX = 2**32 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits that depend on the server's configuration."""

    max_body_bytes: int = 256 * 1024
    max_backup_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What a field decoder needs beyond the value: the limits, and whether bytes arrive as text."""

    limits: Limits
    binary_as_text: bool


class Spec:
    """The check and conversion for one field value."""

    # Whether `encode` gives the value back unchanged when bytes stay bytes (msgpack): the
    # encoder then skips the call (encode_fields).
    binary_as_is: ClassVar[bool] = True

    def decode(self, value: Any, ctx: DecodeContext, path: str) -> Any:
        raise NotImplementedError

    def encode(self, value: Any, binary_as_text: bool) -> Any:
        return value


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url: padding, other alphabets and stray bits are refused."""
    if "=" in text or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc
    if b64url_encode(raw) != text:
        raise ValueError("non-canonical base64url")
    return raw


@dataclass(frozen=True, slots=True)
class Bin(Spec):
    """A byte string of `min_len`..`max_len` bytes; `body=True` uses the configured body limit,
    `backup=True` the configured backup limit (both `too_large` above it)."""

    min_len: int = 1
    max_len: int | None = None
    body: bool = False
    backup: bool = False

    def decode(self, value: Any, ctx: DecodeContext, path: str) -> bytes:
        if ctx.binary_as_text:
            if not isinstance(value, str):
                raise FrameError(f"{path} must be a base64url string")
            try:
                value = b64url_decode(value)
            except ValueError as exc:
                raise FrameError(f"{path} is not unpadded base64url") from exc
        elif not isinstance(value, bytes):
            raise FrameError(f"{path} must be a byte string (msgpack bin)")
        size = len(value)
        if self.body and size > ctx.limits.max_body_bytes:
            raise FrameTooLarge(
                f"{path} is above the body limit of {ctx.limits.max_body_bytes} bytes"
            )
        if self.backup and size > ctx.limits.max_backup_bytes:
            raise FrameTooLarge(
                f"{path} is above the backup limit of {ctx.limits.max_backup_bytes} bytes"
            )
        if size < self.min_len or (self.max_len is not None and size > self.max_len):
            wanted = (
                f"{self.min_len}"
                if self.min_len == self.max_len
                else f"{self.min_len}..{self.max_len}"
            )
            raise FrameError(f"{path} must be {wanted} bytes, not {size}")
        return bytes(value)

    def encode(self, value: Any, binary_as_text: bool) -> Any:
        return b64url_encode(value) if binary_as_text else value


@dataclass(frozen=True, slots=True)
class Int(Spec):
    """An integer in [low, high]; booleans and floats are not integers here."""

    low: int = 0
    high: int = U32_MAX

    def decode(self, value: Any, ctx: DecodeContext, path: str) -> int:
        if type(value) is not int:
            raise FrameError(f"{path} must be an integer")
        if not self.low <= value <= self.high:
            raise FrameError(f"{path} must lie in {self.low}..{self.high}")
        return value


@dataclass(frozen=True, slots=True)
class Text(Spec):
    """A string of at most `max_len` characters; `user_id=True` wants a canonical UUID."""

    max_len: int = 256
    user_id: bool = False

    def decode(self, value: Any, ctx: DecodeContext, path: str) -> str:
        if not isinstance(value, str):
            raise FrameError(f"{path} must be a string")
        if len(value) > self.max_len:
            raise FrameError(f"{path} is longer than {self.max_len} characters")
        if self.user_id and not is_canonical_uuid(value):
            raise FrameError(f"{path} must be a lower-case canonical UUID")
        return value


@dataclass(frozen=True, slots=True)
class Flag(Spec):
    def decode(self, value: Any, ctx: DecodeContext, path: str) -> bool:
        if not isinstance(value, bool):
            raise FrameError(f"{path} must be a boolean")
        return value


@dataclass(frozen=True, slots=True)
class Choice(Spec):
    """One value of a string enum."""

    binary_as_is: ClassVar[bool] = False

    enum_type: type[enum.StrEnum]

    def decode(self, value: Any, ctx: DecodeContext, path: str) -> enum.StrEnum:
        if not isinstance(value, str):
            raise FrameError(f"{path} must be a string")
        try:
            return self.enum_type(value)
        except ValueError as exc:
            names = ", ".join(m.value for m in self.enum_type)
            raise FrameError(f"{path} must be one of {names}") from exc

    def encode(self, value: Any, binary_as_text: bool) -> Any:
        return str(value)


@dataclass(frozen=True, slots=True)
class Nested(Spec):
    """A map decoded into another frame-like dataclass."""

    binary_as_is: ClassVar[bool] = False

    cls: type[Any]

    def decode(self, value: Any, ctx: DecodeContext, path: str) -> Any:
        return decode_fields(self.cls, value, ctx, path)

    def encode(self, value: Any, binary_as_text: bool) -> Any:
        return encode_fields(value, binary_as_text)


@dataclass(frozen=True, slots=True)
class Many(Spec):
    """A list of at most `max_len` items; a longer one is `too_large`."""

    binary_as_is: ClassVar[bool] = False

    item: Spec
    max_len: int

    def decode(self, value: Any, ctx: DecodeContext, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise FrameError(f"{path} must be a list")
        if len(value) > self.max_len:
            raise FrameTooLarge(f"{path} has more than {self.max_len} entries")
        decode = self.item.decode
        return tuple([decode(v, ctx, f"{path}[{i}]") for i, v in enumerate(value)])

    def encode(self, value: Any, binary_as_text: bool) -> Any:
        return [self.item.encode(v, binary_as_text) for v in value]


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_canonical_uuid(value: str) -> bool:
    """What `str(uuid.UUID(value)) == value` says, without building a UUID (every send
    names its recipient): lower-case hex digits in groups of 8-4-4-4-12."""
    return _CANONICAL_UUID.fullmatch(value) is not None


def wire(spec: Spec, *, name: str | None = None) -> Any:
    """A required field; `name` when the wire key differs from the attribute (`from`)."""
    return dataclasses.field(metadata={"spec": spec, "name": name})


def optional(spec: Spec, *, name: str | None = None, default: Any = None) -> Any:
    """An optional field: absent on the wire when it holds its default."""
    return dataclasses.field(
        default=default, metadata={"spec": spec, "name": name, "optional": True}
    )


@dataclass(frozen=True, slots=True)
class _FieldPlan:
    attr: str
    key: str
    spec: Spec
    optional: bool
    default: Any
    binary_as_is: bool  # spec.binary_as_is


_PLANS: dict[type[Any], tuple[_FieldPlan, ...]] = {}


def field_plan(cls: type[Any]) -> tuple[_FieldPlan, ...]:
    """The wire fields of a frame class, computed once per class."""
    plan = _PLANS.get(cls)
    if plan is None:
        plan = tuple(
            _FieldPlan(
                attr=f.name,
                key=f.metadata.get("name") or f.name,
                spec=f.metadata["spec"],
                optional=bool(f.metadata.get("optional")),
                default=f.default,
                binary_as_is=f.metadata["spec"].binary_as_is,
            )
            for f in dataclasses.fields(cls)
            if "spec" in f.metadata
        )
        _PLANS[cls] = plan
    return plan


_Step = tuple[str, str, Callable[[Any, DecodeContext, str], Any], bool]
_DECODERS: dict[type[Any], tuple[tuple[_Step, ...], Callable[[Any], None] | None]] = {}
_ABSENT: Final = object()


def _decoder(cls: type[Any]) -> tuple[tuple[_Step, ...], Callable[[Any], None] | None]:
    """Per class, once: (wire key, attribute, the spec's decode, optional) of each field, and
    the class's `check` if it has one."""
    found = _DECODERS.get(cls)
    if found is None:
        steps = tuple((f.key, f.attr, f.spec.decode, f.optional) for f in field_plan(cls))
        found = _DECODERS[cls] = (steps, getattr(cls, "check", None))
    return found


def decode_fields(cls: type[Any], value: Any, ctx: DecodeContext, path: str) -> Any:
    """Build `cls` from a wire map, checking every field; unknown keys are ignored."""
    if type(value) is not dict and not isinstance(value, Mapping):
        raise FrameError(f"{path or 'frame'} must be a map")
    steps, check = _decoder(cls)
    kwargs: dict[str, Any] = {}
    for key, attr, decode, optional in steps:
        raw = value.get(key, _ABSENT)
        if raw is not _ABSENT:
            kwargs[attr] = decode(raw, ctx, f"{path}.{key}" if path else key)
        elif not optional:
            raise FrameError(f"{path}.{key} is missing" if path else f"{key} is missing")
    obj = cls(**kwargs)
    if check is not None:
        check(obj)
    return obj


def encode_fields(
    obj: Any, binary_as_text: bool, into: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The wire map of `obj` (added to `into`, in field order, when given)."""
    out: dict[str, Any] = {} if into is None else into
    for f in field_plan(type(obj)):
        value = getattr(obj, f.attr)
        if f.optional and value == f.default:
            continue
        if f.binary_as_is and not binary_as_text:
            out[f.key] = value
        else:
            out[f.key] = f.spec.encode(value, binary_as_text)
    return out
