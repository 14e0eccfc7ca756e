"""One WebSocket from accept to close: challenge, handshake, then the frame loop.

States, as a table:

    state               entered when             accepted frames        on an error
    AWAITING_HANDSHAKE  `challenge` written      `register`, `auth`,    answer, close 1008
                                                 one `backup.recover`
                                                 first (then still
                                                 AWAITING_HANDSHAKE)
    AUTHENTICATED       `auth.ok` written        requests and `ack`     answer, stay open
                                                 (`register`, `auth`:   (1008 once the
                                                 `forbidden`)           bad-frame budget
                                                                        is spent)
    CLOSED              a close queued, or the   none                   -
                        socket closed

The deliveries of an AUTHENTICATED connection follow `relay.delivery.DeliveryWindow`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from protocol.codec import WireFormat, decode_client_frame
from protocol.errors import CloseCode, ErrorCode, FrameError, Refused
from protocol.frames import (
    Ack,
    Auth,
    AuthOk,
    BackupDelete,
    BackupGet,
    BackupPut,
    BackupRecover,
    Challenge,
    DevicesList,
    DevicesRemove,
    KeysCount,
    KeysFetch,
    KeysUpload,
    Register,
    Send,
    SendMulti,
)
from relay import backups, devices, handshake, prekeys
from relay.buckets import TokenBucket
from relay.connlog import ConnectionLog
from relay.device_session import DeviceSession
from relay.frame_deadline import FrameDeadline
from relay.multi_sending import handle_send_multi
from relay.outbound import Outbound
from relay.prekeys import signed_prekey_age_s
from relay.replies import error_frame
from relay.sending import handle_send
from relay.services import Services
from storage.errors import StorageError
from storage.errors import Unavailable as StorageUnavailable

log = logging.getLogger("relay.connection")

Handler = Callable[[Services, DeviceSession, Any], Awaitable[None]]

HANDLERS: dict[type[Any], Handler] = {
    Send: handle_send,
    SendMulti: handle_send_multi,
    KeysUpload: prekeys.upload,
    KeysFetch: prekeys.fetch,
    KeysCount: prekeys.count,
    DevicesList: devices.list_devices,
    DevicesRemove: devices.remove,
    BackupPut: backups.put,
    BackupGet: backups.get,
    BackupDelete: backups.delete,
}

REPLACED_CLOSE_WAIT_S = 5.0
REQUEST_TIMEOUT_FACTOR = 10  # a request may make several store calls in a row
# A connection closed in its handshake has this long to answer the close frame (a client
# answers at once; a flood's socket is not held for the full close timeout).
HANDSHAKE_CLOSE_GRACE_S = 1.0


async def serve_connection(
    svc: Services,
    ws: ServerConnection,
    fmt: WireFormat,
    *,
    deadline: float,
    opened: Callable[[], None],
    address: str,
) -> None:
    """`deadline` (loop time) ends the handshake, counted from the TCP accept; `opened` is
    called when the handshake is over, whatever its outcome (relay.opening); `address`: the
    client's, as the per-address limits count it."""
    svc.metrics.connection_opened()
    conn_log = ConnectionLog.opened(ws, fmt, svc.clock)
    out = Outbound(
        ws,
        fmt,
        limit_bytes=svc.settings.outbound_buffer_bytes,
        stall_s=svc.settings.slow_reader_timeout,
        metrics=svc.metrics,
    )
    session: DeviceSession | None = None
    try:
        try:
            session = await _handshake(svc, ws, fmt, out, deadline, address)
        finally:
            opened()
        if session is not None:
            await _frame_loop(svc, ws, fmt, session)
    except ConnectionClosed:
        pass
    finally:
        svc.metrics.connection_closed()
        if session is not None:
            await session.deletes_done()  # a newer connection must not fetch them again
            session.end()
            svc.router.detach(session)
            svc.cluster.detached(session)
            svc.metrics.authenticated.dec()
            session.reading_finished()
            with contextlib.suppress(StorageError):
                await svc.store.devices.touch(session.user, session.device, svc.clock.now_ms())
        if not out.closing:
            out.close(CloseCode.NORMAL)
        try:
            async with asyncio.timeout(svc.settings.shutdown_timeout):
                await out.finished()
        except TimeoutError:
            out.stop()
        conn_log.closed(
            ws,
            session.user if session is not None else None,
            session.device if session is not None else None,
        )


