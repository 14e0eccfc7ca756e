"""Words for the connection's state: why the relay cannot be reached, and when the next try is."""

from __future__ import annotations

import errno
import socket
import ssl
import time
from dataclasses import dataclass

from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException

from protocol.client import ClientError, ConnectionChange, ConnectionLost, RequestRefused

__all__ = ["ConnectionStatus", "describe_error", "seconds"]


def describe_error(exc: BaseException | None) -> str:
    """A short reason a person can act on, not a Python message."""
    if exc is None:
        return "disconnected"
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and "[Errno 111]" in str(exc)  # several addresses, all refused
    ):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({getattr(exc, 'reason', None) or exc})"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code} instead of a WebSocket (is the path right?)"
    if isinstance(exc, InvalidURI):
        return "not a WebSocket URL"
    if isinstance(exc, ConnectionLost):
        return "connection lost"
    if isinstance(exc, RequestRefused):
        return f"the relay refused: {exc.code}"
    if isinstance(exc, OSError):
        return (exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)).lower()
    if isinstance(exc, WebSocketException | ClientError):
        return str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def seconds(value: float) -> str:
    """`0.4 s`, `2 s`: tenths only below one second."""
    return f"{value:.1f} s" if value < 1 else f"{value:.0f} s"


@dataclass(slots=True)
class ConnectionStatus:
    """What the toolbar shows: connected, or down since when, why, and the next try."""

    url: str
    connected: bool = False
    reason: str = "connecting"
    retry_at: float | None = None  # time.monotonic() of the next attempt
    stopped: bool = False

    def update(self, change: ConnectionChange) -> None:
        self.connected = change.connected
        self.reason = describe_error(change.error) if not change.connected else ""
        self.retry_at = None if change.retry_in is None else time.monotonic() + change.retry_in
        self.stopped = not change.connected and change.retry_in is None

    def line(self, change: ConnectionChange) -> str:
        """The line printed when the state changes."""
        if change.connected:
            return f"*** connected to {self.url}"
        if change.retry_in is None:
            return f"*** disconnected from {self.url}: {self.reason}"
        if isinstance(change.error, ConnectionLost):
            return f"*** lost the connection to {self.url}; retrying in {seconds(change.retry_in)}"
        return f"*** cannot reach {self.url}: {self.reason}; retrying in {seconds(change.retry_in)}"

    def text(self) -> str:
        """The toolbar's text now (the countdown moves)."""
        if self.connected:
            return f"connected to {self.url}"
        if self.stopped:
            return f"disconnected: {self.reason}"
        if self.retry_at is None:
            return f"connecting to {self.url}"
        left = max(0.0, self.retry_at - time.monotonic())
        return f"offline: {self.url}: {self.reason}; next try in {seconds(left)}"
