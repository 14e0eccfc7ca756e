"""What the client SDK raises (the root and the wire errors come from `protocol.wire`).

ClientError                every error of the SDK
├── StoreError             the local store cannot be used (damaged, closed, missing)
│   ├── WrongPassphrase    the passphrase does not open the store
│   └── StoreLocked        another process has the store open
├── NotRegistered          the store holds no account yet (call register first)
├── RequestRefused         the relay answered a request with an error frame
│   └── SendFailed         a message was refused for good; it was not sent
├── ConnectionLost         the connection closed before the answer came
│   └── AnswerTimeout      no answer in time: the connection was dropped
├── TlsSetupError          the TLS settings cannot be used (a CA file, ssl= with ws://)
├── BackupConflict         another device saved or deleted the key backup since this one
├── BackupUnreadable       a key backup does not open with the recovery key given
└── ClientStopped          the client is closed, or the relay ended this device
"""

from __future__ import annotations

from protocol.wire.errors import AnswerTimeout, ClientError, ConnectionLost, RequestRefused

__all__ = [
    "AnswerTimeout",
    "BackupConflict",
    "BackupUnreadable",
    "ClientError",
    "ClientStopped",
    "ConnectionLost",
    "NotRegistered",
    "RequestRefused",
    "SendFailed",
    "StoreError",
    "StoreLocked",
    "TlsSetupError",
    "WrongPassphrase",
]


class StoreError(ClientError):
    pass


class WrongPassphrase(StoreError):
    pass


class StoreLocked(StoreError):
    pass


class NotRegistered(ClientError):
    pass


class SendFailed(RequestRefused):
    """The relay refused a message for good (or it could not be addressed)."""


class ClientStopped(ClientError):
    pass


class TlsSetupError(ClientError):
    """A CA file that cannot be read or holds no certificate; a TLS context for a ws:// URL."""


class BackupConflict(ClientError):
    """The key backup is not at the version this device knew: another device replaced or
    deleted it. Save again with `expected_version=version` to replace it on purpose."""

    def __init__(self, version: int) -> None:
        super().__init__(f"the key backup is at version {version} (0: none)")
        self.version = version


class BackupUnreadable(ClientError):
    """A key backup that does not open with the recovery key given (a wrong key, another
    user's blob, damage), or whose contents this client cannot read."""
