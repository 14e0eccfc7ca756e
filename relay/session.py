"""One authenticated device connection: its in-flight window, acks, and the stored-message pump.

A delivery is in flight from its push until its ack (or the connection's
end). The window bounds how many are in flight; the pump fills free slots
with stored messages, oldest first, and sends `queue_empty` the first time
it has caught up with the store. Live pushes from senders share the window.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Protocol

from protocol.errors import CloseCode, ErrorCode, Refused
from protocol.frames import Deliver, QueueEmpty
from relay.buckets import TokenBucket
from relay.outbound import Outbound
from storage.errors import StorageError
from storage.interfaces import MessageQueue
from storage.records import Envelope

log = logging.getLogger("relay.session")


@dataclass(frozen=True, slots=True)
class Origin:
    """Who sent a message: a second send with the same id is a retry only from the same origin."""

    sender_user: str
    sender_device: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class RemoteRef:
    """A delivery pushed here for another node (the origin), which awaits its ack."""

    node: str
    ref: int


class RemoteLink(Protocol):
    """The node bus as a session sees it (relay.cluster.Cluster)."""

    async def acked_remote(self, session: Session, acked: list[tuple[RemoteRef, bytes]]) -> None:
        """Tell the origins; returns once the acks are sent (bounded)."""
        ...

    def unacked_remote(self, refs: list[RemoteRef]) -> None: ...

    def recently_acked(self, user: str, device: int) -> Container[bytes]:
        """Ids this device acked lately whose stored copy another node may still delete."""
        ...


@dataclass(slots=True)
class InFlight:
    origin: Origin
    acked: asyncio.Future[bool]
    durable: bool = False  # stored (pumped from the store, or stored after the ack timeout)
    remote: RemoteRef | None = None  # pushed for another node, which decides about storing


def to_deliver(env: Envelope, *, online: bool = False) -> Deliver:
    return Deliver(
        id=env.id,
        from_user=env.sender_user,
        from_device=env.sender_device,
        ts=env.ts,
        server_ts=env.server_ts,
        type=env.type,
        body=env.body,
        nonce=env.nonce,
        online=online,
    )


@dataclass(eq=False)
class Session:
    user: str
    device: int
    out: Outbound
    messages: MessageQueue
    window: int
    now_ms: Callable[[], int]
    requests: TokenBucket  # the device's request rate limit
    inflight: dict[bytes, InFlight] = field(default_factory=dict)
    reader_done: asyncio.Event = field(default_factory=asyncio.Event)
    _pump_wake: asyncio.Event = field(default_factory=asyncio.Event)
    _cursor: int = 0
    _queue_empty_due: bool = True
    # The last fetch found everything stored after the cursor and nothing was stored since:
    # a freed window slot then needs no fetch (most acks are of live pushes).
    _caught_up: bool = False
    _stored_epoch: int = 0
    _ended: bool = False
    ready: bool = False  # set once the handshake answer is written: deliveries come after it
    link: RemoteLink | None = None  # deliveries for and from other nodes
    token: str = field(default_factory=lambda: secrets.token_hex(8))  # names this connection
    presence_claimed: bool = False  # its presence entry was written (refreshed from then on)

    def check_rate(self) -> None:
        """The per-device request limit; `rate_limited` with the wait when it is spent."""
        retry_after_ms = self.requests.take()
        if retry_after_ms:
            raise Refused(
                ErrorCode.RATE_LIMITED, "too many requests", retry_after_ms=retry_after_ms
            )

    # --- live pushes ---------------------------------------------------------

    def push_live(
        self, env: Envelope, origin: Origin, *, online: bool
    ) -> asyncio.Future[bool] | None:
        """Push now if the window has room; the future says whether the ack came.
        None: no room, or the id is already in flight here (the caller stores it)."""
        if not self.ready or self._ended or len(self.inflight) >= self.window:
            return None
        if not self.out.has_room():
            self.out.overflow()  # the client stopped reading; the sender stores this one
            return None
        if env.id in self.inflight:
            return None
        loop = asyncio.get_running_loop()
        entry = InFlight(origin=origin, acked=loop.create_future())
        self.inflight[env.id] = entry
        self.out.write(to_deliver(env, online=online))
        return entry.acked

    def push_remote(self, env: Envelope, remote: RemoteRef, *, online: bool) -> bool:
        """Push a delivery of another node into this window; False: not pushed (no room, or
        the id is in flight here already), and the origin stores it."""
        acked = self.push_live(
            env, Origin(env.sender_user, env.sender_device, env.nonce), online=online
        )
        if acked is None:
            return False
        self.inflight[env.id].remote = remote
        return True

    def mark_stored(self, message_ids: tuple[bytes, ...]) -> None:
        """Another node stored these: a later ack must delete them."""
        for message_id in message_ids:
            self.mark_durable(message_id)

    def mark_durable(self, message_id: bytes) -> None:
        """The sender gave up waiting and is storing it; a later ack must delete it."""
        entry = self.inflight.get(message_id)
        if entry is not None:
            entry.durable = True

    def origin_of(self, message_id: bytes) -> Origin | None:
        entry = self.inflight.get(message_id)
        return None if entry is None else entry.origin

    # --- acks --------------------------------------------------------------------

    async def on_ack(self, ids: tuple[bytes, ...]) -> None:
        """Resolve the waiting senders, free window slots, delete what was stored."""
        to_delete: list[bytes] = []
        remote: list[tuple[RemoteRef, bytes]] = []
        freed = False
        for message_id in ids:
            entry = self.inflight.pop(message_id, None)
            if entry is None:
                to_delete.append(message_id)  # delivered on an earlier connection, maybe
                continue
            freed = True
            if not entry.acked.done():
                entry.acked.set_result(True)
            if entry.durable:
                to_delete.append(message_id)
            if entry.remote is not None:
                remote.append((entry.remote, message_id))
        if freed and not self._caught_up:
            self._pump_wake.set()
        if to_delete:
            await self.messages.ack(self.user, self.device, to_delete)
        if remote and self.link is not None:
            await self.link.acked_remote(self, remote)

    # --- stored messages -------------------------------------------------------

    def wake_pump(self) -> None:
        """Something was stored for this device (or may have been: a missed notice)."""
        self._stored_epoch += 1
        self._caught_up = False
        self._pump_wake.set()

    async def pump(self) -> None:
        """Push stored messages into free window slots until the session ends."""
        try:
            while not self._ended and not self.out.closing:
                self._pump_wake.clear()
                room = self.window - len(self.inflight)
                if room > 0:
                    epoch = self._stored_epoch
                    batch = await self.messages.fetch(
                        self.user,
                        self.device,
                        after_seq=self._cursor,
                        limit=room,
                        now_ms=self.now_ms(),
                    )
                    if self._ended:
                        return
                    loop = asyncio.get_running_loop()
                    acked_elsewhere = (
                        ()
                        if self.link is None
                        else self.link.recently_acked(self.user, self.device)
                    )
                    stale: list[bytes] = []
                    for stored in batch:
                        if not self.out.has_room():
                            await self.out.wait_room()
                            if self._ended or self.out.closing:
                                return
                        self._cursor = max(self._cursor, stored.seq)
                        env = stored.envelope
                        entry = self.inflight.get(env.id)
                        if entry is not None:
                            entry.durable = True  # pushed live already; its ack deletes it
                            continue
                        if env.id in acked_elsewhere:
                            stale.append(env.id)  # acked; another node's delete is under way
                            continue
                        self.inflight[env.id] = InFlight(
                            origin=Origin(env.sender_user, env.sender_device, env.nonce),
                            acked=loop.create_future(),
                            durable=True,
                        )
                        self.out.write(to_deliver(env))
                    if stale:
                        await self.messages.ack(self.user, self.device, stale)
                    self._caught_up = len(batch) < room and epoch == self._stored_epoch
                    if len(batch) < room and self._queue_empty_due:
                        self._queue_empty_due = False
                        self.out.write(QueueEmpty())
                    if len(batch) == room:
                        continue  # the window may have room again already
                await self._pump_wake.wait()
        except StorageError:
            log.warning("stored-message pump stopped: store unavailable; closing the connection")
            self.out.close(CloseCode.TRY_AGAIN_LATER, "store unavailable")

    def end(self) -> None:
        """The connection is gone: senders waiting for acks stop waiting and store instead."""
        self._ended = True
        self._pump_wake.set()
        unacked_remote: list[RemoteRef] = []
        for entry in self.inflight.values():
            if not entry.acked.done():
                entry.acked.set_result(False)
            if entry.remote is not None:
                unacked_remote.append(entry.remote)
        self.inflight.clear()
        if unacked_remote and self.link is not None:
            self.link.unacked_remote(unacked_remote)
