"""The delivery rules of one connection (docs/protocol.md, "Receiving"), event by event."""

from __future__ import annotations

from relay.delivery import (
    DeliveryWindow,
    Fetch,
    LivePush,
    Phase,
    RemoteRef,
    SendOrigin,
    StoredFound,
)

ALICE = SendOrigin("alice", 1, b"n" * 16)
NOTHING: frozenset[bytes] = frozenset()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def mid(i: int) -> bytes:
    return i.to_bytes(16, "big")


def open_window(size: int = 4, clock: FakeClock | None = None) -> DeliveryWindow:
    window = DeliveryWindow(size, clock or FakeClock())
    window.opened()
    return window


def offer(window: DeliveryWindow, i: int, *, room: bool = True) -> LivePush:
    return window.offer_live(mid(i), ALICE, buffer_has_room=room)


def pump(window: DeliveryWindow, store: list[tuple[int, bytes]]) -> tuple[list[bytes], bool]:
    """One fetch against `store` (seq, id): the ids pushed, and whether `queue_empty` is due."""
    fetch = window.next_fetch()
    assert fetch is not None
    batch = [(seq, m) for seq, m in store if seq > fetch.after_seq][: fetch.limit]
    pushed = [m for seq, m in batch if window.found(seq, m, ALICE, NOTHING) is StoredFound.PUSH]
    return pushed, window.fetch_done(fetch, len(batch)).queue_empty


def test_nothing_is_pushed_before_the_handshake_answer() -> None:
    window = DeliveryWindow(4, FakeClock())
    assert offer(window, 1) is LivePush.REFUSE
    assert window.next_fetch() is None
    window.opened()
    assert window.phase is Phase.OPEN
    assert offer(window, 1) is LivePush.PUSH


def test_a_full_window_refuses_live_pushes_and_the_pump_fills_freed_slots() -> None:
    window = open_window(2)
    assert [offer(window, i) for i in (1, 2, 3)] == [LivePush.PUSH, LivePush.PUSH, LivePush.REFUSE]
    assert window.next_fetch() is None  # the sender stored 3; no room to pump it yet
    actions = window.acked([mid(1)])
    assert actions.delivered == (mid(1),) and actions.delete == ()
    assert actions.wake_pump
    assert window.next_fetch() == Fetch(after_seq=0, limit=1, epoch=0)
    assert pump(window, [(7, mid(3))]) == ([mid(3)], False)  # a full batch: not caught up yet
    assert window.is_durable(mid(3))


def test_an_id_in_flight_is_not_pushed_twice() -> None:
    window = open_window()
    assert offer(window, 1) is LivePush.PUSH
    assert offer(window, 1) is LivePush.REFUSE
    assert window.in_flight == 1


def test_a_late_delivery_is_stored_not_pushed_again_here_but_on_the_next_connection() -> None:
    window = open_window()
    assert offer(window, 1) is LivePush.PUSH
    window.stored([mid(1)])  # the sender's ack timeout elapsed: it stores the envelope
    window.store_changed()
    assert pump(window, [(1, mid(1))]) == ([], True)  # in flight already: not pushed again
    assert window.is_durable(mid(1))
    assert window.ended().undelivered == (mid(1),)
    following = open_window()
    assert pump(following, [(1, mid(1))]) == ([mid(1)], True)


def test_a_late_ack_deletes_the_stored_copy() -> None:
    window = open_window()
    offer(window, 1)
    window.stored([mid(1)])
    actions = window.acked([mid(1)])
    assert actions.delivered == (mid(1),)
    assert actions.delete == (mid(1),)


def test_an_ack_of_an_id_not_in_flight_deletes_it() -> None:
    """Delivered on an earlier connection, maybe; harmless otherwise."""
    actions = open_window().acked([mid(9)])
    assert actions.delivered == () and actions.delete == (mid(9),)
    assert not actions.wake_pump


def test_queue_empty_once_per_connection() -> None:
    window = open_window()
    assert pump(window, []) == ([], True)
    window.store_changed()
    assert pump(window, [(1, mid(1))]) == ([mid(1)], False)
    window.store_changed()
    assert pump(window, []) == ([], False)
    assert pump(open_window(), []) == ([], True)


def test_queue_empty_waits_until_the_stored_backlog_is_pushed() -> None:
    window = open_window(2)
    store = [(1, mid(1)), (2, mid(2)), (3, mid(3))]
    assert pump(window, store) == ([mid(1), mid(2)], False)
    window.acked([mid(1), mid(2)])
    assert pump(window, store) == ([mid(3)], True)


