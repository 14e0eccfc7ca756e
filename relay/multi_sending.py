"""`send.multi`: one frame to many users, judged as a whole and routed like `send`.

The checks are `send`'s, run for every recipient user at once, with the device-set problems
of all users in one error, so the client fixes everything in one retry. The nonce is
claimed in one scope per sending device (`multi_scope`), in the same turn as the reads the
checks need; a refused frame gives it back. Once accepted, the envelopes go through the
routing of `relay.sending` (push here, push to other nodes, store the rest and the late
ones) as one batch, and the per-user outcome is kept in the replay record, so a retry is
answered the same without a second delivery.

The replay record holds the outcome as device codes (`user index * 128 + device`, the index
being the user's place in `to`) behind a 32-bit fingerprint of the frame's users and
devices: the record keeps no user id, and a copy whose recipients differ is told apart.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Final

from protocol.errors import ErrorCode, FrameError, Refused, UserDevices
from protocol.frames import MultiDevice, SendMulti, SendMultiOk, UserOutcome
from relay.delivery import SendOrigin
from relay.device_session import DeviceSession
from relay.replies import error_frame
from relay.sending import (
    _give_up,
    _push_elsewhere,
    _push_here,
    _reach_outcome,
    _record_outcome,
    _Routing,
    claim_and_read,
)
from relay.services import Services
from storage.errors import StorageError, Unavailable
from storage.records import (
    MAX_DEVICE_NUMBER,
    DeviceRecord,
    Envelope,
    PendingOrigin,
    ReplayRecord,
    ReplayScope,
    SendOutcome,
    SharedPayload,
)

MULTI_SCOPE_PREFIX: Final = "send.multi "  # never a user id (those are canonical UUIDs)
_CODE_BASE: Final = MAX_DEVICE_NUMBER + 1
PAYLOAD_ID_BYTES: Final = 16


def multi_scope(user: str, device: int) -> ReplayScope:
    """The nonce scope of a device's `send.multi` frames: (sender user, sender device), apart
    from `send`'s per-recipient scopes. The sender names the slot, so one user's group
    frames share a Redis Cluster slot and different users' do not."""
    return ReplayScope(user, device, MULTI_SCOPE_PREFIX + user)


async def handle_send_multi(svc: Services, session: DeviceSession, frame: SendMulti) -> None:
    """The configured limits, then the nonce claim with the reads; the checks in `send`'s
    order; routing and the answer in the background."""
    settings = svc.settings
    try:
        frame.check_limits(
            max_users=settings.max_multi_users,
            max_devices=settings.max_multi_devices,
            max_body_bytes=settings.max_body_bytes,
        )
    except FrameError as exc:  # a frame error like the codec's: with the rid, on the budget
        exc.rid = frame.rid
        raise
    scope = multi_scope(session.user, session.device)
    held, listed, stored_origins = await _claim_and_read(svc, scope, frame)
    if held is not None:
        _answer_from_record(svc, session, frame, scope, held)
        return
    try:
        _check(svc, session, frame, listed, stored_origins)
    except Exception:  # refused (or a fault) before acceptance: the nonce is not used up
        await _give_up(svc, scope, frame)
        raise
    svc.metrics.multi_sends.labels("shared" if frame.payload is not None else "per_device").inc()
    svc.metrics.multi_send_devices.observe(frame.device_count)
    svc.spawn(_route(svc, session, frame, scope))


async def _claim_and_read(
    svc: Services, scope: ReplayScope, frame: SendMulti
) -> tuple[ReplayRecord | None, list[list[DeviceRecord] | None], list[list[PendingOrigin]]]:
    """The claim, every recipient's devices and the stored origins of this id, issued in one
    turn (the store batches them; sending.claim_and_read)."""
    lists = [svc.store.devices.list_devices(r.user) for r in frame.to]
    origin_reads = [
        svc.store.messages.pending_origins(r.user, [d.device for d in r.devices], frame.id)
        for r in frame.to
        if r.devices and not frame.online  # an online frame is never stored
    ]
    held, results = await claim_and_read(svc, scope, frame, *lists, *origin_reads)
    return held, results[: len(lists)], results[len(lists) :]


def _answer_from_record(
    svc: Services,
    session: DeviceSession,
    frame: SendMulti,
    scope: ReplayScope,
    record: ReplayRecord,
) -> None:
    """An accepted frame's answer, `replay` for another id or another frame, or a wait for
    a frame still in flight."""
    if record.outcome is None:
        svc.spawn(_answer_when_done(svc, session, frame, scope))
        return
    users = decode_outcome(frame, record.outcome) if record.message_id == frame.id else None
    if users is None:
        svc.metrics.replay_rejections.inc()
        raise Refused(ErrorCode.REPLAY, "nonce already used by another message", rid=frame.rid)
    session.out.write(SendMultiOk(rid=frame.rid, id=frame.id, users=users))


