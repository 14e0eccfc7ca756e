"""What the client SDK raises.

ClientError                every error of the SDK
├── StoreError             the local store cannot be used (damaged, closed, missing)
│   ├── WrongPassphrase    the passphrase does not open the store
│   └── StoreLocked        another process has the store open
├── NotRegistered          the store holds no account yet (call register first)
├── RequestRefused         the relay answered a request with an error frame
│   └── SendFailed         a message was refused for good; it was not sent
├── ConnectionLost         the connection closed before the answer came
├── TlsSetupError          the TLS settings cannot be used (a CA file, ssl= with ws://)
└── ClientStopped          the client is closed, or the relay ended this device
"""

from __future__ import annotations

from protocol.errors import ErrorCode
from protocol.frames import Error


class ClientError(Exception):
    """Every error of the client SDK."""


class StoreError(ClientError):
    pass


class WrongPassphrase(StoreError):
    pass


class StoreLocked(StoreError):
    pass


class NotRegistered(ClientError):
    pass


class RequestRefused(ClientError):
    """An `error` answer; `error` holds the frame with its typed details."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error

    @property
    def code(self) -> ErrorCode:
        return self.error.code


class SendFailed(RequestRefused):
    """The relay refused a message for good (or it could not be addressed)."""


class ConnectionLost(ClientError):
    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"connection lost (close code {code}, {reason!r})")
        self.code = code
        self.reason = reason


class ClientStopped(ClientError):
    pass


class TlsSetupError(ClientError):
    """A CA file that cannot be read or holds no certificate; a TLS context for a ws:// URL."""
