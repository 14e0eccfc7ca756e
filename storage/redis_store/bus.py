"""The node bus over Redis pub/sub: one channel per node, `prefix + "node:" + id`.

Messages are msgpack arrays `[kind, fields...]` of the typed records in storage.node_records,
checked field by field when read (a message that does not fit is dropped and logged).
Publishing goes through one Lua script batched per event-loop turn (client.ScriptBatcher),
so it is bounded by the backend timeout like every other Redis call; PUBLISH's receiver
count tells whether the node is listening at all. Listening uses a connection of its own;
after an outage it reconnects with a capped backoff and calls `on_resync`, because pub/sub
is at-most-once and messages sent meanwhile are gone.

In Redis Cluster (client.cluster) the bus uses sharded pub/sub (Redis 7): each node's channel
carries its node id as hash tag, publishing is SPUBLISH (run by the master of the channel's
slot, so bus traffic spreads over the shards), and listening is SSUBSCRIBE on a plain
connection to that master. When the master dies, or its slot moves (Redis then ends the
subscription with an `sunsubscribe`), the listener reloads the slot map, subscribes at the
new master and calls `on_resync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import msgpack
import redis.asyncio as redis_asyncio
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from storage.errors import Unavailable
from storage.node_records import (
    MAX_BUS_IDS,
    MAX_REASON_CHARS,
    BusAcked,
    BusClose,
    BusClosed,
    BusDeliver,
    BusKeysLow,
    BusMessage,
    BusStored,
)
from storage.records import Envelope
from storage.redis_store.client import RedisClient, Script, ScriptBatcher
from storage.stopping import stop_tasks

__all__ = ["RedisNodeBus", "decode_message", "encode_message"]

log = logging.getLogger(__name__)

RECEIVE_QUEUE: Final = 20_000  # messages read but not handled yet; more are dropped
RECEIVE_QUEUE_BYTES: Final = 64 * 1024 * 1024  # and their size
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
RECONNECT_FIRST_S: Final = 0.1
RECONNECT_CAP_S: Final = 2.0
POLL_S: Final = 1.0

_PUBLISH = Script(
    r"""
-- KEYS[i]: the channel of call i; ARGV[1]: now (unused); ARGV[1 + i]: the message.
-- Reply per call: how many subscribers received it.
local out = {}
for i, channel in ipairs(KEYS) do
    out[i] = redis.call('PUBLISH', channel, ARGV[1 + i])
end
return out
""",
    name="bus_publish",
)


_SPUBLISH = Script(
    r"""
-- KEYS[i]: the shard channel of call i (all of one slot); ARGV[1]: now (unused);
-- ARGV[1 + i]: the message. Reply per call: how many subscribers received it.
local out = {}
for i, channel in ipairs(KEYS) do
    out[i] = redis.call('SPUBLISH', channel, ARGV[1 + i])
end
return out
""",
    name="bus_publish",
)


class BadMessage(ValueError):
    """A bus message that is not one of ours (another version, or corrupt)."""


def _with_address(url: str, host: str, port: int) -> str:
    """`url` pointed at host:port, keeping its scheme, credentials, path and options."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=userinfo + at + address))


class _SlotMoved(Exception):
    """Redis ended a sharded subscription: the channel's slot has another master now."""


