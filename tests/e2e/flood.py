"""A flood of connections that never finish their opening, as one process of many.

    python -m tests.e2e.flood KIND --port P --count N --rate R --sources 127.0.1.1,... --give-up S

KIND `raw` opens TCP connections and sends nothing; `upgrade` sends the HTTP upgrade and
then nothing (no `auth`). Connections are spread over the source addresses (all loopback)
and opened at R per second. The process prints `opened` once every connection has been
tried, then one JSON line once every connection has ended: how many opened, how many were
reset at once (refused by the relay's budget), how long each admitted one lived, and the
close codes the relay sent; a connection still open S seconds after its connect is given
up on and counted. A process may hold at most 20,000 files, so a large flood is
spread over several of these.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field

import orjson

READ_LIMIT = 64 * 1024  # the challenge and a close frame; a relay never sends more
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux
REFUSED_WITHIN_S = 0.5
# The generators stand for remote clients: on a host shared with the relay they must not
# take its CPU (a starved relay accepts late, and a starved generator measures late).
GENERATOR_NICENESS = 10  # ended this fast without a byte: reset at accept


@dataclass
class FloodResult:
    kind: str
    tried: int = 0
    failed_connects: int = 0
    refused: int = 0  # ended at once without a response (the relay's opening budget)
    # Admitted ones, from the connect: until the relay's close frame (or the end of the
    # stream, whichever came first), and until the end of the stream.
    closed_after: list[float] = field(default_factory=list)
    ended_after: list[float] = field(default_factory=list)
    unended: int = 0  # still open when the generator gave up on them
    upgraded: int = 0  # got `101 Switching Protocols`
    close_codes: dict[str, int] = field(default_factory=dict)


async def open_from(
    source: str, port: int, *, limit: int = READ_LIMIT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the relay from `source`. The source port is chosen at connect,
    not at bind (IP_BIND_ADDRESS_NO_PORT): a bind to port 0 searches every port in use,
    which is slow with thousands of sockets open or in TIME_WAIT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=limit)


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def close_code(frames: bytes) -> int | None:
    """The code of the close frame among the server's (unmasked) frames, if any."""
    at = 0
    while at + 2 <= len(frames):
        opcode, length = frames[at] & 0x0F, frames[at + 1] & 0x7F
        at += 2
        if length == 126:
            length, at = int.from_bytes(frames[at : at + 2], "big"), at + 2
        elif length == 127:
            length, at = int.from_bytes(frames[at : at + 8], "big"), at + 8
        if opcode == 0x8:
            return int.from_bytes(frames[at : at + 2], "big") if length >= 2 else 1005
        at += length
    return None


async def one(kind: str, port: int, source: str, give_up: float, result: FloodResult) -> None:
    result.tried += 1
    try:
        reader, writer = await open_from(source, port, limit=READ_LIMIT)
    except OSError:
        result.failed_connects += 1
        return
    started = time.monotonic()
    received = b""
    closed: float | None = None
    try:
        async with asyncio.timeout(give_up):
            if kind == "upgrade":
                writer.write(upgrade_request(port))
            while chunk := await reader.read(READ_LIMIT):
                received += chunk
                if closed is None and close_code(received.partition(b"\r\n\r\n")[2]):
                    closed = time.monotonic() - started
                if len(received) > READ_LIMIT:
                    break
    except TimeoutError:  # before OSError, of which it is a subclass
        # Never ended: on an overloaded host, a connection the kernel completed with a SYN
        # cookie while the relay's accept queue was full is dropped without the client
        # knowing; one that sends nothing then never learns it.
        writer.close()
        result.unended += 1
        return
    except OSError:
        pass
    lived = time.monotonic() - started
    writer.close()
    if not received and lived < REFUSED_WITHIN_S:
        result.refused += 1
        return
    result.closed_after.append(lived if closed is None else closed)
    result.ended_after.append(lived)
    head, _, frames = received.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 101"):
        result.upgraded += 1
        code = str(close_code(frames))
        result.close_codes[code] = result.close_codes.get(code, 0) + 1


async def flood(
    kind: str, port: int, count: int, rate: float, sources: list[str], give_up: float
) -> FloodResult:
    result = FloodResult(kind)
    tasks = []
    started = time.monotonic()
    for i in range(count):
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the generator, not waiting for the relay
        source = sources[i % len(sources)]
        tasks.append(asyncio.create_task(one(kind, port, source, give_up, result)))
    print("opened", flush=True)
    await asyncio.gather(*tasks)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("raw", "upgrade"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--sources", required=True)
    parser.add_argument("--give-up", type=float, required=True, help="seconds per connection")
    args = parser.parse_args()
    os.nice(GENERATOR_NICENESS)
    sources = args.sources.split(",")
    result = asyncio.run(flood(args.kind, args.port, args.count, args.rate, sources, args.give_up))
    sys.stdout.write(orjson.dumps(asdict(result)).decode() + "\n")


if __name__ == "__main__":
    main()
