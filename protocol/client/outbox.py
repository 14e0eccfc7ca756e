"""Sending one outbox entry until the relay answers `ok` or refuses it for good.

Retries (a lost connection, `unavailable`, `internal`, `rate_limited`) resend
the same `id`, `nonce` and ciphertexts: the relay answers a repeat of an
accepted send from its replay record and never delivers it twice, and a
refused send did not use up its nonce. `mismatched_devices` and
`stale_devices` are fixed by fetching the devices that are missing or stale,
encrypting for them only, and dropping the extra ones; the entry keeps its id
and nonce, since the refusal did not use them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from protocol.client.bundles import MAX_RATE_WAIT_S, RETRY_CODES, fetch_sessions
from protocol.client.errors import RequestRefused, SendFailed
from protocol.client.messages import ClientOptions, SendReceipt
from protocol.client.peers import Peers
from protocol.client.state import ClientState, OutboxEntry
from protocol.errors import ErrorCode
from protocol.frames import DeviceMessage, Error, Send, SendOk
from protocol.wire import WireConnection

__all__ = ["OutboxSender"]

log = logging.getLogger("relay.client")


def _now_ms() -> int:
    return int(time.time() * 1000)


class OutboxSender:
    """Knows how to get one entry accepted over one connection; the client owns the loop."""

    def __init__(
        self,
        state: ClientState,
        peers: Peers,
        options: ClientOptions,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.state = state
        self.peers = peers
        self.options = options
        self._sleep = sleep

    def _own(self) -> tuple[str, int]:
        assert self.state.account is not None
        return self.state.account.user, self.state.account.device

    async def deliver(self, conn: WireConnection, entry: OutboxEntry) -> SendReceipt:
        """Send until `ok`; raises `SendFailed`, or `ConnectionLost` (the caller retries)."""
        last: Error | None = None
        attempt = 0
        fixes = 0
        while fixes < self.options.send_rounds:
            await self._prepare(conn, entry)
            frame_devices = tuple(
                DeviceMessage(
                    device=p.device,
                    type=p.type,
                    body=p.body,
                    registration_id=p.registration_id or None,
                )
                for p in sorted(entry.prepared.values(), key=lambda p: p.device)
            )
            try:
                ok = await conn.request(
                    Send(
                        rid=conn.next_rid(),
                        id=entry.id,
                        to=entry.to,
                        ts=_now_ms(),
                        nonce=entry.nonce,
                        devices=frame_devices,
                        receipt=entry.receipt,
                    ),
                    SendOk,
                )
                return SendReceipt(entry.id, ok.delivered, ok.stored)
            except RequestRefused as exc:
                last = exc.error
                code = exc.code
                if code is ErrorCode.MISMATCHED_DEVICES:
                    fixes += 1
                    await self._fix_devices(conn, entry, exc.error.missing or (), exc.error.extra)
                elif code is ErrorCode.STALE_DEVICES:
                    fixes += 1
                    stale = exc.error.stale or ()
                    for device in stale:
                        entry.prepared.pop(device, None)
                        self.state.forget_device(entry.to, device)
                    await self._fix_devices(conn, entry, stale, ())
                elif code is ErrorCode.RATE_LIMITED:
                    wait_ms = exc.error.retry_after_ms or 1000
                    await self._sleep(min(wait_ms / 1000, MAX_RATE_WAIT_S))
                elif code in RETRY_CODES:
                    await self._sleep(self.options.backoff.delay(attempt))
                    attempt += 1
                else:
                    raise SendFailed(exc.error) from None
        assert last is not None
        raise SendFailed(last)

    async def _prepare(self, conn: WireConnection, entry: OutboxEntry) -> None:
        """Encrypt for every known device of the recipient that has no ciphertext yet."""
        own_user, own_device = self._own()
        devices = dict(self.peers.devices(entry.to))
        if entry.to == own_user:
            devices.pop(own_device, None)
        elif not devices and not entry.prepared:
            await self._fetch(conn, entry.to, None)
            devices = dict(self.peers.devices(entry.to))
        changed = False
        for device in sorted(devices):
            if device not in entry.prepared:
                entry.prepared[device] = self.peers.encrypt(
                    entry.to, device, entry.kind, entry.body, entry.sent_to
                )
                changed = True
        for device in [d for d in entry.prepared if d not in devices]:
            del entry.prepared[device]
            changed = True
        if changed:
            self.state.save_outbox()

    async def _fix_devices(
        self,
        conn: WireConnection,
        entry: OutboxEntry,
        missing: tuple[int, ...],
        extra: tuple[int, ...] | None,
    ) -> None:
        for device in extra or ():
            entry.prepared.pop(device, None)
            self.state.forget_device(entry.to, device)
        for device in missing:
            await self._fetch(conn, entry.to, device)
        self.state.save_outbox()

    async def _fetch(self, conn: WireConnection, user: str, device: int | None) -> None:
        await fetch_sessions(
            conn,
            user,
            device,
            own=self._own(),
            peers=self.peers,
            options=self.options,
            sleep=self._sleep,
        )