def encode_message(message: BusMessage) -> bytes:
    match message:
        case BusDeliver(origin, ref, env, online):
            fields: list[object] = [
                "deliver",
                origin,
                ref,
                env.id,
                env.recipient_user,
                env.recipient_device,
                env.sender_user,
                env.sender_device,
                env.ts,
                env.server_ts,
                env.type,
                env.delivered_body,
                env.nonce,
                env.expires_ms,
                online,
            ]
        case BusAcked(refs, acked):
            fields = ["acked", list(refs), acked]
        case BusStored(user, device, ids):
            fields = ["stored", user, device, list(ids)]
        case BusClose(user, device, code, reason, token, reply_to, ref):
            fields = ["close", user, device, code, reason, token, reply_to, ref]
        case BusClosed(ref, acked_ids):
            fields = ["closed", ref, list(acked_ids)]
        case BusKeysLow(user, device, prekeys, pq_prekeys):
            fields = ["keys_low", user, device, prekeys, pq_prekeys]
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def decode_message(data: bytes) -> BusMessage:
    """The typed message, or BadMessage."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadMessage("too large")
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise BadMessage(str(exc)) from exc
    if not isinstance(fields, list) or not fields:
        raise BadMessage("not a list")
    kind, args = fields[0], fields[1:]
    try:
        return _DECODERS[kind](args)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadMessage(f"bad {kind!r} message: {exc}") from exc


def _str(v: object, limit: int = 200) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise ValueError("expected a short string")
    return v


def _opt_str(v: object) -> str | None:
    return None if v is None else _str(v)


def _int(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError("expected an integer")
    return v


def _bytes(v: object) -> bytes:
    if not isinstance(v, bytes):
        raise ValueError("expected bytes")
    return v


def _ids(v: object) -> tuple[bytes, ...]:
    if not isinstance(v, list) or len(v) > MAX_BUS_IDS:
        raise ValueError("expected a bounded list of ids")
    return tuple(_bytes(x) for x in v)


def _deliver(a: list[object]) -> BusMessage:
    (origin, ref, mid, ru, rd, su, sd, ts, sts, typ, body, nonce, exp, online) = a
    env = Envelope(
        id=_bytes(mid),
        recipient_user=_str(ru),
        recipient_device=_int(rd),
        sender_user=_str(su),
        sender_device=_int(sd),
        ts=_int(ts),
        server_ts=_int(sts),
        type=_int(typ),
        body=_bytes(body),
        nonce=_bytes(nonce),
        expires_ms=_int(exp),
    )
    if not isinstance(online, bool):
        raise ValueError("online must be a boolean")
    return BusDeliver(_str(origin), _int(ref), env, online)


def _acked(a: list[object]) -> BusMessage:
    refs, acked = a
    if not isinstance(refs, list) or len(refs) > MAX_BUS_IDS or not isinstance(acked, bool):
        raise ValueError("expected a bounded list of refs and a boolean")
    return BusAcked(tuple(_int(r) for r in refs), acked)


def _stored(a: list[object]) -> BusMessage:
    user, device, ids = a
    return BusStored(_str(user), _int(device), _ids(ids))


def _close(a: list[object]) -> BusMessage:
    user, device, code, reason, token, reply_to, ref = a
    return BusClose(
        _str(user),
        _int(device),
        _int(code),
        _str(reason, MAX_REASON_CHARS),
        _opt_str(token),
        _opt_str(reply_to),
        _int(ref),
    )


def _closed(a: list[object]) -> BusMessage:
    ref, acked = a
    return BusClosed(_int(ref), _ids(acked))


def _keys_low(a: list[object]) -> BusMessage:
    user, device, prekeys, pq_prekeys = a
    return BusKeysLow(_str(user), _int(device), _int(prekeys), _int(pq_prekeys))


_DECODERS: Final[dict[object, Callable[[list[object]], BusMessage]]] = {
    "deliver": _deliver,
    "acked": _acked,
    "stored": _stored,
    "close": _close,
    "closed": _closed,
    "keys_low": _keys_low,
}


class RedisNodeBus:
    """The `NodeBus` of the production backend for node `node_id`."""

    def __init__(self, client: RedisClient, url: str, *, node_id: str) -> None:
        self._client = client
        self._url = url
        self._node_id = node_id
        self._channel = self.channel(node_id)
        self._publisher = ScriptBatcher(client, _SPUBLISH if client.cluster else _PUBLISH, width=1)
        self._listener: asyncio.Task[None] | None = None
        self._handler: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[tuple[BusMessage, int]] = asyncio.Queue(maxsize=RECEIVE_QUEUE)
        self._queued_bytes = 0
        self.dropped = 0  # messages lost to a full receive queue or a bad encoding

    def channel(self, node: str) -> str:
        return self._client.key("node", node, tag=node)

    def start(
        self, on_message: Callable[[BusMessage], None], on_resync: Callable[[], None]
    ) -> None:
        self._listener = asyncio.create_task(self._listen(on_resync), name="relay-bus-listen")
        self._handler = asyncio.create_task(self._handle(on_message), name="relay-bus-handle")

    async def publish(self, node: str, message: BusMessage) -> bool:
        try:
            receivers = await self._publisher.call(self.channel(node), encode_message(message))
        except Unavailable:
            return False
        return isinstance(receivers, int) and receivers > 0

    async def close(self) -> None:
        await stop_tasks(t for t in (self._listener, self._handler) if t is not None)
        await self._publisher.close()

    async def _handle(self, on_message: Callable[[BusMessage], None]) -> None:
        while True:
            message, size = await self._queue.get()
            self._queued_bytes -= size
            try:
                on_message(message)
            except Exception:  # one bad message must not stop the bus
                log.exception("node bus message failed: %s", type(message).__name__)

    async def _listen(self, on_resync: Callable[[], None]) -> None:
        delay = RECONNECT_FIRST_S
        first = True
        while True:
            conn: redis_asyncio.Redis | None = None
            pubsub: PubSub | None = None
            try:
                conn = await self._connect(refresh=not first)
                pubsub = conn.pubsub(ignore_subscribe_messages=not self._client.cluster)
                if self._client.cluster:
                    await pubsub.ssubscribe(self._channel)
                else:
                    await pubsub.subscribe(self._channel)
                if not first:
                    log.warning("node bus listening again on %s", self._channel)
                    on_resync()
                first = False
                delay = RECONNECT_FIRST_S
                while True:
                    raw = await pubsub.get_message(timeout=POLL_S)
                    if raw is None:
                        continue
                    kind = raw.get("type")
                    if kind in ("message", "smessage"):
                        self._received(raw["data"])
                    elif kind == "sunsubscribe":
                        # The slot moved to another master (failover, resharding).
                        raise _SlotMoved(f"redis ended the subscription to {self._channel}")
            except (RedisError, OSError, Unavailable, _SlotMoved) as exc:
                if first:
                    log.warning("node bus cannot listen yet: %s", exc)
                else:
                    log.warning("node bus lost its connection: %s", exc)
                first = False
            finally:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
                if conn is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await conn.aclose()
            await asyncio.sleep(delay)  # backoff before reconnecting, not synchronisation
            delay = min(delay * 2, RECONNECT_CAP_S)

    async def _connect(self, *, refresh: bool) -> redis_asyncio.Redis:
        """A connection of its own for listening: to the Redis URL, or in a cluster to the
        master of the channel's slot (from a fresh slot map after a failure), with the
        URL's other options (credentials, TLS)."""
        url = self._url
        if self._client.cluster:
            host, port = await self._client.node_of(self._channel, refresh=refresh)
            url = _with_address(url, host, port)
        return redis_asyncio.Redis.from_url(
            url,
            socket_connect_timeout=self._client.timeout_s,
            health_check_interval=max(1, int(self._client.timeout_s)),
        )

    def _received(self, data: object) -> None:
        raw = data if isinstance(data, bytes) else b""
        try:
            message = decode_message(raw)
        except BadMessage as exc:
            self.dropped += 1
            log.warning("dropped a node bus message: %s", exc)
            return
        try:
            if self._queued_bytes + len(raw) > RECEIVE_QUEUE_BYTES:
                raise asyncio.QueueFull
            self._queue.put_nowait((message, len(raw)))
            self._queued_bytes += len(raw)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("node bus receive queue full: dropping (%d so far)", self.dropped)
