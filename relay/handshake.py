"""`register` and `auth`: prove possession of the identity key over a fresh challenge.

Checks run in this order, the first failure answering: the frame; for a new
account the registration token (`forbidden`); the registering key's signature
(`auth_failed`); for a linked device the user (`auth_failed`), the linking
device being active (`forbidden`) and its link signature (`auth_failed`);
the client address's registration budget (`rate_limited`, `relay.registrations`);
then a retired identity key (`forbidden`), a key held by another active
device (`conflict`), and the device limit and numbering (`forbidden`). Keys are
compared in their canonical X25519 form, so every encoding of one key pair meets.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass

from protocol.errors import ErrorCode, FrameError, Refused
from protocol.frames import Auth, Register
from protocol.payloads import auth_payload, link_payload, register_payload
from protocol.signatures import KeyScheme, identity_key_x25519, verify_signature
from relay.device_session import DeviceSession
from relay.registrations import take_registration
from relay.services import Services
from storage.errors import (
    DeviceLimitReached,
    DeviceNumbersExhausted,
    IdentityKeyInUse,
    IdentityKeyRetired,
    UnknownUser,
)
from storage.records import DeviceRecord, NewDevice


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    device: int


async def register(svc: Services, frame: Register, challenge: bytes, address: str) -> Identity:
    """`address`: the client's, as the per-address limits count it (`relay.forwarded`)."""
    settings = svc.settings
    if frame.link is None and settings.registration_token is not None:
        token = frame.token or ""
        if not hmac.compare_digest(token.encode(), settings.registration_token.encode()):
            raise Refused(ErrorCode.FORBIDDEN, "registration token missing or wrong")
    payload = register_payload(challenge, frame.identity_key)
    if not verify_signature(frame.key_scheme, frame.identity_key, payload, frame.signature):
        raise Refused(ErrorCode.AUTH_FAILED, "signature does not verify")
    try:
        x25519 = identity_key_x25519(frame.key_scheme, frame.identity_key)
    except ValueError as exc:
        raise FrameError("identity_key is not a valid public key") from exc
    new = NewDevice(
        identity_key=frame.identity_key,
        key_scheme=frame.key_scheme.value,
        identity_x25519=x25519,
        registration_id=frame.registration_id or 0,
        created_ms=svc.clock.now_ms(),
    )
    try:
        if frame.link is None or frame.user is None:
            await take_registration(svc, address)
            user = str(uuid.uuid4())
            record = await svc.store.devices.create_user(user, new)
        else:
            await _check_link(svc, frame)
            await take_registration(svc, address)
            record = await svc.store.devices.add_device(
                frame.user, new, max_devices=settings.max_devices
            )
    except IdentityKeyRetired as exc:
        raise Refused(
            ErrorCode.FORBIDDEN, "this identity key belonged to a removed device"
        ) from exc
    except IdentityKeyInUse as exc:
        raise Refused(ErrorCode.CONFLICT, "this identity key is in use by another device") from exc
    except DeviceLimitReached as exc:
        raise Refused(ErrorCode.FORBIDDEN, "the user has its maximum of devices") from exc
    except DeviceNumbersExhausted as exc:
        raise Refused(ErrorCode.FORBIDDEN, "the user's device numbers are used up") from exc
    except UnknownUser as exc:
        raise Refused(ErrorCode.AUTH_FAILED, "unknown user") from exc
    return Identity(record.user, record.device)


async def _check_link(svc: Services, frame: Register) -> None:
    assert frame.link is not None and frame.user is not None
    devices = await svc.store.devices.list_devices(frame.user)
    if devices is None:
        raise Refused(ErrorCode.AUTH_FAILED, "unknown user")
    linking = next((d for d in devices if d.device == frame.link.device), None)
    if linking is None:
        raise Refused(ErrorCode.FORBIDDEN, "link names a device that is not active")
    payload = link_payload(frame.user, frame.identity_key)
    if not verify_signature(
        KeyScheme(linking.key_scheme), linking.identity_key, payload, frame.link.signature
    ):
        raise Refused(ErrorCode.AUTH_FAILED, "link signature does not verify")


async def authenticate(svc: Services, frame: Auth, challenge: bytes) -> Identity:
    record: DeviceRecord | None = await svc.store.devices.get_device(frame.user, frame.device)
    if record is None:
        raise Refused(ErrorCode.AUTH_FAILED, "unknown user or device")
    payload = auth_payload(challenge, frame.user, frame.device)
    if not verify_signature(
        KeyScheme(record.key_scheme), record.identity_key, payload, frame.signature
    ):
        raise Refused(ErrorCode.AUTH_FAILED, "signature does not verify")
    return Identity(record.user, record.device)


async def take_over(svc: Services, session: DeviceSession) -> None:
    """The newest connection wins on every node: publish this node as the device's holder,
    close an older connection on another node with 4001, and wait (at most 5 s) until the
    frames it had received took effect, so `queued` never counts an acknowledged message."""
    await svc.cluster.attached(session)
