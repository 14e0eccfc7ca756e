"""relay-chat: a terminal chat between two people through a running relay.

    relay-chat --store alice register           # prints alice's user id
    relay-chat --store bob register
    relay-chat --store alice chat BOB_USER_ID   # type lines; incoming ones are printed

Each store directory is one device (keys, sessions, unsent messages), encrypted
with the passphrase from the environment variable named by --passphrase-env
(RELAY_CHAT_PASSPHRASE by default), or asked for on a terminal. A second
device joins a user with `identity` (on the new device), `link-ticket KEY`
(on an existing one) and `link TICKET` (on the new one again).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence

from websockets.exceptions import WebSocketException

from protocol.client import (
    Client,
    ClientError,
    IdentityChange,
    IncomingMessage,
    LinkTicket,
    context_for,
)

DEFAULT_URL = "ws://127.0.0.1:8765/v1/ws"
PASSPHRASE_ENV = "RELAY_CHAT_PASSPHRASE"
MAX_LINE_BYTES = 4096


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="relay-chat",
        description="Chat through a relay, end-to-end encrypted, from a terminal.",
    )
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
    chat = sub.add_parser("chat", help="send stdin's lines to PEER; print incoming messages")
    chat.add_argument("peer", help="the other person's user id")
    return p


def _passphrase(var: str) -> str:
    value = os.environ.get(var)
    if value:
        return value
    if sys.stdin.isatty():
        return getpass.getpass("store passphrase: ")
    raise SystemExit(f"relay-chat: set {var} to the store's passphrase")


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


def _show(text: str) -> None:
    print(text, flush=True)


def _printable(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else "?" for c in text)


class Chat:
    """Prints what arrives; knows who "you" are so copies from other devices read well."""

    def __init__(self) -> None:
        self.me: str | None = None

    async def on_message(self, m: IncomingMessage) -> None:
        when = _clock(m.server_ts)
        text = _printable(m.plaintext)
        if m.sent_to is not None:
            _show(f"[{when}] you (device {m.sender_device}) -> {m.sent_to}: {text}")
        elif m.sender_user == self.me:
            _show(f"[{when}] you (device {m.sender_device}): {text}")
        else:
            _show(f"[{when}] {m.sender_user} (device {m.sender_device}): {text}")

    def on_identity_change(self, change: IdentityChange) -> None:
        _show(
            f"*** the identity key of {change.user} device {change.device} changed: "
            "check with them that they set up a new device"
        )


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines of stdin from a daemon thread (None at the end): works for ttys, pipes and files."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return queue


async def _send_line(client: Client, peer: str, text: str) -> None:
    if not text:
        return
    data = text.encode()
    if len(data) > MAX_LINE_BYTES:
        _show(f"*** not sent: a line is at most {MAX_LINE_BYTES} bytes")
        return
    try:
        await client.send(peer, data)
    except ClientError as exc:
        _show(f"*** not sent: {exc}")


async def _chat(client: Client, chat: Chat, peer: str) -> int:
    chat.me = client.user
    await client.wait_connected()
    _show(f"chatting with {peer} as {client.user} (device {client.device}); /quit or EOF ends")
    lines = _stdin_lines(asyncio.get_running_loop())
    stopped = asyncio.ensure_future(client.stopped())
    try:
        while True:
            next_line = asyncio.ensure_future(lines.get())
            await asyncio.wait({next_line, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stopped.done():
                next_line.cancel()
                _show(f"*** {stopped.result()}")
                return 1
            line = next_line.result()
            if line is None or line.rstrip("\n") == "/quit":
                break
            await _send_line(client, peer, line.rstrip("\n"))
    finally:
        stopped.cancel()
    # Before leaving: what was typed is answered, what the relay held for us is shown.
    await client.flush()
    await client.caught_up()
    return 0


async def _run(args: argparse.Namespace) -> int:
    chat = Chat()
    passphrase = _passphrase(args.passphrase_env)
    async with Client.open(
        args.url,
        args.store,
        passphrase,
        on_message=chat.on_message,
        on_identity_change=chat.on_identity_change,
        ssl=context_for(args.url, args.ca_file),
    ) as client:
        command = args.command
        if command == "identity":
            _show(client.identity_key.hex())
            return 0
        if command == "register":
            user = await client.register(token=args.token)
            _show(f"registered: user {user}, device {client.device}")
            return 0
        if command == "link":
            device = await client.register_linked(LinkTicket.decode(args.ticket))
            _show(f"linked: user {client.user}, device {device}")
            return 0
        if not client.registered:
            _show("relay-chat: this store has no account yet: run `register` or `link` first")
            return 1
        if command == "whoami":
            _show(f"user {client.user}, device {client.device}")
            return 0
        if command == "link-ticket":
            _show(client.link_device(bytes.fromhex(args.identity_key)).encode())
            return 0
        return await _chat(client, chat, str(uuid.UUID(args.peer)))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except (ClientError, OSError, ValueError, WebSocketException) as exc:
        print(f"relay-chat: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
