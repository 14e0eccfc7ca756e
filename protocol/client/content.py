"""What the client encrypts: the application's bytes with a small header.

    version  u8   1
    kind     u8   1 = a message to the recipient, 2 = a copy for the sender's own other devices,
                  3 = the key of a group message's shared payload (protocol.client.group)
    seq      u64  big-endian; counts the messages from one device to one device, from 1
    to       16   only for kind 2: the UUID of the user the original went to
    body     the application's plaintext (may be empty)

The header lives inside the ciphertext, so the relay learns none of it. `seq`
lets the receiving device hand messages to the application in the order they
were sent, even when the relay pushes a live message ahead of a stored one.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass

__all__ = ["Content", "ContentError", "Kind"]

_VERSION = 1
_HEADER = struct.Struct(">BBQ")


class ContentError(ValueError):
    """The decrypted bytes are not content of this client (another client, or a newer one)."""


class Kind(enum.IntEnum):
    MESSAGE = 1
    SENT_COPY = 2
    GROUP_KEY = 3


@dataclass(frozen=True, slots=True)
class Content:
    kind: Kind
    seq: int
    body: bytes
    sent_to: str | None = None

    def encode(self) -> bytes:
        head = _HEADER.pack(_VERSION, self.kind, self.seq)
        if self.kind is Kind.SENT_COPY:
            assert self.sent_to is not None
            head += uuid.UUID(self.sent_to).bytes
        return head + self.body

    @classmethod
    def decode(cls, data: bytes) -> Content:
        if len(data) < _HEADER.size:
            raise ContentError("content shorter than its header")
        version, kind_value, seq = _HEADER.unpack_from(data)
        if version != _VERSION:
            raise ContentError(f"content version {version}")
        try:
            kind = Kind(kind_value)
        except ValueError:
            raise ContentError(f"content kind {kind_value}") from None
        rest = data[_HEADER.size :]
        if kind is Kind.SENT_COPY:
            if len(rest) < 16:
                raise ContentError("a sent copy without its recipient")
            return cls(kind, seq, rest[16:], str(uuid.UUID(bytes=rest[:16])))
        return cls(kind, seq, rest)
