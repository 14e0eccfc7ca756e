"""The one place that turns an exception into the error frame the client sees."""

from __future__ import annotations

import logging
import secrets

from protocol.errors import ErrorCode, Refused, RelayError
from protocol.frames import Error, UserDevicesProblem
from storage.errors import Unavailable

log = logging.getLogger("relay")


def error_frame(exc: BaseException, rid: int | None) -> Error:
    """Refusals keep their code and details; a backend outage is `unavailable`; anything else is
    `internal`, logged with a reference that the client gets instead of the exception's text."""
    if isinstance(exc, Refused):
        return Error(
            code=exc.code,
            message=exc.message,
            rid=rid,
            retry_after_ms=exc.retry_after_ms,
            missing=exc.missing,
            extra=exc.extra,
            stale=exc.stale,
            version=exc.version,
            unknown_users=exc.unknown_users,
            users=None
            if exc.users is None
            else tuple(
                UserDevicesProblem(user=u.user, missing=u.missing, extra=u.extra, stale=u.stale)
                for u in exc.users
            ),
        )
    if isinstance(exc, RelayError):
        return Error(code=exc.code, message=exc.message, rid=rid)
    if isinstance(exc, Unavailable):
        return Error(code=ErrorCode.UNAVAILABLE, message="a backend is unavailable; retry", rid=rid)
    reference = secrets.token_hex(6)
    log.error("internal error (ref %s)", reference, exc_info=exc)
    return Error(code=ErrorCode.INTERNAL, message=f"internal error, ref {reference}", rid=rid)
