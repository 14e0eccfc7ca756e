"""Plain HTTP GET on the WebSocket port: health, readiness, metrics, stats."""

from __future__ import annotations

import asyncio
import functools
import http
from importlib import resources

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from relay.schemaguard import SchemaVersions, SchemaWatch
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

    def __init__(
        self,
        svc: Services,
        *,
        started: float,
        store_kind: str,
        schema: SchemaWatch | None = None,
    ) -> None:
        self._svc = svc
        self._started = started
        self._store_kind = store_kind
        self._schema = schema  # production mode: the schema version counts for readiness

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
        """Each backend answers and, in production mode, the schema is the expected version;
        `problems` names every cause of a 503."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                backends, versions = await asyncio.gather(
                    self._svc.store.ready(), self._schema_versions()
                )
        except TimeoutError:
            backends, versions = {"store": False}, None
        problems = [f"{name} does not answer" for name, up in backends.items() if not up]
        body: dict[str, object] = {"backends": backends}
        if versions is not None:
            body["schema"] = {"version": versions.live, "expected": versions.expected}
            problems += [versions.problem] if versions.problem is not None else []
        status = http.HTTPStatus.SERVICE_UNAVAILABLE if problems else http.HTTPStatus.OK
        return json_response({"ready": not problems, **body, "problems": problems}, status)

    async def _schema_versions(self) -> SchemaVersions | None:
        return None if self._schema is None else await self._schema.versions()

    async def stats(self) -> Stats:
        registry = await node_registry(self._svc)
        return collect(
            self._svc, started=self._started, store_kind=self._store_kind, registry=registry
        )
