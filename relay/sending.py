"""`send`: the checks in the spec's order, the two-phase replay guard, routing, the outcome.

The nonce claim and the reads the checks need go to the store together (one round trip),
and the checks then run in the connection's frame order; routing and the wait for acks run
in a background task, so one slow recipient never holds up the sender's later frames. The
answer is written when the outcome (delivered or durable for every device) is reached, and
that outcome is kept under the nonce so a retry is answered the same without a second
delivery.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from protocol.errors import ErrorCode, Refused
from protocol.frames import Send, SendMulti, SendOk
from relay.delivery import SendOrigin
from relay.delivery.outcome import Settled, settle, store_unpushed
from relay.device_session import DeviceSession
from relay.replies import error_frame
from relay.services import Services
from storage.errors import QueueFull, StorageError, Unavailable
from storage.records import (
    DeviceRecord,
    Envelope,
    PendingOrigin,
    ReplayRecord,
    ReplayScope,
    SendOutcome,
)

log = logging.getLogger("relay.send")

RECORD_RETRY_FIRST_S: Final = 0.05  # recording an outcome: retried after 50 ms, doubling
RECORD_RETRY_CAP_S: Final = 0.5
STORE_TIMEOUT_FACTOR = 10  # a group commit may carry many sends

AnySend = Send | SendMulti  # the routing helpers serve `send` and `send.multi` alike
# The message of a `too_large` refusal for full queues: (the full devices, the cap) -> text.
FullQueueMessage = Callable[[list[tuple[str, int]], int], str]


async def handle_send(svc: Services, session: DeviceSession, frame: Send) -> None:
    """Claim the nonce and read what the checks need in one round trip, judge in the spec's
    order, and give the claim back when a check refuses; route and answer in the background.

    Claiming first is what makes the round trip one: the claim answers the replay check (it
    returns the record holding the nonce, if any), and a refused send releases it before its
    error is written, so a refused send never uses up its nonce."""
    scope = ReplayScope(session.user, session.device, frame.to)
    held, recipient_devices, stored_origins = await _claim_and_read(svc, scope, frame)
    if held is not None:
        _answer_from_record(svc, session, frame, scope, held)
        return
    try:
        devices = _check(svc, session, frame, recipient_devices, stored_origins)
    except Exception:  # a refusal (or a fault) before acceptance: the nonce is not used up
        await _give_up(svc, scope, frame)
        raise
    svc.spawn(_route(svc, session, frame, scope, devices))


async def _claim_and_read(
    svc: Services, scope: ReplayScope, frame: Send
) -> tuple[ReplayRecord | None, list[DeviceRecord] | None, list[PendingOrigin]]:
    """The claim's answer (None: taken now), the recipient's devices and the stored origins of
    this id, issued together (claim_and_read)."""
    listed = svc.store.devices.list_devices(frame.to)
    if frame.online:  # an online message is never stored, so it has no stored origins
        held, (devices,) = await claim_and_read(svc, scope, frame, listed)
        return held, devices, []
    targets = [m.device for m in frame.devices]
    stored = svc.store.messages.pending_origins(frame.to, targets, frame.id)
    held, (devices, origins) = await claim_and_read(svc, scope, frame, listed, stored)
    return held, devices, origins


async def claim_and_read(
    svc: Services, scope: ReplayScope, frame: AnySend, *reads: Coroutine[Any, Any, Any]
) -> tuple[ReplayRecord | None, list[Any]]:
    """Claim the frame's nonce and await `reads` with it, issued in the same turn (the store
    batches them): the claim's answer (None: taken now) and the reads' results, in order.
    A read that fails after the claim took the nonce gives it back, so the sender's retry
    finds it free; the first failed read's exception is raised."""
    # Tasks made at once and awaited in turn: as concurrent as asyncio.gather (every call is
    # under way before the first await), at half its cost per send (docs/benchmarks.md).
    loop = asyncio.get_running_loop()
    claim = loop.create_task(
        svc.store.replay.claim(
            scope, frame.nonce, frame.id, pending_ttl_s=svc.settings.replay_pending_ttl
        )
    )
    tasks = [claim, *(loop.create_task(read) for read in reads)]
    try:
        held, *results = [await _outcome(task) for task in tasks]
    except asyncio.CancelledError:
        # The frame's deadline cut the reads short after the claim took the nonce: give it
        # back (in the background: this task is being cancelled), so the retry of the
        # `unavailable` answer finds it free instead of waiting for the claim to expire.
        for task in tasks:
            _abandon(task)
        taken = claim.done() and not claim.cancelled() and claim.exception() is None
        if taken and claim.result() is None:
            svc.spawn(_give_up(svc, scope, frame))
        raise
    if isinstance(held, BaseException):
        raise held
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        if held is None:
            await _give_up(svc, scope, frame)
        raise failed
    return held, results


