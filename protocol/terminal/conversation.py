"""One chat on a terminal: what arrives, what is typed and what became of it, and trust.

Typed lines go through the SDK's persisted outbox, so they are queued while
the relay is unreachable: shown `(pending)` at once when offline (or after a
second without an answer), then again with the relay's answer (`delivered`,
`stored`) or `NOT SENT` with the reason. Leaving with messages that were
refused, or that got no answer, makes the command exit with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from protocol.client import (
    Client,
    ClientStopped,
    ConnectionChange,
    IdentityChange,
    IncomingMessage,
    SendReceipt,
)
from protocol.crypto.fingerprint import format_safety_number, safety_number
from protocol.terminal.contacts import Contact, Contacts
from protocol.terminal.screen import Screen
from protocol.terminal.status import ConnectionStatus, describe_error

__all__ = ["Conversation"]

MAX_LINE_BYTES = 4096
PENDING_AFTER_S = 1.0  # an unanswered line is shown as pending after this long
QUIT_WAIT_S = 10.0  # how long leaving waits for answers and for what the relay held

HELP = (
    "/verify  the safety number to compare with your contact\n"
    "/quit    leave (Ctrl-D too)\n"
    "/help    this list"
)


def _clock(ms: int | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(time.time() if ms is None else ms / 1000))


def printable(data: bytes | str) -> str:
    """What a peer sent, unable to move the cursor or change the terminal."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return "".join(c if c.isprintable() else "?" for c in text)


def receipt_words(receipt: SendReceipt) -> str:
    delivered, stored = len(receipt.delivered), len(receipt.stored)
    if delivered and not stored:
        return "delivered"
    if stored and not delivered:
        return "stored until they connect"
    if delivered and stored:
        return f"delivered to {delivered} device(s), stored for {stored}"
    return "sent"


@dataclass(slots=True)
class TypedLine:
    """A typed line on its way: unanswered while `task` runs."""

    text: str
    task: asyncio.Task[SendReceipt] | None = None
    pending_shown: bool = False
    failed: bool = False
    at: str = field(default_factory=_clock)


