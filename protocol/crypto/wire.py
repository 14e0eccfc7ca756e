"""The body formats of message types 1 (pre-key message) and 2 (ratchet message).

Both start with one byte: the format version (1) in the high nibble and the
message type in the low one, so a body can never be read as the other type.
Integers are unsigned big-endian. A type-2 body::

    0x12 | ratchet key (32) | previous chain length (u32) | number (u32) | AEAD ciphertext

A type-1 body is a preamble followed by a complete type-2 body::

    0x11 | flags (u8) | scheme (u8) | identity key (32 ed25519, 33 xeddsa)
         | registration id (u32) | base key (32) | signed pre-key id (u32)
         | [one-time pre-key id (u32)]                  flag 0x01
         | [PQ pre-key id (u32) | ML-KEM ciphertext (1568)]   flag 0x02
         | type-2 body

Parsing is strict: unknown flags, a wrong version byte, short or trailing
bytes are all ``ValueError``, which the session turns into ``DecryptError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from protocol.crypto import primitives
from protocol.signatures import IDENTITY_KEY_LENGTH, KeyScheme

__all__ = [
    "MAX_BODY_BYTES",
    "PREKEY_MESSAGE_TYPE",
    "RATCHET_HEADER_BYTES",
    "RATCHET_MESSAGE_TYPE",
    "PreKeyHeader",
    "PreKeyMessage",
    "RatchetHeader",
    "RatchetMessage",
    "encode_preamble",
    "encode_ratchet_header",
    "parse_prekey_message",
    "parse_ratchet_message",
]

VERSION: Final = 1
PREKEY_MESSAGE_TYPE: Final = 1
RATCHET_MESSAGE_TYPE: Final = 2
# Well above the relay's default body limit (256 KiB), so a raised limit still works.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
RATCHET_HEADER_BYTES: Final = 1 + primitives.KEY_BYTES + 4 + 4

_FLAG_PREKEY: Final = 0x01
_FLAG_PQ: Final = 0x02
_SCHEME_CODES: Final = {KeyScheme.ED25519: 1, KeyScheme.XEDDSA: 2}
_SCHEMES_BY_CODE: Final = {code: scheme for scheme, code in _SCHEME_CODES.items()}
_U32: Final = struct.Struct(">I")
_RATCHET_HEADER: Final = struct.Struct(">B32sII")


def _lead_byte(msg_type: int) -> int:
    return (VERSION << 4) | msg_type


@dataclass(frozen=True)
class RatchetHeader:
    """The Double Ratchet header: sender's ratchet key, previous chain length, number."""

    ratchet_key: bytes
    previous_length: int
    number: int


@dataclass(frozen=True)
class RatchetMessage:
    """A parsed type-2 body; ``header_bytes`` go into the associated data as sent."""

    header: RatchetHeader
    header_bytes: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class PreKeyHeader:
    """What a type-1 body tells the responder to run X3DH/PQXDH on its side."""

    identity_key: bytes
    key_scheme: KeyScheme
    registration_id: int
    base_key: bytes
    signed_prekey_id: int
    prekey_id: int | None
    pq_prekey_id: int | None
    kem_ciphertext: bytes | None


@dataclass(frozen=True)
class PreKeyMessage:
    """A parsed type-1 body: its preamble (as sent, for the associated data) and message."""

    header: PreKeyHeader
    preamble: bytes
    message: RatchetMessage


def encode_ratchet_header(header: RatchetHeader) -> bytes:
    """The 41 header bytes of a type-2 body."""
    return _RATCHET_HEADER.pack(
        _lead_byte(RATCHET_MESSAGE_TYPE),
        header.ratchet_key,
        header.previous_length,
        header.number,
    )


def encode_preamble(header: PreKeyHeader) -> bytes:
    """The bytes of a type-1 body before its ratchet message."""
    flags = (_FLAG_PREKEY if header.prekey_id is not None else 0) | (
        _FLAG_PQ if header.pq_prekey_id is not None else 0
    )
    parts = [
        bytes([_lead_byte(PREKEY_MESSAGE_TYPE), flags, _SCHEME_CODES[header.key_scheme]]),
        header.identity_key,
        _U32.pack(header.registration_id),
        header.base_key,
        _U32.pack(header.signed_prekey_id),
    ]
    if header.prekey_id is not None:
        parts.append(_U32.pack(header.prekey_id))
    if header.pq_prekey_id is not None:
        if header.kem_ciphertext is None:
            raise ValueError("a PQ pre-key id needs its KEM ciphertext")
        parts += [_U32.pack(header.pq_prekey_id), header.kem_ciphertext]
    return b"".join(parts)


def parse_ratchet_message(body: bytes) -> RatchetMessage:
    """Parse a type-2 body."""
    if not RATCHET_HEADER_BYTES + primitives.AEAD_TAG_BYTES <= len(body) <= MAX_BODY_BYTES:
        raise ValueError("ratchet message of a bad length")
    lead, ratchet_key, previous_length, number = _RATCHET_HEADER.unpack_from(body)
    if lead != _lead_byte(RATCHET_MESSAGE_TYPE):
        raise ValueError("not a version-1 ratchet message")
    return RatchetMessage(
        RatchetHeader(ratchet_key, previous_length, number),
        bytes(body[:RATCHET_HEADER_BYTES]),
        bytes(body[RATCHET_HEADER_BYTES:]),
    )


class _Cursor:
    """Reads fields off a byte string; running past its end is ``ValueError``."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, count: int) -> bytes:
        if self.at + count > len(self.data):
            raise ValueError("pre-key message too short")
        chunk = self.data[self.at : self.at + count]
        self.at += count
        return bytes(chunk)

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value


def parse_prekey_message(body: bytes) -> PreKeyMessage:
    """Parse a type-1 body."""
    if len(body) > MAX_BODY_BYTES:
        raise ValueError("pre-key message too long")
    cursor = _Cursor(bytes(body))
    if cursor.u8() != _lead_byte(PREKEY_MESSAGE_TYPE):
        raise ValueError("not a version-1 pre-key message")
    flags = cursor.u8()
    if flags & ~(_FLAG_PREKEY | _FLAG_PQ):
        raise ValueError("unknown pre-key message flags")
    scheme = _SCHEMES_BY_CODE.get(cursor.u8())
    if scheme is None:
        raise ValueError("unknown identity key scheme")
    identity_key = cursor.take(IDENTITY_KEY_LENGTH[scheme])
    registration_id = cursor.u32()
    base_key = cursor.take(primitives.KEY_BYTES)
    signed_prekey_id = cursor.u32()
    prekey_id = cursor.u32() if flags & _FLAG_PREKEY else None
    pq_prekey_id: int | None = None
    kem_ciphertext: bytes | None = None
    if flags & _FLAG_PQ:
        pq_prekey_id = cursor.u32()
        kem_ciphertext = cursor.take(primitives.KEM_CIPHERTEXT_BYTES)
    header = PreKeyHeader(
        identity_key,
        scheme,
        registration_id,
        base_key,
        signed_prekey_id,
        prekey_id,
        pq_prekey_id,
        kem_ciphertext,
    )
    preamble = cursor.data[: cursor.at]
    return PreKeyMessage(header, preamble, parse_ratchet_message(cursor.data[cursor.at :]))
