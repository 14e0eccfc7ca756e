"""Wire error codes, close codes, and the one exception tree that maps onto them.

    RelayError                 every refusal the peer may see; carries an ErrorCode
    ├── FrameError             the bytes are not a valid frame (bad_frame)
    │   ├── UnknownFrameType   `t` names no frame this side knows (unknown_type)
    │   └── FrameTooLarge      a body or list above its limit (too_large)
    └── Refused                a valid request that the rules refuse (any other code)

Only `code`, `message` and the typed details ever reach the wire; internal
exception text never does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.StrEnum):
    BAD_FRAME = "bad_frame"
    UNKNOWN_TYPE = "unknown_type"
    TOO_LARGE = "too_large"
    UNAUTHENTICATED = "unauthenticated"
    AUTH_FAILED = "auth_failed"
    BAD_SIGNATURE = "bad_signature"
    RATE_LIMITED = "rate_limited"
    REPLAY = "replay"
    STALE_TIMESTAMP = "stale_timestamp"
    MISMATCHED_DEVICES = "mismatched_devices"
    STALE_DEVICES = "stale_devices"
    UNKNOWN_USER = "unknown_user"
    UNKNOWN_DEVICE = "unknown_device"
    CONFLICT = "conflict"
    FORBIDDEN = "forbidden"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    NOT_FOUND = "not_found"  # the key-backup extension (docs/protocol.md): no backup


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013
    REPLACED = 4001
    REMOVED = 4002


class RelayError(Exception):
    """A refusal with a wire code. `rid` is set when the request had a usable one."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, rid: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.rid = rid


class FrameError(RelayError):
    code = ErrorCode.BAD_FRAME


class UnknownFrameType(FrameError):
    code = ErrorCode.UNKNOWN_TYPE


class FrameTooLarge(FrameError):
    code = ErrorCode.TOO_LARGE


class Refused(RelayError):
    """A well-formed request refused by a rule of the protocol, with its typed details."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        rid: int | None = None,
        retry_after_ms: int | None = None,
        missing: tuple[int, ...] | None = None,
        extra: tuple[int, ...] | None = None,
        stale: tuple[int, ...] | None = None,
        version: int | None = None,
        unknown_users: tuple[str, ...] | None = None,
        users: tuple[UserDevices, ...] | None = None,
    ) -> None:
        super().__init__(message, rid=rid)
        self.code = code
        self.retry_after_ms = retry_after_ms
        self.missing = missing
        self.extra = extra
        self.stale = stale
        self.version = version
        self.unknown_users = unknown_users
        self.users = users


@dataclass(frozen=True, slots=True)
class UserDevices:
    """One user's device-set problem, for a `send.multi` refusal's `users` detail."""

    user: str
    missing: tuple[int, ...]
    extra: tuple[int, ...]
    stale: tuple[int, ...]
