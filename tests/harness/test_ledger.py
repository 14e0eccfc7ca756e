"""The ledger's verdicts on redeliveries: which ones the relay is to blame for."""

from __future__ import annotations

from loadtest.ledger import Ledger


def _delivered_and_acked(ledger: Ledger, msg_id: bytes, *, confirmed: bool) -> None:
    entry = ledger.schedule(msg_id, 0.0)
    ledger.mark_sent(entry)
    ledger.answered(msg_id, True)
    ledger.delivered(msg_id)
    ledger.acked(msg_id)
    if confirmed:
        ledger.ack_confirmed(msg_id)


def test_a_redelivery_after_an_unconfirmed_ack_is_not_blamed_on_the_relay() -> None:
    ledger = Ledger()
    _delivered_and_acked(ledger, b"a", confirmed=False)
    ledger.delivered(b"a")
    counts = ledger.counts()
    assert (counts.duplicated, counts.delivered_after_ack) == (1, 1)
    assert counts.delivered_after_confirmed_ack == 0
    assert counts.retried_after_confirmed_ack == 0


def test_a_redelivery_after_a_confirmed_ack_of_a_message_sent_once_is() -> None:
    ledger = Ledger()
    _delivered_and_acked(ledger, b"a", confirmed=True)
    ledger.delivered(b"a")
    assert ledger.counts().delivered_after_confirmed_ack == 1


def test_a_retried_send_delivered_again_is_counted_apart() -> None:
    """A retry whose replay record was lost may be delivered again (the protocol allows it)."""
    ledger = Ledger()
    _delivered_and_acked(ledger, b"a", confirmed=True)
    ledger.mark_sent(ledger.entries[b"a"])  # written again on a new connection
    ledger.delivered(b"a")
    counts = ledger.counts()
    assert counts.delivered_after_confirmed_ack == 0
    assert counts.retried_after_confirmed_ack == 1
    assert counts.sent == 1  # a retry is not a second message