async def _outcome(task: asyncio.Task[Any]) -> Any:
    """The task's result, or the exception it raised, its own cancellation included (as
    gather's `return_exceptions`). A cancellation of the caller is raised."""
    try:
        return await task
    except asyncio.CancelledError as exc:
        caller = asyncio.current_task()
        if caller is not None and caller.cancelling():
            raise
        return exc
    except Exception as exc:
        return exc


def _abandon(task: asyncio.Task[Any]) -> None:
    """Stop a task nobody will await, and take its exception if it has one, so that it is
    not reported as never retrieved."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


def _answer_from_record(
    svc: Services, session: DeviceSession, frame: Send, scope: ReplayScope, record: ReplayRecord
) -> None:
    """The nonce is held: by an accepted send (its answer, or `replay` for another id), or by
    a send still in flight or being judged (wait for it, whichever its id)."""
    if record.outcome is None:
        svc.spawn(_answer_when_done(svc, session, frame, scope))
        return
    if record.message_id != frame.id:
        svc.metrics.replay_rejections.inc()
        raise Refused(ErrorCode.REPLAY, "nonce already used by another message", rid=frame.rid)
    session.out.write(_ok(frame, record.outcome))


async def _answer_when_done(
    svc: Services, session: DeviceSession, frame: Send, scope: ReplayScope
) -> None:
    """A copy that arrived while the nonce was held by a send in flight gets that send's
    answer; if that send was refused after all (its claim released), or its holder died, this
    copy is processed anew, and a copy with another id is then refused `replay` only if the
    first was accepted."""
    try:
        record = await svc.store.replay.wait_outcome(
            scope, frame.nonce, timeout_s=svc.settings.replay_pending_ttl
        )
        if record is not None and record.outcome is not None and record.message_id == frame.id:
            session.out.write(_ok(frame, record.outcome))
            return
        await handle_send(svc, session, frame)
    except Exception as exc:  # every failure becomes the precise error frame
        session.out.write(error_frame(exc, frame.rid))


def _check(
    svc: Services,
    session: DeviceSession,
    frame: Send,
    devices: list[DeviceRecord] | None,
    stored_origins: list[PendingOrigin],
) -> list[DeviceRecord]:
    """unknown_user, stale_timestamp, rate_limited, conflict, mismatched_devices, stale_devices."""
    settings = svc.settings
    if devices is None:
        raise Refused(ErrorCode.UNKNOWN_USER, "no such user")
    skew_ms = settings.clock_skew * 1000
    if abs(svc.clock.now_ms() - frame.ts) > skew_ms:
        raise Refused(ErrorCode.STALE_TIMESTAMP, "ts is outside the allowed clock skew")
    session.check_rate()
    _check_conflict(svc, session, frame, stored_origins)
    addressable = {
        d.device: d
        for d in devices
        if not (frame.to == session.user and d.device == session.device)
    }
    named = {m.device for m in frame.devices}
    missing = tuple(sorted(addressable.keys() - named))
    extra = tuple(sorted(named - addressable.keys()))
    if missing or extra:
        raise Refused(
            ErrorCode.MISMATCHED_DEVICES,
            "devices do not match the recipient's devices",
            missing=missing,
            extra=extra,
        )
    stale = tuple(
        sorted(
            m.device
            for m in frame.devices
            if m.registration_id is not None
            and m.registration_id != addressable[m.device].registration_id
        )
    )
    if stale:
        raise Refused(ErrorCode.STALE_DEVICES, "registration ids changed", stale=stale)
    return [addressable[m.device] for m in frame.devices]


def _check_conflict(
    svc: Services, session: DeviceSession, frame: Send, stored_origins: list[PendingOrigin]
) -> None:
    """The id must not be pending for a target device from another sender or send."""
    mine = SendOrigin(session.user, session.device, frame.nonce)
    for message in frame.devices:
        target = svc.router.get(frame.to, message.device)
        origin = None if target is None else target.origin_of(frame.id)
        if origin is not None and origin != mine:
            raise Refused(ErrorCode.CONFLICT, "this message id is pending from another sender")
    for origin_row in stored_origins:
        if SendOrigin(origin_row.sender_user, origin_row.sender_device, origin_row.nonce) != mine:
            raise Refused(ErrorCode.CONFLICT, "this message id is pending from another sender")


@dataclass(slots=True)
class _LocalWait:
    """A delivery pushed to a device connected to this node."""

    env: Envelope
    acked: asyncio.Future[bool]
    target: DeviceSession

    def settle(self, svc: Services, *, stored: bool) -> None:
        if stored:
            self.target.mark_durable(self.env.id)


@dataclass(slots=True)
class _RemoteWait:
    """A delivery published to the node holding the device (`ref` names it there)."""

    env: Envelope
    acked: asyncio.Future[bool]
    ref: int

    def settle(self, svc: Services, *, stored: bool) -> None:
        svc.cluster.settle(self.ref, stored=stored)


_Waiting = _LocalWait | _RemoteWait


@dataclass(slots=True)
class _Routing:
    """Where a send's envelopes went: pushed (awaiting acks), or to be stored now."""

    waiting: list[_Waiting] = field(default_factory=list)
    to_store: list[Envelope] = field(default_factory=list)


