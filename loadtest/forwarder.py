"""The bare forwarder: the baseline the relay is measured against.

Same websockets library, same frames, nothing else: no signature checks, no
validation, no storage, no replay guard, no rate limits. It accepts any
`register` or `auth` and answers `ok`, answers every other request `ok`,
forwards each `send` as a `deliver` to the named user's connection (if that
user is connected; otherwise the message is dropped) and answers the sender
`ok` at once, and ignores acks. It keeps each user's identity key and its
signed and last-resort pre-keys in memory, unchecked, only so that `keys.fetch`
(for `--e2e` runs) has a bundle to answer with. The harness's simulated devices run against it
unchanged, so the difference between the two runs is what the relay's work
costs.

    python -m loadtest.forwarder --port 0     # prints "forwarder: serving on ws://..."
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "relay.v1+msgpack"
MAX_FRAME = 4 * 1024 * 1024
LISTEN_BACKLOG = 4096  # the relay's (relay/server.py): a connection burst waits in the
# kernel's accept queue instead of overflowing asyncio's default of 100 into SYN retries


@dataclass(slots=True)
class Peer:
    """One connection and the user it logged in as ("" before `register` or `auth`)."""

    ws: ServerConnection
    user: str = ""

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(msgpack.packb(frame, use_bin_type=True))


Handler = Callable[[Peer, dict[str, Any]], Awaitable[None]]


class Forwarder:
    """User id -> connection, and the per-connection loop: one handler per frame type."""

    def __init__(self) -> None:
        self.connections: dict[str, ServerConnection] = {}
        self.bundles: dict[str, dict[str, Any]] = {}
        self._handlers: dict[str, Handler] = {
            "send": self._send,
            "register": self._login,
            "auth": self._login,
            "keys.upload": self._upload,
            "keys.fetch": self._fetch,
        }

    async def handle(self, ws: ServerConnection) -> None:
        peer = Peer(ws)
        now_ms = int(time.time() * 1000)
        await peer.send({"t": "challenge", "nonce": os.urandom(32), "server_time": now_ms})
        try:
            async for message in ws:
                frame: dict[str, Any] = msgpack.unpackb(message, raw=False)
                handler = self._handlers.get(frame.get("t", ""))
                if handler is not None:
                    await handler(peer, frame)
                elif frame.get("rid") is not None:
                    await peer.send({"t": "ok", "rid": frame["rid"]})
        except ConnectionClosed:
            pass
        finally:
            if peer.user and self.connections.get(peer.user) is ws:
                del self.connections[peer.user]

    async def _send(self, peer: Peer, frame: dict[str, Any]) -> None:
        """Deliver to the named user's connection if there is one; answer `ok` at once."""
        target = self.connections.get(frame["to"])
        delivered: list[int] = []
        if target is not None:
            entry = frame["devices"][0]
            deliver = {
                "t": "deliver",
                "id": frame["id"],
                "from": peer.user,
                "from_device": 1,
                "ts": frame["ts"],
                "server_ts": int(time.time() * 1000),
                "type": entry["type"],
                "body": entry["body"],
                "nonce": frame["nonce"],
            }
            with contextlib.suppress(ConnectionClosed):
                await target.send(msgpack.packb(deliver, use_bin_type=True))
                delivered = [entry["device"]]
        await peer.send(
            {
                "t": "ok",
                "rid": frame.get("rid"),
                "id": frame["id"],
                "delivered": delivered,
                "stored": [],
            }
        )

    async def _login(self, peer: Peer, frame: dict[str, Any]) -> None:
        peer.user = frame.get("user") or str(uuid.uuid4())
        self.connections[peer.user] = peer.ws
        if frame["t"] == "register":
            self.bundles[peer.user] = {
                "device": 1,
                "registration_id": frame.get("registration_id", 0),
                "identity_key": frame["identity_key"],
                "key_scheme": frame["key_scheme"],
            }
        await peer.send(
            {
                "t": "ok",
                "rid": frame.get("rid"),
                "user": peer.user,
                "device": frame.get("device", 1),
                "queued": 0,
                "prekeys": 0,
                "pq_prekeys": 0,
                "rotate_signed_prekey": False,
            }
        )
        await peer.send({"t": "queue_empty"})

    async def _upload(self, peer: Peer, frame: dict[str, Any]) -> None:
        bundle = self.bundles.get(peer.user, {})
        if frame.get("signed_prekey"):
            bundle["signed_prekey"] = frame["signed_prekey"]
        if frame.get("pq_last_resort"):
            bundle["pq_prekey"] = frame["pq_last_resort"]
        count = len(frame.get("prekeys") or ())
        await peer.send({"t": "ok", "rid": frame.get("rid"), "prekeys": count, "pq_prekeys": 0})

    async def _fetch(self, peer: Peer, frame: dict[str, Any]) -> None:
        found = self.bundles.get(frame["user"], {})
        devices = [found] if "signed_prekey" in found else []
        await peer.send(
            {"t": "ok", "rid": frame.get("rid"), "user": frame["user"], "devices": devices}
        )


async def serve_forever(host: str, port: int) -> None:
    forwarder = Forwarder()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        forwarder.handle,
        host,
        port,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        max_size=MAX_FRAME,
        compression=None,
        ping_interval=None,
        backlog=LISTEN_BACKLOG,
    ) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"forwarder: serving on ws://{host}:{bound}/v1/ws", flush=True)
        await stop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.forwarder", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