def test_an_empty_queue_read_at_the_handshake_is_the_first_fetch() -> None:
    window = DeliveryWindow(4, FakeClock())
    epoch = window.stored_epoch  # taken before the handshake reads the queue: empty
    assert window.opened(empty_at=epoch)  # queue_empty is due with the handshake answer
    assert window.caught_up
    offer(window, 1)
    assert not window.acked([mid(1)]).wake_pump  # no fetch for acks of live pushes
    window.store_changed()  # stored later: the pump fetches it, and no second queue_empty
    assert not window.caught_up
    assert pump(window, [(1, mid(2))]) == ([mid(2)], False)


def test_a_store_while_the_handshake_reads_the_queue_leaves_the_first_fetch_to_the_pump() -> None:
    window = DeliveryWindow(4, FakeClock())
    epoch = window.stored_epoch
    window.store_changed()  # stored after the read began; the read may not have seen it
    assert not window.opened(empty_at=epoch)
    assert not window.caught_up
    assert pump(window, [(1, mid(1))]) == ([mid(1)], True)


def test_a_queue_read_that_found_messages_leaves_the_first_fetch_to_the_pump() -> None:
    window = DeliveryWindow(4, FakeClock())
    assert not window.opened(empty_at=None)
    assert not window.caught_up
    assert pump(window, [(1, mid(1))]) == ([mid(1)], True)
    assert not window.opened(empty_at=window.stored_epoch)  # opened once only


def test_a_caught_up_pump_is_not_woken_by_acks_of_live_pushes() -> None:
    window = open_window()
    assert pump(window, []) == ([], True)
    offer(window, 1)
    assert not window.acked([mid(1)]).wake_pump
    offer(window, 2)
    window.store_changed()
    assert window.acked([mid(2)]).wake_pump


def test_a_store_during_a_fetch_keeps_the_pump_looking() -> None:
    window = open_window()
    fetch = window.next_fetch()
    assert fetch is not None
    window.store_changed()  # a commit landed while the fetch ran
    window.fetch_done(fetch, 0)
    offer(window, 1)
    assert window.acked([mid(1)]).wake_pump


def test_an_id_acked_while_a_fetch_runs_is_not_pushed_again() -> None:
    """The fetch was queued before the ack's delete, so it still returns the acked id."""
    window = open_window()
    offer(window, 1)
    window.stored([mid(1)])  # the sender's ack timeout elapsed: it stores the envelope
    window.store_changed()
    fetch = window.next_fetch()
    assert fetch is not None
    assert window.acked([mid(1)]).delete == (mid(1),)  # read while the fetch runs
    assert window.found(1, mid(1), ALICE, NOTHING) is StoredFound.ACKED
    window.fetch_done(fetch, 1)
    assert window.in_flight == 0


def test_an_acked_id_stays_skipped_until_its_delete_has_committed() -> None:
    window = open_window()
    offer(window, 1)
    window.stored([mid(1)])
    window.acked([mid(1)])
    window.store_changed()
    assert pump(window, [(1, mid(1))]) == ([], True)  # the delete has not committed yet
    window.deleted([mid(1)])
    fetch = window.next_fetch()  # started after the commit: the id cannot come back
    assert fetch is not None
    assert window.found(2, mid(1), ALICE, NOTHING) is StoredFound.PUSH  # stored anew


def test_a_delete_committed_during_a_fetch_still_skips_that_fetchs_copy() -> None:
    window = open_window()
    offer(window, 1)
    window.stored([mid(1)])
    window.store_changed()
    fetch = window.next_fetch()
    assert fetch is not None
    window.acked([mid(1)])
    window.deleted([mid(1)])  # committed, but the fetch began before it
    assert window.found(1, mid(1), ALICE, NOTHING) is StoredFound.ACKED


def test_the_pump_skips_and_deletes_ids_acked_through_another_node() -> None:
    window = open_window()
    fetch = window.next_fetch()
    assert fetch is not None
    assert window.found(1, mid(1), ALICE, {mid(1)}) is StoredFound.STALE
    assert window.found(2, mid(2), ALICE, {mid(1)}) is StoredFound.PUSH
    assert not window.is_in_flight(mid(1))
    assert window.next_fetch() == Fetch(after_seq=2, limit=3, epoch=0)


def test_a_slow_reader_is_closed_and_the_sender_stores() -> None:
    window = open_window()
    assert offer(window, 1, room=False) is LivePush.SLOW_READER
    assert window.in_flight == 0


def test_a_full_window_refuses_before_the_buffer_is_looked_at() -> None:
    window = open_window(1)
    offer(window, 1)
    assert offer(window, 2, room=False) is LivePush.REFUSE


