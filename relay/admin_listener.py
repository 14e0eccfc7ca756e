"""`--admin-listen`: the operations endpoints on an address of their own.

A second websockets server whose `process_request` answers every request, so no connection
is ever upgraded and one HTTP implementation serves both listeners. With TLS settings it
serves HTTPS with the public port's context: a SIGHUP reload covers both.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from relay.config import ConfigError, Settings
from relay.http import ADMIN_ONLY, OperationsEndpoints
from relay.listen_address import ListenAddress

log = logging.getLogger("relay.admin")


class AdminListenError(ConfigError):
    """The admin address cannot be listened on (in use, not an address of this host)."""


class AdminListener:
    def __init__(
        self,
        endpoints: OperationsEndpoints,
        address: ListenAddress,
        *,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float,
    ) -> None:
        self._endpoints = endpoints
        self._address = address
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self._server: Server | None = None

    @classmethod
    async def open(
        cls, settings: Settings, endpoints: OperationsEndpoints, tls: ssl.SSLContext | None
    ) -> AdminListener | None:
        """The listener of `admin_listen`, started, its URL printed before the ready line;
        None when the setting is unset. Raises AdminListenError."""
        if settings.admin_address is None:
            return None
        listener = cls(
            endpoints,
            settings.admin_address,
            tls=tls,
            handshake_timeout=settings.handshake_timeout,
        )
        print(f"relay: operations endpoints on {await listener.start()}", flush=True)
        return listener

    async def start(self) -> str:
        """Listen; the URL of the landing page, with the port bound (0 picks one)."""
        tls_options: dict[str, Any] = (
            {}
            if self._tls is None
            else {"ssl": self._tls, "ssl_handshake_timeout": self._handshake_timeout}
        )
        try:
            self._server = await serve(
                _never_upgraded,
                self._address.host,
                self._address.port,
                process_request=self._process_request,
                open_timeout=self._handshake_timeout,
                server_header="relay",
                **tls_options,
            )
        except OSError as exc:
            where = self._address.url("http").removeprefix("http://").rstrip("/")
            raise AdminListenError(
                f"admin_listen {where}: cannot listen: {exc.strerror or exc}",
                setting="admin_listen",
            ) from None
        port: int = self._server.sockets[0].getsockname()[1]
        url = self._address.url("http" if self._tls is None else "https", port)
        log.info("operations endpoints on %s", url)
        return url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        return await self._endpoints.handle(request, ADMIN_ONLY)


async def _never_upgraded(ws: ServerConnection) -> None:
    """`handle` answers every request on ADMIN_ONLY, so no connection gets here."""
    await ws.close()
