"""Every frame of protocol v1 as a frozen dataclass.

Decoding happens once, in `codec`, into these types; nothing after the codec
touches a raw map. Each class names its wire type in `T` and declares its
fields with the checks of `fields`. A `check()` method holds the rules that
span fields (scheme-dependent key sizes, a device named twice).
"""

from __future__ import annotations

from typing import ClassVar

from protocol.errors import ErrorCode, FrameError, FrameTooLarge
from protocol.fields import I64_MAX, I64_MIN, Bin, Choice, Flag, Int, Many, Nested, Text
from protocol.fields import optional as opt
from protocol.fields import wire as req
from protocol.records import record
from protocol.signatures import IDENTITY_KEY_LENGTH, KeyScheme

MESSAGE_ID_BYTES = 16
MESSAGE_NONCE_BYTES = 24
CHALLENGE_NONCE_BYTES = 32
SIGNATURE_BYTES = 64
MAX_PQ_KEY_BYTES = 2048
MAX_KEYS_PER_UPLOAD = 100
MAX_ACK_IDS = 1000
MAX_DEVICE_ENTRIES = 127
# send.multi: wire ceilings; the configured limits (relay settings) are checked below them.
MAX_MULTI_USERS = 1000
MAX_MULTI_DEVICES = 10_000
MAX_MULTI_HEADER_BYTES = 4096
MAX_TOKEN_CHARS = 256
BACKUP_ACCESS_KEY_BYTES = 32

_ID = Bin(MESSAGE_ID_BYTES, MESSAGE_ID_BYTES)
_SIG = Bin(SIGNATURE_BYTES, SIGNATURE_BYTES)
_USER = Text(36, user_id=True)
_U32 = Int()
_TS = Int(I64_MIN, I64_MAX)


def check_ec_public_key(key: bytes, path: str) -> None:
    """Pre-key public keys are 32 bytes, or 33 starting with 0x05 (libsignal's form)."""
    if not (len(key) == 32 or (len(key) == 33 and key[0] == 0x05)):
        raise FrameError(f"{path} must be 32 bytes, or 33 starting with 0x05")


# --- keys -------------------------------------------------------------------


@record(kw_only=True)
class PreKey:
    id: int = req(_U32)
    key: bytes = req(Bin(32, 33))

    def check(self) -> None:
        check_ec_public_key(self.key, "key")


@record(kw_only=True)
class SignedPreKey:
    id: int = req(_U32)
    key: bytes = req(Bin(32, 33))
    signature: bytes = req(_SIG)

    def check(self) -> None:
        check_ec_public_key(self.key, "key")


@record(kw_only=True)
class PqPreKey:
    """A post-quantum (KEM) pre-key: opaque bytes, signed by the identity key."""

    id: int = req(_U32)
    key: bytes = req(Bin(1, MAX_PQ_KEY_BYTES))
    signature: bytes = req(_SIG)


# --- client to server --------------------------------------------------------


@record(kw_only=True)
class Link:
    device: int = req(_U32)
    signature: bytes = req(_SIG)


@record(kw_only=True)
class Register:
    T: ClassVar[str] = "register"
    rid: int = req(_U32)
    identity_key: bytes = req(Bin(32, 33))
    key_scheme: KeyScheme = req(Choice(KeyScheme))
    signature: bytes = req(_SIG)
    registration_id: int | None = opt(_U32)
    token: str | None = opt(Text(MAX_TOKEN_CHARS))
    user: str | None = opt(_USER)
    link: Link | None = opt(Nested(Link))

    def check(self) -> None:
        if len(self.identity_key) != IDENTITY_KEY_LENGTH[self.key_scheme]:
            raise FrameError(f"identity_key has the wrong size for {self.key_scheme}")
        if self.key_scheme is KeyScheme.XEDDSA and self.identity_key[0] != 0x05:
            raise FrameError("an xeddsa identity_key starts with 0x05")
        if (self.user is None) != (self.link is None):
            raise FrameError("user and link go together")


