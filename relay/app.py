"""The composition root: builds settings, store, router and server; owns startup and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from websockets.asyncio.server import Server

from protocol.errors import CloseCode
from protocol.fields import Limits
from relay.admin_listener import AdminListener
from relay.clock import Clock, SystemClock
from relay.cluster import open_cluster
from relay.collector import settle_after_start
from relay.config import ConfigError, Settings
from relay.history import History, HistorySampler, read_metrics
from relay.http import OperationsEndpoints
from relay.looplag import LoopLagMonitor
from relay.metrics import Metrics
from relay.queuedepth import refresh_forever
from relay.receipts import ReceiptingQueue
from relay.router import Router
from relay.schemaguard import SchemaWatch, check_at_start
from relay.server import RelayServer
from relay.services import Services
from relay.tls import ServerTls
from relay.workers import watch_parent
from storage.at_rest.blinded import AtRestCapable, BlindedStore
from storage.at_rest.master_key import LocalKeyFile, MasterKeyError, read_key_file
from storage.at_rest.opening import DEFAULT_KEY_FILE, AtRestSettings, open_at_rest
from storage.at_rest.vault import REFRESH_INTERVAL_S
from storage.embedded import EmbeddedStore
from storage.errors import StorageError
from storage.interfaces import BackendObserver, Store
from storage.records import Envelope
from storage.stopping import stop_tasks

log = logging.getLogger("relay")

SHUTDOWN_REASON = "server shutting down"


async def open_store(
    settings: Settings,
    *,
    observe: BackendObserver | None = None,
    on_undecryptable: Callable[[str], None] | None = None,
    convert: bool | None = None,
    may_wait: bool = False,
) -> tuple[Store, str]:
    """PostgreSQL and Redis when both URLs are set; the embedded store otherwise. With
    encryption at rest (the default), the store seen through its keys (storage.at_rest).
    Raises AtRestError when it cannot be opened as configured.

    `convert`: whether clear data may be encrypted here (default: the embedded store, and
    a production node started with --migrate). `may_wait`: a serving production node
    starts while its store is down, and loads the keys of encryption at rest later."""
    raw: AtRestCapable
    if settings.database_url is not None and settings.redis_url is not None:
        from storage.production import ProductionStore

        raw = await ProductionStore.open(
            database_url=settings.database_url,
            database_read_url=settings.database_read_url,
            redis_url=settings.redis_url,
            redis_prefix=settings.redis_prefix,
            redis_cluster=settings.redis_cluster,
            timeout_s=settings.backend_timeout,
            observe=observe,
        )
        kind = "postgresql+redis"
        default_key_file = None
        may_convert = settings.migrate
    else:
        raw = await EmbeddedStore.open(settings.data_dir, observe=observe)
        kind = f"embedded ({settings.data_dir})"
        default_key_file = settings.data_dir / DEFAULT_KEY_FILE
        may_convert = True
    at_rest = AtRestSettings(
        enabled=settings.at_rest_encryption,
        master_key_file=settings.master_key_file,
        rotation_s=settings.data_key_rotation,
        default_key_file=default_key_file,
        convert=may_convert if convert is None else convert,
    )
    try:
        store = await open_at_rest(
            raw,
            at_rest,
            on_undecryptable=on_undecryptable,
            may_wait=may_wait and settings.production,
        )
    except BaseException:
        await raw.close()
        raise
    return store, kind + (", encrypted at rest" if isinstance(store, BlindedStore) else "")


async def run(
    settings: Settings,
    *,
    clock: Clock | None = None,
    tls: ServerTls | None = None,
    as_worker: bool = False,
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; the process exit code.
    Raises SchemaRefused, before opening anything, when the PostgreSQL schema does not fit.

    With TLS settings the certificate is loaded here unless `tls` brings it loaded already;
    SIGHUP then reloads it. `as_worker`: one of the workers of `relay serve --workers N`
    (relay.workers): the port is shared with SO_REUSEPORT, and the parent's pipe on stdin
    closing stops it as SIGTERM does.
    """
    if tls is None and settings.tls_cert is not None and settings.tls_key is not None:
        tls = ServerTls.load(settings.tls_cert, settings.tls_key)
    # One SIGHUP handler runs every reload (the TLS certificate, the master key), installed
    # before the ready line: a SIGHUP right after it must not kill us.
    on_hangup: list[Callable[[], object]] = []
    if tls is not None:
        on_hangup.append(tls.reload)
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGHUP, lambda: [reload() for reload in on_hangup]
    )
    if settings.production:
        await check_at_start(settings)
    svc, store_kind = await build_services(settings, clock or SystemClock())
    store, cluster = svc.store, svc.cluster
    history = History(svc.clock)
    endpoints = OperationsEndpoints(
        svc,
        started=svc.clock.monotonic(),
        history=history,
        schema=SchemaWatch(store, clock=svc.clock) if settings.production else None,
    )
    try:
        admin = await AdminListener.open(settings, endpoints, None if tls is None else tls.context)
    except ConfigError:  # the admin address cannot be listened on
        await store.close()
        raise
    relay_server = RelayServer(
        svc, endpoints, tls=None if tls is None else tls.context, reuse_port=as_worker
    )
    server = await relay_server.start()
    port = relay_server.port()
    cluster.start()
    scheme = "ws" if tls is None else "wss"
    print(f"relay: serving on {scheme}://{settings.host}:{port}/v1/ws", flush=True)
    log.info("node id %s", cluster.node_id)
    log.info("serving on %s:%s with the %s store", settings.host, port, store_kind)
    if isinstance(store, BlindedStore):
        blinded = store
        on_hangup.append(lambda: svc.spawn(_reload_master_key(svc, blinded)))
    settle_after_start()
    await _serve_until_signal(svc, server, history, admin, as_worker=as_worker)
    return 0


