"""Plain HTTP to a relay's operations endpoints, on its public port or its `--admin-listen`
address, with or without the admin token."""

from __future__ import annotations

import asyncio
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass

from .support import RelayProcess

ADMIN_LINE = re.compile(r"^relay: operations endpoints on (https?://127\.0\.0\.1:\d+)/$")
OPERATIONS_PATHS = ("/", "/metrics", "/v1/stats", "/v1/history", "/dashboard")
HEALTH_PATHS = ("/healthz", "/readyz")
TOKEN_PATHS = ("/metrics", "/v1/stats", "/v1/history")
WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def admin_base(relay: RelayProcess) -> str:
    """`http://127.0.0.1:PORT` of the relay's admin listener, from the line it printed."""
    for line in relay.startup_lines:
        match = ADMIN_LINE.match(line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"no admin listener line in {relay.startup_lines!r}")


def public_base(relay: RelayProcess) -> str:
    return relay.http_url("")


def get(
    url: str,
    *,
    authorization: str | None = None,
    context: ssl.SSLContext | None = None,
    method: str = "GET",
) -> Answer:
    headers = {} if authorization is None else {"Authorization": authorization}
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S, context=context) as resp:
            return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return Answer(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


async def aget(
    url: str,
    *,
    authorization: str | None = None,
    context: ssl.SSLContext | None = None,
    method: str = "GET",
) -> Answer:
    return await asyncio.to_thread(
        get, url, authorization=authorization, context=context, method=method
    )


def bearer(token: str) -> str:
    return f"Bearer {token}"