@record(kw_only=True)
class Auth:
    T: ClassVar[str] = "auth"
    rid: int = req(_U32)
    user: str = req(_USER)
    device: int = req(_U32)
    signature: bytes = req(_SIG)


@record(kw_only=True)
class DeviceMessage:
    """One recipient device's copy of a message: its own ciphertext."""

    device: int = req(_U32)
    type: int = req(Int(0, 255))
    body: bytes = req(Bin(1, body=True))
    registration_id: int | None = opt(_U32)


@record(kw_only=True)
class Send:
    T: ClassVar[str] = "send"
    rid: int = req(_U32)
    id: bytes = req(_ID)
    to: str = req(_USER)
    ts: int = req(_TS)
    nonce: bytes = req(Bin(MESSAGE_NONCE_BYTES, MESSAGE_NONCE_BYTES))
    devices: tuple[DeviceMessage, ...] = req(Many(Nested(DeviceMessage), MAX_DEVICE_ENTRIES))
    online: bool = opt(Flag(), default=False)
    # Extension (docs/protocol.md, delivery receipts): absent when false, so a v1 client's
    # bytes are unchanged.
    receipt: bool = opt(Flag(), default=False)

    def check(self) -> None:
        seen = {d.device for d in self.devices}
        if len(seen) != len(self.devices):
            raise FrameError("devices names a device twice")
        if self.receipt and self.online:
            raise FrameError("an online message is never stored: it has no receipt")


@record(kw_only=True)
class MultiDevice:
    """One device's part of a `send.multi`: its ciphertext, or its header before the shared
    payload. The body limit is checked by the frame, which knows whether a payload is used."""

    device: int = req(_U32)
    type: int = req(Int(0, 255))
    body: bytes = req(Bin(1))
    registration_id: int | None = opt(_U32)


@record(kw_only=True)
class MultiRecipient:
    """One recipient user of a `send.multi` and the devices addressed there."""

    user: str = req(_USER)
    devices: tuple[MultiDevice, ...] = req(Many(Nested(MultiDevice), MAX_DEVICE_ENTRIES))


@record(kw_only=True)
class SendMulti:
    """A message to several users in one frame (docs/protocol.md, Multi-recipient send)."""

    T: ClassVar[str] = "send.multi"
    rid: int = req(_U32)
    id: bytes = req(_ID)
    ts: int = req(_TS)
    nonce: bytes = req(Bin(MESSAGE_NONCE_BYTES, MESSAGE_NONCE_BYTES))
    to: tuple[MultiRecipient, ...] = req(Many(Nested(MultiRecipient), MAX_MULTI_USERS))
    payload: bytes | None = opt(Bin(1, body=True))
    online: bool = opt(Flag(), default=False)
    # Delivery receipts (docs/protocol.md): absent when false, as on `send`.
    receipt: bool = opt(Flag(), default=False)

    def check(self) -> None:
        if self.receipt and self.online:
            raise FrameError("an online message is never stored: it has no receipt")
        if not self.to:
            raise FrameError("to names no user")
        if len({r.user for r in self.to}) != len(self.to):
            raise FrameError("to names a user twice")
        for i, recipient in enumerate(self.to):
            if len({d.device for d in recipient.devices}) != len(recipient.devices):
                raise FrameError(f"to[{i}].devices names a device twice")
        if self.device_count > MAX_MULTI_DEVICES:
            raise FrameTooLarge(f"to has more than {MAX_MULTI_DEVICES} device entries")

    @property
    def device_count(self) -> int:
        return sum(len(r.devices) for r in self.to)

    def check_limits(self, *, max_users: int, max_devices: int, max_body_bytes: int) -> None:
        """The configured limits, all `too_large`: users, device entries, each body (or
        header plus the shared payload)."""
        if len(self.to) > max_users:
            raise FrameTooLarge(f"to has more than {max_users} users")
        if self.device_count > max_devices:
            raise FrameTooLarge(f"to has more than {max_devices} device entries")
        shared = 0 if self.payload is None else len(self.payload)
        for i, recipient in enumerate(self.to):
            for j, message in enumerate(recipient.devices):
                where = f"to[{i}].devices[{j}].body"
                if self.payload is not None and len(message.body) > MAX_MULTI_HEADER_BYTES:
                    raise FrameTooLarge(f"{where} is a header above {MAX_MULTI_HEADER_BYTES} bytes")
                if len(message.body) + shared > max_body_bytes:
                    raise FrameTooLarge(
                        f"{where} is above the body limit of {max_body_bytes} bytes"
                    )


