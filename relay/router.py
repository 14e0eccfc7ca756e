"""The local connection registry: which session holds each device on this node."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.errors import CloseCode
from protocol.frames import ServerFrame

if TYPE_CHECKING:
    from relay.device_session import DeviceSession


class Router:
    def __init__(self) -> None:
        self._sessions: dict[tuple[str, int], DeviceSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def attach(self, session: DeviceSession) -> DeviceSession | None:
        """Make `session` the device's current one; the older session, if any, is returned."""
        key = (session.user, session.device)
        old = self._sessions.get(key)
        self._sessions[key] = session
        return old

    def detach(self, session: DeviceSession) -> None:
        key = (session.user, session.device)
        if self._sessions.get(key) is session:
            del self._sessions[key]

    def get(self, user: str, device: int) -> DeviceSession | None:
        return self._sessions.get((user, device))

    def sessions(self) -> list[DeviceSession]:
        return list(self._sessions.values())

    def notify_stored(self, user: str, device: int) -> None:
        """A message was stored for the device: its session (if any) pushes it now."""
        session = self._sessions.get((user, device))
        if session is not None:
            session.wake_pump()

    def push(self, user: str, device: int, frame: ServerFrame) -> None:
        session = self._sessions.get((user, device))
        if session is not None:
            session.out.write(frame)

    def close_device(self, user: str, device: int, code: CloseCode, reason: str) -> None:
        session = self._sessions.get((user, device))
        if session is not None:
            session.out.close(code, reason)
