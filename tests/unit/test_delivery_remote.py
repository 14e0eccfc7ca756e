"""The delivery rules between nodes (docs/protocol.md, "Several nodes"), with a fake clock."""

from __future__ import annotations

from relay.delivery import Answer, OriginLedger, RecentAcks, RemoteDelivery
from tests.contract.support import FakeClock

DELIVERY = RemoteDelivery("node-b", "bob", 1, b"m" * 16)


def ledger(clock: FakeClock) -> OriginLedger:
    return OriginLedger(clock, ack_timeout_s=5.0, late_keep_s=60.0, first_ref=1000)


def test_an_ack_in_time_resolves_the_wait_once() -> None:
    origin = ledger(FakeClock())
    ref = origin.published(DELIVERY)
    assert ref == 1000
    assert origin.answered(ref, acked=True) == (Answer.RESOLVE, DELIVERY)
    assert origin.answered(ref, acked=True) == (Answer.IGNORE, None)
    origin.settled(ref, stored=False)
    assert len(origin) == 0


def test_a_publish_that_reached_nobody_resolves_as_not_acked() -> None:
    """The node died: store now, not after the ack timeout."""
    origin = ledger(FakeClock())
    ref = origin.published(DELIVERY)
    assert origin.answered(ref, acked=False) == (Answer.RESOLVE, DELIVERY)


def test_a_late_ack_deletes_the_stored_copy() -> None:
    origin = ledger(FakeClock())
    ref = origin.published(DELIVERY)
    origin.settled(ref, stored=True)  # the ack timeout elapsed: stored
    assert origin.answered(ref, acked=False) == (Answer.IGNORE, None)
    assert origin.answered(ref, acked=True) == (Answer.DELETE, DELIVERY)
    assert origin.answered(ref, acked=True) == (Answer.IGNORE, None)


def test_a_late_ack_deletes_even_after_a_refusal_resolved_the_wait() -> None:
    origin = ledger(FakeClock())
    ref = origin.published(DELIVERY)
    assert origin.answered(ref, acked=False)[0] is Answer.RESOLVE
    origin.settled(ref, stored=True)
    assert origin.answered(ref, acked=True) == (Answer.DELETE, DELIVERY)


def test_late_deliveries_are_forgotten_after_their_keep_time() -> None:
    clock = FakeClock()
    origin = ledger(clock)
    late, unsettled = origin.published(DELIVERY), origin.published(DELIVERY)
    origin.settled(late, stored=True)
    clock.advance(59.0)
    assert origin.expire() == []
    clock.advance(2.0)  # past late_keep_s for the late one, not past 5 + 60 for the other
    assert origin.expire() == [late]
    clock.advance(5.0)
    assert origin.expire() == [unsettled]
    assert origin.answered(late, acked=True) == (Answer.IGNORE, None)


def test_refs_of_requests_and_deliveries_never_repeat() -> None:
    origin = ledger(FakeClock())
    refs = {origin.next_ref(), origin.published(DELIVERY), origin.next_ref()}
    assert len(refs) == 3


def test_recent_acks_expire_and_are_bounded() -> None:
    clock = FakeClock()
    recent = RecentAcks(clock, keep_s=10.0, max_ids=3)
    recent.remember("bob", 1, [b"a", b"b"])
    clock.advance(6.0)
    recent.remember("bob", 1, [b"c", b"d", b"a"])  # `a` again: renewed, newest
    assert recent.latest("bob", 1) == (b"c", b"d", b"a")
    assert b"b" not in recent.of("bob", 1)
    clock.advance(6.0)
    recent.expire()
    assert recent.latest("bob", 1) == (b"c", b"d", b"a")
    clock.advance(5.0)
    recent.expire()
    assert recent.latest("bob", 1) == ()
    assert b"a" not in recent.of("bob", 2)
