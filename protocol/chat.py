"""relay-chat: a terminal chat between two people through a running relay.

    relay-chat --store alice register                    # prints alice's user id
    relay-chat --store bob register
    relay-chat --store alice contacts add bob BOB_USER_ID
    relay-chat --store alice chat bob                    # type lines; incoming ones are printed

Each store directory is one device (keys, sessions, unsent messages, contacts),
encrypted with the passphrase from the environment variable named by
--passphrase-env (RELAY_CHAT_PASSPHRASE by default), or asked for on a terminal.
Only `register` (and `identity`, the first step of linking) create a store. A
second device joins a user with `identity` (on the new device), `link-ticket
KEY` (on an existing one) and `link TICKET` (on the new one again).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import sys
from collections.abc import Sequence

from websockets.exceptions import InvalidURI, WebSocketException

from protocol.client import (
    Backoff,
    Client,
    ClientError,
    ClientOptions,
    LinkTicket,
    LocalStore,
    StoreLocked,
    WrongPassphrase,
    context_for,
)
from protocol.terminal.contacts import ContactError, Contacts
from protocol.terminal.conversation import Conversation
from protocol.terminal.screen import open_screen
from protocol.terminal.status import describe_error
from protocol.version import version_line

DEFAULT_URL = "ws://127.0.0.1:8765/v1/ws"
PASSPHRASE_ENV = "RELAY_CHAT_PASSPHRASE"
# Commands that may create the store; every other one needs an existing store.
CREATING_COMMANDS = frozenset({"register", "identity"})
# A person waits for the chat to come back: retries stay within ten seconds.
CHAT_OPTIONS = ClientOptions(backoff=Backoff(base=0.5, cap=10.0))
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in what was typed on the command line: one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="relay-chat",
        description="Chat through a relay, end-to-end encrypted, from a terminal.",
    )
    p.add_argument("--version", action="version", version=version_line("relay-chat"))
    p.add_argument(
        "--url",
        default=os.environ.get("RELAY_URL", DEFAULT_URL),
        help="the relay's WebSocket URL (default: $RELAY_URL or %(default)s)",
    )
    p.add_argument(
        "--ca-file",
        default=os.environ.get("RELAY_CA_FILE") or None,
        metavar="PATH",
        help="PEM CA bundle to verify a wss:// relay with (default: $RELAY_CA_FILE, "
        "else the system's CAs)",
    )
    p.add_argument("--store", required=True, help="directory of this device's encrypted store")
    p.add_argument(
        "--passphrase-env",
        default=PASSPHRASE_ENV,
        metavar="VAR",
        help="environment variable holding the store's passphrase (default: %(default)s)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="create a new user with this device")
    reg.add_argument("--token", help="registration token, if the relay requires one")
    sub.add_parser("whoami", help="print this device's user id and device number")
    sub.add_parser("identity", help="print this device's identity key (for link-ticket)")
    ticket = sub.add_parser("link-ticket", help="on an existing device: admit a new device")
    ticket.add_argument("identity_key", help="the new device's identity key (hex)")
    link = sub.add_parser("link", help="on a new device: join the user that issued TICKET")
    link.add_argument("ticket")
    chat = sub.add_parser("chat", help="chat with PEER: type lines, incoming ones are printed")
    chat.add_argument("peer", help="a contact's name, or a user id")
    contacts = sub.add_parser("contacts", help="names for user ids (kept in the store)")
    contact_commands = contacts.add_subparsers(dest="contacts_command", required=True)
    add = contact_commands.add_parser("add", help="add or rename a contact")
    add.add_argument("name", help="1 to 32 letters, digits or .'-_")
    add.add_argument("user_id", help="the contact's user id")
    contact_commands.add_parser("list", help="print the contacts")
    remove = contact_commands.add_parser("remove", help="forget a contact")
    remove.add_argument("name")
    return p


def _passphrase(var: str) -> str:
    value = os.environ.get(var)
    if value:
        return value
    if sys.stdin.isatty():
        return getpass.getpass("store passphrase: ")
    raise UsageError(f"set {var} to the store's passphrase")


def _show(text: str) -> None:
    print(text, flush=True)


def _contacts_command(args: argparse.Namespace, passphrase: str) -> int:
    store = LocalStore.open(args.store, passphrase)
    try:
        contacts = Contacts(store)
        if args.contacts_command == "add":
            contact = contacts.add(args.name, args.user_id)
            _show(f"{contact.name} = {contact.user}")
        elif args.contacts_command == "remove":
            _show(f"removed {contacts.remove(args.name).name}")
        else:
            for contact in contacts.all():
                _show(f"{contact.name}  {contact.user}")
    finally:
        store.close()
    return 0


def _identity_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise UsageError(
            f"not an identity key: {text[:80]!r} (`identity` prints one, in hex)"
        ) from None
    if not 16 <= len(key) <= 4096:
        raise UsageError(f"not an identity key: {len(key)} bytes")
    return key


def _ticket(text: str) -> LinkTicket:
    try:
        return LinkTicket.decode(text)
    except ValueError:
        raise UsageError(f"not a link ticket: {text[:80]!r} (`link-ticket` prints one)") from None


async def _run(args: argparse.Namespace) -> int:
    passphrase = _passphrase(args.passphrase_env)
    command = args.command
    if command == "contacts":
        return await asyncio.to_thread(_contacts_command, args, passphrase)
    conversation = Conversation(args.url) if command == "chat" else None
    async with Client.open(
        args.url,
        args.store,
        passphrase,
        on_message=None if conversation is None else conversation.on_message,
        on_identity_change=None if conversation is None else conversation.on_identity_change,
        options=CHAT_OPTIONS,
        ssl=context_for(args.url, args.ca_file),
        on_connection_change=None if conversation is None else conversation.on_connection_change,
    ) as client:
        if command == "identity":
            _show(client.identity_key.hex())
            return 0
        if command == "register":
            user = await client.register(token=args.token)
            _show(f"registered: user {user}, device {client.device}")
            return 0
        if command == "link":
            device = await client.register_linked(_ticket(args.ticket))
            _show(f"linked: user {client.user}, device {device}")
            return 0
        if not client.registered:
            raise UsageError("this store has no account yet: run `register` or `link` first")
        if command == "whoami":
            _show(f"user {client.user}, device {client.device}")
            return 0
        if command == "link-ticket":
            _show(client.link_device(_identity_key(args.identity_key)).encode())
            return 0
        assert conversation is not None
        # Nothing ran on the connection yet: a mistyped peer is one line, not a retry loop.
        contacts = Contacts(client.state.store)
        conversation.begin(client, contacts, contacts.resolve(args.peer))
        with open_screen("you> ", conversation.toolbar) as screen:
            return await conversation.run(screen)


def _check_store(args: argparse.Namespace) -> None:
    """A mistyped --store must not become a new, empty store."""
    if args.command not in CREATING_COMMANDS and not LocalStore.exists(args.store):
        raise UsageError(f"no store at {args.store}; run register first")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_store(args)
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except (UsageError, ContactError) as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except WrongPassphrase:
        _fail(f"the passphrase does not open the store at {args.store}")
        return EXIT_USAGE
    except InvalidURI:
        _fail(f"not a WebSocket URL: {args.url[:200]!r} (like {DEFAULT_URL})")
        return EXIT_USAGE
    except StoreLocked:
        _fail(f"the store at {args.store} is in use by another relay-chat")
        return 1
    except (OSError, WebSocketException) as exc:
        _fail(f"cannot reach {args.url}: {describe_error(exc)}")
        return 1
    except (ClientError, ValueError) as exc:
        _fail(str(exc))
        return 1


def _fail(text: str) -> None:
    print(f"relay-chat: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