async def _route(
    svc: Services,
    session: DeviceSession,
    frame: Send,
    scope: ReplayScope,
    devices: list[DeviceRecord],
) -> None:
    """Push to connected devices, store for the others and for those whose ack is late."""
    envelopes = _envelopes(svc, session, frame)
    routing = _Routing()
    origin = SendOrigin(session.user, session.device, frame.nonce)
    elsewhere = _push_here(svc, frame, origin, envelopes, routing)
    svc.metrics.envelopes.labels("accepted").inc(len(frame.devices))
    if elsewhere:
        await _push_elsewhere(svc, frame, elsewhere, routing)
    try:
        delivered, late = await _reach_outcome(svc, frame, routing)
    except (StorageError, Refused) as exc:
        for w in routing.waiting:
            w.settle(svc, stored=False)
        await _give_up(svc, scope, frame)
        error = error_frame(exc, frame.rid)
        svc.metrics.rejections.labels(str(error.code)).inc()
        session.out.write(error)
        return
    stored = [e.recipient_device for e in (*routing.to_store, *late)]
    outcome = SendOutcome(
        delivered=tuple(sorted(e.recipient_device for e in delivered)), stored=tuple(sorted(stored))
    )
    svc.metrics.envelopes.labels("delivered").inc(len(delivered))
    svc.metrics.envelopes.labels("stored").inc(len(stored))
    if frame.receipt:
        svc.metrics.receipts.labels("requested").inc(len(stored))
    if not await _record_outcome(svc, scope, frame, outcome):
        # Unrecorded, the nonce would open again once the pending claim lapses: no `ok` for
        # it. The envelopes are durable or acknowledged already, so the sender's retry (same
        # id and nonce) finds the stored copies from the same origin and stores nothing twice.
        error = error_frame(Unavailable("the send's outcome could not be recorded"), frame.rid)
        svc.metrics.rejections.labels(str(error.code)).inc()
        session.out.write(error)
        return
    session.out.write(_ok(frame, outcome))