@record(kw_only=True)
class Ack:
    T: ClassVar[str] = "ack"
    ids: tuple[bytes, ...] = req(Many(_ID, MAX_ACK_IDS))


@record(kw_only=True)
class KeysUpload:
    T: ClassVar[str] = "keys.upload"
    rid: int = req(_U32)
    signed_prekey: SignedPreKey | None = opt(Nested(SignedPreKey))
    prekeys: tuple[PreKey, ...] | None = opt(Many(Nested(PreKey), MAX_KEYS_PER_UPLOAD))
    pq_prekeys: tuple[PqPreKey, ...] | None = opt(Many(Nested(PqPreKey), MAX_KEYS_PER_UPLOAD))
    pq_last_resort: PqPreKey | None = opt(Nested(PqPreKey))


@record(kw_only=True)
class KeysFetch:
    T: ClassVar[str] = "keys.fetch"
    rid: int = req(_U32)
    user: str = req(_USER)
    device: int | None = opt(_U32)


@record(kw_only=True)
class KeysCount:
    T: ClassVar[str] = "keys.count"
    rid: int = req(_U32)


@record(kw_only=True)
class DevicesList:
    T: ClassVar[str] = "devices.list"
    rid: int = req(_U32)


@record(kw_only=True)
class DevicesRemove:
    T: ClassVar[str] = "devices.remove"
    rid: int = req(_U32)
    device: int = req(_U32)


# --- the key-backup extension (docs/protocol.md) ----------------------------------

_ACCESS_KEY = Bin(BACKUP_ACCESS_KEY_BYTES, BACKUP_ACCESS_KEY_BYTES)


@record(kw_only=True)
class BackupPut:
    """Replace the user's backup if `version` is still current (0: there is none)."""

    T: ClassVar[str] = "backup.put"
    rid: int = req(_U32)
    version: int = req(_U32)
    blob: bytes = req(Bin(1, backup=True))
    access_key: bytes = req(_ACCESS_KEY)


@record(kw_only=True)
class BackupGet:
    T: ClassVar[str] = "backup.get"
    rid: int = req(_U32)


@record(kw_only=True)
class BackupDelete:
    T: ClassVar[str] = "backup.delete"
    rid: int = req(_U32)
    version: int = req(Int(1))


@record(kw_only=True)
class BackupRecover:
    """Before the handshake: the backup whose access key signed the challenge."""

    T: ClassVar[str] = "backup.recover"
    rid: int = req(_U32)
    access_key: bytes = req(_ACCESS_KEY)
    signature: bytes = req(_SIG)


Request = (
    Register
    | Auth
    | Send
    | SendMulti
    | KeysUpload
    | KeysFetch
    | KeysCount
    | DevicesList
    | DevicesRemove
    | BackupPut
    | BackupGet
    | BackupDelete
    | BackupRecover
)
ClientFrame = Request | Ack

CLIENT_FRAMES: dict[str, type[ClientFrame]] = {
    cls.T: cls
    for cls in (
        Register,
        Auth,
        Send,
        SendMulti,
        Ack,
        KeysUpload,
        KeysFetch,
        KeysCount,
        DevicesList,
        DevicesRemove,
        BackupPut,
        BackupGet,
        BackupDelete,
        BackupRecover,
    )
}

# --- server to client --------------------------------------------------------


