"""The two log lines of every connection: when it opens, and when and why it closes.

They carry metadata only (peer address, sub-protocol, user and device once
authenticated, close code, reason, who closed, duration), so an operator can
follow one connection without the log ever holding a frame's content.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection

from protocol.codec import WireFormat
from relay.clock import Clock

log = logging.getLogger("relay.connection")

ABNORMAL_CLOSURE = 1006


@dataclass(frozen=True, slots=True)
class CloseDetails:
    code: int
    reason: str
    by: str  # "server", "client", or "network" when no close frame went either way


def close_details(ws: ServerConnection) -> CloseDetails:
    """Who closed first, with which code and reason, read from the closing handshake."""
    protocol = ws.protocol
    sent, received = protocol.close_sent, protocol.close_rcvd
    if received is not None and (protocol.close_rcvd_then_sent or sent is None):
        return CloseDetails(received.code, received.reason, "client")
    if sent is not None:
        return CloseDetails(sent.code, sent.reason, "server")
    return CloseDetails(ABNORMAL_CLOSURE, "connection lost", "network")


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    if not address:
        return "?"
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class ConnectionLog:
    conn: str  # a short id that ties the open and close lines together
    peer: str
    started: float
    clock: Clock

    @classmethod
    def opened(cls, ws: ServerConnection, fmt: WireFormat, clock: Clock) -> ConnectionLog:
        entry = cls(ws.id.hex[:12], _peer(ws), started=clock.monotonic(), clock=clock)
        log.info(
            "connection opened",
            extra={"fields": {"conn": entry.conn, "peer": entry.peer, "format": fmt.value}},
        )
        return entry

    def closed(self, ws: ServerConnection, user: str | None, device: int | None) -> None:
        details = close_details(ws)
        fields: dict[str, object] = {"conn": self.conn, "peer": self.peer}
        if user is not None:
            fields["user"] = user
            fields["device"] = device
        fields |= {
            "code": details.code,
            "reason": details.reason,
            "by": details.by,
            "duration_s": round(self.clock.monotonic() - self.started, 3),
        }
        log.info("connection closed", extra={"fields": fields})
