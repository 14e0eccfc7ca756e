"""Storage errors: every backend raises these, never its driver's exceptions.

StorageError
├── Unavailable            the backend did not answer; nothing was changed
└── Rejected               the operation breaks a rule of the data
    ├── UnknownUser
    ├── IdentityKeyInUse   an active device already holds this identity key
    ├── IdentityKeyRetired the key belonged to a removed device
    ├── DeviceLimitReached the user has its maximum of active devices
    ├── DeviceNumbersExhausted
    ├── KeyIdConflict      a pre-key id already stored with another key
    ├── TooManyPreKeys     the upload would pass the stored one-time key cap
    └── QueueFull          a recipient device holds its maximum of stored messages
"""

from __future__ import annotations


class StorageError(Exception):
    pass


class Unavailable(StorageError):
    pass


class Rejected(StorageError):
    pass


class UnknownUser(Rejected):
    pass


class IdentityKeyInUse(Rejected):
    pass


class IdentityKeyRetired(Rejected):
    pass


class DeviceLimitReached(Rejected):
    pass


class DeviceNumbersExhausted(Rejected):
    pass


class KeyIdConflict(Rejected):
    pass


class TooManyPreKeys(Rejected):
    pass


class QueueFull(Rejected):
    """Nothing of the `store` call was stored: `devices` (user, device) are full."""

    def __init__(self, devices: list[tuple[str, int]]) -> None:
        super().__init__(f"{len(devices)} recipient device(s) hold their maximum of messages")
        self.devices = devices


class BackupVersionConflict(Rejected):
    """A backup put or delete named a version that is not the current one."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the current backup version is {current}")
        self.current = current  # 0: there is no backup


class NoBackup(Rejected):
    """The user has no backup (never saved, or deleted)."""


class BackupAccessKeyTaken(Rejected):
    """Another user's backup has this access key."""