def test_remote_deliveries_report_their_acks_and_their_end() -> None:
    window = open_window()
    ref_a, ref_b = RemoteRef("node-a", 7), RemoteRef("node-a", 8)
    assert window.offer_live(mid(1), ALICE, buffer_has_room=True, remote=ref_a) is LivePush.PUSH
    assert window.offer_live(mid(2), ALICE, buffer_has_room=True, remote=ref_b) is LivePush.PUSH
    assert window.acked([mid(1)]).remote == ((ref_a, mid(1)),)
    end = window.ended()
    assert end.unacked_remote == (ref_b,)
    assert window.phase is Phase.ENDED
    assert offer(window, 3) is LivePush.REFUSE
    assert window.ended().undelivered == ()  # a second end finds nothing


def test_a_stored_notice_from_another_node_makes_the_ack_delete() -> None:
    window = open_window()
    window.offer_live(mid(1), ALICE, buffer_has_room=True, remote=RemoteRef("n", 1))
    window.stored([mid(1), mid(2)])  # 2 is not in flight here: nothing to mark
    assert window.acked([mid(1)]).delete == (mid(1),)


def test_a_late_ack_of_a_remote_delivery_deletes_here_too() -> None:
    """The origin may have stored it when its ack timeout ran out and been killed before it
    could delete it: the node that took the ack deletes the stored copy itself."""
    clock = FakeClock()
    window = DeliveryWindow(4, clock, remote_late_s=1.0)
    window.opened()
    window.offer_live(mid(1), ALICE, buffer_has_room=True, remote=RemoteRef("n", 1))
    window.offer_live(mid(2), ALICE, buffer_has_room=True, remote=RemoteRef("n", 2))
    offer(window, 3)  # a local live push: its sender here decides about storing
    clock.now += 0.5
    early = window.acked([mid(1)])
    assert early.delete == ()  # in time: the origin has not stored it
    assert early.remote == ((RemoteRef("n", 1), mid(1)),)
    clock.now += 0.5
    late = window.acked([mid(2), mid(3)])
    assert late.delete == (mid(2),)  # the local one is the sender's to delete, as before
    assert late.remote == ((RemoteRef("n", 2), mid(2)),)


def test_remote_acks_never_delete_without_a_late_bound() -> None:
    clock = FakeClock()
    window = open_window(clock=clock)
    window.offer_live(mid(1), ALICE, buffer_has_room=True, remote=RemoteRef("n", 1))
    clock.now += 3600
    assert window.acked([mid(1)]).delete == ()


def test_the_origin_of_an_in_flight_id_is_known_for_conflict_checks() -> None:
    window = open_window()
    offer(window, 1)
    assert window.origin_of(mid(1)) == ALICE
    assert window.origin_of(mid(2)) is None


def test_the_rules_import_no_io() -> None:
    """The delivery package stays pure: no event loop, no sockets, no store."""
    import ast
    from pathlib import Path

    import relay.delivery

    package = Path(relay.delivery.__file__).parent
    imported: set[str] = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                imported.add(node.module)
    assert "relay.delivery.window" in imported  # the walk saw the package's own imports
    forbidden = ("asyncio", "websockets", "storage", "asyncpg", "redis", "sqlite3")
    assert not {m for m in imported if m.split(".")[0] in forbidden}


def test_a_sends_outcome_per_device() -> None:
    """Acked in time: delivered; else stored (late), except online messages: dropped."""
    from relay.delivery.outcome import Settled, settle, store_unpushed

    assert settle(acked=True, online=False) is Settled.DELIVERED
    assert settle(acked=True, online=True) is Settled.DELIVERED
    assert settle(acked=False, online=False) is Settled.LATE
    assert settle(acked=False, online=True) is Settled.DROPPED
    assert store_unpushed(online=False) and not store_unpushed(online=True)


def test_oldest_delivery_ages_from_its_push_until_its_ack() -> None:
    clock = FakeClock()
    window = open_window(clock=clock)
    assert window.oldest_pushed_at() is None and not window.overdue(5.0)
    offer(window, 1)
    clock.now += 3.0
    pushed, _ = pump(window, [(1, mid(2))])
    assert pushed == [mid(2)]
    assert window.oldest_pushed_at() == 100.0
    clock.now += 2.0  # the live push has waited 5 s, the stored one 2 s
    assert window.overdue(5.0) and not window.overdue(5.5)
    window.acked([mid(1)])
    assert window.oldest_pushed_at() == 103.0 and not window.overdue(5.0)
    window.stored([mid(2)])  # marked durable: its age does not restart
    clock.now += 3.0
    assert window.overdue(5.0)
    window.acked([mid(2)])
    assert window.oldest_pushed_at() is None and not window.overdue(0.0)


def test_no_age_after_the_connection_ended() -> None:
    clock = FakeClock()
    window = open_window(clock=clock)
    offer(window, 1)
    window.ended()
    clock.now += 60.0
    assert not window.overdue(5.0)
