"""The receive path: a delivery becomes an `IncomingMessage` exactly once, in order per sender.

For each `deliver`: drop a duplicate id (acking it); decrypt (a body that can
never be read is acked and dropped); hold a message whose `seq` is ahead of
the next one expected from its device, until the missing one arrives or the
reorder timeout passes; otherwise run the application's handler, and when it
returns, persist what the decryption changed and the id, then ack. A handler
that raises leaves the message unacknowledged and drops the connection, so
the relay delivers it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from protocol.client.content import ContentError, Kind
from protocol.client.group import GROUP_TYPE, open_group_body, split_group_body
from protocol.client.messages import ClientOptions, ClientStats, IncomingMessage
from protocol.client.peers import Decrypted, Peers
from protocol.client.state import ClientState, HeldMessage, seen_key
from protocol.crypto.errors import CryptoError
from protocol.frames import Deliver
from protocol.wire import WireConnection

__all__ = ["Inbound", "MessageHandler"]

log = logging.getLogger("relay.client")

MessageHandler = Callable[[IncomingMessage], Awaitable[None]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Inbound:
    def __init__(
        self,
        state: ClientState,
        peers: Peers,
        options: ClientOptions,
        stats: ClientStats,
        handler: MessageHandler,
        *,
        current: Callable[[], WireConnection | None],
        sleep: Callable[[float], Awaitable[None]],
        stop_or: Callable[[Awaitable[object]], Awaitable[None]],
    ) -> None:
        self.state = state
        self.peers = peers
        self.options = options
        self.stats = stats
        self._handler = handler
        self._current = current
        self._sleep = sleep
        self._stop_or = stop_or
        self._held_wake = asyncio.Event()
        # One message at a time reaches the handler, from deliveries and releases alike.
        self._deliver_lock = asyncio.Lock()

    async def on_deliver(self, conn: WireConnection, frame: Deliver) -> None:
        key = seen_key(frame.from_user, frame.from_device, frame.id)
        async with self._deliver_lock:
            if self.state.is_seen(key):
                self.stats.duplicates += 1
                await conn.ack([frame.id])
                return
            if any(
                h.id == frame.id
                and h.from_user == frame.from_user
                and h.from_device == frame.from_device
                for h in self.state.held
            ):
                return  # decrypted already, waiting for an earlier message
            try:
                decrypted, body = self._decrypt(frame)
                account = self.state.account
                if decrypted.content.kind is Kind.SENT_COPY and (
                    account is None or frame.from_user != account.user
                ):
                    raise ContentError("a copy of a sent message from another user")
            except (CryptoError, ContentError) as exc:
                # It can never be read: keep it from coming back, and say so.
                log.warning(
                    "dropping message %s from %s/%s: %s",
                    frame.id.hex(),
                    frame.from_user,
                    frame.from_device,
                    exc,
                )
                self.stats.undecryptable += 1
                self.state.mark_seen(key)
                self.state.save_seen()
                await conn.ack([frame.id])
                return
            known = self.peers.devices(frame.from_user).get(frame.from_device)
            expected = (0 if known is None else known.recv_seq) + 1
            held = HeldMessage(
                from_user=frame.from_user,
                from_device=frame.from_device,
                id=frame.id,
                seq=decrypted.content.seq,
                ts=frame.ts,
                server_ts=frame.server_ts,
                # A group message's content carried its key; what is handed on is the message.
                kind=Kind.MESSAGE
                if decrypted.content.kind is Kind.GROUP_KEY
                else decrypted.content.kind,
                body=body,
                sent_to=decrypted.content.sent_to,
                held_at_ms=_now_ms(),
            )
            if held.seq > expected and len(self.state.held) < self.options.max_held:
                self.stats.held += 1
                self.peers.commit(decrypted)
                self.state.held.append(held)
                self.state.save_book()
                self.state.save_held()
                self._held_wake.set()
                return
            if await self._hand_over(held, decrypted):
                await self._release_successors(frame.from_user, frame.from_device)

    def _decrypt(self, frame: Deliver) -> tuple[Decrypted, bytes]:
        """The decryption and the plaintext: a group message's header opens through the
        session, and the key it carries opens the shared payload (protocol.client.group)."""
        if frame.type != GROUP_TYPE:
            decrypted = self.peers.decrypt(
                frame.from_user, frame.from_device, frame.type, frame.body
            )
            if decrypted.content.kind is Kind.GROUP_KEY:
                raise ContentError("a group message's key without its payload")
            return decrypted, decrypted.content.body
        ratchet_type, ciphertext, payload = split_group_body(frame.body)
        decrypted = self.peers.decrypt(frame.from_user, frame.from_device, ratchet_type, ciphertext)
        if decrypted.content.kind is not Kind.GROUP_KEY:
            raise ContentError("a group message whose header holds no key")
        return decrypted, open_group_body(decrypted.content.body, payload)

    async def _hand_over(self, message: HeldMessage, decrypted: Decrypted | None) -> bool:
        """Run the handler; on success persist and ack. False when the handler raised."""
        incoming = IncomingMessage(
            sender_user=message.from_user,
            sender_device=message.from_device,
            id=message.id,
            plaintext=message.body,
            ts=message.ts,
            server_ts=message.server_ts,
            sent_to=message.sent_to,
        )
        try:
            await self._handler(incoming)
        except Exception:
            log.exception("the message handler raised; the message will be delivered again")
            conn = self._current()
            if conn is not None:
                conn.abort()  # unacked: the relay delivers it again on the next connection
            return False
        if decrypted is not None:
            self.peers.commit(decrypted)
        peer = self.peers.devices(message.from_user).get(message.from_device)
        if peer is not None:
            peer.recv_seq = max(peer.recv_seq, message.seq)
        self.state.mark_seen(seen_key(message.from_user, message.from_device, message.id))
        self.state.save_book()
        self.state.save_seen()
        if decrypted is None:
            self.state.held.remove(message)
            self.state.save_held()
        conn = self._current()
        if conn is not None:
            await conn.ack([message.id])
        return True

    async def _release_successors(self, user: str, device: int) -> None:
        """Hand over held messages from this device that are next in line now."""
        while True:
            peer = self.peers.devices(user).get(device)
            expected = (0 if peer is None else peer.recv_seq) + 1
            ready = [
                h
                for h in self.state.held
                if h.from_user == user and h.from_device == device and h.seq <= expected
            ]
            if not ready:
                return
            if not await self._hand_over(min(ready, key=lambda h: h.seq), None):
                return

    async def release_loop(self) -> None:
        """Messages held longer than the reorder timeout go on: their predecessor is lost."""
        timeout_ms = int(self.options.reorder_timeout * 1000)
        while True:
            self._held_wake.clear()
            if not self.state.held:
                await self._stop_or(self._held_wake.wait())
                continue
            oldest = min(self.state.held, key=lambda h: h.held_at_ms)
            due_in = (oldest.held_at_ms + timeout_ms - _now_ms()) / 1000
            if due_in > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due_in):
                        await self._stop_or(self._held_wake.wait())
                continue
            failed = False
            async with self._deliver_lock:
                if oldest not in self.state.held:
                    continue
                stream = [
                    h
                    for h in self.state.held
                    if (h.from_user, h.from_device) == (oldest.from_user, oldest.from_device)
                ]
                first = min(stream, key=lambda h: h.seq)
                self.stats.released_late += 1
                log.info(
                    "message from %s/%s waited too long for an earlier one",
                    first.from_user,
                    first.from_device,
                )
                if await self._hand_over(first, None):
                    await self._release_successors(first.from_user, first.from_device)
                else:
                    failed = True
            if failed:  # the handler raised: give the application a moment
                await self._sleep(self.options.backoff.delay(3))
