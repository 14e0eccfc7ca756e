"""`devices.list` and `devices.remove`."""

from __future__ import annotations

from protocol.errors import CloseCode, ErrorCode, Refused
from protocol.frames import DeviceInfo, DevicesList, DevicesListOk, DevicesRemove, EmptyOk
from protocol.signatures import KeyScheme
from relay.device_session import DeviceSession
from relay.services import Services


async def list_devices(svc: Services, session: DeviceSession, frame: DevicesList) -> None:
    devices = await svc.store.devices.list_devices(session.user) or []
    session.out.write(
        DevicesListOk(
            rid=frame.rid,
            devices=tuple(
                DeviceInfo(
                    device=d.device,
                    key_scheme=KeyScheme(d.key_scheme),
                    created=d.created_ms,
                    last_seen=d.last_seen_ms,
                )
                for d in devices
            ),
        )
    )


async def remove(svc: Services, session: DeviceSession, frame: DevicesRemove) -> None:
    """Only device 1 or the device itself may remove a device; its connection closes with 4002,
    on whichever node holds it."""
    if session.device != 1 and frame.device != session.device:
        raise Refused(ErrorCode.FORBIDDEN, "only device 1 or the device itself may remove it")
    if not await svc.store.devices.remove_device(session.user, frame.device):
        raise Refused(ErrorCode.UNKNOWN_DEVICE, "no such active device")
    session.out.write(EmptyOk(rid=frame.rid))
    await svc.cluster.close_device(session.user, frame.device, CloseCode.REMOVED, "device removed")
