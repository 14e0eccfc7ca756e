# Helpers here take an explicit `timeout` (seconds) on purpose: every wait is bounded.
# ruff: noqa: ASYNC109
"""A WebSocket client that writes frames byte by byte (RFC 6455 §5.2), the malformed ones a
library refuses to send included, and reads the relay's frames the same way.

The opening handshake is written here too, and the answer checked (101, the accept key, the
sub-protocol), so what the tests see is the relay's wire and nothing in between.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import ssl
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONT, TEXT, BINARY = 0x0, 0x1, 0x2
CLOSE, PING, PONG = 0x8, 0x9, 0xA


@dataclass(frozen=True, slots=True)
class RawFrame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        assert self.opcode == CLOSE
        return self.payload[2:].decode("utf-8")


def frame_bytes(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame as a client writes it; `rsv` is the three reserved bits (0-7), `length`
    the declared payload length when it is to differ from the payload sent."""
    declared = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask else 0
    if declared < 126:
        head += bytes([mask_bit | declared])
    elif declared < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", declared)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", declared)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class RawWebSocket:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, subprotocol: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.subprotocol = subprotocol

    @classmethod
    async def open(
        cls,
        url: str,
        subprotocol: str,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> RawWebSocket:
        parts = urlsplit(url)
        assert (parts.scheme == "wss") == (tls is not None), "wss:// needs a TLS context"
        assert parts.hostname is not None and parts.port is not None
        key = base64.b64encode(os.urandom(16))
        request = (
            f"GET {parts.path} HTTP/1.1\r\n"
            f"Host: {parts.hostname}:{parts.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
        )
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=tls)
            writer.write(request.encode())
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status, *lines = head.split("\r\n")
        assert status.startswith("HTTP/1.1 101"), status
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        accept = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest()).decode()
        assert headers["sec-websocket-accept"] == accept
        assert headers["sec-websocket-protocol"] == subprotocol
        assert "sec-websocket-extensions" not in headers
        return cls(reader, writer, subprotocol)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, opcode: int, payload: bytes, **options: object) -> None:
        await self.write(frame_bytes(opcode, payload, **options))  # type: ignore[arg-type]

    async def read_frame(self, timeout: float = 10.0) -> RawFrame:
        """The next frame from the relay; server frames are never masked."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            assert not second & 0x80, "a server frame must not be masked"
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)
        assert not first & 0x70, "the relay negotiates no extension: reserved bits are 0"
        return RawFrame(bool(first & 0x80), first & 0x0F, payload)

    async def read_message(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """The next data message (opcode, payload); control frames before it are skipped."""
        while True:
            frame = await self.read_frame(timeout)
            if frame.opcode in (TEXT, BINARY):
                assert frame.fin, "the relay sends each message in one frame"
                return frame.opcode, frame.payload
            assert frame.opcode != CLOSE, f"closed: {frame.close_code} {frame.payload[2:]!r}"

    async def next_control(self, timeout: float = 10.0) -> RawFrame:
        """The next control frame (ping, pong, close); data frames before it are skipped."""
        while True:
            frame = await self.read_frame(timeout)
            if frame.opcode >= CLOSE:
                return frame

    async def close_frame(self, timeout: float = 10.0) -> RawFrame:
        """The relay's close frame, skipping what comes before it."""
        while True:
            frame = await self.next_control(timeout)
            if frame.opcode == CLOSE:
                return frame

    async def at_eof(self, timeout: float = 10.0) -> bool:
        """Whether the relay closed the TCP connection (after its close frame)."""
        async with asyncio.timeout(timeout):
            rest = await self.reader.read()
        return rest == b""

    async def abort(self) -> None:
        """Drop the connection: no WebSocket closing handshake, nor TLS's (what the relay
        writes meanwhile, a keepalive ping say, does not matter)."""
        self.writer.transport.abort()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
