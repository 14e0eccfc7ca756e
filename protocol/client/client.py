"""The asyncio client of one device: connect, stay connected, send and receive messages.

    async with Client.open(url, "alice-store", passphrase) as alice:
        if not alice.registered:
            await alice.register()
        await alice.send(bob_user_id, b"hello")

Three tasks run while the client is open and registered:

- the **connection loop** connects, authenticates, keeps pre-keys topped up,
  hands pushes to the receive path in arrival order, and reconnects with
  exponential backoff and full jitter when the connection ends;
- the **outbox loop** sends persisted outbox entries one at a time, oldest
  first, so messages to a user leave in the order they were written;
- the **release loop** hands on messages that waited too long for an earlier
  one from the same sender.

A delivery is acknowledged only after the application's handler returned and
the session state it advanced is written to the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from ssl import SSLContext

from websockets.uri import parse_uri

from protocol.client.backup import RecoveryKey, open_backup
from protocol.client.content import Kind
from protocol.client.errors import (
    ClientError,
    ClientStopped,
    ConnectionLost,
    NotRegistered,
    RequestRefused,
    SendFailed,
    TlsSetupError,
)
from protocol.client.group import GroupReceipt, GroupSender
from protocol.client.inbound import Inbound, MessageHandler
from protocol.client.key_backup import KeyBackup
from protocol.client.messages import (
    ClientOptions,
    ClientStats,
    ConnectionChange,
    DeliveryReceipt,
    IncomingMessage,
    LinkTicket,
    SendReceipt,
)
from protocol.client.outbox import OutboxSender
from protocol.client.peers import IdentityChange, Peers
from protocol.client.prekey_upkeep import KeyKeeper
from protocol.client.state import Account, ClientState, OutboxEntry
from protocol.client.store import LocalStore
from protocol.crypto.device_keys import DeviceKeys
from protocol.errors import CloseCode, ErrorCode
from protocol.frames import (
    AuthOk,
    BackupOk,
    BackupRecover,
    Deliver,
    DeviceInfo,
    DevicesList,
    DevicesListOk,
    DevicesRemove,
    EmptyOk,
    Error,
    KeysCount,
    KeysCountOk,
    KeysLow,
    Link,
    QueueEmpty,
    Receipt,
    Request,
)
from protocol.payloads import backup_recover_payload, link_payload
from protocol.signatures import KeyScheme
from protocol.wire import CONNECT_ERRORS, WireConnection, WireOptions
from protocol.wire.connection import A

__all__ = ["Client", "MessageHandler", "ReceiptHandler"]

log = logging.getLogger("relay.client")


IdentityHandler = Callable[[IdentityChange], None]
ConnectionHandler = Callable[[ConnectionChange], None]
ReceiptHandler = Callable[[DeliveryReceipt], Awaitable[None]]
_RECENT_RECEIPTS = 1024  # receipt ids remembered to drop a repeat (delivery is at least once)

# Handshake refusals worth another try: the relay's backend is down, or it is busy.
_TRANSIENT = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.RATE_LIMITED})
_STABLE_S = 10.0
_FINAL_CLOSES = {int(CloseCode.REPLACED): "replaced", int(CloseCode.REMOVED): "removed"}


def _now_ms() -> int:
    return int(time.time() * 1000)


class Client:
    """One device. Use :meth:`open`; everything else is safe to call from the event loop."""

    def __init__(
        self,
        url: str,
        state: ClientState,
        keys: DeviceKeys,
        *,
        on_message: MessageHandler | None,
        on_identity_change: IdentityHandler | None,
        options: ClientOptions,
        ssl: SSLContext | None = None,
        on_connection_change: ConnectionHandler | None = None,
        on_receipt: ReceiptHandler | None = None,
    ) -> None:
        self.url = url
        self.options = options
        self.state = state
        self.stats = ClientStats()
        self._inbox: asyncio.Queue[IncomingMessage] = asyncio.Queue()
        self._receipts: asyncio.Queue[DeliveryReceipt] = asyncio.Queue()
        self._receipt_handler = on_receipt or self._receipts.put
        self._recent_receipts: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._identity_handler = on_identity_change or self._log_identity_change
        self._connection_handler = on_connection_change
        self.peers = Peers(state, keys, self._identity_handler)
        self._stop = asyncio.Event()
        self._stopped_because: ClientError | None = None
        self._conn: WireConnection | None = None
        self._connected = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._outbox_progress = asyncio.Event()
        self._waiters: dict[int, asyncio.Future[SendReceipt]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._conn_opts = WireOptions(
            fmt=options.fmt,
            open_timeout=options.open_timeout,
            request_timeout=options.request_timeout,
            ssl=ssl,
        )
        self._sender = OutboxSender(state, self.peers, options, self._sleep)
        self._group = GroupSender(state, self.peers, options, self._sleep)
        self._keeper = KeyKeeper(state, self.peers, options)
        self.backup = KeyBackup(self)
        self._inbound = Inbound(
            state,
            self.peers,
            options,
            self.stats,
            on_message or self._inbox.put,
            current=lambda: self._conn,
            sleep=self._sleep,
            stop_or=self._stop_or,
        )

    # --- opening and closing ---------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        url: str,
        store_dir: str | Path,
        passphrase: str,
        *,
        on_message: MessageHandler | None = None,
        on_identity_change: IdentityHandler | None = None,
        scheme: KeyScheme = KeyScheme.ED25519,
        options: ClientOptions | None = None,
        ssl: SSLContext | None = None,
        on_connection_change: ConnectionHandler | None = None,
        on_receipt: ReceiptHandler | None = None,
    ) -> AsyncIterator[Client]:
        """Open (or create) the device's store and, once registered, stay connected.

        A new store gets a fresh identity in `scheme` and its pre-keys; call
        :meth:`register` (new user) or :meth:`register_linked` (new device of a
        user) once. Without `on_message`, read messages with :meth:`receive`.
        A `wss://` URL is verified with `ssl` (see :func:`tls_context`), or with the
        system's CAs when it is None.
        `on_connection_change` hears every connection and every failed attempt.
        `on_receipt` hears the delivery receipts of messages sent with `receipt=True`
        (without it, read them with :meth:`next_receipt`).
        """
        options = options or ClientOptions()
        # A URL that can never work fails here, not in the reconnect loop.
        if not parse_uri(url).secure and ssl is not None:
            raise TlsSetupError(f"a TLS context is for wss:// URLs; {url} is not one")
        state, keys = await asyncio.to_thread(
            _load_or_create, store_dir, passphrase, scheme, options
        )
        client = cls(
            url,
            state,
            keys,
            on_message=on_message,
            on_identity_change=on_identity_change,
            options=options,
            ssl=ssl,
            on_connection_change=on_connection_change,
            on_receipt=on_receipt,
        )
        try:
            if client.registered:
                client._start(None)
            yield client
        finally:
            await client.close()

    @classmethod
    @contextlib.asynccontextmanager
    async def restore(
        cls,
        url: str,
        recovery_key: RecoveryKey | str,
        *,
        store: str | Path,
        passphrase: str,
        on_message: MessageHandler | None = None,
        on_identity_change: IdentityHandler | None = None,
        scheme: KeyScheme = KeyScheme.ED25519,
        options: ClientOptions | None = None,
        ssl: SSLContext | None = None,
        on_connection_change: ConnectionHandler | None = None,
    ) -> AsyncIterator[Client]:
        """A new device of a user, from the user's key backup: opens (or creates) the store
        `store` with a fresh identity, reads the backup with `recovery_key` (a
        :class:`RecoveryKey` or its 64-character code), links the device into the account
        in the name of the device that saved the backup (which must still be active), and
        restores the contact list. Then as :meth:`open`. A store that holds an account
        already is refused (ClientError); one left by a failed restore is used again.
        Raises BackupUnreadable for a wrong recovery key, RequestRefused for the relay's
        refusals (`not_found`: no backup with this key; `rate_limited`: the user's reads
        for the day are spent)."""
        key = RecoveryKey.from_code(recovery_key) if isinstance(recovery_key, str) else recovery_key
        async with cls.open(
            url,
            store,
            passphrase,
            on_message=on_message,
            on_identity_change=on_identity_change,
            scheme=scheme,
            options=options,
            ssl=ssl,
            on_connection_change=on_connection_change,
        ) as client:
            if client.registered:
                raise ClientError(f"{store} holds an account already: restore into a new store")
            await client._restore(key)
            yield client

    async def _restore(self, recovery_key: RecoveryKey) -> None:
        conn = await WireConnection.open(self.url, self._conn_opts)
        try:
            access = recovery_key.access_key_pair()
            payload = backup_recover_payload(conn.challenge.nonce, access.public_key)
            found = await conn.request(
                BackupRecover(
                    rid=conn.next_rid(),
                    access_key=access.public_key,
                    signature=access.sign(payload),
                ),
                BackupOk,
            )
            contents = await asyncio.to_thread(open_backup, recovery_key, found.user, found.blob)
            signature = contents.identity.sign(link_payload(found.user, self.identity_key))
        except BaseException:
            await conn.close()
            raise
        self.state.save_contacts(contents.contacts)
        self.state.save_backup_version(found.version)
        # The same connection, the same challenge: the relay expects the register now.
        await self._register(
            user=found.user, link=Link(device=contents.device, signature=signature), conn=conn
        )

    async def close(self) -> None:
        """Make sure the acks sent so far landed, close the connection, stop, close the store."""
        if self._stop.is_set() and not self._tasks:
            return
        conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(ClientError, TimeoutError):
                async with asyncio.timeout(5):
                    await conn.request(KeysCount(rid=conn.next_rid()), KeysCountOk)
        self._stop.set()
        tasks = list(self._tasks)  # finished background tasks remove themselves from the list
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if conn is not None:
            await conn.close()
        self._fail_waiters(ClientStopped("the client is closed"))
        self.state.store.close()

    # --- identity ----------------------------------------------------------------

    @property
    def registered(self) -> bool:
        return self.state.account is not None

    @property
    def user(self) -> str:
        if self.state.account is None:
            raise NotRegistered("this device is not registered yet")
        return self.state.account.user

    @property
    def device(self) -> int:
        if self.state.account is None:
            raise NotRegistered("this device is not registered yet")
        return self.state.account.device

    @property
    def identity_key(self) -> bytes:
        return self.peers.keys.identity.public_key

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- registration ----------------------------------------------------------

    async def register(self, *, token: str | None = None) -> str:
        """Create a new user with this device as device 1; returns the user id."""
        await self._register(token=token)
        return self.user

    async def register_linked(self, ticket: LinkTicket) -> int:
        """Join the user of `ticket` as a new device (see :meth:`link_device`); its number."""
        await self._register(
            user=ticket.user, link=Link(device=ticket.device, signature=ticket.signature)
        )
        return self.device

    def link_device(self, new_identity_key: bytes) -> LinkTicket:
        """Consent, as this device, to a new device of the same user (spec §3 link)."""
        signature = self.peers.keys.identity.sign(link_payload(self.user, new_identity_key))
        return LinkTicket(self.user, self.device, signature)

    async def _register(
        self,
        *,
        token: str | None = None,
        user: str | None = None,
        link: Link | None = None,
        conn: WireConnection | None = None,
    ) -> None:
        """`conn`: a connection still in its handshake (after a `backup.recover`)."""
        if self.registered:
            raise ClientError("this device is registered already")
        keys = self.peers.keys
        if conn is None:
            conn = await WireConnection.open(self.url, self._conn_opts)
        try:
            ok = await conn.register(
                keys.identity,
                registration_id=keys.registration_id,
                token=token,
                user=user,
                link=link,
            )
        except BaseException:
            await conn.close()
            raise
        self.state.save_account(Account(ok.user, ok.device))
        try:
            uploaded = await self._keeper.upload_all(conn)
        except (*CONNECT_ERRORS, RequestRefused) as exc:
            # The account exists: the next connection's top-up uploads what is missing.
            log.warning("the first pre-key upload did not complete: %s", exc)
            await conn.close()
            self._start(None)
            return
        # The connection goes on with the counts as they are now: nothing to top up.
        ok = dataclasses.replace(
            ok,
            prekeys=uploaded.prekeys,
            pq_prekeys=uploaded.pq_prekeys,
            rotate_signed_prekey=False,
        )
        self._start((conn, ok))

    # --- sending -------------------------------------------------------------------

    def queue(self, to: str, plaintext: bytes, *, receipt: bool = False) -> bytes:
        """Put a message in the persisted outbox; it is sent (and retried) in the background.

        Returns the message id. A copy for this user's other devices is queued with it.
        With `receipt`, every device of this user gets a :class:`DeliveryReceipt` when a
        copy the relay had to store is acknowledged by its recipient device.
        """
        self._check_running()
        to = str(uuid.UUID(to))
        if len(plaintext) > self.options.max_plaintext_bytes:
            raise ValueError(f"a message is at most {self.options.max_plaintext_bytes} bytes")
        if len(self.state.outbox) + 2 > self.options.max_outbox:
            raise ClientError("the outbox is full: the relay has not been reachable for a while")
        main = self._enqueue(to, Kind.MESSAGE, plaintext, None, receipt=receipt)
        if to != self.user:
            self._enqueue(self.user, Kind.SENT_COPY, plaintext, to)
        return main.id

    async def send(self, to: str, plaintext: bytes, *, receipt: bool = False) -> SendReceipt:
        """Send and wait for the relay's `ok` for every device (the copies included).

        With `receipt`, the devices in the answer's `stored` list each bring a
        :class:`DeliveryReceipt` later, when they acknowledge the message.

        Raises :class:`SendFailed` when the relay refuses the message for good.
        If the client closes first, the message stays in the outbox and goes
        out the next time the store is opened.
        """
        to = str(uuid.UUID(to))
        first = self.state.next_local_id
        message_id = self.queue(to, plaintext, receipt=receipt)
        futures = [
            self._waiters[local_id]
            for local_id in range(first, self.state.next_local_id)
            if local_id in self._waiters
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results[1:]:
            if isinstance(result, BaseException):
                log.warning("the copy for this user's other devices failed: %s", result)
        main = results[0]
        if isinstance(main, BaseException):
            raise main
        assert main.id == message_id
        return main

    async def send_group(
        self,
        members: Sequence[str],
        plaintext: bytes,
        *,
        shared: bool = True,
        receipt: bool = False,
    ) -> GroupReceipt:
        """Send one message to every device of `members` in one `send.multi` frame and wait
        for the relay's `ok` (docs/client.md, Group messages).

        `shared=True` seals the plaintext once as the frame's shared payload, each device
        getting its key through its session (the relay stores the payload once);
        `shared=False` encrypts the whole plaintext for each device. Include this user's id
        in `members` to reach its other devices. Device-list changes are fixed and the frame
        sent again, a lost connection retried with the same id and nonce (delivered once);
        raises :class:`SendFailed` when the relay refuses it for good. Unlike `send`, the
        message is not kept in the persisted outbox: a client closed before the answer sends
        it again. `receipt=True` asks for a delivery receipt of each copy the relay stores
        (as on `send`: they arrive through `on_receipt` / `next_receipt`).
        """
        self._check_running()
        if len(plaintext) > self.options.max_plaintext_bytes:
            raise ValueError(f"a message is at most {self.options.max_plaintext_bytes} bytes")
        message = self._group.new_message(members, plaintext, shared=shared, receipt=receipt)
        while True:
            conn = await self._wait_connection()
            try:
                return await self._group.deliver(conn, message)
            except ConnectionLost:
                await self._stop_or(conn.wait_closed())

    def _enqueue(
        self, to: str, kind: Kind, body: bytes, sent_to: str | None, *, receipt: bool = False
    ) -> OutboxEntry:
        entry = self.state.add_outbox(
            lambda local_id: OutboxEntry(
                local_id=local_id,
                to=to,
                id=uuid.uuid4().bytes,
                nonce=secrets.token_bytes(24),
                kind=kind,
                body=body,
                sent_to=sent_to,
                receipt=receipt,
            )
        )
        waiter: asyncio.Future[SendReceipt] = asyncio.get_running_loop().create_future()
        # A message queued without waiting may fail unobserved: that is not an error here.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiters[entry.local_id] = waiter
        self._outbox_wake.set()
        return entry

    async def flush(self) -> None:
        """Wait until the outbox is empty: every message answered `ok` or refused for good."""
        while self.state.outbox:
            self._check_running()
            self._outbox_progress.clear()
            await self._stop_or(self._outbox_progress.wait())

    async def _outbox_loop(self) -> None:
        while not self._stop.is_set():
            if not self.state.outbox:
                self._outbox_wake.clear()
                await self._stop_or(self._outbox_wake.wait())
                continue
            entry = self.state.outbox[0]
            conn = await self._wait_connection()
            try:
                result: SendReceipt | ClientError = await self._sender.deliver(conn, entry)
            except ConnectionLost:
                await self._stop_or(conn.wait_closed())
                continue
            except SendFailed as exc:
                log.warning("message %s to %s refused: %s", entry.id.hex(), entry.to, exc)
                result = exc
            except ClientStopped:
                raise
            except Exception as exc:
                # A bug or a failing disk: this message fails, the next ones still go.
                log.exception("message %s to %s could not be sent", entry.id.hex(), entry.to)
                result = ClientError(f"the message could not be sent: {exc!r}")
            self.state.remove_outbox(entry)
            self._outbox_progress.set()
            waiter = self._waiters.pop(entry.local_id, None)
            if waiter is not None and not waiter.done():
                if isinstance(result, ClientError):
                    waiter.set_exception(result)
                else:
                    waiter.set_result(result)

    def _fail_waiters(self, exc: ClientError) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(exc)
        self._waiters.clear()

    # --- receiving -----------------------------------------------------------------

    async def receive(self) -> IncomingMessage:
        """The next message, when the client was opened without `on_message`."""
        return await self._inbox.get()

    async def next_receipt(self) -> DeliveryReceipt:
        """The next delivery receipt, when the client was opened without `on_receipt`."""
        return await self._receipts.get()

    async def caught_up(self) -> None:
        """Wait until connected and every message the relay held at connect time is handled."""
        await self._wait_connection()
        await self._stop_or(self._caught_up.wait())
        self._check_running()

    async def _dispatch(self, conn: WireConnection) -> None:
        async for push in conn.pushes():
            if isinstance(push, Deliver):
                await self._inbound.on_deliver(conn, push)
            elif isinstance(push, KeysLow):
                self._spawn(
                    self._keeper.top_up(
                        conn, push.prekeys, push.pq_prekeys, rotate=False, at_connect=False
                    )
                )
            elif isinstance(push, Receipt):
                await self._on_receipt(conn, push)
            elif isinstance(push, QueueEmpty):
                self._caught_up.set()
            elif isinstance(push, Error):
                log.warning("relay reported %s: %s", push.code, push.message)
            else:
                # A late answer (its request gave up) or a frame of a newer relay.
                log.debug("ignoring a frame from the relay: %s", push.reason)

    async def _on_receipt(self, conn: WireConnection, frame: Receipt) -> None:
        """Hand a receipt to the application once, then acknowledge it (a repeat of one
        handed out lately is only acknowledged)."""
        if frame.id not in self._recent_receipts:
            await self._receipt_handler(
                DeliveryReceipt(frame.message_id, frame.user, frame.device, frame.server_ts)
            )
            self._recent_receipts[frame.id] = None
            if len(self._recent_receipts) > _RECENT_RECEIPTS:
                self._recent_receipts.popitem(last=False)
        await conn.ack([frame.id])  # lost with the connection: pushed again, dropped then

    # --- the connection loop ---------------------------------------------------------

    def _start(self, first: tuple[WireConnection, AuthOk] | None) -> None:
        self._tasks.append(asyncio.create_task(self._connection_loop(first), name="relay-conn"))
        self._tasks.append(asyncio.create_task(self._outbox_loop(), name="relay-outbox"))
        self._tasks.append(asyncio.create_task(self._inbound.release_loop(), name="relay-release"))

    async def _connection_loop(self, first: tuple[WireConnection, AuthOk] | None) -> None:
        attempt = 0
        while not self._stop.is_set():
            if first is not None:
                conn, ok = first
                first = None
            else:
                try:
                    conn, ok = await self._authenticate()
                except RequestRefused as exc:
                    if exc.code not in _TRANSIENT:
                        self._halt(ClientStopped(f"the relay refused this device: {exc}"))
                        return
                    attempt += 1
                    delay = self.options.backoff.delay(attempt)
                    self._report(ConnectionChange(False, exc, delay))
                    await self._sleep(delay)
                    continue
                except CONNECT_ERRORS as exc:
                    delay = self.options.backoff.delay(attempt)
                    log.info("cannot reach the relay (%s); next try in %.2fs", exc, delay)
                    self._report(ConnectionChange(False, exc, delay))
                    attempt += 1
                    await self._sleep(delay)
                    continue
            started = time.monotonic()
            self.stats.connects += 1
            self._caught_up.clear()
            self._conn = conn
            self._connected.set()
            self._report(ConnectionChange(True))
            self._spawn(
                self._keeper.top_up(
                    conn,
                    ok.prekeys,
                    ok.pq_prekeys,
                    rotate=ok.rotate_signed_prekey,
                    at_connect=True,
                )
            )
            try:
                await self._dispatch(conn)
            except ClientStopped:
                raise
            except Exception:
                # A bug or a failing disk: start afresh; unacked messages come again.
                log.exception("handling a push from the relay failed; reconnecting")
                conn.abort()
            finally:
                self._connected.clear()
                self._caught_up.clear()
                self._conn = None
                await conn.close()
            reason = _FINAL_CLOSES.get(conn.close_code or 0)
            if reason is not None:
                self._halt(ClientStopped(f"the relay closed this device's connection: {reason}"))
                return
            # A connection that ends soon after it began counts as a failed attempt.
            attempt = 0 if time.monotonic() - started > _STABLE_S else attempt + 1
            delay = self.options.backoff.delay(attempt)
            lost = ConnectionLost(conn.close_code, conn.close_reason)
            self._report(ConnectionChange(False, lost, delay))
            await self._sleep(delay)

    async def _authenticate(self) -> tuple[WireConnection, AuthOk]:
        conn = await WireConnection.open(self.url, self._conn_opts)
        try:
            ok = await conn.auth(self.peers.keys.identity, self.user, self.device)
        except BaseException:
            await conn.close()
            raise
        return conn, ok

    def _halt(self, reason: ClientStopped) -> None:
        log.warning("%s", reason)
        self._stopped_because = reason
        self._stop.set()
        self._fail_waiters(reason)
        self._report(ConnectionChange(False, reason, None))

    def _report(self, change: ConnectionChange) -> None:
        if self._connection_handler is None:
            return
        try:
            self._connection_handler(change)
        except Exception:
            log.exception("the connection-change handler raised")

    async def stopped(self) -> ClientError:
        """Wait until the client stops (closed, or ended by the relay); the reason."""
        await self._stop.wait()
        return self._stopped_because or ClientStopped("the client is closed")

    def _check_running(self) -> None:
        if self._stopped_because is not None:
            raise self._stopped_because
        if self._stop.is_set():
            raise ClientStopped("the client is closed")

    async def _wait_connection(self) -> WireConnection:
        while True:
            self._check_running()
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            await self._stop_or(self._connected.wait())

    async def wait_connected(self) -> None:
        """Wait until the device is connected and authenticated."""
        await self._wait_connection()

    async def key_counts(self) -> KeysCountOk:
        """The relay's count of this device's one-time pre-keys, and its signed pre-key's age."""
        return await self._retrying(lambda rid: KeysCount(rid=rid), KeysCountOk)

    async def devices(self) -> tuple[DeviceInfo, ...]:
        """This user's active devices."""
        return (await self._retrying(lambda rid: DevicesList(rid=rid), DevicesListOk)).devices

    def contacts(self) -> list[str]:
        """The other users this device knows: those it has sessions with, and those a key
        backup restored."""
        return sorted(set(self.state.contact_keys(self.user)))

    async def remove_device(self, device: int) -> None:
        """Remove a device of this user (device 1 may remove any; others only themselves)."""
        conn = await self._wait_connection()
        await conn.request(DevicesRemove(rid=conn.next_rid(), device=device), EmptyOk)

    async def _retrying(self, make: Callable[[int], Request], answer_type: type[A]) -> A:
        """A request that is safe to repeat, sent again on the next connection if this one ends."""
        while True:
            conn = await self._wait_connection()
            try:
                return await conn.request(make(conn.next_rid()), answer_type)
            except ConnectionLost:
                await self._stop_or(conn.wait_closed())

    def drop_connection(self) -> None:
        """Abort the socket without a closing handshake, as a network failure would.

        The client reconnects by itself; unanswered sends are sent again.
        """
        conn = self._conn
        self._caught_up.clear()
        if conn is not None:
            conn.abort()

    # --- helpers -------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except ClientError as exc:
                log.info("background request ended: %s", exc)
            except Exception:
                log.exception("background request failed")

        task = asyncio.create_task(run())
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _stop_or(self, waitable: Awaitable[object]) -> None:
        """Wait for `waitable` or for the client to stop, whichever comes first."""
        inner = asyncio.ensure_future(waitable)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({inner, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (inner, stop):
                if not fut.done():
                    fut.cancel()
        self._check_running()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop_or(asyncio.Event().wait())

    def _log_identity_change(self, change: IdentityChange) -> None:
        log.warning(
            "the identity key of %s/%s changed (was %s, now %s)",
            change.user,
            change.device,
            change.old_key.hex(),
            change.new_key.hex(),
        )


def _load_or_create(
    store_dir: str | Path, passphrase: str, scheme: KeyScheme, options: ClientOptions
) -> tuple[ClientState, DeviceKeys]:
    """Blocking (Argon2id, key generation): run in a thread."""
    if LocalStore.exists(store_dir):
        store = LocalStore.open(store_dir, passphrase)
    else:
        store = LocalStore.create(store_dir, passphrase, limits=options.kdf)
    try:
        state = ClientState(store, seen_capacity=options.seen_capacity)
        data = state.load_keys()
        if data is None:
            keys = DeviceKeys.generate(
                scheme,
                prekeys=options.prekey_batch,
                pq_prekeys=options.prekey_batch,
                now_ms=_now_ms(),
            )
            state.save_keys(keys.to_bytes())
        else:
            keys = DeviceKeys.from_bytes(data)
    except BaseException:
        store.close()
        raise
    return state, keys
