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
    └── TooManyPreKeys     the upload would pass the stored one-time key cap
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