async def build_services(settings: Settings, clock: Clock) -> tuple[Services, str]:
    """The store, the registries and the cluster, wired together; and the store's kind."""
    metrics = Metrics()
    store, store_kind = await open_store(
        settings,
        observe=metrics.observe_backend,
        on_undecryptable=lambda reason: metrics.undecryptable.labels(reason).inc(),
        may_wait=True,
    )
    router = Router()
    messages = ReceiptingQueue(
        store.messages,
        now_ms=clock.now_ms,
        on_receipts=lambda receipts: receipts_made(svc, receipts),
    )
    cluster = open_cluster(
        settings,
        router=router,
        messages=messages,
        spawn=lambda work: svc.spawn(work),
        clock=clock,
        observe=metrics.observe_backend,
    )
    svc = Services(
        settings=settings,
        store=store,
        router=router,
        metrics=metrics,
        clock=clock,
        limits=Limits(
            max_body_bytes=settings.max_body_bytes, max_backup_bytes=settings.backup_limit
        ),
        cluster=cluster,
        messages=messages,
    )
    return svc, store_kind


def receipts_made(svc: Services, receipts: list[Envelope]) -> None:
    """After an ack's commit: the sender's devices connected here pump their receipts now,
    those on other nodes are told (spawned: the acknowledging device never waits on it)."""
    svc.metrics.receipts.labels("created").inc(len(receipts))
    for receipt in receipts:
        svc.router.notify_stored(receipt.recipient_user, receipt.recipient_device)
    svc.spawn(svc.cluster.announce_stored(receipts))


async def _serve_until_signal(
    svc: Services,
    server: Server,
    history: History,
    admin: AdminListener | None,
    *,
    as_worker: bool = False,
) -> None:
    """Run the background upkeep until SIGTERM or SIGINT, then shut down in order."""
    settings, store, metrics = svc.settings, svc.store, svc.metrics
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    unwatch = watch_parent(stop) if as_worker else None
    purger = asyncio.create_task(_purge_forever(svc))
    queue_depth = asyncio.create_task(
        refresh_forever(store.messages, metrics, backups=store.backups)
    )
    upkeep = [purger, queue_depth]
    if isinstance(store, BlindedStore):
        upkeep.append(asyncio.create_task(_refresh_keys_forever(svc, store)))
    loop_lag = LoopLagMonitor(metrics)
    loop_lag.start()
    sampler = HistorySampler(history, lambda: read_metrics(metrics), svc.clock)
    sampler.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        if unwatch is not None:
            unwatch()
        begun = loop.time()
        deadline = begun + settings.shutdown_timeout
        await stop_tasks(upkeep)
        loop_lag.stop()
        await sampler.stop()
        await _close_connections(server, svc, deadline)
        await svc.drain_background(max(0.0, deadline - loop.time()))
        if admin is not None:
            await admin.stop()
        await svc.cluster.stop()  # leaves the node registry; the presence entries are released
        await store.close()  # applies the writes already queued (group-commit batches)
        # Tasks still running (a connection's last store call, a spawned publish) are stopped
        # here, bounded, rather than by asyncio.run, which waits for them without a bound.
        current = asyncio.current_task()
        await stop_tasks([t for t in asyncio.all_tasks() if t is not current], within_s=2.0)
        log.info("stopped", extra={"fields": {"duration_s": round(loop.time() - begun, 3)}})