async def _handshake(
    svc: Services,
    ws: ServerConnection,
    fmt: WireFormat,
    out: Outbound,
    deadline: float,
    address: str,
) -> DeviceSession | None:
    challenge = secrets.token_bytes(32)
    out.write(Challenge(nonce=challenge, server_time=svc.clock.now_ms()))
    rid: int | None = None
    try:
        async with asyncio.timeout_at(deadline):
            data = await ws.recv()
            svc.metrics.frames_in.labels("handshake").inc()
            frame = decode_client_frame(data, fmt, svc.limits)
            if isinstance(frame, BackupRecover):
                # The key-backup extension: a new device reads the backup it restores from,
                # then registers on the same challenge (docs/protocol.md).
                rid = frame.rid
                out.write(await backups.recover(svc, frame, challenge))
                rid = None
                data = await ws.recv()
                svc.metrics.frames_in.labels("handshake").inc()
                frame = decode_client_frame(data, fmt, svc.limits)
                if isinstance(frame, BackupRecover):
                    raise Refused(
                        ErrorCode.FORBIDDEN, "one backup.recover per connection", rid=frame.rid
                    )
            if isinstance(frame, Register | Auth):
                rid = frame.rid
                if isinstance(frame, Register):
                    identity = await handshake.register(svc, frame, challenge, address)
                else:
                    identity = await handshake.authenticate(svc, frame, challenge)
            else:
                raise Refused(
                    ErrorCode.UNAUTHENTICATED,
                    "register or auth first",
                    rid=None if isinstance(frame, Ack) else frame.rid,
                )
            return await _open_session(svc, out, identity, rid)
    except TimeoutError:
        svc.metrics.handshakes.labels("timeout").inc()
        ws.close_timeout = HANDSHAKE_CLOSE_GRACE_S
        out.close(CloseCode.POLICY, "handshake timeout")
    except ConnectionClosed:
        raise
    except Exception as exc:  # every failure is answered precisely, then 1008
        error = error_frame(exc, rid if rid is not None else getattr(exc, "rid", None))
        svc.metrics.handshakes.labels(str(error.code)).inc()
        svc.metrics.rejections.labels(str(error.code)).inc()
        out.write(error)
        ws.close_timeout = HANDSHAKE_CLOSE_GRACE_S
        out.close(CloseCode.POLICY, "handshake failed")
    return None


async def _open_session(
    svc: Services, out: Outbound, identity: handshake.Identity, rid: int
) -> DeviceSession:
    session = DeviceSession(
        user=identity.user,
        device=identity.device,
        out=out,
        messages=svc.messages,
        window=svc.settings.delivery_window,
        now_ms=svc.clock.now_ms,
        requests=TokenBucket(
            rate_per_s=svc.settings.rate_requests,
            burst=svc.settings.rate_requests_burst,
            clock=svc.clock.monotonic,
        ),
        monotonic=svc.clock.monotonic,
        slow_reader_s=svc.settings.slow_reader_timeout,
        store_timeout_s=svc.settings.backend_timeout * REQUEST_TIMEOUT_FACTOR,
        link=svc.cluster,
        # The origin's ack timeout started before the bus carried the delivery here: half
        # of it leaves room for that transit.
        remote_late_s=svc.settings.ack_timeout / 2,
    )
    older = svc.router.attach(session)
    try:
        return await _finish_handshake(svc, out, session, older, rid)
    except BaseException:
        session.end()
        svc.router.detach(session)
        svc.cluster.detached(session)
        raise