@record(kw_only=True)
class Challenge:
    T: ClassVar[str] = "challenge"
    nonce: bytes = req(Bin(CHALLENGE_NONCE_BYTES, CHALLENGE_NONCE_BYTES))
    server_time: int = req(_TS)


@record(kw_only=True)
class UserDevicesProblem:
    """One user's device-set problem in a `send.multi` refusal: what `send`'s error says."""

    user: str = req(_USER)
    missing: tuple[int, ...] = req(Many(_U32, MAX_DEVICE_ENTRIES))
    extra: tuple[int, ...] = req(Many(_U32, MAX_DEVICE_ENTRIES))
    stale: tuple[int, ...] = req(Many(_U32, MAX_DEVICE_ENTRIES))


@record(kw_only=True)
class Error:
    T: ClassVar[str] = "error"
    code: ErrorCode = req(Choice(ErrorCode))
    message: str = req(Text(4096))
    rid: int | None = opt(_U32)
    retry_after_ms: int | None = opt(Int(0, I64_MAX))
    missing: tuple[int, ...] | None = opt(Many(_U32, MAX_DEVICE_ENTRIES))
    extra: tuple[int, ...] | None = opt(Many(_U32, MAX_DEVICE_ENTRIES))
    stale: tuple[int, ...] | None = opt(Many(_U32, MAX_DEVICE_ENTRIES))
    version: int | None = opt(_U32)  # the key-backup extension: the current version
    unknown_users: tuple[str, ...] | None = opt(Many(_USER, MAX_MULTI_USERS))
    users: tuple[UserDevicesProblem, ...] | None = opt(
        Many(Nested(UserDevicesProblem), MAX_MULTI_USERS)
    )


@record(kw_only=True)
class AuthOk:
    T: ClassVar[str] = "ok"
    rid: int = req(_U32)
    user: str = req(_USER)
    device: int = req(_U32)
    queued: int = req(_U32)
    prekeys: int = req(_U32)
    pq_prekeys: int = req(_U32)
    rotate_signed_prekey: bool = req(Flag())


@record(kw_only=True)
class SendOk:
    T: ClassVar[str] = "ok"
    rid: int = req(_U32)
    id: bytes = req(_ID)
    delivered: tuple[int, ...] = req(Many(_U32, MAX_DEVICE_ENTRIES))
    stored: tuple[int, ...] = req(Many(_U32, MAX_DEVICE_ENTRIES))


@record(kw_only=True)
class UserOutcome:
    """One recipient user's part of a `send.multi` answer."""

    user: str = req(_USER)
    delivered: tuple[int, ...] = req(Many(_U32, MAX_DEVICE_ENTRIES))
    stored: tuple[int, ...] = req(Many(_U32, MAX_DEVICE_ENTRIES))


@record(kw_only=True)
class SendMultiOk:
    T: ClassVar[str] = "ok"
    rid: int = req(_U32)
    id: bytes = req(_ID)
    users: tuple[UserOutcome, ...] = req(Many(Nested(UserOutcome), MAX_MULTI_USERS))


@record(kw_only=True)
class KeysUploadOk:
    T: ClassVar[str] = "ok"
    rid: int = req(_U32)
    prekeys: int = req(_U32)
    pq_prekeys: int = req(_U32)


@record(kw_only=True)
class Bundle:
    """One device's pre-key bundle, as `keys.fetch` hands it out."""

    device: int = req(_U32)
    registration_id: int = req(_U32)
    identity_key: bytes = req(Bin(32, 33))
    key_scheme: KeyScheme = req(Choice(KeyScheme))
    signed_prekey: SignedPreKey = req(Nested(SignedPreKey))
    prekey: PreKey | None = opt(Nested(PreKey))
    pq_prekey: PqPreKey | None = opt(Nested(PqPreKey))


