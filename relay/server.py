"""Wires the websockets library to the relay: sub-protocol choice, HTTP paths, connection limits,
TLS on the same port."""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from protocol.codec import SUBPROTOCOLS, WireFormat, select_format
from protocol.errors import CloseCode
from relay.connection import serve_connection
from relay.forwarded import FORWARDED_FOR, TrustedProxies
from relay.heap import HeapTrimmer
from relay.http import PUBLIC_AND_ADMIN, PUBLIC_ONLY, OperationsEndpoints
from relay.keepalive import Keepalive
from relay.opening import OpeningBudget, OpeningConnection, connection_class
from relay.services import Services

log = logging.getLogger("relay.server")

CLOSE_TIMEOUT_S = 5.0
WRITE_HIGH_WATER = 256 * 1024
LISTEN_BACKLOG = 4096  # a burst of connections waits in the kernel's accept queue (capped
# by net.core.somaxconn), not dropped and retried by the clients

ConnectionHandler = Callable[[Services, OpeningConnection, WireFormat, str], Awaitable[None]]


async def serve_relay(svc: Services, ws: OpeningConnection, fmt: WireFormat, address: str) -> None:
    """The relay's own handler: the handshake ends by the deadline counted from the accept;
    `address` is the client's, as the per-address limits count it."""
    await serve_connection(svc, ws, fmt, deadline=ws.deadline, opened=ws.opened, address=address)


def raise_file_limit() -> int:
    """Every connection is an open file: raise the soft limit to the hard one (the most the
    system lets this process hold without privileges); the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def choose_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """The client's first preference wins; none offered means msgpack; only unknown ones: 400."""
    fmt = select_format(list(offered))
    if fmt is None:
        raise NegotiationError("no supported subprotocol; offer " + ", ".join(SUBPROTOCOLS))
    return Subprotocol(fmt.value) if offered else None


class RelayServer:
    def __init__(
        self,
        svc: Services,
        endpoints: OperationsEndpoints,
        *,
        tls: ssl.SSLContext | None = None,
        handler: ConnectionHandler = serve_relay,
        reuse_port: bool = False,
    ) -> None:
        """`handler` serves each upgraded connection: the relay's own, or the echo of the
        WebSocket conformance run (tests/conformance), which keeps everything else.
        `reuse_port`: bind with SO_REUSEPORT, beside the other workers of one parent
        (relay.workers)."""
        self._svc = svc
        self._reuse_port = reuse_port
        self._endpoints = endpoints
        self._tls = tls
        self._connection_handler = handler
        self._proxies = TrustedProxies(svc.settings.trusted_networks)
        self._surface = PUBLIC_AND_ADMIN if svc.settings.admin_listen is None else PUBLIC_ONLY
        self._per_address: Counter[str] = Counter()
        self._keepalive = Keepalive(
            interval=svc.settings.ping_interval, timeout=svc.settings.ping_timeout
        )
        self._keepalive_task: asyncio.Task[None] | None = None
        self.opening = OpeningBudget(
            total=svc.settings.max_handshakes,
            per_address=svc.settings.max_handshakes_per_address,
            exempt=self._proxies.trusts_peer,
            on_refused=svc.metrics.handshakes.labels("refused").inc,
        )
        self.heap = HeapTrimmer(lambda: self.opening.opening)
        self.server: Server | None = None

    async def start(self) -> Server:
        settings = self._svc.settings
        log.info("open files limit", extra={"fields": {"limit": raise_file_limit()}})
        tls_options: dict[str, Any] = (
            {}
            if self._tls is None
            else {"ssl": self._tls, "ssl_handshake_timeout": settings.handshake_timeout}
        )
        self.server = await serve(
            self._handle,
            settings.host,
            settings.port,
            process_request=self._process_request,
            select_subprotocol=choose_subprotocol,
            subprotocols=[Subprotocol(p.value) for p in SUBPROTOCOLS],
            max_size=settings.max_frame_bytes,
            compression=None,
            open_timeout=settings.handshake_timeout,
            create_connection=connection_class(
                self.opening, settings.handshake_timeout, self.heap.connection_ended
            ),
            backlog=LISTEN_BACKLOG,
            close_timeout=CLOSE_TIMEOUT_S,
            write_limit=WRITE_HIGH_WATER,
            server_header="relay",
            ping_interval=None,  # one keepalive task for all connections (relay.keepalive)
            reuse_port=self._reuse_port,
            **tls_options,
        )
        self._keepalive_task = asyncio.create_task(self._keepalive.run(self.server.is_serving))
        return self.server

    def port(self) -> int:
        assert self.server is not None
        for sock in self.server.sockets:
            port: int = sock.getsockname()[1]
            return port
        raise RuntimeError("the server has no socket")

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        return await self._endpoints.handle(request, self._surface)

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, OpeningConnection)
        address = self._client_address(ws)
        if self._per_address[address] >= self._svc.settings.max_connections_per_address:
            await ws.close(int(CloseCode.TRY_AGAIN_LATER), "too many connections from this address")
            return
        self._per_address[address] += 1
        self._keepalive.add(ws)
        # The opening handshake is over and read: its headers would stay for the connection's
        # life (about 3 KB of small objects each).
        if ws.request is not None:
            ws.request.headers.clear()
        ws.response = None
        try:
            fmt = WireFormat(ws.subprotocol) if ws.subprotocol else WireFormat.MSGPACK
            await self._connection_handler(self._svc, ws, fmt, address)
        finally:
            self._keepalive.remove(ws)
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]

    def _client_address(self, ws: ServerConnection) -> str:
        """What the per-address limits count: the peer, or the client behind a trusted proxy."""
        peer = str(ws.remote_address[0]) if ws.remote_address else "?"
        if not self._proxies:
            return peer
        forwarded = ws.request.headers.get_all(FORWARDED_FOR) if ws.request else []
        return self._proxies.client_address(peer, forwarded)
