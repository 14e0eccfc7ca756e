"""The delivery rules of one device connection, as a pure state machine (no I/O, no asyncio).

A `DeliveryWindow` receives events (the connection opened, a live push is offered, an ack
came, a delivery's sender stored it, something was stored for the device, the pump fetched a
batch, the connection ended) and answers with what its driver (`relay.device_session`) must do:
write this `deliver`, tell these senders, delete these stored ids, send `queue_empty`, close a
slow reader. The rules that used to live in comments are properties of these transitions:

* A delivery is in flight from its push until its ack or the connection's end; at most
  `window` are in flight, live pushes and stored ones together.
* An id is in flight at most once per connection: a stored copy of a live push is not pushed
  again (it is marked durable instead, so the ack deletes it).
* An ack of a durable (stored) delivery deletes it; an ack of an id not in flight deletes it
  too (it may have been delivered on an earlier connection).
* The window holds for the pump too: live pushes may fill it while a fetch runs, and the
  rest of that batch is then left for a later fetch (the cursor stops before it).
* An id whose ack was read is never pushed again on this connection: a fetch that ran
  before the ack's delete committed may still return it, so it is skipped until the delete
  has committed and no fetch that started earlier is outstanding.
* A delivery's age counts from its push: the oldest one in flight waiting longer than the
  slow-reader timeout, for the socket or for its ack, means the client stopped reading.
* The pump needs no fetch while it has caught up with the store and nothing was stored
  since; `queue_empty` is due once per connection, the first time a fetch comes back short.
* The handshake's read of the queue (the `queued` of `auth.ok`) counts as that first fetch
  when it found nothing and nothing was stored since it began: `queue_empty` follows the
  handshake answer at once and the pump starts caught up, with no fetch.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SendOrigin:
    """Who sent a message: a second send with the same id is a retry only from the same origin."""

    sender_user: str
    sender_device: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class RemoteRef:
    """A delivery pushed here for another node (the origin), which awaits its ack."""

    node: str
    ref: int


class Phase(enum.Enum):
    """AWAITING_HANDSHAKE: nothing is pushed; OPEN: pushes and the pump run; ENDED: final."""

    AWAITING_HANDSHAKE = "awaiting_handshake"
    OPEN = "open"
    ENDED = "ended"


class LivePush(enum.Enum):
    """What to do with a delivery offered live."""

    PUSH = "push"  # write it: it is in flight now
    REFUSE = "refuse"  # not pushed (no room, not open, or the id is in flight): the sender stores
    SLOW_READER = "slow_reader"  # not pushed, and the client stopped reading: close it (1013)


class StoredFound(enum.Enum):
    """What to do with one message the pump fetched from the store."""

    PUSH = "push"  # write it: it is in flight now (durable)
    IN_FLIGHT = "in_flight"  # already pushed live: now durable, its ack deletes it
    STALE = "stale"  # acked lately through another node: delete it instead of pushing it
    ACKED = "acked"  # acked here; its delete is under way or raced this fetch: skip it
    NO_ROOM = "no_room"  # live pushes filled the window while the fetch ran: stop the batch


@dataclass(slots=True)
class _Entry:
    origin: SendOrigin
    durable: bool  # stored (pumped from the store, or stored after the ack timeout)
    remote: RemoteRef | None  # pushed for another node, which decides about storing
    pushed_at: float  # the window's clock when it was written to the outbound buffer


@dataclass(frozen=True, slots=True)
class AckActions:
    """What an `ack` frame asks of the driver."""

    delivered: tuple[bytes, ...]  # were in flight here: their waiting senders are answered
    delete: tuple[bytes, ...]  # stored copies to delete
    remote: tuple[tuple[RemoteRef, bytes], ...]  # origins on other nodes to tell
    wake_pump: bool  # window slots were freed and the pump may have work


@dataclass(frozen=True, slots=True)
class Fetch:
    """A fetch the pump should make now: up to `limit` stored messages after `after_seq`."""

    after_seq: int
    limit: int
    epoch: int


@dataclass(frozen=True, slots=True)
class FetchDone:
    queue_empty: bool  # send `queue_empty` now (once per connection)
    again: bool  # the batch filled the room: fetch again at once


@dataclass(frozen=True, slots=True)
class EndActions:
    """The connection is gone: senders of these stop waiting (and store); origins are told."""

    undelivered: tuple[bytes, ...]
    unacked_remote: tuple[RemoteRef, ...]


@dataclass
class DeliveryWindow:
    """The in-flight window, the pump's cursor and caught-up state, `queue_empty` once."""

    window: int
    clock: Callable[[], float]  # monotonic seconds: a delivery's age
    # A delivery from another node acked this long after its push may have been stored by
    # its origin (whose ack timeout ran out first): the ack deletes the stored copy here too,
    # because an origin killed after storing it never will. Infinite: never.
    remote_late_s: float = math.inf
    phase: Phase = Phase.AWAITING_HANDSHAKE
    _inflight: dict[bytes, _Entry] = field(default_factory=dict)
    _cursor: int = 0
    _queue_empty_due: bool = True
    # The last fetch found everything stored after the cursor and nothing was stored since:
    # a freed window slot then needs no fetch (most acks are of live pushes).
    _caught_up: bool = False
    _stored_epoch: int = 0
    # Acked ids with a stored copy: skipped by the pump until their delete has committed
    # (True) and a fetch has started since (one fetch runs at a time).
    _deleting: dict[bytes, bool] = field(default_factory=dict)
    _cut: bool = False  # the running fetch's batch was cut short for want of room

    # --- reading --------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def is_in_flight(self, message_id: bytes) -> bool:
        return message_id in self._inflight

    def is_durable(self, message_id: bytes) -> bool:
        entry = self._inflight.get(message_id)
        return entry is not None and entry.durable

    def origin_of(self, message_id: bytes) -> SendOrigin | None:
        entry = self._inflight.get(message_id)
        return None if entry is None else entry.origin

    @property
    def stored_epoch(self) -> int:
        """Counts `store_changed`: taken before a read of the queue, it tells whether
        anything was stored for the device while the read ran."""
        return self._stored_epoch

    @property
    def caught_up(self) -> bool:
        """Nothing stored for the device is left to fetch: the pump has no work."""
        return self._caught_up

    def oldest_pushed_at(self) -> float | None:
        """When the oldest delivery in flight was pushed; None when none is.

        Entries are kept in push order (an ack removes one, nothing moves one), so the first
        is the oldest."""
        for entry in self._inflight.values():
            return entry.pushed_at
        return None

    def overdue(self, timeout: float) -> bool:
        """The oldest delivery in flight has waited `timeout` or longer for its ack."""
        oldest = self.oldest_pushed_at()
        return oldest is not None and self.clock() - oldest >= timeout

    # --- events ---------------------------------------------------------------------

    def opened(self, *, empty_at: int | None = None) -> bool:
        """The handshake answer is written: deliveries may follow it. `empty_at`: the store
        held nothing for the device when read, and this was `stored_epoch` before the read.
        Returns whether `queue_empty` is due now: when nothing was stored since the read
        began, the pump starts caught up, without a fetch."""
        if self.phase is not Phase.AWAITING_HANDSHAKE:
            return False
        self.phase = Phase.OPEN
        if empty_at is None or empty_at != self._stored_epoch:
            return False
        self._caught_up = True
        self._queue_empty_due = False
        return True

    def offer_live(
        self,
        message_id: bytes,
        origin: SendOrigin,
        *,
        buffer_has_room: bool,
        remote: RemoteRef | None = None,
    ) -> LivePush:
        """A sender (here, or the origin node for `remote`) offers a delivery."""
        if self.phase is not Phase.OPEN or len(self._inflight) >= self.window:
            return LivePush.REFUSE
        if not buffer_has_room:
            return LivePush.SLOW_READER
        if message_id in self._inflight:
            return LivePush.REFUSE
        self._inflight[message_id] = _Entry(
            origin, durable=False, remote=remote, pushed_at=self.clock()
        )
        return LivePush.PUSH

    def stored(self, message_ids: Sequence[bytes]) -> None:
        """These were stored (the sender's ack timeout elapsed, or another node stored them):
        a later ack must delete them."""
        for message_id in message_ids:
            entry = self._inflight.get(message_id)
            if entry is not None:
                entry.durable = True

    def acked(self, message_ids: Sequence[bytes]) -> AckActions:
        delivered: list[bytes] = []
        delete: list[bytes] = []
        remote: list[tuple[RemoteRef, bytes]] = []
        now = self.clock()
        for message_id in message_ids:
            entry = self._inflight.pop(message_id, None)
            if entry is None:
                delete.append(message_id)  # delivered on an earlier connection, maybe
                continue
            delivered.append(message_id)
            if entry.durable or (
                entry.remote is not None and now - entry.pushed_at >= self.remote_late_s
            ):
                delete.append(message_id)
            if entry.remote is not None:
                remote.append((entry.remote, message_id))
        for message_id in delete:
            self._deleting[message_id] = False
        wake = bool(delivered) and not self._caught_up
        return AckActions(tuple(delivered), tuple(delete), tuple(remote), wake)

    def deleted(self, message_ids: Sequence[bytes]) -> None:
        """The store confirmed the deletes an ack asked for: fetches started from now on
        cannot return these ids."""
        for message_id in message_ids:
            if message_id in self._deleting:
                self._deleting[message_id] = True

    def store_changed(self) -> None:
        """Something was stored for this device (or may have been: a missed notice)."""
        self._stored_epoch += 1
        self._caught_up = False

    def next_fetch(self) -> Fetch | None:
        """The fetch to make now; None when the window is full or the connection is not open."""
        room = self.window - len(self._inflight)
        if self.phase is not Phase.OPEN or room <= 0:
            return None
        # The previous fetch is over: ids deleted before this one starts cannot come back.
        self._deleting = {m: done for m, done in self._deleting.items() if not done}
        self._cut = False
        return Fetch(after_seq=self._cursor, limit=room, epoch=self._stored_epoch)

    def found(
        self, seq: int, message_id: bytes, origin: SendOrigin, acked_elsewhere: Container[bytes]
    ) -> StoredFound:
        """One fetched message, in store order; call with the outbound buffer having room."""
        if self._cut:
            return StoredFound.NO_ROOM
        if message_id in self._deleting:
            self._cursor = max(self._cursor, seq)
            return StoredFound.ACKED
        entry = self._inflight.get(message_id)
        if entry is not None:
            self._cursor = max(self._cursor, seq)
            entry.durable = True  # pushed live already; its ack deletes it
            return StoredFound.IN_FLIGHT
        if message_id in acked_elsewhere:
            self._cursor = max(self._cursor, seq)
            return StoredFound.STALE  # acked; another node's delete is under way
        if len(self._inflight) >= self.window:
            self._cut = True
            return StoredFound.NO_ROOM
        self._cursor = max(self._cursor, seq)
        self._inflight[message_id] = _Entry(
            origin, durable=True, remote=None, pushed_at=self.clock()
        )
        return StoredFound.PUSH

    def fetch_done(self, fetch: Fetch, count: int) -> FetchDone:
        """The fetch returned `count` messages, each passed to `found`."""
        short = count < fetch.limit and not self._cut
        self._cut = False
        self._caught_up = short and fetch.epoch == self._stored_epoch
        queue_empty = short and self._queue_empty_due
        if queue_empty:
            self._queue_empty_due = False
        return FetchDone(queue_empty=queue_empty, again=not short)

    def ended(self) -> EndActions:
        """The connection is gone: nothing is in flight any more."""
        self.phase = Phase.ENDED
        undelivered = tuple(self._inflight)
        remote = tuple(e.remote for e in self._inflight.values() if e.remote is not None)
        self._inflight.clear()
        self._deleting.clear()
        return EndActions(undelivered, remote)
