"""Plain HTTP GET (and HEAD): landing page, health, readiness, metrics, stats, history.

They are answered on the WebSocket port, or, with `--admin-listen`, the operations paths on
a listener of their own (`relay.admin_listener`) and only the health paths on both. None of
them returns a user id, device, key, message id or body (docs/security.md, "Admin surface").
"""

from __future__ import annotations

import asyncio
import functools
import http
import re
from dataclasses import dataclass
from importlib import resources
from urllib.parse import parse_qsl

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from protocol.version import package_version
from relay.admin_token import presents_token
from relay.history import SAMPLE_INTERVAL_S, History
from relay.landing import LandingFacts, render_landing, store_label
from relay.schemaguard import SchemaVersions, SchemaWatch
from relay.services import Services
from relay.stats import Stats, collect, node_registry, store_kind
from storage.at_rest.blinded import AT_REST_KEYS, BlindedStore

READY_TIMEOUT_S = 4.0
MAX_QUERY_CHARS = 64  # `since=` and 13 digits fit many times over
MAX_SINCE_DIGITS = 16
MAX_METRICS_QUERY_CHARS = 2048  # `name[]=` and a long metric name, a few dozen times
MAX_METRIC_NAMES = 32
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,199}")
WEBSOCKET_PATH = "/v1/ws"
# Load balancers probe these on the public port: answered on every listener, never gated.
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
# The operations data; with --admin-token set, these answer only a request that presents it.
# `/` and `/dashboard` stay open: static pages, the dashboard loads its figures from these.
TOKEN_PATHS = frozenset({"/metrics", "/v1/stats", "/v1/history"})


@dataclass(frozen=True, slots=True)
class Surface:
    """What one listener answers: the WebSocket upgrade, the operations paths, or both."""

    websocket: bool
    operations: bool


PUBLIC_AND_ADMIN = Surface(websocket=True, operations=True)  # the default: one port
PUBLIC_ONLY = Surface(websocket=True, operations=False)  # the public port with --admin-listen
ADMIN_ONLY = Surface(websocket=False, operations=True)  # the --admin-listen port


@functools.cache
def _dashboard_page() -> bytes:
    """The self-contained page (no CDN): it loads /v1/history, then polls it with `since`
    and /v1/stats, and draws SVG charts."""
    return (resources.files("relay") / "static" / "dashboard.html").read_bytes()


def _response(
    status: http.HTTPStatus,
    body: bytes,
    content_type: str,
    extra: tuple[tuple[str, str], ...] = (),
) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def json_response(payload: object, status: http.HTTPStatus = http.HTTPStatus.OK) -> Response:
    return _response(status, orjson.dumps(payload), "application/json")


def text_response(text: str, status: http.HTTPStatus = http.HTTPStatus.OK) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8")


def not_found() -> Response:
    return text_response("not found\n", http.HTTPStatus.NOT_FOUND)


def unauthorized() -> Response:
    return _response(
        http.HTTPStatus.UNAUTHORIZED,
        b"this path needs the admin token: send Authorization: Bearer TOKEN\n",
        "text/plain; charset=utf-8",
        (("WWW-Authenticate", 'Bearer realm="relay admin"'),),
    )


class BadQuery(ValueError):
    """A query string the path does not accept; the message says what to send instead."""


def _query_values(query: str, parameter: str, *, max_chars: int, usage: str) -> list[str]:
    """The values of the one parameter a path accepts, in order; BadQuery for a query string
    that is too long, malformed (`usage` says what to send) or names another parameter."""
    if len(query) > max_chars:
        raise BadQuery(f"query string longer than {max_chars} characters")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise BadQuery(f"malformed query string; send {usage}") from None
    unknown = sorted({name for name, _ in pairs} - {parameter})
    if unknown:
        raise BadQuery(f"unknown parameter {unknown[0]!r}; only {parameter!r} is accepted")
    return [value for _, value in pairs]


def parse_since(query: str) -> int | None:
    """The `since` parameter of `/v1/history`: milliseconds since the epoch, or None."""
    values = _query_values(query, "since", max_chars=MAX_QUERY_CHARS, usage="?since=MILLISECONDS")
    if len(values) > 1:
        raise BadQuery("'since' given more than once")
    if not values:
        return None
    value = values[0]
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_SINCE_DIGITS):
        raise BadQuery("'since' must be a whole number of milliseconds since the epoch")
    return int(value)


