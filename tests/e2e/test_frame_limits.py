"""Frames at every size limit, and compression (docs/protocol.md, docs/security.md).

The relay declines permessage-deflate: a client that offers it gets no extension, and a
frame sent compressed anyway (RSV1 set) is a protocol error, closed with 1002 without being
inflated, however much it would inflate to.
"""

from __future__ import annotations

import asyncio
import zlib

import pytest

from protocol.codec import WireFormat

from .flood import close_code, upgrade_request
from .floodscale import rss_mib
from .support import PROTOS, Device, ServerClosed, encode, error_of, new_user

FRAME = 8192
BODY = 4096
BOMB_BYTES = 256 * 1024 * 1024  # what the compressed frame would inflate to


def sized(dev: Device, target: Device, size: int) -> bytes | str:
    """A `send` frame encoded to exactly `size` bytes (its body is above the body limit):
    the longest body that fits, then the `rid`'s digits fill the last bytes."""
    frame = dev.send_frame(target, body=b"")

    def length(body_len: int, rid: int) -> int:
        return len(
            encode(
                {
                    **frame,
                    "rid": rid,
                    "devices": [{**frame["devices"][0], "body": b"\x00" * body_len}],
                },
                dev.proto,
            )
        )

    low, high = 0, size
    while low < high:  # the longest body whose frame (with rid 1) fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if length(mid, 1) <= size else (low, mid - 1)
    for rid in (1, 10, 100, 200, 1000, 10000, 70000):
        if length(low, rid) == size:
            body = {**frame["devices"][0], "body": b"\x00" * low}
            return encode({**frame, "rid": rid, "devices": [body]}, dev.proto)
    raise AssertionError(f"no frame of exactly {size} bytes")


@pytest.mark.parametrize("proto", PROTOS)
async def test_frame_at_the_limit_is_read_one_byte_more_closes_1009(relay_factory, proto):
    r = relay_factory(max_frame_bytes=FRAME, max_body_bytes=BODY)
    a = await new_user(r.url, proto=proto)
    b = await new_user(r.url, proto=proto)
    await a.send_raw(sized(a, b, FRAME))
    error_of(await a.next_push("error"), "too_large")  # read, and refused by the body limit
    assert (await a.sync())["t"] == "ok"
    at_body = a.send_frame(b, body=b"\x01" * BODY)
    assert (await a.request(at_body, timeout=10))["t"] == "ok"
    await a.send_raw(sized(a, b, FRAME + 1))
    assert await a.closed_code() == 1009
    await b.close()


async def test_frame_above_the_limit_before_the_handshake_closes_1009(relay_factory):
    r = relay_factory(max_frame_bytes=FRAME, max_body_bytes=BODY)
    dev = Device(r.url)
    await dev.connect()
    with pytest.raises(ServerClosed):
        await dev.send_raw(b"\x00" * (FRAME + 1))
        await dev.next_push("never")
    assert await dev.closed_code() == 1009


async def test_compression_offered_is_declined(relay):
    dev = Device(relay.url)
    await dev.connect(compression=True)
    assert dev.ws is not None
    assert dev.ws.protocol.extensions == []
    await dev.register()
    assert (await dev.sync())["t"] == "ok"
    await dev.close()


def _compressed_frame(payload: bytes) -> bytes:
    """A masked client frame with RSV1 (permessage-deflate's "compressed") and FIN set."""
    head = bytes([0x80 | 0x40 | 0x2])  # FIN, RSV1, binary
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload  # a zero mask leaves the payload as it is


async def test_compressed_frame_is_closed_1002_without_inflating(relay_factory):
    r = relay_factory()
    assert r.port is not None
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = b"".join(squeeze.compress(b"\x00" * (1 << 20)) for _ in range(BOMB_BYTES >> 20))
    bomb += squeeze.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 512 * 1024
    before = rss_mib(r.pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    request = upgrade_request(r.port).replace(
        b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"sec-websocket-extensions" not in head.lower()
    writer.write(_compressed_frame(bomb))
    frames = b""
    while close_code(frames) is None:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, "the stream ended without a close frame"
        frames += chunk
    writer.close()
    assert close_code(frames) == 1002
    assert rss_mib(r.pid) - before < 32, (before, rss_mib(r.pid))
    # The relay goes on serving.
    dev = await new_user(r.url, proto=WireFormat.JSON.value)
    assert (await dev.sync())["t"] == "ok"
    await dev.close()
