"""Random event sequences against the delivery rules of one device, checked by invariants.

The test plays the drivers around `DeliveryWindow`: one sender (waiting for acks, storing on
timeout, refusal or the connection's end), a model store (an ordered queue), and the device
(connecting, reading, acking what it received). A fetch and an ack's delete take time, as
they do against a real store: a fetch returns what was stored when it started, and other
events (acks above all) may come between its start and its result, or between an ack and its
delete's commit. After every step:

* every accepted envelope is exactly one of: in flight awaiting its ack (not stored), stored,
  or acknowledged;
* an in-flight delivery is durable exactly when a stored copy exists;
* the window never holds more than its size;
and at every push: nothing acknowledged is pushed again, stored messages are pushed in the
sender's order, and `queue_empty` comes at most once per connection, after every message
stored when the handshake read the queue. The handshake's read takes time too: stores may
come between it and the handshake's answer. While the pump has caught up and no fetch runs,
nothing stored is left unpushed on an open connection.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from relay.delivery import DeliveryWindow, Fetch, LivePush, SendOrigin, StoredFound

WINDOW = 3
ORIGIN = SendOrigin("alice", 1, b"n" * 16)


class OneDevice(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.accepted: list[bytes] = []
        self.store: dict[bytes, int] = {}  # id -> seq, in insertion (= seq) order
        self.next_seq = 1
        self.acknowledged: set[bytes] = set()
        self.waiting: set[bytes] = set()  # the sender waits for these acks
        self.received: set[bytes] = set()  # what the device was ever sent
        self.unacked_here: set[bytes] = set()  # sent on this connection, not acked since
        self.window: DeliveryWindow | None = None
        self.pushed_seqs: list[int] = []  # stored messages pushed on this connection
        self.queue_empties = 0
        self.fetching: tuple[Fetch, list[tuple[int, bytes]]] | None = None  # started, no result
        # The handshake read the queue: the epoch taken before, and what the store held.
        self.handshake_read: tuple[int, list[bytes]] | None = None
        self.owed: set[bytes] = set()  # stored at the handshake's read: due before queue_empty
        self.deleting: list[bytes] = []  # acked; their delete has not committed yet

    # --- the store and the sender ---------------------------------------------------

    def _store(self, message_id: bytes) -> None:
        self.store[message_id] = self.next_seq
        self.next_seq += 1
        if self.window is not None:
            self.window.stored([message_id])
            self.window.store_changed()

    def _pushed(self, message_id: bytes) -> None:
        assert message_id not in self.acknowledged, "an acknowledged message was pushed again"
        assert message_id not in self.unacked_here, "pushed twice on one connection"
        self.received.add(message_id)
        self.unacked_here.add(message_id)

    @rule(buffer_has_room=st.booleans())
    def send(self, buffer_has_room: bool) -> None:
        message_id = len(self.accepted).to_bytes(16, "big")
        self.accepted.append(message_id)
        if self.window is None:
            self._store(message_id)
            return
        decision = self.window.offer_live(message_id, ORIGIN, buffer_has_room=buffer_has_room)
        if decision is LivePush.PUSH:
            self._pushed(message_id)
            self.waiting.add(message_id)
            return
        self._store(message_id)
        if decision is LivePush.SLOW_READER:
            self.disconnect()  # the driver closes the connection with 1013

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def ack_timeout(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(sorted(self.waiting)))
        self.waiting.discard(message_id)
        self._store(message_id)  # settle (mark durable), then the store call, no await

    # --- the device ---------------------------------------------------------------------

    @precondition(lambda self: self.window is None)
    @rule()
    def connect(self) -> None:
        """Attached: stores reach the window from now on; the handshake reads the queue."""
        self.window = DeliveryWindow(
            WINDOW, lambda: 0.0
        )  # ages: tests/unit/test_delivery_window.py
        self.handshake_read = (self.window.stored_epoch, list(self.store))
        self.owed = set(self.store)
        self.pushed_seqs = []
        self.queue_empties = 0
        self.unacked_here = set()

    @precondition(lambda self: self.handshake_read is not None)
    @rule()
    def handshake_answered(self) -> None:
        """`auth.ok` is written (the driver: relay.connection._finish_handshake)."""
        assert self.window is not None and self.handshake_read is not None
        epoch, queued = self.handshake_read
        self.handshake_read = None
        if self.window.opened(empty_at=epoch if not queued else None):
            self._queue_empty()

    def _queue_empty(self) -> None:
        self.queue_empties += 1
        assert self.queue_empties <= 1
        assert not self.owed, "queue_empty before the messages stored at the handshake"

    @precondition(lambda self: self.window is not None)
    @rule()
    def disconnect(self) -> None:
        assert self.window is not None
        end = self.window.ended()
        for message_id in end.undelivered:
            if message_id in self.waiting:  # the sender stops waiting and stores it
                self.waiting.discard(message_id)
                self._store(message_id)
        self.window = None
        self.handshake_read = None
        self.fetching = None
        self._commit_deletes()  # the store runs them before the next connection's fetch

    @precondition(lambda self: self.window is not None and self.received)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        assert self.window is not None
        ids = data.draw(st.lists(st.sampled_from(sorted(self.received)), max_size=4))
        actions = self.window.acked(ids)
        for message_id in actions.delivered:
            self.waiting.discard(message_id)
        self.deleting.extend(actions.delete)
        self.acknowledged.update(ids)  # the device has them: none may stay stored or pending
        self.owed.difference_update(ids)
        self.unacked_here.difference_update(ids)

    def _commit_deletes(self) -> None:
        for message_id in self.deleting:
            self.store.pop(message_id, None)
        if self.window is not None:
            self.window.deleted(self.deleting)
        self.deleting = []

    @precondition(lambda self: self.deleting)
    @rule()
    def deletes_commit(self) -> None:
        self._commit_deletes()

    @precondition(lambda self: self.window is not None and self.fetching is None)
    @rule()
    def fetch_starts(self) -> None:
        assert self.window is not None
        fetch = self.window.next_fetch()
        if fetch is None:
            return
        batch = [(seq, m) for m, seq in self.store.items() if seq > fetch.after_seq]
        self.fetching = (fetch, batch[: fetch.limit])

    @precondition(lambda self: self.fetching is not None)
    @rule()
    def fetch_returns(self) -> None:
        assert self.window is not None and self.fetching is not None
        fetch, batch = self.fetching
        self.fetching = None
        for seq, message_id in batch:
            found = self.window.found(seq, message_id, ORIGIN, ())
            if found is not StoredFound.NO_ROOM:
                self.owed.discard(message_id)  # pushed now, or earlier, or acked
            if found is StoredFound.PUSH:
                self._pushed(message_id)
                assert not self.pushed_seqs or seq > self.pushed_seqs[-1], "order broken"
                self.pushed_seqs.append(seq)
        if self.window.fetch_done(fetch, len(batch)).queue_empty:
            self._queue_empty()

    # --- invariants -------------------------------------------------------------------

    @invariant()
    def every_envelope_has_exactly_one_place(self) -> None:
        for message_id in self.accepted:
            live = (
                self.window is not None
                and self.window.is_in_flight(message_id)
                and message_id not in self.store
            )
            stored = message_id in self.store and message_id not in self.deleting
            places = [live, stored, message_id in self.acknowledged]
            assert places.count(True) == 1, (message_id, places)
            assert live == (message_id in self.waiting)

    @invariant()
    def in_flight_is_durable_exactly_when_stored(self) -> None:
        if self.window is None:
            return
        for message_id in self.accepted:
            if self.window.is_in_flight(message_id):
                assert self.window.is_durable(message_id) == (message_id in self.store)

    @invariant()
    def a_caught_up_pump_leaves_nothing_stored_behind(self) -> None:
        if self.window is None or self.fetching is not None or not self.window.caught_up:
            return
        for message_id in self.store:
            assert self.window.is_in_flight(message_id) or message_id in self.deleting, (
                "stored, not pushed, and the pump thinks it has caught up"
            )

    @invariant()
    def the_window_is_bounded(self) -> None:
        assert self.window is None or self.window.in_flight <= WINDOW


OneDevice.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestOneDevice = OneDevice.TestCase
