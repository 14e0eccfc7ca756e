"""The relay's WebSocket server with an echo handler: what the Autobahn cases talk to.

Everything but the handler is the relay's own: `RelayServer` with the settings of `relay
serve` (the same flags), so the `serve()` options (frame limit, compression, write limit,
close timeout, keepalive), the sub-protocol choice, the HTTP paths and the per-address cap
are those a client meets. The store is an embedded one in a scratch directory: the echo
never touches it. Prints one line, `conformance echo: serving on ws://HOST:PORT/v1/ws`,
then serves until SIGTERM or SIGINT.

    python -m tests.conformance.echo --port 0 --max-frame-bytes 16777216
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
import tempfile
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from protocol.codec import WireFormat
from relay.app import build_services
from relay.clock import SystemClock
from relay.config import ConfigError, Settings
from relay.config_sources import parse_settings
from relay.history import History
from relay.http import OperationsEndpoints
from relay.server import RelayServer
from relay.services import Services

READY_PREFIX = "conformance echo: serving on "


async def echo(svc: Services, ws: ServerConnection, fmt: WireFormat, address: str) -> None:
    """Every message back as it came (text as text, binary as binary), until the close."""
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass  # the library already answered the peer's error with its close code


async def serve_echo(settings: Settings) -> None:
    svc, _ = await build_services(settings, SystemClock())
    endpoints = OperationsEndpoints(svc, started=svc.clock.monotonic(), history=History(svc.clock))
    relay_server = RelayServer(svc, endpoints, handler=echo)
    server = await relay_server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{READY_PREFIX}ws://{settings.host}:{relay_server.port()}/v1/ws", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        await svc.cluster.stop()
        await svc.store.close()


def main(argv: list[str]) -> int:
    try:
        settings = parse_settings(argv, environ={})
    except ConfigError as exc:
        print(f"conformance echo: bad setting: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="relay-conformance-") as scratch:
        # The embedded store, whatever the flags say: the echo stores nothing.
        settings = dataclasses.replace(
            settings, data_dir=Path(scratch), database_url=None, redis_url=None
        )
        asyncio.run(serve_echo(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
