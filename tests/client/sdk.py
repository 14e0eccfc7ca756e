"""Helpers of the SDK tests: clients with cheap store keys, and an inbox that records."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from protocol.client import (
    Backoff,
    Client,
    ClientOptions,
    IdentityChange,
    IncomingMessage,
    KdfLimits,
    MessageHandler,
)
from protocol.signatures import KeyScheme

PASSPHRASE = "correct horse battery staple"
WAIT = 20.0  # seconds: the bound of every wait in these tests

FAST = ClientOptions(
    kdf=KdfLimits.minimal(),
    backoff=Backoff(base=0.05, cap=0.5),
    prekey_batch=20,
    reorder_timeout=2.0,
    request_timeout=10.0,
)


def distinctive(label: str) -> bytes:
    """A plaintext no store could hold by chance: a label and 16 random bytes, hex."""
    return f"{label}:{secrets.token_hex(16)}".encode()


@dataclass
class Inbox:
    """Records what the application is handed, in order; waits on a condition, never sleeps."""

    messages: list[IncomingMessage] = field(default_factory=list)
    identity_changes: list[IdentityChange] = field(default_factory=list)
    _cond: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handler(self, message: IncomingMessage) -> None:
        async with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def on_identity_change(self, change: IdentityChange) -> None:
        self.identity_changes.append(change)

    async def wait_for(self, count: int, within: float = WAIT) -> list[IncomingMessage]:
        """Wait until at least `count` messages arrived; all of them."""
        async with asyncio.timeout(within), self._cond:
            await self._cond.wait_for(lambda: len(self.messages) >= count)
        return list(self.messages)

    def texts(self, sender: str | None = None, device: int | None = None) -> list[bytes]:
        return [
            m.plaintext
            for m in self.messages
            if (sender is None or m.sender_user == sender)
            and (device is None or m.sender_device == device)
        ]


@contextlib.asynccontextmanager
async def device(
    url: str,
    store: Path,
    inbox: Inbox | None = None,
    *,
    scheme: KeyScheme = KeyScheme.ED25519,
    options: ClientOptions = FAST,
    on_message: MessageHandler | None = None,
) -> AsyncIterator[Client]:
    """An SDK client on `store` (created when new), recording into `inbox`
    (or handing messages to `on_message` instead)."""
    inbox = inbox or Inbox()
    async with Client.open(
        url,
        store,
        PASSPHRASE,
        on_message=on_message or inbox.handler,
        on_identity_change=inbox.on_identity_change,
        scheme=scheme,
        options=options,
    ) as client:
        yield client
