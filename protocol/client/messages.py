"""The values the client hands to the application, and its options."""

from __future__ import annotations

import base64
import random
import uuid
from dataclasses import dataclass, field

from protocol.client.store import KdfLimits
from protocol.codec import WireFormat

__all__ = [
    "Backoff",
    "ClientOptions",
    "ClientStats",
    "ConnectionChange",
    "DeliveryReceipt",
    "IncomingMessage",
    "LinkTicket",
    "SendReceipt",
]


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One message, decrypted, handed to the application exactly once and in order per sender.

    `sent_to` is set on a copy of a message that this user sent from another
    of its own devices: it names the user the original went to.
    """

    sender_user: str
    sender_device: int
    id: bytes
    plaintext: bytes
    ts: int  # the sender's clock, ms
    server_ts: int  # when the relay accepted it, ms
    sent_to: str | None = None


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """The relay's `ok`: every listed device acknowledged the message or has it stored."""

    id: bytes
    delivered: tuple[int, ...]
    stored: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """A message sent with `receipt=True` and stored by the relay for a device was
    acknowledged by that device (`user`, `device`) at the relay's time `server_ts` (ms).
    Only for stored copies: a device that acknowledged at once is in `SendReceipt.delivered`.
    It says the message left the relay, not that anyone read it."""

    message_id: bytes
    user: str
    device: int
    server_ts: int


@dataclass(frozen=True, slots=True)
class LinkTicket:
    """An existing device's consent to add a new device (spec §3 link), carried out of band."""

    user: str
    device: int
    signature: bytes

    def encode(self) -> str:
        sig = base64.urlsafe_b64encode(self.signature).rstrip(b"=").decode("ascii")
        return f"{self.user}.{self.device}.{sig}"

    @classmethod
    def decode(cls, text: str) -> LinkTicket:
        try:
            user, device, sig = text.strip().split(".")
            ticket = cls(
                str(uuid.UUID(user)),
                int(device),
                base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)),
            )
        except ValueError as exc:
            raise ValueError("not a link ticket") from exc
        if len(ticket.signature) != 64:
            raise ValueError("not a link ticket")
        return ticket


@dataclass(frozen=True, slots=True)
class ConnectionChange:
    """The device got connected, or is not: why (`error`) and when it tries again (`retry_in`).

    `retry_in` is None when the client stopped for good.
    """

    connected: bool
    error: BaseException | None = None
    retry_in: float | None = None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: a random wait up to min(cap, base * 2**attempt)."""

    base: float = 0.25
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, min(self.cap, self.base * 2 ** min(attempt, 32)))


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Every tunable of the client; the defaults suit a messenger on a phone or a laptop."""

    fmt: WireFormat = WireFormat.MSGPACK
    kdf: KdfLimits = field(default_factory=KdfLimits)
    backoff: Backoff = field(default_factory=Backoff)
    open_timeout: float = 10.0
    request_timeout: float = 30.0
    prekey_batch: int = 100  # one-time pre-keys of each kind kept on the relay
    prekey_low_water: int = 10  # top up at connect when fewer are left
    seen_capacity: int = 2000  # ids remembered to drop duplicates
    reorder_timeout: float = 5.0  # how long a message waits for an earlier one
    max_held: int = 1000
    max_outbox: int = 1000
    max_plaintext_bytes: int = 64 * 1024
    send_rounds: int = 6  # device-list fixes and retries of one message before it fails


@dataclass(slots=True)
class ClientStats:
    """Counters since the client was opened: what the network and the relay did to it."""

    connects: int = 0  # authenticated connections
    duplicates: int = 0  # deliveries dropped because their id was handed over already
    undecryptable: int = 0  # deliveries that could not be decrypted (acked and dropped)
    held: int = 0  # messages that waited for an earlier one from the same device
    released_late: int = 0  # held messages handed on after the reorder timeout