class Conversation:
    """The SDK's callbacks and the read loop of one chat with `peer`."""

    def __init__(self, url: str) -> None:
        self.status = ConnectionStatus(url)
        self.client: Client | None = None
        self.screen: Screen | None = None
        self._contacts: Contacts | None = None
        self._peer: Contact | None = None
        self._outgoing: list[TypedLine] = []

    def begin(self, client: Client, contacts: Contacts, peer: Contact) -> None:
        """Before the first await of the open client, so no callback comes earlier."""
        self.client, self._contacts, self._peer = client, contacts, peer

    @property
    def contacts(self) -> Contacts:
        assert self._contacts is not None, "begin() first"
        return self._contacts

    @property
    def peer(self) -> Contact:
        assert self._peer is not None, "begin() first"
        return self._peer

    # --- output ------------------------------------------------------------------

    def show(self, text: str) -> None:
        for line in text.splitlines():
            if self.screen is not None:
                self.screen.show(line)
            else:
                print(line, flush=True)

    def toolbar(self) -> str:
        waiting = sum(1 for o in self._outgoing if o.task is not None and not o.task.done())
        suffix = f" | {waiting} pending" if waiting else ""
        return f"{self.peer.name}: {self.status.text()}{suffix}"

    def _who(self, user: str, device: int) -> str:
        name = self.contacts.name_of(user) or user
        return name if device == 1 else f"{name} (device {device})"

    # --- the SDK's callbacks -------------------------------------------------------

    async def on_message(self, m: IncomingMessage) -> None:
        when = _clock(m.server_ts)
        text = printable(m.plaintext)
        me = None if self.client is None else self.client.user
        if m.sent_to is not None:
            to = self.contacts.name_of(m.sent_to) or m.sent_to
            self.show(f"[{when}] you (device {m.sender_device}) -> {to}: {text}")
        elif m.sender_user == me:
            self.show(f"[{when}] you (device {m.sender_device}): {text}")
        else:
            self.show(f"[{when}] {self._who(m.sender_user, m.sender_device)}: {text}")

    def on_identity_change(self, change: IdentityChange) -> None:
        if self.client is not None and change.user == self.client.user:
            who = f"your own device {change.device}"
        else:
            who = f"{self.contacts.name_of(change.user) or change.user} (device {change.device})"
        self.show(
            f"*** WARNING: the identity key of {who} changed.\n"
            "*** If they did not set up this device again, someone may be reading along.\n"
            f"*** New safety number: {self._safety(change.user, change.new_key)}\n"
            "*** Compare it with them in person or on a call (/verify shows it again)."
        )

    def on_connection_change(self, change: ConnectionChange) -> None:
        was_connected, had_reason = self.status.connected, self.status.reason
        self.status.update(change)
        # A line on every change of state or reason; the toolbar follows each retry.
        if change.connected != was_connected or self.status.reason != had_reason:
            self.show(self.status.line(change))
        if self.screen is not None:
            self.screen.refresh()

    # --- trust -------------------------------------------------------------------

    def _safety(self, user: str, key: bytes) -> str:
        assert self.client is not None
        me = self.client
        number = safety_number(me.identity_key, me.user.encode(), key, user.encode())
        return format_safety_number(number)

    def verify(self) -> None:
        assert self.client is not None
        devices = self.client.peers.devices(self.peer.user)
        if not devices:
            self.show(
                f"*** no identity key of {self.peer.name} is known yet: "
                "it comes with the first message either of you sends"
            )
            return
        for device, known in sorted(devices.items()):
            self.show(
                f"*** safety number with {self.peer.name} (device {device}), "
                "the same on both sides when no one is in between:\n"
                f"***   {self._safety(self.peer.user, known.identity_key)}"
            )

    # --- sending -------------------------------------------------------------------

    def send(self, text: str) -> None:
        assert self.client is not None
        out = TypedLine(printable(text))
        self._outgoing.append(out)
        data = text.encode()
        if len(data) > MAX_LINE_BYTES:
            out.failed = True
            self.show(f"[{out.at}] you: {out.text} (NOT SENT: at most {MAX_LINE_BYTES} bytes)")
            return
        out.task = asyncio.create_task(self.client.send(self.peer.user, data))
        out.task.add_done_callback(lambda _: self._answered(out))
        if self.status.connected:
            asyncio.get_running_loop().call_later(PENDING_AFTER_S, self._show_pending, out)
        else:
            self._show_pending(out)
        if self.screen is not None:
            self.screen.refresh()

    def _show_pending(self, out: TypedLine) -> None:
        if out.task is not None and not out.task.done() and not out.pending_shown:
            out.pending_shown = True
            self.show(f"[{out.at}] you: {out.text} (pending)")

    def _answered(self, out: TypedLine) -> None:
        assert out.task is not None
        if out.task.cancelled():
            return
        exc = out.task.exception()
        if isinstance(exc, ClientStopped):
            return  # still in the outbox: it goes out the next time the store connects
        if exc is not None:
            out.failed = True
            self.show(f"[{_clock()}] you: {out.text} (NOT SENT: {describe_error(exc)})")
        else:
            self.show(f"[{_clock()}] you: {out.text} ({receipt_words(out.task.result())})")
        if self.screen is not None:
            self.screen.refresh()

    # --- the loop --------------------------------------------------------------------

    async def run(self, screen: Screen) -> int:
        """Read lines until /quit or the end of input; the exit status."""
        assert self.client is not None, "begin() first"
        client, self.screen = self.client, screen
        peer = self.peer
        named = peer.name if peer.name == peer.user else f"{peer.name} ({peer.user})"
        self.show(
            f"chatting with {named} as {client.user} (device {client.device}); "
            "/verify shows the safety number, /quit or Ctrl-D leaves"
        )
        stopped = asyncio.ensure_future(client.stopped())
        try:
            while True:
                next_line = asyncio.ensure_future(screen.read_line())
                await asyncio.wait({next_line, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if stopped.done():
                    next_line.cancel()
                    self.show(f"*** {stopped.result()}")
                    return 1
                line = next_line.result()
                if line is None or line.strip() == "/quit":
                    break
                self._command_or_send(line)
        finally:
            stopped.cancel()
        return await self._leave(client)

    def _command_or_send(self, line: str) -> None:
        command = line.strip()
        if not command:
            return
        if command == "/verify":
            self.verify()
        elif command == "/help":
            self.show(HELP)
        elif command.startswith("/") and not command.startswith("//"):
            self.show(f"*** unknown command {printable(command[:40])}; /help lists them")
        else:
            self.send(line[1:] if command.startswith("//") else line)

    async def _leave(self, client: Client) -> int:
        """Give answers and held messages a bounded time; count what did not go out."""
        waiting = {o.task for o in self._outgoing if o.task is not None and not o.task.done()}
        if waiting and not self.status.stopped:
            self.show(
                f"*** waiting up to {QUIT_WAIT_S:.0f} s for {len(waiting)} unanswered "
                "message(s) (Ctrl-C leaves now)"
            )
            await asyncio.wait(waiting, timeout=QUIT_WAIT_S)
        reachable = self.status.connected or self.status.retry_at is None
        if reachable and not self.status.stopped:
            # What the relay held for us is shown before leaving.
            with contextlib.suppress(TimeoutError, ClientStopped):
                async with asyncio.timeout(QUIT_WAIT_S):
                    await client.caught_up()
        refused = sum(1 for o in self._outgoing if o.failed)
        queued = sum(
            1
            for o in self._outgoing
            if o.task is not None
            and (not o.task.done() or isinstance(o.task.exception(), ClientStopped))
        )
        if refused + queued == 0:
            return 0
        parts = [f"{refused} refused"] if refused else []
        if queued:
            parts.append(f"{queued} unanswered, still queued in the store to go out next time")
        self.show(f"relay-chat: {refused + queued} message(s) not sent: {', '.join(parts)}")
        return 1
