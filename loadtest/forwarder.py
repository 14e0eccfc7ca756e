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
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "relay.v1+msgpack"
MAX_FRAME = 4 * 1024 * 1024


class Forwarder:
    """User id -> connection, and the per-connection loop."""

    def __init__(self) -> None:
        self.connections: dict[str, ServerConnection] = {}
        self.bundles: dict[str, dict[str, Any]] = {}

    async def handle(self, ws: ServerConnection) -> None:
        pack = msgpack.packb
        user = ""
        await ws.send(
            pack(
                {"t": "challenge", "nonce": os.urandom(32), "server_time": int(time.time() * 1000)},
                use_bin_type=True,
            )
        )
        try:
            async for message in ws:
                frame: Any = msgpack.unpackb(message, raw=False)
                kind = frame.get("t")
                rid = frame.get("rid")
                if kind == "send":
                    target = self.connections.get(frame["to"])
                    delivered: list[int] = []
                    if target is not None:
                        entry = frame["devices"][0]
                        deliver = {
                            "t": "deliver",
                            "id": frame["id"],
                            "from": user,
                            "from_device": 1,
                            "ts": frame["ts"],
                            "server_ts": int(time.time() * 1000),
                            "type": entry["type"],
                            "body": entry["body"],
                            "nonce": frame["nonce"],
                        }
                        with contextlib.suppress(ConnectionClosed):
                            await target.send(pack(deliver, use_bin_type=True))
                            delivered = [entry["device"]]
                    answer = {"t": "ok", "rid": rid, "id": frame["id"], "delivered": delivered}
                    answer["stored"] = []
                    await ws.send(pack(answer, use_bin_type=True))
                elif kind in ("register", "auth"):
                    user = frame.get("user") or str(uuid.uuid4())
                    self.connections[user] = ws
                    if kind == "register":
                        self.bundles[user] = {
                            "device": 1,
                            "registration_id": frame.get("registration_id", 0),
                            "identity_key": frame["identity_key"],
                            "key_scheme": frame["key_scheme"],
                        }
                    ok = {
                        "t": "ok",
                        "rid": rid,
                        "user": user,
                        "device": frame.get("device", 1),
                        "queued": 0,
                        "prekeys": 0,
                        "pq_prekeys": 0,
                        "rotate_signed_prekey": False,
                    }
                    await ws.send(pack(ok, use_bin_type=True))
                    await ws.send(pack({"t": "queue_empty"}, use_bin_type=True))
                elif kind == "keys.upload":
                    bundle = self.bundles.get(user, {})
                    if frame.get("signed_prekey"):
                        bundle["signed_prekey"] = frame["signed_prekey"]
                    if frame.get("pq_last_resort"):
                        bundle["pq_prekey"] = frame["pq_last_resort"]
                    count = len(frame.get("prekeys") or ())
                    ok = {"t": "ok", "rid": rid, "prekeys": count, "pq_prekeys": 0}
                    await ws.send(pack(ok, use_bin_type=True))
                elif kind == "keys.fetch":
                    found = self.bundles.get(frame["user"], {})
                    devices = [found] if "signed_prekey" in found else []
                    ok = {"t": "ok", "rid": rid, "user": frame["user"], "devices": devices}
                    await ws.send(pack(ok, use_bin_type=True))
                elif rid is not None:
                    await ws.send(pack({"t": "ok", "rid": rid}, use_bin_type=True))
        except ConnectionClosed:
            pass
        finally:
            if user and self.connections.get(user) is ws:
                del self.connections[user]


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