async def _finish_handshake(
    svc: Services, out: Outbound, session: DeviceSession, older: DeviceSession | None, rid: int
) -> DeviceSession:
    if older is not None:
        # The newest connection wins. Every frame the older one had received (its acks above
        # all) takes effect before this one counts and drains the queue.
        older.out.close(CloseCode.REPLACED, "replaced by a newer connection")
        try:
            async with asyncio.timeout(REPLACED_CLOSE_WAIT_S):
                await older.reader_done.wait()
        except TimeoutError:
            older.end()
    # Presence says this node holds the device now; a connection on another node is closed
    # with 4001 and waited for the same way (handshake.take_over).
    await handshake.take_over(svc, session)
    now = svc.clock.now_ms()
    # Anything stored once the read has begun changes the epoch (the session is attached, so
    # a local store or another node's notice reaches it): an empty queue then counts as
    # the pump's first fetch only if the epoch has not moved (DeliveryWindow.opened).
    epoch = session.stored_epoch
    queued, _ = await svc.store.messages.queue_state(session.user, session.device, now_ms=now)
    counts = await svc.store.keys.counts(session.user, session.device)
    age = signed_prekey_age_s(counts, now)
    out.write(
        AuthOk(
            rid=rid,
            user=session.user,
            device=session.device,
            queued=queued,
            prekeys=counts.prekeys,
            pq_prekeys=counts.pq_prekeys,
            rotate_signed_prekey=age is None or age > svc.settings.signed_prekey_rotation,
        )
    )
    session.opened(empty_at=epoch if queued == 0 else None)
    svc.metrics.handshakes.labels("ok").inc()
    svc.metrics.authenticated.inc()
    await svc.store.devices.touch(session.user, session.device, now)
    return session


async def _frame_loop(
    svc: Services, ws: ServerConnection, fmt: WireFormat, session: DeviceSession
) -> None:
    session.start_pump()
    bad_frames = TokenBucket(
        rate_per_s=1.0, burst=svc.settings.max_bad_frames, clock=svc.clock.monotonic
    )
    # No frame holds its connection longer than a few backend timeouts: a store that hangs
    # instead of failing is answered `unavailable`, and the connection goes on.
    deadline = FrameDeadline(svc.settings.backend_timeout * REQUEST_TIMEOUT_FACTOR)
    try:
        async for data in ws:
            rid: int | None = None
            deadline.start()
            try:
                frame = decode_client_frame(data, fmt, svc.limits)
                svc.metrics.frames_in.labels(frame.T).inc()
                if isinstance(frame, Ack):
                    await session.on_ack(frame.ids)
                    continue
                rid = frame.rid
                if isinstance(frame, Register | Auth | BackupRecover):
                    raise Refused(ErrorCode.FORBIDDEN, "already authenticated")
                if not isinstance(frame, Send | SendMulti):  # theirs in the spec's order
                    session.check_rate()
                # Acks take effect before any later request: their batched deletes first.
                await session.deletes_done()
                await HANDLERS[type(frame)](svc, session, frame)
            except FrameError as exc:
                svc.metrics.frames_in.labels("invalid").inc()
                svc.metrics.rejections.labels(str(exc.code)).inc()
                session.out.write(error_frame(exc, exc.rid))
                if bad_frames.take():
                    session.out.close(CloseCode.POLICY, "too many bad frames")
                    return
            except ConnectionClosed:
                raise
            except asyncio.CancelledError:
                if not deadline.expired():
                    raise
                timed_out = StorageUnavailable("the store did not answer in time")
                _refuse(svc, session, timed_out, rid, send=isinstance(frame, Send | SendMulti))
            except Exception as exc:  # every failure becomes a precise error frame
                _refuse(
                    svc,
                    session,
                    exc,
                    rid,
                    send=rid is not None and isinstance(frame, Send | SendMulti),
                )
            finally:
                deadline.finish()
            if session.out.closing:
                return
    finally:
        deadline.close()
        session.stop_pump()


def _refuse(
    svc: Services, session: DeviceSession, exc: BaseException, rid: int | None, *, send: bool
) -> None:
    """The error frame of a request that failed; `send`: a send frame refused before it was
    accepted."""
    error = error_frame(exc, rid)
    svc.metrics.rejections.labels(str(error.code)).inc()
    if send:
        svc.metrics.envelopes_rejected.labels(str(error.code)).inc()
    session.out.write(error)
