"""Fetching a user's pre-key bundles and starting sessions with them, as every kind of send
does before it encrypts for a device it has no session with (`send` through the outbox,
`send_group`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

from protocol.client.errors import RequestRefused, SendFailed
from protocol.client.messages import ClientOptions
from protocol.client.peers import Peers
from protocol.crypto.errors import CryptoError
from protocol.errors import ErrorCode
from protocol.frames import KeysFetch, KeysFetchOk
from protocol.wire import WireConnection

log = logging.getLogger("relay.client")

RETRY_CODES: Final = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL})
MAX_RATE_WAIT_S: Final = 60.0


async def fetch_sessions(
    conn: WireConnection,
    user: str,
    device: int | None,
    *,
    own: tuple[str, int],
    peers: Peers,
    options: ClientOptions,
    sleep: Callable[[float], Awaitable[None]],
) -> None:
    """Fetch bundles (one device, or all) and start sessions; waits out `rate_limited` and
    retries `unavailable`; an unknown device is left alone; another refusal raises
    SendFailed. This device's own bundle (`own`) is never used."""
    own_user, own_device = own
    for _ in range(options.send_rounds):
        try:
            answer = await conn.request(
                KeysFetch(rid=conn.next_rid(), user=user, device=device), KeysFetchOk
            )
        except RequestRefused as exc:
            if exc.code is ErrorCode.RATE_LIMITED:
                wait_ms = exc.error.retry_after_ms or 1000
                await sleep(min(wait_ms / 1000, MAX_RATE_WAIT_S))
                continue
            if exc.code in RETRY_CODES:
                await sleep(options.backoff.delay(0))
                continue
            if exc.code is ErrorCode.UNKNOWN_DEVICE:
                return
            raise SendFailed(exc.error) from None
        for bundle in answer.devices:
            if user == own_user and bundle.device == own_device:
                continue
            try:
                peers.add_bundle(user, bundle)
            except CryptoError as exc:
                log.warning("not using the bundle of %s/%s: %s", user, bundle.device, exc)
        return
