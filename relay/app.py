"""The composition root: builds settings, store, router and server; owns startup and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from protocol.errors import CloseCode
from protocol.fields import Limits
from relay.clock import Clock, SystemClock
from relay.config import Settings
from relay.http import OperationsEndpoints
from relay.metrics import Metrics
from relay.router import Router
from relay.server import RelayServer
from relay.services import Services
from storage.embedded import EmbeddedStore
from storage.errors import StorageError
from storage.interfaces import Store

log = logging.getLogger("relay")


async def open_store(settings: Settings) -> tuple[Store, str]:
    """PostgreSQL and Redis when both URLs are set; the embedded store otherwise."""
    if settings.database_url is not None and settings.redis_url is not None:
        from storage.production import ProductionStore

        store: Store = await ProductionStore.open(
            database_url=settings.database_url,
            redis_url=settings.redis_url,
            redis_prefix=settings.redis_prefix,
            timeout_s=settings.backend_timeout,
        )
        return store, "postgresql+redis"
    return await EmbeddedStore.open(settings.data_dir), f"embedded ({settings.data_dir})"


async def run(settings: Settings, *, clock: Clock | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; the process exit code."""
    store, store_kind = await open_store(settings)
    svc = Services(
        settings=settings,
        store=store,
        router=Router(),
        metrics=Metrics(),
        clock=clock or SystemClock(),
        limits=Limits(max_body_bytes=settings.max_body_bytes),
    )
    endpoints = OperationsEndpoints(svc, started=time.monotonic(), store_kind=store_kind)
    relay_server = RelayServer(svc, endpoints)
    server = await relay_server.start()
    port = relay_server.port()
    print(f"relay: serving on ws://{settings.host}:{port}/v1/ws", flush=True)
    log.info("serving on %s:%s with the %s store", settings.host, port, store_kind)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    purger = asyncio.create_task(_purge_forever(svc))
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        purger.cancel()
        server.close(close_connections=False)  # stop accepting
        for session in svc.router.sessions():
            session.out.close(CloseCode.GOING_AWAY, "server shutting down")
        server.close(close_connections=True)  # the rest (still in their handshake)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), settings.shutdown_timeout)
        await svc.drain_background(settings.shutdown_timeout)
        await store.close()
    return 0


async def _purge_forever(svc: Services) -> None:
    """Expired stored messages are deleted in the background."""
    while True:
        try:
            deleted = await svc.store.messages.purge_expired(svc.clock.now_ms())
            if deleted:
                log.info("purged %d expired messages", deleted)
        except StorageError:
            log.warning("purge skipped: store unavailable")
        await asyncio.sleep(svc.settings.purge_interval)
