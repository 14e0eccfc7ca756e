"""One authenticated device connection: the driver of its delivery rules.

The rules (the in-flight window, acks, the pump's cursor, `queue_empty` once) are the pure
state machine `relay.delivery.DeliveryWindow`; this module feeds it the connection's events
and carries out its actions: it writes frames, resolves the senders waiting for acks, calls
the store and tells the other nodes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Protocol

from protocol.errors import CloseCode, ErrorCode, Refused
from protocol.frames import Deliver, QueueEmpty
from relay.buckets import TokenBucket
from relay.delivery import (
    DeliveryWindow,
    Fetch,
    LivePush,
    Phase,
    RemoteRef,
    SendOrigin,
    StoredFound,
)
from relay.flag import Flag
from relay.outbound import Outbound
from relay.receipts import to_receipt
from storage.errors import StorageError
from storage.interfaces import MessageQueue
from storage.records import Envelope

log = logging.getLogger("relay.session")


class RemoteLink(Protocol):
    """The node bus as a session sees it (relay.cluster.Cluster)."""

    async def acked_remote(
        self, session: DeviceSession, acked: list[tuple[RemoteRef, bytes]]
    ) -> None:
        """Tell the origins; returns once the acks are sent (bounded)."""
        ...

    def unacked_remote(self, refs: list[RemoteRef]) -> None: ...

    def recently_acked(self, user: str, device: int) -> Container[bytes]:
        """Ids this device acked lately whose stored copy another node may still delete."""
        ...


def to_deliver(env: Envelope, *, online: bool = False) -> Deliver:
    return Deliver(
        id=env.id,
        from_user=env.sender_user,
        from_device=env.sender_device,
        ts=env.ts,
        server_ts=env.server_ts,
        type=env.type,
        body=env.delivered_body,
        nonce=env.nonce,
        online=online,
    )


def origin_of(env: Envelope) -> SendOrigin:
    return SendOrigin(env.sender_user, env.sender_device, env.nonce)


@dataclass(eq=False)
class DeviceSession:
    user: str
    device: int
    out: Outbound
    messages: MessageQueue
    window: int
    now_ms: Callable[[], int]
    requests: TokenBucket  # the device's request rate limit
    monotonic: Callable[[], float]  # the clock of deliveries' ages
    slow_reader_s: float  # the oldest delivery in flight may wait this long for its ack
    store_timeout_s: float  # bound of a store call made outside a request (batched deletes)
    link: RemoteLink | None = None  # deliveries for and from other nodes
    # A remote delivery acked this long after its push is deleted here too (DeliveryWindow).
    remote_late_s: float = math.inf
    token: str = field(default_factory=lambda: secrets.token_hex(8))  # names this connection
    reader_done: Flag = field(default_factory=Flag)
    _rules: DeliveryWindow = field(init=False)
    _waiting: dict[bytes, asyncio.Future[bool]] = field(default_factory=dict)  # live pushes
    _pump_due: bool = field(default=False, init=False)  # a change since the pump last looked
    _pump_task: asyncio.Task[None] | None = field(default=None, init=False)  # while it has work
    _stall_check: asyncio.TimerHandle | None = None
    _deletes: list[bytes] = field(default_factory=list)  # acked stored ids not yet deleted
    _deleter: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._rules = DeliveryWindow(self.window, self.monotonic, self.remote_late_s)

    @property
    def in_flight(self) -> int:
        return self._rules.in_flight

    @property
    def ended(self) -> bool:
        return self._rules.phase is Phase.ENDED

    def check_rate(self) -> None:
        """The per-device request limit; `rate_limited` with the wait when it is spent."""
        retry_after_ms = self.requests.take()
        if retry_after_ms:
            raise Refused(
                ErrorCode.RATE_LIMITED, "too many requests", retry_after_ms=retry_after_ms
            )

    @property
    def stored_epoch(self) -> int:
        """Taken before the handshake reads the queue (see `opened`)."""
        return self._rules.stored_epoch

    def opened(self, *, empty_at: int | None = None) -> None:
        """The handshake answer is written: deliveries may follow it. `empty_at`: the
        handshake's read found the queue empty, and `stored_epoch` was this before it; then
        `queue_empty` follows at once (in the same write) and the pump needs no first fetch."""
        if self._rules.opened(empty_at=empty_at):
            self.out.write(QueueEmpty())

    def reading_finished(self) -> None:
        """Every frame this connection read has taken effect (a replacement waits for it)."""
        self.reader_done.set()

    # --- live pushes ---------------------------------------------------------

    def push_live(
        self, env: Envelope, origin: SendOrigin, *, online: bool
    ) -> asyncio.Future[bool] | None:
        """Push now if the window has room; the future says whether the ack came.
        None: no room, or the id is already in flight here (the caller stores it)."""
        if not self._offer(env, origin, online=online, remote=None):
            return None
        acked = asyncio.get_running_loop().create_future()
        self._waiting[env.id] = acked
        return acked

    def push_remote(self, env: Envelope, remote: RemoteRef, *, online: bool) -> bool:
        """Push a delivery of another node into this window; False: not pushed (no room, or
        the id is in flight here already), and the origin stores it."""
        return self._offer(env, origin_of(env), online=online, remote=remote)

    def _offer(
        self, env: Envelope, origin: SendOrigin, *, online: bool, remote: RemoteRef | None
    ) -> bool:
        decision = self._rules.offer_live(
            env.id, origin, buffer_has_room=self.out.has_room(), remote=remote
        )
        if decision is LivePush.SLOW_READER:
            self.out.overflow("a live delivery found its outbound buffer full")  # sender stores it
        if decision is not LivePush.PUSH:
            return False
        self.out.write(to_deliver(env, online=online))
        self._watch_stall()
        return True

    def mark_stored(self, message_ids: tuple[bytes, ...]) -> None:
        """Another node stored these: a later ack must delete them."""
        self._rules.stored(message_ids)

    def mark_durable(self, message_id: bytes) -> None:
        """The sender gave up waiting and is storing it; a later ack must delete it."""
        self._rules.stored((message_id,))

    def origin_of(self, message_id: bytes) -> SendOrigin | None:
        return self._rules.origin_of(message_id)

    # --- acks --------------------------------------------------------------------

    async def on_ack(self, ids: tuple[bytes, ...]) -> None:
        """Resolve the waiting senders, free window slots, delete what was stored."""
        actions = self._rules.acked(ids)
        for message_id in actions.delivered:
            waiting = self._waiting.pop(message_id, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(True)
        if actions.wake_pump:
            self._kick_pump()
        if actions.delete:
            self._delete_later(actions.delete)
        if actions.remote and self.link is not None:
            await self.link.acked_remote(self, list(actions.remote))

    def _delete_later(self, ids: tuple[bytes, ...]) -> None:
        """Delete acked stored copies in batches: the acks that come while one delete runs
        go in the next one, so a drain's acks cost a few store calls, not one each, and the
        frame loop reads the next frame without waiting for the store."""
        self._deletes.extend(ids)
        if self._deleter is None or self._deleter.done():
            self._deleter = asyncio.create_task(self._delete_batches())

    async def _delete_batches(self) -> None:
        while self._deletes:
            ids, self._deletes = self._deletes, []
            try:
                async with asyncio.timeout(self.store_timeout_s):
                    await self.messages.ack(self.user, self.device, ids)
                self._rules.deleted(ids)
            except (StorageError, TimeoutError):
                # The copies stay stored and are delivered again on a later connection (the
                # client drops an id it has seen); this one is closed, as the pump would be.
                log.warning("could not delete acked messages: store unavailable; closing")
                self._deletes.clear()
                self.out.close(CloseCode.TRY_AGAIN_LATER, "store unavailable")
                return

    async def deletes_done(self) -> None:
        """Every acked stored copy is deleted (or its delete failed): a connection that
        replaces this one must not find them."""
        if self._deleter is not None and not self._deleter.done():
            await asyncio.shield(self._deleter)

    # --- stored messages -------------------------------------------------------

    def wake_pump(self) -> None:
        """Something was stored for this device (or may have been: a missed notice)."""
        self._rules.store_changed()
        self._kick_pump()

    def _stopped(self) -> bool:
        return self.ended or self.out.closing

    def start_pump(self) -> None:
        """Push stored messages into free window slots from now until the session ends. The
        pump runs as a task only while it has work: an idle connection holds none."""
        if not self._rules.caught_up:
            self._kick_pump()

    def stop_pump(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()

    def _kick_pump(self) -> None:
        self._pump_due = True
        if self._pump_task is None and not self._stopped():
            self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while not self._stopped():
                self._pump_due = False
                fetch = self._rules.next_fetch()
                if fetch is not None:
                    again = await self._pump_batch(fetch)
                    if self._stopped():
                        return
                    if again:
                        continue  # the window may have room again already
                if not self._pump_due:
                    return  # idle; the next change starts a new pump
        except StorageError:
            log.warning("stored-message pump stopped: store unavailable; closing the connection")
            self.out.close(CloseCode.TRY_AGAIN_LATER, "store unavailable")
        finally:
            self._pump_task = None

    async def _pump_batch(self, fetch: Fetch) -> bool:
        """One fetch, pushed while the outbound buffer has room; whether to fetch again."""
        batch = await self.messages.fetch(
            self.user,
            self.device,
            after_seq=fetch.after_seq,
            limit=fetch.limit,
            now_ms=self.now_ms(),
        )
        if self.ended:
            return False
        acked_elsewhere = (
            () if self.link is None else self.link.recently_acked(self.user, self.device)
        )
        stale: list[bytes] = []
        for stored in batch:
            if not self.out.has_room():
                await self.out.wait_room()
                if self._stopped():
                    return False
            env = stored.envelope
            found = self._rules.found(stored.seq, env.id, origin_of(env), acked_elsewhere)
            if found is StoredFound.NO_ROOM:
                break  # live pushes took the room meanwhile; a later fetch resumes here
            if found is StoredFound.PUSH:
                self.out.write(to_receipt(env) if env.is_receipt else to_deliver(env))
                self._watch_stall()
            elif found is StoredFound.STALE:
                stale.append(env.id)
        if stale:
            await self.messages.ack(self.user, self.device, stale)
        done = self._rules.fetch_done(fetch, len(batch))
        if done.queue_empty:
            self.out.write(QueueEmpty())
        return done.again

    # --- slow readers ----------------------------------------------------------

    def _watch_stall(self) -> None:
        """Check the oldest delivery in flight when it reaches the slow-reader timeout."""
        if self._stall_check is not None:
            return
        oldest = self._rules.oldest_pushed_at()
        if oldest is None or self._stopped():
            return
        delay = max(0.0, oldest + self.slow_reader_s - self.monotonic())
        self._stall_check = asyncio.get_running_loop().call_later(delay, self._check_stall)

    def _check_stall(self) -> None:
        self._stall_check = None
        if self._stopped():
            return
        if self._rules.overdue(self.slow_reader_s):
            # Not read, or read and never acknowledged: either way the deliveries stay stored
            # (or their senders store them) and come again on the next connection.
            self.out.overflow("its oldest delivery waited too long for its ack")
            return
        self._watch_stall()

    def end(self) -> None:
        """The connection is gone: senders waiting for acks stop waiting and store instead."""
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None
        actions = self._rules.ended()
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_result(False)
        self._waiting.clear()
        if actions.unacked_remote and self.link is not None:
            self.link.unacked_remote(list(actions.unacked_remote))
