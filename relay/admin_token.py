"""`--admin-token`: the operations data answers only a request that presents it.

The token travels as `Authorization: Bearer TOKEN` (RFC 6750); it is compared in constant
time, so the time an answer takes says nothing about how much of a guess was right.
"""

from __future__ import annotations

import hmac

from websockets.datastructures import Headers

BEARER = "bearer "
MAX_AUTHORIZATION_CHARS = 512  # "Bearer " and the longest token allowed, many times over


def presents_token(headers: Headers, token: str) -> bool:
    """One `Authorization: Bearer` header whose token is `token`."""
    values = headers.get_all("Authorization")
    if len(values) != 1 or len(values[0]) > MAX_AUTHORIZATION_CHARS:
        return False
    value = values[0]
    if value[: len(BEARER)].lower() != BEARER:
        return False
    offered = value[len(BEARER) :].strip()
    return hmac.compare_digest(offered.encode("utf-8", "replace"), token.encode("utf-8"))
