"""Plain HTTP GET on the WebSocket port: health, readiness, metrics, stats."""

from __future__ import annotations

import asyncio
import functools
import http
from importlib import resources

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from relay.services import Services
from relay.stats import Stats, collect, node_registry

READY_TIMEOUT_S = 4.0


@functools.cache
def _dashboard_page() -> bytes:
    """The self-contained page (no CDN): it polls /v1/stats and draws SVG charts."""
    return (resources.files("relay") / "static" / "dashboard.html").read_bytes()


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def json_response(payload: object, status: http.HTTPStatus = http.HTTPStatus.OK) -> Response:
    return _response(status, orjson.dumps(payload), "application/json")


def text_response(text: str, status: http.HTTPStatus = http.HTTPStatus.OK) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8")


class OperationsEndpoints:
    """Answers the operations paths; `None` lets the request continue as a WebSocket upgrade."""

    def __init__(self, svc: Services, *, started: float, store_kind: str) -> None:
        self._svc = svc
        self._started = started
        self._store_kind = store_kind

    async def handle(self, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/v1/ws":
            return None
        if path == "/healthz":
            return text_response("ok\n")
        if path == "/readyz":
            return await self._ready()
        if path == "/metrics":
            return _response(
                http.HTTPStatus.OK,
                self._svc.metrics.exposition(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        if path == "/v1/stats":
            return json_response(await self.stats())
        if path == "/dashboard":
            return _response(http.HTTPStatus.OK, _dashboard_page(), "text/html; charset=utf-8")
        return text_response("not found\n", http.HTTPStatus.NOT_FOUND)

    async def _ready(self) -> Response:
        try:
            backends = await asyncio.wait_for(self._svc.store.ready(), READY_TIMEOUT_S)
        except TimeoutError:
            backends = {"store": False}
        ok = all(backends.values())
        status = http.HTTPStatus.OK if ok else http.HTTPStatus.SERVICE_UNAVAILABLE
        return json_response({"ready": ok, "backends": backends}, status)

    async def stats(self) -> Stats:
        registry = await node_registry(self._svc)
        return collect(
            self._svc, started=self._started, store_kind=self._store_kind, registry=registry
        )
