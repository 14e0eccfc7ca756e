"""relay-chat in pseudo-terminals against a live relay: what a person at the keyboard sees.

Two people chat by contact name; a half-typed line survives an incoming
message; a peer offline and back gets what was written; an unreachable relay
is said at once and typed lines wait, pending, until it starts; a changed
identity key is a visible warning with the safety number to compare; mistakes
on the command line are one line and exit status 2.
"""

from __future__ import annotations

import re
import secrets
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.support import RelayProcess, stop_relays

from protocol.client import LocalStore
from protocol.client.state import ClientState

from .terminal import PASSPHRASE, ChatTerminal, add_contact, register, run_chat

SAFETY = r"((?:\d{5} ){11}\d{5})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    """The chat is a front end of the SDK: the embedded store is enough. A fixed port, so a
    stopped relay comes back at the URL the chats know."""
    r = RelayProcess(tmp_path / "relay", {"port": _free_port()}).start()
    yield r
    ChatTerminal.kill_all()
    problems = stop_relays([r])
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def _two_people(relay: RelayProcess, tmp_path: Path) -> tuple[Path, str, Path, str]:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice_id, bob_id = register(relay.url, alice), register(relay.url, bob)
    add_contact(relay.url, alice, "bob", bob_id)
    add_contact(relay.url, bob, "alice", alice_id)
    return alice, alice_id, bob, bob_id


def test_two_people_chat_by_name_and_a_half_typed_line_survives(
    relay: RelayProcess, tmp_path: Path
) -> None:
    alice_store, _, bob_store, bob_id = _two_people(relay, tmp_path)
    alice = ChatTerminal(relay.url, alice_store, "bob")
    alice.expect(f"chatting with bob \\({bob_id}\\)")
    alice.expect("connected to")
    bob = ChatTerminal(relay.url, bob_store, "alice")
    bob.expect("connected to")
    alice.expect(r"bob: connected to")  # the toolbar names the peer and the state

    alice.line("hello bob")
    bob.expect(r"\] alice: hello bob\r")
    alice.expect(r"\] you: hello bob \(delivered\)")

    bob.type("half a li")
    bob.expect("half a li")
    alice.line("a message arrives meanwhile")
    bob.expect(r"\] alice: a message arrives meanwhile\r")
    bob.expect(r"you> half a li")  # redrawn under the message, not overwritten
    bob.line("ne, finished")
    alice.expect(r"\] bob: half a line, finished\r")

    alice.line("/verify")
    ours = alice.expect(f"safety number with bob \\(device 1\\).*\r\n\\*\\*\\*   {SAFETY}")
    bob.line("/verify")
    theirs = bob.expect(f"safety number with alice \\(device 1\\).*\r\n\\*\\*\\*   {SAFETY}")
    assert ours.group(1) == theirs.group(1)
    assert alice.leave() == 0
    assert bob.leave() == 0


def test_a_peer_offline_then_back_gets_what_was_written(
    relay: RelayProcess, tmp_path: Path
) -> None:
    alice_store, _, bob_store, _ = _two_people(relay, tmp_path)
    alice = ChatTerminal(relay.url, alice_store, "bob")
    alice.expect("connected to")
    alice.line("first, while you are away")
    alice.expect(r"you: first, while you are away \(stored until they connect\)")
    alice.line("second")
    alice.expect(r"you: second \(stored until they connect\)")
    assert alice.leave() == 0

    bob = ChatTerminal(relay.url, bob_store, "alice")
    bob.expect(r"\] alice: first, while you are away\r")
    bob.expect(r"\] alice: second\r")
    assert bob.leave() == 0


def test_an_unreachable_relay_is_said_at_once_and_typed_lines_wait(
    relay: RelayProcess, tmp_path: Path
) -> None:
    alice_store, _, bob_store, _ = _two_people(relay, tmp_path)
    relay.stop()

    alice = ChatTerminal(relay.url, alice_store, "bob")
    alice.expect(f"cannot reach {re.escape(relay.url)}: connection refused; retrying in ")
    alice.expect("bob: offline: .*connection refused; next try in")  # the toolbar
    alice.line("written offline")
    alice.expect(r"\] you: written offline \(pending\)")
    alice.expect("1 pending")

    relay.start()  # same data, same port
    alice.expect(f"connected to {re.escape(relay.url)}")
    alice.expect(r"\] you: written offline \(stored until they connect\)")
    assert alice.leave() == 0

    done = run_chat(relay.url, bob_store, "chat", "alice")  # plain pipes: end of input
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\[\d\d:\d\d:\d\d\] alice: written offline$", done.stdout, re.M)


def test_a_message_never_answered_makes_the_exit_status_1(
    relay: RelayProcess, tmp_path: Path
) -> None:
    alice_store, _, _, _ = _two_people(relay, tmp_path)
    relay.stop()
    alice = ChatTerminal(relay.url, alice_store, "bob")
    alice.expect("cannot reach")
    alice.line("this one never leaves")
    alice.expect(r"you: this one never leaves \(pending\)")
    alice.ctrl_d()
    alice.expect(r"waiting up to \d+ s for 1 unanswered message")
    alice.expect(r"relay-chat: 1 message\(s\) not sent: 1 unanswered, still queued in the store")
    assert alice.wait_exit() == 1


def test_a_refused_message_makes_the_exit_status_1(relay: RelayProcess, tmp_path: Path) -> None:
    alice_store = tmp_path / "alice"
    register(relay.url, alice_store)
    nobody = str(uuid.uuid4())
    alice = ChatTerminal(relay.url, alice_store, nobody)
    alice.expect("connected to")
    alice.line("hello?")
    alice.expect(r"you: hello\? \(NOT SENT: the relay refused: unknown_user\)")
    alice.line("/quit")
    alice.expect(r"relay-chat: 1 message\(s\) not sent: 1 refused")
    assert alice.wait_exit() == 1


def _pretend_first_seen_key(store: Path, user: str, device: int) -> None:
    """Record another identity key for a peer's device, as if that key had been seen first
    (what a relay handing out a forged bundle leaves behind): the real one is then a change."""
    local = LocalStore.open(store, PASSPHRASE)
    try:
        state = ClientState(local, seen_capacity=2000)
        state.book[user][device].identity_key = secrets.token_bytes(32)
        state.save_book()
    finally:
        local.close()


def test_a_changed_identity_key_is_a_visible_warning(relay: RelayProcess, tmp_path: Path) -> None:
    alice_store, _, bob_store, bob_id = _two_people(relay, tmp_path)
    bob = ChatTerminal(relay.url, bob_store, "alice")
    bob.expect("connected to")
    alice = ChatTerminal(relay.url, alice_store, "bob")
    alice.expect("connected to")
    alice.line("hi")
    bob.expect(r"\] alice: hi\r")
    assert alice.leave() == 0

    _pretend_first_seen_key(alice_store, bob_id, 1)
    alice = ChatTerminal(relay.url, alice_store, "bob")
    alice.expect("connected to")
    bob.line("still me")
    alice.expect(r"\] bob: still me\r")  # the key is trusted anew once the message is handled
    warning = alice.expect(
        r"WARNING: the identity key of bob \(device 1\) changed\.[\s\S]*?"
        f"New safety number: {SAFETY}"
    )
    bob.line("/verify")
    theirs = bob.expect(f"safety number with alice \\(device 1\\).*\r\n\\*\\*\\*   {SAFETY}")
    assert warning.group(1) == theirs.group(1)  # the number to compare is the honest one
    assert alice.leave() == 0
    assert bob.leave() == 0


def test_mistakes_are_one_line_and_status_2(relay: RelayProcess, tmp_path: Path) -> None:
    alice_store = tmp_path / "alice"
    register(relay.url, alice_store)
    cases = [
        (tmp_path / "alcie", ("whoami",), f"no store at {tmp_path / 'alcie'}; run register first"),
        (tmp_path / "alcie", ("chat", "bob"), "no store at"),
        (alice_store, ("contacts", "add", "bob", "not-a-uuid"), "not a user id: 'not-a-uuid'"),
        (alice_store, ("contacts", "add", "two words", str(uuid.uuid4())), "not a contact name"),
        (alice_store, ("chat", "bbo"), "no contact named 'bbo', and it is not a user id"),
        (alice_store, ("link-ticket", "zz"), "not an identity key"),
    ]
    for store, args, message in cases:
        done = run_chat(relay.url, store, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("relay-chat: ") and message in done.stderr, done.stderr
    assert not (tmp_path / "alcie").exists()  # a mistyped store is not created

    wrong = run_chat(relay.url, alice_store, "whoami", passphrase="not the passphrase")
    assert (wrong.returncode, wrong.stderr) == (
        2,
        f"relay-chat: the passphrase does not open the store at {alice_store}\n",
    )


def test_version_is_the_package_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    done = run_chat("ws://127.0.0.1:1/v1/ws", tmp_path / "unused", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"relay-chat {version('relay')}\n"