async def _record_outcome(
    svc: Services, scope: ReplayScope, frame: AnySend, outcome: SendOutcome
) -> bool:
    """Writes the outcome over the pending claim, tried again for up to two backend timeouts
    (a Redis failover, a lost connection), well within the claim's expiry."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * svc.settings.backend_timeout
    delay = RECORD_RETRY_FIRST_S
    while True:
        try:
            await svc.store.replay.complete(
                scope, frame.nonce, frame.id, outcome, window_s=svc.settings.replay_window
            )
            return True
        except StorageError:
            if loop.time() + delay > deadline:
                log.warning("could not record a send's outcome in the replay guard")
                return False
        await asyncio.sleep(delay)  # backoff before trying again, not synchronisation
        delay = min(delay * 2, RECORD_RETRY_CAP_S)


def _envelopes(svc: Services, session: DeviceSession, frame: Send) -> list[Envelope]:
    """One envelope per target device, stamped with the server's time and expiry."""
    now = svc.clock.now_ms()
    expires = now + int(svc.settings.retention * 1000)
    return [
        Envelope(
            id=frame.id,
            recipient_user=frame.to,
            recipient_device=message.device,
            sender_user=session.user,
            sender_device=session.device,
            ts=frame.ts,
            server_ts=now,
            type=message.type,
            body=message.body,
            nonce=frame.nonce,
            expires_ms=expires,
            receipt=frame.receipt,
        )
        for message in frame.devices
    ]


def _push_here(
    svc: Services,
    frame: AnySend,
    origin: SendOrigin,
    envelopes: list[Envelope],
    routing: _Routing,
) -> list[Envelope]:
    """Push to the target devices connected here, with no store or Redis call; the envelopes
    of devices not connected here (maybe on another node) are returned."""
    elsewhere: list[Envelope] = []
    for env in envelopes:
        target = svc.router.get(env.recipient_user, env.recipient_device)
        if target is None:
            elsewhere.append(env)
            continue
        acked = target.push_live(env, origin, online=frame.online)
        if acked is not None:
            routing.waiting.append(_LocalWait(env, acked, target))
            acked.add_done_callback(_latency_observer(svc, svc.clock.monotonic()))
        elif store_unpushed(online=frame.online):
            routing.to_store.append(env)
    return elsewhere


async def _push_elsewhere(
    svc: Services, frame: AnySend, elsewhere: list[Envelope], routing: _Routing
) -> None:
    """One presence lookup (one batch) for every device not connected to this node."""
    nodes = await svc.cluster.locate([(e.recipient_user, e.recipient_device) for e in elsewhere])
    for env, node in zip(elsewhere, nodes, strict=True):
        if node is not None:
            ref, acked = svc.cluster.push_remote(node, env, online=frame.online)
            routing.waiting.append(_RemoteWait(env, acked, ref))
            acked.add_done_callback(_latency_observer(svc, svc.clock.monotonic()))
        elif store_unpushed(online=frame.online):
            routing.to_store.append(env)


