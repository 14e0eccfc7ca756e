"""Records shared by the nodes of a cluster: presence answers, the node registry, and the
typed messages of the node bus. Backends encode them; the relay only sees these types."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from storage.records import Envelope

MAX_BUS_IDS = 4096  # ids in one bus message (acks, stored notices, recently acked ids)
MAX_REASON_CHARS = 120


@dataclass(frozen=True, slots=True)
class Holder:
    """Who held a device's presence entry: a node and the connection's token there."""

    node: str
    token: str


class Refresh(enum.Enum):
    """What refreshing one presence entry found."""

    KEPT = "kept"  # still ours: its expiry was extended
    RESTORED = "restored"  # it had expired (node paused, Redis restarted): written again
    TAKEN = "taken"  # a newer connection elsewhere holds the device


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node as its last heartbeat described it."""

    node_id: str
    connections: int
    heartbeat_ms: int


@dataclass(frozen=True, slots=True)
class BusDeliver:
    """Push `envelope` to its device on the receiving node; answer `BusAcked(ref)` to `origin`."""

    origin: str
    ref: int
    envelope: Envelope
    online: bool


@dataclass(frozen=True, slots=True)
class BusAcked:
    """The device acknowledged (`acked`) the deliveries `refs`, or they were not pushed or
    their connection ended unacknowledged (not `acked`): the origin stores those."""

    refs: tuple[int, ...]
    acked: bool


@dataclass(frozen=True, slots=True)
class BusStored:
    """Messages `ids` were stored for the device: a later ack deletes them; pump them."""

    user: str
    device: int
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class BusClose:
    """Close the device's connection (the one with `token`, or any when None) with `code`.
    With `reply_to`, answer `BusClosed(ref)` there once its received frames took effect."""

    user: str
    device: int
    code: int
    reason: str
    token: str | None
    reply_to: str | None
    ref: int


@dataclass(frozen=True, slots=True)
class BusClosed:
    """The connection named by `BusClose(ref)` is gone; `acked` lists ids it acknowledged
    recently, which the new connection must never deliver again."""

    ref: int
    acked: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class BusKeysLow:
    user: str
    device: int
    prekeys: int
    pq_prekeys: int


BusMessage = BusDeliver | BusAcked | BusStored | BusClose | BusClosed | BusKeysLow