def parse_metric_names(query: str) -> list[str] | None:
    """The `name[]` parameters of `/metrics`: only those series are written (the convention
    of Prometheus's client libraries). A reader that wants two figures (the load-test
    harness's CPU and memory probe, once a second) then costs the relay the collectors of
    those two, not the whole exposition (12 ms on the event loop for a production node).
    None: no parameter, every series."""
    if not query:
        return None
    names = _query_values(
        query,
        "name[]",
        max_chars=MAX_METRICS_QUERY_CHARS,
        usage="?name[]=METRIC&name[]=METRIC",
    )
    if len(names) > MAX_METRIC_NAMES:
        raise BadQuery(f"more than {MAX_METRIC_NAMES} names")
    for name in names:
        if not _METRIC_NAME.fullmatch(name):
            raise BadQuery(f"{name[:64]!r} is not a metric name")
    return names


class OperationsEndpoints:
    """Answers the operations paths; `None` lets the request continue as a WebSocket upgrade."""

    def __init__(
        self,
        svc: Services,
        *,
        started: float,
        history: History,
        schema: SchemaWatch | None = None,
    ) -> None:
        self._svc = svc
        self._started = started
        self._token = svc.settings.admin_token
        self._history = history
        self._landing: bytes | None = None
        self._schema = schema  # production mode: the schema version counts for readiness

    async def handle(self, request: Request, surface: Surface) -> Response | None:
        """The answer on a listener that serves `surface`."""
        path = request.path.partition("?")[0]
        if path == WEBSOCKET_PATH and surface.websocket:
            return None
        response = self._refusal(path, request, surface) or await self._get(request)
        if request.method == "HEAD":
            # The GET answer's headers (Content-Length included), without its body.
            return Response(response.status_code, response.reason_phrase, response.headers, b"")
        return response

    def _refusal(self, path: str, request: Request, surface: Surface) -> Response | None:
        """404 for an operations path this listener does not serve; 401 for a gated path
        without the admin token; None to answer the request."""
        if path not in HEALTH_PATHS and not surface.operations:
            return not_found()
        token = self._token
        if path in TOKEN_PATHS and token is not None and not presents_token(request.headers, token):
            return unauthorized()
        return None

    async def _get(self, request: Request) -> Response:
        path, _, query = request.path.partition("?")
        if path == "/":
            return _response(http.HTTPStatus.OK, self._landing_page(), "text/html; charset=utf-8")
        if path == "/healthz":
            return text_response("ok\n")
        if path == "/readyz":
            return await self._ready()
        if path == "/metrics":
            return self._metrics_response(query)
        if path == "/v1/stats":
            return json_response(await self.stats())
        if path == "/v1/history":
            return self._history_response(query)
        if path == "/dashboard":
            return _response(http.HTTPStatus.OK, _dashboard_page(), "text/html; charset=utf-8")
        return not_found()

    def _landing_page(self) -> bytes:
        if self._landing is None:
            self._landing = render_landing(
                LandingFacts(
                    version=package_version(),
                    node_id=self._svc.cluster.node_id,
                    store=store_label(production=self._svc.settings.production),
                )
            )
        return self._landing

    def _metrics_response(self, query: str) -> Response:
        try:
            names = parse_metric_names(query)
        except BadQuery as exc:
            return text_response(f"{exc}\n", http.HTTPStatus.BAD_REQUEST)
        return _response(
            http.HTTPStatus.OK,
            self._svc.metrics.exposition(names),
            "text/plain; version=0.0.4; charset=utf-8",
        )

    def _history_response(self, query: str) -> Response:
        try:
            since = parse_since(query)
        except BadQuery as exc:
            return json_response({"error": str(exc)}, http.HTTPStatus.BAD_REQUEST)
        return json_response(
            {
                "node_id": self._svc.cluster.node_id,
                "interval_s": SAMPLE_INTERVAL_S,
                "capacity": self._history.capacity,
                "samples": self._history.since(since),
            }
        )

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
        problems = [
            f"{name} does not answer"
            for name, up in backends.items()
            if not up and name != AT_REST_KEYS
        ]
        store = self._svc.store
        if backends.get(AT_REST_KEYS) is False and isinstance(store, BlindedStore):
            problems.append(store.key_access.problem or "keys of encryption at rest not loaded")
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
            self._svc,
            started=self._started,
            store_kind=store_kind(production=self._svc.settings.production),
            registry=registry,
        )