async def _close_connections(server: Server, svc: Services, deadline: float) -> None:
    """Stop accepting, then close every client with 1001 so it reconnects elsewhere: sessions
    after the frames already queued for them, the connections still in their handshake after
    that. Bounded by the shutdown deadline (loop time); sessions that do not close in half the
    time (a client that stopped reading) are closed directly with the rest."""
    loop = asyncio.get_running_loop()
    server.close(close_connections=False)  # stop accepting; websockets acts on the first call
    sessions = svc.router.sessions()
    for session in sessions:
        session.out.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
    if sessions:
        waits = [asyncio.ensure_future(s.reader_done.wait()) for s in sessions]
        _, pending = await asyncio.wait(waits, timeout=max(0.0, deadline - loop.time()) / 2)
        for waiting in pending:
            waiting.cancel()
    closers = [
        asyncio.create_task(ws.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON))
        for ws in server.connections
    ]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await server.wait_closed()
    for closer in closers:
        closer.cancel()


async def _purge_forever(svc: Services) -> None:
    """Expired stored messages and key events past the audit retention are deleted in the
    background."""
    while True:
        try:
            now_ms = svc.clock.now_ms()
            deleted = await svc.store.messages.purge_expired(now_ms)
            if deleted:
                log.info("purged %d expired messages", deleted)
            events = await svc.store.audit.purge_events(svc.settings.audit_cutoff_ms(now_ms))
            if events:
                log.info("purged %d key events past the audit retention", events)
            vault = svc.store.vault if isinstance(svc.store, BlindedStore) else None
            if vault is not None:
                keys = await vault.delete_unused()
                if keys:
                    log.info("deleted data keys %s: no stored message uses them", keys)
        except StorageError:
            log.warning("purge skipped: store unavailable")
        await asyncio.sleep(svc.settings.purge_interval)


async def _refresh_keys_forever(svc: Services, store: BlindedStore) -> None:
    """Pick up data keys other nodes or `relay keys` made, and rotate the active one when due.
    When the keys turn out wrapped by another master key (`relay keys rotate-master` ran),
    the key file is read again, as on SIGHUP."""
    while True:
        await asyncio.sleep(REFRESH_INTERVAL_S)
        try:
            vault = await store.key_access.open()  # loads them if the store was down at start
            await vault.refresh()
        except StorageError:
            log.warning("data key refresh skipped: store unavailable")
        except MasterKeyError as exc:
            log.warning("data key refresh: %s; reading the master key file again", exc)
            await _reload_master_key(svc, store)


async def _reload_master_key(svc: Services, store: BlindedStore) -> None:
    """SIGHUP: read the master key file again (after `relay keys rotate-master`), then the
    keys. A file that cannot be read, or a key that is not the one the store's keys are
    wrapped by, leaves the node on the key it has."""
    settings = svc.settings
    path = settings.master_key_file or settings.data_dir / DEFAULT_KEY_FILE
    try:
        wrapper = LocalKeyFile(await asyncio.to_thread(read_key_file, path))
    except MasterKeyError as exc:
        log.error("master key not reloaded: %s", exc)
        return
    vault = store.vault
    if vault is None:
        log.warning("master key not reloaded: the keys are not loaded yet (store unavailable)")
        return
    previous = vault.master_key_id
    try:
        await vault.use_master(wrapper)
    except MasterKeyError as exc:
        log.error("master key not reloaded: %s", exc)
        return
    except StorageError:
        log.warning("master key not reloaded: store unavailable; send SIGHUP again")
        return
    log.info("master key reloaded: %s (was %s)", wrapper.key_id, previous)