async def _answer_when_done(
    svc: Services, session: DeviceSession, frame: SendMulti, scope: ReplayScope
) -> None:
    """A copy that arrived while the nonce was held gets the holder's answer, or is processed
    anew when the holder was refused (its claim released) or died."""
    try:
        record = await svc.store.replay.wait_outcome(
            scope, frame.nonce, timeout_s=svc.settings.replay_pending_ttl
        )
        if record is not None and record.outcome is not None and record.message_id == frame.id:
            users = decode_outcome(frame, record.outcome)
            if users is None:
                raise Refused(ErrorCode.REPLAY, "nonce already used by another message")
            session.out.write(SendMultiOk(rid=frame.rid, id=frame.id, users=users))
            return
        await handle_send_multi(svc, session, frame)
    except Exception as exc:  # every failure becomes the precise error frame
        session.out.write(error_frame(exc, frame.rid))


def _check(
    svc: Services,
    session: DeviceSession,
    frame: SendMulti,
    listed: list[list[DeviceRecord] | None],
    stored_origins: list[list[PendingOrigin]],
) -> None:
    """unknown_user, stale_timestamp, rate_limited, conflict, then the device sets of every
    user together (mismatched_devices, else stale_devices, with `users`)."""
    unknown = tuple(r.user for r, devices in zip(frame.to, listed, strict=True) if devices is None)
    if unknown:
        raise Refused(ErrorCode.UNKNOWN_USER, "no such user", unknown_users=unknown)
    if abs(svc.clock.now_ms() - frame.ts) > svc.settings.clock_skew * 1000:
        raise Refused(ErrorCode.STALE_TIMESTAMP, "ts is outside the allowed clock skew")
    session.check_rate()
    _check_conflict(svc, session, frame, stored_origins)
    problems: list[UserDevices] = []
    for recipient, devices in zip(frame.to, listed, strict=True):
        assert devices is not None
        problem = _device_set(session, recipient.user, recipient.devices, devices)
        if problem is not None:
            problems.append(problem)
    if any(p.missing or p.extra for p in problems):
        raise Refused(
            ErrorCode.MISMATCHED_DEVICES,
            "devices do not match the recipients' devices",
            users=tuple(problems),
        )
    if problems:
        raise Refused(ErrorCode.STALE_DEVICES, "registration ids changed", users=tuple(problems))


def _device_set(
    session: DeviceSession, user: str, named: Sequence[MultiDevice], devices: list[DeviceRecord]
) -> UserDevices | None:
    """One user's missing, extra and stale devices, as `send` judges them; None when right."""
    addressable = {
        d.device: d for d in devices if not (user == session.user and d.device == session.device)
    }
    entries = {m.device: m.registration_id for m in named}
    missing = tuple(sorted(addressable.keys() - entries.keys()))
    extra = tuple(sorted(entries.keys() - addressable.keys()))
    stale = tuple(
        sorted(
            device
            for device, registration_id in entries.items()
            if registration_id is not None
            and device in addressable
            and registration_id != addressable[device].registration_id
        )
    )
    if missing or extra or stale:
        return UserDevices(user=user, missing=missing, extra=extra, stale=stale)
    return None


def _check_conflict(
    svc: Services,
    session: DeviceSession,
    frame: SendMulti,
    stored_origins: list[list[PendingOrigin]],
) -> None:
    """The id must not be pending for any addressed device from another sender or frame."""
    mine = SendOrigin(session.user, session.device, frame.nonce)
    for recipient in frame.to:
        for message in recipient.devices:
            target = svc.router.get(recipient.user, message.device)
            origin = None if target is None else target.origin_of(frame.id)
            if origin is not None and origin != mine:
                raise Refused(ErrorCode.CONFLICT, "this message id is pending from another sender")
    for found in stored_origins:
        for row in found:
            if SendOrigin(row.sender_user, row.sender_device, row.nonce) != mine:
                raise Refused(ErrorCode.CONFLICT, "this message id is pending from another sender")


