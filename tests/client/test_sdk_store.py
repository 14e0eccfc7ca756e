"""The local store, the content header, link tickets, backoff: the SDK's parts without a relay."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from protocol.client import Backoff, LinkTicket, LocalStore, StoreLocked, WrongPassphrase
from protocol.client.content import Content, ContentError, Kind
from protocol.client.errors import StoreError
from protocol.client.state import ClientState, OutboxEntry, PreparedCopy
from protocol.client.store import KdfLimits

from .scan import scan_directory
from .sdk import PASSPHRASE, distinctive

CHEAP = KdfLimits.minimal()


def test_records_round_trip_and_need_the_passphrase(tmp_path: Path) -> None:
    secret = distinctive("record")
    store = LocalStore.create(tmp_path / "s", PASSPHRASE, limits=CHEAP)
    store.write("session/someone/1", secret)
    assert store.read("session/someone/1") == secret
    assert store.read("never-written") is None
    store.close()

    with pytest.raises(WrongPassphrase):
        LocalStore.open(tmp_path / "s", "not the passphrase")
    again = LocalStore.open(tmp_path / "s", PASSPHRASE)
    assert again.read("session/someone/1") == secret
    again.delete("session/someone/1")
    assert again.read("session/someone/1") is None
    again.close()


def test_nothing_readable_on_disk(tmp_path: Path) -> None:
    secret, name = distinctive("at rest"), f"session/{uuid.uuid4()}/7"
    store = LocalStore.create(tmp_path / "s", PASSPHRASE, limits=CHEAP)
    store.write(name, secret)
    store.close()
    findings, files = scan_directory(tmp_path / "s", [secret, name.encode()])
    assert files >= 3 and findings == []
    assert not list((tmp_path / "s").glob("*.tmp"))
    # The same scan finds the secret once it is written in clear (the scan can fail).
    (tmp_path / "s" / "leak.txt").write_bytes(b"..." + secret)
    findings, _ = scan_directory(tmp_path / "s", [secret])
    assert [f.where for f in findings] == ["file leak.txt"]


def test_records_cannot_be_swapped(tmp_path: Path) -> None:
    store = LocalStore.create(tmp_path / "s", PASSPHRASE, limits=CHEAP)
    store.write("a", b"first")
    store.write("b", b"second")
    a, b = store._file("a"), store._file("b")
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    with pytest.raises(StoreError, match="does not authenticate"):
        store.read("a")
    store.close()


def test_one_process_at_a_time_and_no_second_create(tmp_path: Path) -> None:
    store = LocalStore.create(tmp_path / "s", PASSPHRASE, limits=CHEAP)
    with pytest.raises(StoreLocked):
        LocalStore.open(tmp_path / "s", PASSPHRASE)
    store.close()
    with pytest.raises(StoreError, match="already holds a store"):
        LocalStore.create(tmp_path / "s", PASSPHRASE, limits=CHEAP)
    with pytest.raises(StoreError, match="empty"):
        LocalStore.create(tmp_path / "t", "", limits=CHEAP)
    with pytest.raises(StoreError, match="no store"):
        LocalStore.open(tmp_path / "nothing", PASSPHRASE)


def test_state_persists_outbox_and_a_bounded_seen_set(tmp_path: Path) -> None:
    store = LocalStore.create(tmp_path / "s", PASSPHRASE, limits=CHEAP)
    state = ClientState(store, seen_capacity=3)
    keys = [bytes([i]) * 16 for i in range(5)]
    for key in keys:
        state.mark_seen(key)
    state.save_seen()
    entry = state.add_outbox(
        lambda local_id: OutboxEntry(
            local_id=local_id,
            to=str(uuid.uuid4()),
            id=uuid.uuid4().bytes,
            nonce=bytes(24),
            kind=Kind.SENT_COPY,
            body=b"hi",
            sent_to=str(uuid.uuid4()),
            prepared={2: PreparedCopy(2, 77, 1, b"ciphertext")},
        )
    )
    store.close()
    reopened = ClientState(LocalStore.open(tmp_path / "s", PASSPHRASE), seen_capacity=3)
    assert list(reopened.seen) == keys[2:]
    assert reopened.outbox == [entry] and reopened.next_local_id == entry.local_id + 1
    reopened.store.close()


def test_content_header_round_trips_and_rejects_garbage() -> None:
    to = str(uuid.uuid4())
    for content in (
        Content(Kind.MESSAGE, 1, b"hello"),
        Content(Kind.MESSAGE, 2**64 - 1, b""),
        Content(Kind.SENT_COPY, 9, b"copy", to),
    ):
        assert Content.decode(content.encode()) == content
    for bad in (b"", b"\x01\x01", b"\x02\x01" + bytes(8), b"\x01\x07" + bytes(8)):
        with pytest.raises(ContentError):
            Content.decode(bad)
    with pytest.raises(ContentError):
        Content.decode(Content(Kind.SENT_COPY, 1, b"", to).encode()[:20])


def test_link_ticket_text_form() -> None:
    ticket = LinkTicket(str(uuid.uuid4()), 3, bytes(range(64)))
    assert LinkTicket.decode(ticket.encode()) == ticket
    for bad in ("", "a.b.c", f"{ticket.user}.1.AAAA", ticket.encode() + ".x"):
        with pytest.raises(ValueError):
            LinkTicket.decode(bad)


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(7))
    for attempt in range(10):
        ceiling = min(8.0, 0.5 * 2**attempt)
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2
    assert backoff.delay(10_000) <= 8.0
