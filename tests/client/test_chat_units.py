"""relay-chat's pieces without a relay: contacts in a real encrypted store, status words."""

from __future__ import annotations

import socket
import ssl
import uuid
from pathlib import Path

import pytest

from protocol.client import (
    ConnectionChange,
    ConnectionLost,
    KdfLimits,
    LocalStore,
    StoreError,
)
from protocol.terminal.contacts import MAX_NAME_CHARS, RECORD, ContactError, Contacts
from protocol.terminal.status import ConnectionStatus, describe_error, seconds

PASSPHRASE = "contacts"


def _store(path: Path) -> LocalStore:
    if LocalStore.exists(path):
        return LocalStore.open(path, PASSPHRASE)
    return LocalStore.create(path, PASSPHRASE, limits=KdfLimits.minimal())


def test_contacts_live_in_the_encrypted_store(tmp_path: Path) -> None:
    bob = str(uuid.uuid4())
    store = _store(tmp_path / "s")
    Contacts(store).add("Bob", bob.upper())  # any spelling of the id; kept canonical
    store.close()
    assert not any(bob in p.read_bytes().decode("latin-1") for p in (tmp_path / "s").iterdir())

    store = _store(tmp_path / "s")
    contacts = Contacts(store)
    found = contacts.find("bob")  # names match whatever the case
    assert found is not None and (found.name, found.user) == ("Bob", bob)
    assert contacts.resolve("BOB").user == bob
    assert contacts.resolve(bob).name == "Bob"  # a user id of a contact reads as the name
    assert contacts.name_of(bob) == "Bob"
    assert contacts.remove("bob").name == "Bob"
    assert contacts.all() == []
    with pytest.raises(ContactError, match="no contact named 'bob'"):
        contacts.remove("bob")
    store.close()


@pytest.mark.parametrize(
    "name",
    ["", "two words", "x" * (MAX_NAME_CHARS + 1), "-dash", "bell\a", "a/b", str(uuid.uuid4())],
)
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    store = _store(tmp_path / "s")
    try:
        with pytest.raises(ContactError):
            Contacts(store).add(name, str(uuid.uuid4()))
    finally:
        store.close()


def test_a_bad_user_id_or_unknown_name_is_one_clear_error(tmp_path: Path) -> None:
    store = _store(tmp_path / "s")
    try:
        contacts = Contacts(store)
        with pytest.raises(ContactError, match=r"^not a user id: 'nope' \(a user id"):
            contacts.add("bob", "nope")
        with pytest.raises(ContactError, match="no contact named 'bbo', and it is not a user id"):
            contacts.resolve("bbo")
    finally:
        store.close()


def test_a_damaged_contacts_record_is_a_store_error(tmp_path: Path) -> None:
    store = _store(tmp_path / "s")
    try:
        store.write(RECORD, b'{"bob": "not a uuid"}')
        with pytest.raises(StoreError, match="contacts record is damaged"):
            Contacts(store)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), "connection refused"),
        (OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 1)"), "refused"),
        (socket.gaierror(-2, "Name or service not known"), "unknown host"),
        (TimeoutError(), "no answer in time"),
        (ConnectionLost(1006, ""), "connection lost"),
        (ssl.SSLCertVerificationError(1, "x"), "TLS failed"),
        (None, "disconnected"),
    ],
)
def test_errors_read_as_short_reasons(error: BaseException | None, words: str) -> None:
    assert words in describe_error(error)


def test_status_lines_and_toolbar() -> None:
    status = ConnectionStatus("ws://relay.example/v1/ws")
    assert status.text() == "connecting to ws://relay.example/v1/ws"
    refused = ConnectionChange(False, ConnectionRefusedError(111, "x"), 2.2)
    status.update(refused)
    assert status.line(refused) == (
        "*** cannot reach ws://relay.example/v1/ws: connection refused; retrying in 2 s"
    )
    assert status.text().startswith("offline: ws://relay.example/v1/ws: connection refused;")
    up = ConnectionChange(True)
    status.update(up)
    assert (status.line(up), status.text()) == (
        "*** connected to ws://relay.example/v1/ws",
        "connected to ws://relay.example/v1/ws",
    )
    assert (seconds(0.25), seconds(9.6)) == ("0.2 s", "10 s")