async def _route(
    svc: Services, session: DeviceSession, frame: SendMulti, scope: ReplayScope
) -> None:
    """`send`'s routing for every device of the frame at once; the answer per user."""
    envelopes = envelopes_of(svc, session, frame)
    routing = _Routing()
    origin = SendOrigin(session.user, session.device, frame.nonce)
    elsewhere = _push_here(svc, frame, origin, envelopes, routing)
    svc.metrics.envelopes.labels("accepted").inc(len(envelopes))
    if elsewhere:
        await _push_elsewhere(svc, frame, elsewhere, routing)
    try:
        delivered, late = await _reach_outcome(svc, frame, routing, full=_full_queue_message)
    except (StorageError, Refused) as exc:
        for w in routing.waiting:
            w.settle(svc, stored=False)
        await _give_up(svc, scope, frame)
        error = error_frame(exc, frame.rid)
        svc.metrics.rejections.labels(str(error.code)).inc()
        session.out.write(error)
        return
    stored = [*routing.to_store, *late]
    svc.metrics.envelopes.labels("delivered").inc(len(delivered))
    svc.metrics.envelopes.labels("stored").inc(len(stored))
    if frame.receipt:
        svc.metrics.receipts.labels("requested").inc(len(stored))
    outcome = encode_outcome(frame, _pairs(delivered), _pairs(stored))
    if not await _record_outcome(svc, scope, frame, outcome):
        error = error_frame(Unavailable("the send's outcome could not be recorded"), frame.rid)
        svc.metrics.rejections.labels(str(error.code)).inc()
        session.out.write(error)
        return
    users = decode_outcome(frame, outcome)
    assert users is not None  # encoded from this very frame
    session.out.write(SendMultiOk(rid=frame.rid, id=frame.id, users=users))


def envelopes_of(svc: Services, session: DeviceSession, frame: SendMulti) -> list[Envelope]:
    """One envelope per addressed device; with a shared payload, each holds its header and
    names the one payload (stored once, see storage.records.SharedPayload)."""
    now = svc.clock.now_ms()
    expires = now + int(svc.settings.retention * 1000)
    payload = (
        None
        if frame.payload is None
        else SharedPayload(id=os.urandom(PAYLOAD_ID_BYTES), body=frame.payload)
    )
    return [
        Envelope(
            id=frame.id,
            recipient_user=recipient.user,
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
            payload=payload,
        )
        for recipient in frame.to
        for message in recipient.devices
    ]


def _pairs(envelopes: Iterable[Envelope]) -> list[tuple[str, int]]:
    return [(e.recipient_user, e.recipient_device) for e in envelopes]


def _full_queue_message(devices: list[tuple[str, int]], cap: int) -> str:
    """Names each full device by user: `too_large`'s message, the sender's to act on."""
    by_user: dict[str, list[int]] = {}
    for user, device in devices:
        by_user.setdefault(user, []).append(device)
    named = "; ".join(
        f"user {user} device {', '.join(str(d) for d in sorted(numbers))}"
        for user, numbers in by_user.items()
    )
    return f"a recipient device holds {cap} stored messages: {named}"


def fingerprint(frame: SendMulti) -> int:
    """32 bits that tell a copy of the frame from a frame with other recipients."""
    digest = hashlib.blake2b(digest_size=4, person=b"relay-multi")
    for recipient in frame.to:
        devices = ",".join(str(d.device) for d in recipient.devices)
        digest.update(f"{recipient.user}:{devices};".encode())
    return int.from_bytes(digest.digest(), "big")


def encode_outcome(
    frame: SendMulti, delivered: Iterable[tuple[str, int]], stored: Iterable[tuple[str, int]]
) -> SendOutcome:
    """The per-user outcome in the replay record's shape (see the module docstring)."""
    index = {r.user: i for i, r in enumerate(frame.to)}

    def codes(pairs: Iterable[tuple[str, int]]) -> tuple[int, ...]:
        return tuple(sorted(index[user] * _CODE_BASE + device for user, device in pairs))

    return SendOutcome(delivered=(fingerprint(frame), *codes(delivered)), stored=codes(stored))


def decode_outcome(frame: SendMulti, outcome: SendOutcome) -> tuple[UserOutcome, ...] | None:
    """The answer's `users` from a recorded outcome; None when the record is not this frame's
    (another fingerprint, a device the frame does not name, a named device unaccounted for)."""
    if not outcome.delivered or outcome.delivered[0] != fingerprint(frame):
        return None
    delivered: list[list[int]] = [[] for _ in frame.to]
    stored: list[list[int]] = [[] for _ in frame.to]
    for lists, codes in ((delivered, outcome.delivered[1:]), (stored, outcome.stored)):
        for code in codes:
            user_index, device = divmod(code, _CODE_BASE)
            if not 0 <= user_index < len(frame.to):
                return None
            lists[user_index].append(device)
    users: list[UserOutcome] = []
    for i, recipient in enumerate(frame.to):
        named = {d.device for d in recipient.devices}
        listed = delivered[i] + stored[i]
        if len(set(listed)) != len(listed) or not set(listed) <= named:
            return None
        if not frame.online and set(listed) != named:
            return None
        users.append(
            UserOutcome(
                user=recipient.user,
                delivered=tuple(sorted(delivered[i])),
                stored=tuple(sorted(stored[i])),
            )
        )
    return tuple(users)