async def _reach_outcome(
    svc: Services, frame: AnySend, routing: _Routing, *, full: FullQueueMessage | None = None
) -> tuple[list[Envelope], list[Envelope]]:
    """Store what must be stored, wait for the acks, store the late ones: the devices
    envelopes delivered and those stored late. Raises StorageError when the store fails, Refused
    when it refuses (a full queue)."""
    stored_now = (
        asyncio.ensure_future(_store(svc, routing.to_store, full=full))
        if routing.to_store
        else None
    )
    try:
        if routing.waiting:
            wait_started = svc.clock.monotonic()
            await asyncio.wait([w.acked for w in routing.waiting], timeout=svc.settings.ack_timeout)
            svc.metrics.ack_wait.observe(svc.clock.monotonic() - wait_started)
        delivered, late = _settle(svc, frame, routing.waiting)
        if late or stored_now is not None:
            # Bounded: a store that hangs instead of failing is given up (a copy that commits
            # later is kept once; the sender's retry finds it from the same origin).
            async with asyncio.timeout(svc.settings.backend_timeout * STORE_TIMEOUT_FACTOR):
                # No await since _settle: a late ack's delete comes after the insert.
                await _store(svc, late, full=full)
                if stored_now is not None:
                    await stored_now
    except TimeoutError:
        if stored_now is not None:
            stored_now.cancel()
        raise Unavailable("the store did not answer in time") from None
    return delivered, late


def _settle(
    svc: Services, frame: AnySend, waiting: list[_Waiting]
) -> tuple[list[Envelope], list[Envelope]]:
    """Each pushed delivery's outcome once the wait is over: delivered, dropped (online) or
    late (stored). Synchronous on purpose: its caller issues the store call for the late ones
    right after it, so an ack that arrives in between is applied after the insert (the store
    runs jobs in order)."""
    delivered: list[Envelope] = []
    late: list[Envelope] = []
    for w in waiting:
        settled = settle(acked=w.acked.done() and w.acked.result(), online=frame.online)
        w.settle(svc, stored=settled is Settled.LATE)
        if settled is Settled.DELIVERED:
            delivered.append(w.env)
        elif settled is Settled.DROPPED:
            svc.metrics.envelopes.labels("dropped_online").inc()
        else:
            late.append(w.env)
            svc.metrics.ack_timeouts.inc()
    return delivered, late


def _latency_observer(svc: Services, pushed_at: float) -> Callable[[asyncio.Future[bool]], None]:
    def observe(acked: asyncio.Future[bool]) -> None:
        if not acked.cancelled() and acked.result():
            svc.metrics.delivery_latency.observe(svc.clock.monotonic() - pushed_at)

    return observe


async def _store(
    svc: Services, envelopes: list[Envelope], *, full: FullQueueMessage | None = None
) -> None:
    """Durable, or refused as a whole: `too_large` when a device's queue is full (the last
    check of a send, made by the store's own insert: no extra round trip); `full` words its
    message."""
    if not envelopes:
        return
    cap = svc.settings.max_stored_messages
    try:
        await svc.store.messages.store(envelopes, max_per_device=cap)
    except QueueFull as exc:
        if full is not None:
            raise Refused(ErrorCode.TOO_LARGE, full(exc.devices, cap)) from exc
        devices = ", ".join(str(device) for _, device in exc.devices)
        raise Refused(
            ErrorCode.TOO_LARGE, f"device {devices} of the recipient holds {cap} stored messages"
        ) from exc
    for env in envelopes:
        svc.router.notify_stored(env.recipient_user, env.recipient_device)
    # Devices connected to other nodes pump them now; located after the commit, so a device
    # that connected meanwhile is found. Not awaited: no part of the answer.
    svc.spawn(svc.cluster.announce_stored(envelopes))


async def _give_up(svc: Services, scope: ReplayScope, frame: AnySend) -> None:
    """Nothing was accepted: free the nonce so the sender can retry with it."""
    try:
        await svc.store.replay.release(scope, frame.nonce, frame.id)
    except StorageError:
        log.warning("could not release a nonce; it frees itself when the claim expires")


def _ok(frame: Send, outcome: SendOutcome) -> SendOk:
    return SendOk(rid=frame.rid, id=frame.id, delivered=outcome.delivered, stored=outcome.stored)
