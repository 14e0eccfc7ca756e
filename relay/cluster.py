"""This node among several: presence of its devices, the node bus, deliveries to devices on
other nodes.

Every node keeps its own registry of sessions (router.py) and publishes `device -> node` in
the shared presence, refreshed while the socket lives. A send to a device held by another
node goes over the bus; the device's ack comes back over the bus. The origin node alone
decides to store (when no ack came within the ack timeout, or the other node said the push
did not happen), so the guarantee never depends on a bus message arriving: a lost message
only turns a delivery into a stored message.

Ordering arguments (see also docs/architecture.md, "Several nodes"):
* An ack reaching the origin after it decided to store deletes the stored copy: the origin
  marks the delivery late with no await before its store call, and its delete is queued
  after that insert (the store applies jobs in order). `relay.delivery.OriginLedger` keeps
  the late deliveries and decides.
* Until that delete commits, the stored copy could be pumped again. So the node that got
  the ack remembers the id for the device (`relay.delivery.RecentAcks`); its pumps delete
  such an id instead of delivering it, and a connection that takes the device over on
  another node receives that list with the `closed` reply of the replaced connection.

A node alone (the embedded store) runs the same code over `LocalPresence` and `LoopbackBus`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Callable, Container, Coroutine, Sequence
from typing import Any, Final

from protocol.errors import CloseCode
from protocol.frames import KeysLow
from relay.clock import Clock
from relay.config import Settings
from relay.delivery import Answer, OriginLedger, RecentAcks, RemoteDelivery, RemoteRef
from relay.device_session import DeviceSession
from relay.router import Router
from storage.embedded.single_node import LocalPresence, LoopbackBus
from storage.errors import StorageError
from storage.interfaces import BackendObserver, MessageQueue, NodeBus, Presence
from storage.node_records import (
    MAX_BUS_IDS,
    BusAcked,
    BusClose,
    BusClosed,
    BusDeliver,
    BusKeysLow,
    BusMessage,
    BusStored,
    NodeInfo,
    Refresh,
)
from storage.records import Envelope
from storage.stopping import stop_task

log = logging.getLogger("relay.cluster")

REPLACED_CLOSE_WAIT_S: Final = 5.0  # the spec's bound for the old connection's acks
ANNOUNCE_RETRY_S: Final = 30.0  # a stored message's announcement is tried for this long
ANNOUNCE_RETRY_FIRST_S: Final = 0.1
ANNOUNCE_RETRY_CAP_S: Final = 2.0
NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

Spawn = Callable[[Coroutine[Any, Any, None]], None]


def new_node_id() -> str:
    return "node-" + secrets.token_hex(4)


def check_node_id(node_id: str) -> str:
    if not NODE_ID.fullmatch(node_id):
        raise ValueError(f"node id {node_id!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return node_id


class Cluster:
    """Presence, bus and remote deliveries of this node (one per process)."""

    def __init__(
        self,
        *,
        node_id: str,
        presence: Presence,
        bus: NodeBus,
        router: Router,
        messages: MessageQueue,
        settings: Settings,
        spawn: Spawn,
        clock: Clock,
    ) -> None:
        self.node_id = check_node_id(node_id)
        self._presence = presence
        self._bus = bus
        self._router = router
        self._messages = messages
        self._settings = settings
        self._spawn = spawn
        # Refs start at random, so acks meant for an earlier process with this node id
        # never match this one's deliveries.
        self._ledger = OriginLedger(
            clock,
            ack_timeout_s=settings.ack_timeout,
            late_keep_s=max(30.0, 10 * settings.ack_timeout + 10 * settings.backend_timeout),
            first_ref=secrets.randbits(48),
        )
        self._recent = RecentAcks(
            clock,
            keep_s=settings.ack_timeout + 10 * settings.backend_timeout,
            max_ids=MAX_BUS_IDS,
        )
        # The I/O side of the rules: futures the drivers wait on, and whose presence is ours.
        self._answers: dict[int, asyncio.Future[bool]] = {}
        self._closing: dict[int, asyncio.Future[tuple[bytes, ...]]] = {}
        self._claimed: set[DeviceSession] = set()
        self._refresher: asyncio.Task[None] | None = None
        self.refresh_interval = settings.presence_ttl / 3

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._bus.start(self._on_message, self._wake_all)
        self._refresher = asyncio.create_task(self._refresh_forever(), name="relay-presence")

    async def stop(self) -> None:
        if self._refresher is not None:
            await stop_task(self._refresher)
        with contextlib.suppress(StorageError):
            await self._presence.leave()
        await self._bus.close()
        await self._presence.close()

    async def nodes(self) -> list[NodeInfo]:
        """The live nodes, from the registry: id, connections, last heartbeat (ms)."""
        return await self._presence.nodes()

    # --- presence of this node's sessions ----------------------------------------------

    async def attached(self, session: DeviceSession) -> None:
        """Publish the session's presence; close the device's connection on another node
        with 4001 and wait (bounded) until the frames it had received took effect."""
        try:
            holder = await self._presence.claim(session.user, session.device, session.token)
        except StorageError:
            log.warning("presence not published (redis unavailable); the refresh retries")
            return
        finally:
            self._claimed.add(session)  # refreshed (and so published again) from now on
        if holder is None or holder.node == self.node_id:
            return  # nobody, or this node's own older connection (the router handled it)
        loop = asyncio.get_running_loop()
        ref = self._ledger.next_ref()
        reply: asyncio.Future[tuple[bytes, ...]] = loop.create_future()
        self._closing[ref] = reply
        try:
            message = BusClose(
                session.user,
                session.device,
                int(CloseCode.REPLACED),
                "replaced by a newer connection",
                holder.token,
                self.node_id,
                ref,
            )
            if not await self._bus.publish(holder.node, message):
                return  # that node is gone: nothing of its connection can still take effect
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPLACED_CLOSE_WAIT_S):
                    acked = await reply
                self._recent.remember(session.user, session.device, acked)
        finally:
            self._closing.pop(ref, None)

    def detached(self, session: DeviceSession) -> None:
        """The session is gone: drop its presence entry if it still holds it."""
        if session in self._claimed:
            self._claimed.discard(session)
            self._spawn(self._release(session.user, session.device, session.token))

    async def _release(self, user: str, device: int, token: str) -> None:
        with contextlib.suppress(StorageError):
            await self._presence.release(user, device, token)

    async def locate(self, devices: Sequence[tuple[str, int]]) -> list[str | None]:
        """The other node holding each device; None when none does (or Redis is down)."""
        if not devices:
            return []
        try:
            nodes = await self._presence.locate(devices)
        except StorageError:
            return [None] * len(devices)
        return [None if n == self.node_id else n for n in nodes]

    # --- deliveries to other nodes (this node is the origin) ------------------------------

    def push_remote(
        self, node: str, env: Envelope, *, online: bool
    ) -> tuple[int, asyncio.Future[bool]]:
        """Publish `env` to the node holding its device; the future says whether it was acked."""
        delivery = RemoteDelivery(node, env.recipient_user, env.recipient_device, env.id)
        ref = self._ledger.published(delivery)
        acked: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._answers[ref] = acked
        self._spawn(self._publish_delivery(node, ref, env, online))
        return ref, acked

    async def _publish_delivery(self, node: str, ref: int, env: Envelope, online: bool) -> None:
        sent = await self._bus.publish(node, BusDeliver(self.node_id, ref, env, online))
        if not sent:
            self._on_answer(ref, acked=False)  # nobody listens there: store now, not later

    def settle(self, ref: int, *, stored: bool) -> None:
        """The send reached its outcome for this delivery. Stored ones are kept for a while:
        an ack that still comes deletes the stored copy. Call with no await before the store
        call, so that delete is queued after the insert."""
        self._ledger.settled(ref, stored=stored)
        self._answers.pop(ref, None)

    async def announce_stored(self, envelopes: Sequence[Envelope]) -> None:
        """After a commit: tell the nodes now holding these devices to pump them (and that a
        later ack must delete them). Located after the commit, so a device that connected
        meanwhile anywhere is found. A locate or publish that fails (Redis unreachable, or
        one master of a Redis Cluster failing over while the holder's bus works) is tried
        again with a capped backoff for up to ANNOUNCE_RETRY_S: otherwise the device would
        only get the message at its next connection."""
        if not envelopes:
            return
        ids: dict[tuple[str, int], list[bytes]] = {}
        for env in envelopes:
            ids.setdefault((env.recipient_user, env.recipient_device), []).append(env.id)
        pending = sorted(ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANNOUNCE_RETRY_S
        delay = ANNOUNCE_RETRY_FIRST_S
        while True:
            pending = await self._announce(pending, ids)
            if not pending or loop.time() + delay > deadline:
                return
            await asyncio.sleep(delay)  # backoff before trying again, not synchronisation
            delay = min(delay * 2, ANNOUNCE_RETRY_CAP_S)

    async def _announce(
        self, keys: list[tuple[str, int]], ids: dict[tuple[str, int], list[bytes]]
    ) -> list[tuple[str, int]]:
        """Publishes BusStored to the nodes holding these devices; the devices it failed for."""
        try:
            nodes = await self._presence.locate(keys)
        except StorageError:
            return keys
        targets = [
            (key, node)
            for key, node in zip(keys, nodes, strict=True)
            if node is not None and node != self.node_id
        ]
        if not targets:  # the common case: held here, or by no node
            return []
        sent = await asyncio.gather(
            *(
                self._bus.publish(
                    node, BusStored(user, device, tuple(ids[(user, device)][:MAX_BUS_IDS]))
                )
                for (user, device), node in targets
            )
        )
        return [key for (key, _), ok in zip(targets, sent, strict=True) if not ok]

    # --- deliveries from other nodes (this node holds the device) -------------------------

    async def acked_remote(
        self, session: DeviceSession, acked: list[tuple[RemoteRef, bytes]]
    ) -> None:
        """The device acked deliveries from other nodes: tell their origins, awaited (bounded
        by the backend timeout) before the device's next frame is handled."""
        self._recent.remember(session.user, session.device, [mid for _, mid in acked])
        await self._publish_acks([ref for ref, _ in acked], acked=True)

    def unacked_remote(self, refs: list[RemoteRef]) -> None:
        """The connection ended with these unacknowledged: their origins store them now."""
        self._spawn(self._publish_acks(refs, acked=False))

    def recently_acked(self, user: str, device: int) -> Container[bytes]:
        return self._recent.of(user, device)

    async def _publish_acks(self, refs: list[RemoteRef], *, acked: bool) -> None:
        by_node: dict[str, list[int]] = {}
        for ref in refs:
            by_node.setdefault(ref.node, []).append(ref.ref)
        sends = [
            self._bus.publish(node, BusAcked(tuple(chunk[i : i + MAX_BUS_IDS]), acked))
            for node, chunk in by_node.items()
            for i in range(0, len(chunk), MAX_BUS_IDS)
        ]
        await asyncio.gather(*sends)

    # --- effects on a device wherever it is connected ------------------------------------

    async def close_device(self, user: str, device: int, code: CloseCode, reason: str) -> None:
        """Close the device's connection on this node or on the node holding it."""
        self._router.close_device(user, device, code, reason)
        (node,) = await self.locate([(user, device)])
        if node is not None:
            await self._bus.publish(node, BusClose(user, device, int(code), reason, None, None, 0))

    def keys_low(self, user: str, device: int, frame: KeysLow) -> None:
        """Push `keys.low` to the device wherever it is connected (dropped when nowhere):
        at once when it is here, in the background when it may be on another node."""
        if self._router.get(user, device) is not None:
            self._router.push(user, device, frame)
        else:
            self._spawn(self._keys_low_elsewhere(user, device, frame))

    async def _keys_low_elsewhere(self, user: str, device: int, frame: KeysLow) -> None:
        (node,) = await self.locate([(user, device)])
        if node is not None:
            await self._bus.publish(node, BusKeysLow(user, device, frame.prekeys, frame.pq_prekeys))

    # --- the bus ----------------------------------------------------------------------

    def _on_message(self, message: BusMessage) -> None:
        match message:
            case BusDeliver():
                self._on_deliver(message)
            case BusAcked(refs, acked):
                self._on_acked(refs, acked)
            case BusStored(user, device, ids):
                session = self._router.get(user, device)
                if session is not None:
                    session.mark_stored(ids)
                    session.wake_pump()
            case BusClose():
                self._on_close(message)
            case BusClosed(ref, acked):
                reply = self._closing.get(ref)
                if reply is not None and not reply.done():
                    reply.set_result(acked)
            case BusKeysLow(user, device, prekeys, pq_prekeys):
                self._router.push(user, device, KeysLow(prekeys=prekeys, pq_prekeys=pq_prekeys))

    def _on_deliver(self, message: BusDeliver) -> None:
        env = message.envelope
        session = self._router.get(env.recipient_user, env.recipient_device)
        remote = RemoteRef(message.origin, message.ref)
        if session is None or not session.push_remote(env, remote, online=message.online):
            self._spawn(self._publish_acks([remote], acked=False))

    def _on_acked(self, refs: tuple[int, ...], acked: bool) -> None:
        for ref in refs:
            self._on_answer(ref, acked=acked)

    def _on_answer(self, ref: int, *, acked: bool) -> None:
        answer, delivery = self._ledger.answered(ref, acked=acked)
        if answer is Answer.RESOLVE:
            waiting = self._answers.pop(ref, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(acked)
        elif answer is Answer.DELETE and delivery is not None:
            # Stored after the timeout, acked since: delete it (queued after the insert).
            self._spawn(self._delete(delivery))

    async def _delete(self, delivery: RemoteDelivery) -> None:
        try:
            await self._messages.ack(delivery.user, delivery.device, [delivery.message_id])
        except StorageError:
            log.warning("could not delete a message acked after it was stored")

    def _on_close(self, message: BusClose) -> None:
        session = self._router.get(message.user, message.device)
        if session is not None and message.token not in (None, session.token):
            session = None  # a newer connection than the one to close: leave it
        if session is not None:
            session.out.close(CloseCode(message.code), message.reason)
        if message.reply_to is not None:
            self._spawn(self._reply_closed(message, session))

    async def _reply_closed(self, message: BusClose, session: DeviceSession | None) -> None:
        if session is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPLACED_CLOSE_WAIT_S):
                    await session.reader_done.wait()
        recent = self._recent.latest(message.user, message.device)
        assert message.reply_to is not None
        await self._bus.publish(message.reply_to, BusClosed(message.ref, recent))

    def _wake_all(self) -> None:
        """Stored-message notices may have been lost: every local pump looks again."""
        for session in self._router.sessions():
            session.wake_pump()

    # --- upkeep -------------------------------------------------------------------------

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh_once()
            except StorageError:
                log.warning("presence refresh skipped: redis unavailable")
            self._forget_old()
            await asyncio.sleep(self.refresh_interval)  # a period, not synchronisation

    async def refresh_once(self) -> None:
        sessions = [s for s in self._router.sessions() if s in self._claimed]
        await self._presence.heartbeat(len(self._router))
        if not sessions:
            return
        results = await self._presence.refresh([(s.user, s.device, s.token) for s in sessions])
        restored = 0
        for session, result in zip(sessions, results, strict=True):
            if result is Refresh.TAKEN:
                session.out.close(CloseCode.REPLACED, "replaced by a newer connection")
            elif result is Refresh.RESTORED:
                restored += 1
        if restored:
            log.warning("presence had expired for %d devices: published again", restored)
            self._wake_all()

    def _forget_old(self) -> None:
        for ref in self._ledger.expire():
            self._answers.pop(ref, None)
        self._recent.expire()


def open_cluster(
    settings: Settings,
    *,
    router: Router,
    messages: MessageQueue,
    spawn: Spawn,
    clock: Clock,
    observe: BackendObserver | None = None,
) -> Cluster:
    """Redis presence and bus in production mode; a node alone with the embedded store."""
    node_id = check_node_id(settings.node_id or new_node_id())
    presence: Presence
    bus: NodeBus
    if settings.redis_url is not None and settings.database_url is not None:
        from storage.redis_store.node_links import open_redis_cluster

        presence, bus = open_redis_cluster(
            settings.redis_url,
            prefix=settings.redis_prefix,
            node_id=node_id,
            presence_ttl_s=settings.presence_ttl,
            timeout_s=settings.backend_timeout,
            observe=observe,
            cluster=settings.redis_cluster,
        )
    else:
        presence = LocalPresence(node_id=node_id, connections=lambda: len(router))
        bus = LoopbackBus(node_id=node_id)
    return Cluster(
        node_id=node_id,
        presence=presence,
        bus=bus,
        router=router,
        messages=messages,
        settings=settings,
        spawn=spawn,
        clock=clock,
    )