@record(kw_only=True)
class KeysFetchOk:
    T: ClassVar[str] = "ok"
    rid: int = req(_U32)
    user: str = req(_USER)
    devices: tuple[Bundle, ...] = req(Many(Nested(Bundle), MAX_DEVICE_ENTRIES))


@record(kw_only=True)
class KeysCountOk:
    T: ClassVar[str] = "ok"
    rid: int = req(_U32)
    prekeys: int = req(_U32)
    pq_prekeys: int = req(_U32)
    signed_prekey_age_s: int | None = opt(Int(0, I64_MAX))


@record(kw_only=True)
class DeviceInfo:
    device: int = req(_U32)
    key_scheme: KeyScheme = req(Choice(KeyScheme))
    created: int = req(_TS)
    last_seen: int = req(_TS)


@record(kw_only=True)
class DevicesListOk:
    T: ClassVar[str] = "ok"
    rid: int = req(_U32)
    devices: tuple[DeviceInfo, ...] = req(Many(Nested(DeviceInfo), MAX_DEVICE_ENTRIES))


@record(kw_only=True)
class EmptyOk:
    T: ClassVar[str] = "ok"
    rid: int = req(_U32)


@record(kw_only=True)
class BackupPutOk:
    T: ClassVar[str] = "ok"
    rid: int = req(_U32)
    version: int = req(_U32)


@record(kw_only=True)
class BackupOk:
    """The answer to `backup.get` and `backup.recover`."""

    T: ClassVar[str] = "ok"
    rid: int = req(_U32)
    user: str = req(_USER)
    version: int = req(_U32)
    blob: bytes = req(Bin(1))
    updated: int = req(_TS)


@record(kw_only=True)
class Deliver:
    T: ClassVar[str] = "deliver"
    id: bytes = req(_ID)
    from_user: str = req(_USER, name="from")
    from_device: int = req(_U32)
    ts: int = req(_TS)
    server_ts: int = req(_TS)
    type: int = req(Int(0, 255))
    body: bytes = req(Bin(1))
    nonce: bytes = req(Bin(MESSAGE_NONCE_BYTES, MESSAGE_NONCE_BYTES))
    online: bool = opt(Flag(), default=False)


@record(kw_only=True)
class Receipt:
    """A stored copy of a message sent with `receipt: true` was acknowledged by `device` of
    `user` at `server_ts`; acknowledged by `id`, like a delivery (docs/protocol.md)."""

    T: ClassVar[str] = "receipt"
    id: bytes = req(_ID)
    message_id: bytes = req(_ID)
    user: str = req(_USER)
    device: int = req(_U32)
    server_ts: int = req(_TS)


@record(kw_only=True)
class QueueEmpty:
    T: ClassVar[str] = "queue_empty"


@record(kw_only=True)
class KeysLow:
    T: ClassVar[str] = "keys.low"
    prekeys: int = req(_U32)
    pq_prekeys: int = req(_U32)


Answer = (
    AuthOk
    | SendOk
    | SendMultiOk
    | KeysUploadOk
    | KeysFetchOk
    | KeysCountOk
    | DevicesListOk
    | EmptyOk
    | BackupPutOk
    | BackupOk
)
Push = Challenge | Deliver | Receipt | QueueEmpty | KeysLow
ServerFrame = Answer | Error | Push

SERVER_PUSHES: dict[str, type[Push | Error]] = {
    cls.T: cls for cls in (Challenge, Deliver, Receipt, QueueEmpty, KeysLow, Error)
}

ANSWER_TYPES: dict[type[Request], type[Answer]] = {
    Register: AuthOk,
    Auth: AuthOk,
    Send: SendOk,
    SendMulti: SendMultiOk,
    KeysUpload: KeysUploadOk,
    KeysFetch: KeysFetchOk,
    KeysCount: KeysCountOk,
    DevicesList: DevicesListOk,
    DevicesRemove: EmptyOk,
    BackupPut: BackupPutOk,
    BackupGet: BackupOk,
    BackupDelete: EmptyOk,
    BackupRecover: BackupOk,
}
