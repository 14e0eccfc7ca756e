"""Group messages: one `send.multi` frame to every device of several users.

Two shapes (docs/client.md, Group messages):

- **shared** (the default): the plaintext is sealed once with a fresh random 32-byte key
  (XSalsa20-Poly1305, PyNaCl's SecretBox) into the frame's shared `payload`, and each
  device gets that key through its Double Ratchet session as a `GROUP_KEY` content, in a
  short header. The relay stores the payload once; each device receives
  `header ‖ payload` with message type GROUP_TYPE (3, "group message" in the registry).
- **per device**: each device gets the plaintext through its session, as `send` does
  (types 1 and 2); the recipients see an ordinary message.

The header is self-delimiting, so the recipient splits what it received:

    ratchet type  u8    1 (pre-key message) or 2 (session message)
    length        u16   big-endian, of the ratchet ciphertext
    ciphertext    the session's encryption of Content(GROUP_KEY, seq, key)

A refused frame (`mismatched_devices`, `stale_devices` with their per-user details) is
fixed for every user at once and sent again with the same id and nonce; a lost
connection or `unavailable` resends the same frame, which the relay answers from its
replay record without delivering twice.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import nacl.exceptions
import nacl.secret

from protocol.client.bundles import MAX_RATE_WAIT_S, RETRY_CODES, fetch_sessions
from protocol.client.content import Kind
from protocol.client.errors import RequestRefused, SendFailed
from protocol.client.messages import ClientOptions
from protocol.client.peers import Peers
from protocol.client.state import ClientState
from protocol.crypto.errors import DecryptError
from protocol.errors import ErrorCode
from protocol.frames import (
    Error,
    MultiDevice,
    MultiRecipient,
    SendMulti,
    SendMultiOk,
    UserDevicesProblem,
)
from protocol.wire import WireConnection

__all__ = [
    "GROUP_TYPE",
    "GroupReceipt",
    "GroupSender",
    "open_group_body",
    "seal_group_payload",
]

log = logging.getLogger("relay.client")

GROUP_TYPE: Final = 3  # the registry's "group message": header ‖ shared payload
GROUP_KEY_BYTES: Final = nacl.secret.SecretBox.KEY_SIZE
_HEAD = struct.Struct(">BH")


@dataclass(frozen=True, slots=True)
class GroupReceipt:
    """The relay's `ok`: per user, the devices that acknowledged and those it stored for."""

    id: bytes
    delivered: dict[str, tuple[int, ...]]
    stored: dict[str, tuple[int, ...]]


def seal_group_payload(plaintext: bytes) -> tuple[bytes, bytes]:
    """(a fresh key, the payload sealed with it: nonce ‖ ciphertext)."""
    key = os.urandom(GROUP_KEY_BYTES)
    return key, bytes(nacl.secret.SecretBox(key).encrypt(plaintext))


def header(ratchet_type: int, ciphertext: bytes) -> bytes:
    return _HEAD.pack(ratchet_type, len(ciphertext)) + ciphertext


def split_group_body(body: bytes) -> tuple[int, bytes, bytes]:
    """(ratchet type, ratchet ciphertext, shared payload) of a delivered group body."""
    if len(body) < _HEAD.size:
        raise DecryptError("a group message shorter than its header")
    ratchet_type, length = _HEAD.unpack_from(body)
    end = _HEAD.size + length
    if len(body) <= end:
        raise DecryptError("a group message without its payload")
    return ratchet_type, body[_HEAD.size : end], body[end:]


def open_group_body(key: bytes, payload: bytes) -> bytes:
    """The plaintext of a shared payload, with the key its header carried."""
    if len(key) != GROUP_KEY_BYTES:
        raise DecryptError("a group key of the wrong size")
    try:
        return bytes(nacl.secret.SecretBox(key).decrypt(payload))
    except nacl.exceptions.CryptoError as exc:
        raise DecryptError("the shared payload does not open with its key") from exc


@dataclass(slots=True)
class _Message:
    """One group message being sent: the same id, nonce and payload through every retry."""

    members: list[str]
    plaintext: bytes
    key: bytes | None
    payload: bytes | None
    receipt: bool = False  # delivery receipts for the copies the relay stores
    id: bytes = field(default_factory=lambda: uuid.uuid4().bytes)
    nonce: bytes = field(default_factory=lambda: secrets.token_bytes(24))
    prepared: dict[str, dict[int, MultiDevice]] = field(default_factory=dict)


class GroupSender:
    """Gets one group message accepted over the client's connections."""

    def __init__(
        self,
        state: ClientState,
        peers: Peers,
        options: ClientOptions,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.state = state
        self.peers = peers
        self.options = options
        self._sleep = sleep

    def new_message(
        self, members: Sequence[str], plaintext: bytes, *, shared: bool, receipt: bool = False
    ) -> _Message:
        users = list(dict.fromkeys(str(uuid.UUID(m)) for m in members))
        if not users:
            raise ValueError("a group message needs at least one member")
        if shared:
            key, payload = seal_group_payload(plaintext)
            return _Message(users, plaintext, key, payload, receipt)
        return _Message(users, plaintext, None, None, receipt)

    async def deliver(self, conn: WireConnection, message: _Message) -> GroupReceipt:
        """Send until `ok`; raises `SendFailed`, or `ConnectionLost` (the caller retries
        on the next connection with the same message)."""
        last: Error | None = None
        attempt = 0
        fixes = 0
        while fixes < self.options.send_rounds:
            await self._prepare(conn, message)
            frame = SendMulti(
                rid=conn.next_rid(),
                id=message.id,
                ts=int(time.time() * 1000),
                nonce=message.nonce,
                payload=message.payload,
                receipt=message.receipt,
                to=tuple(
                    MultiRecipient(
                        user=user,
                        devices=tuple(
                            entry for _, entry in sorted(message.prepared.get(user, {}).items())
                        ),
                    )
                    for user in message.members
                ),
            )
            try:
                ok = await conn.request(frame, SendMultiOk)
            except RequestRefused as exc:
                last = exc.error
                code = exc.code
                if code in (ErrorCode.MISMATCHED_DEVICES, ErrorCode.STALE_DEVICES):
                    fixes += 1
                    await self._fix(conn, message, exc.error.users or ())
                elif code is ErrorCode.RATE_LIMITED:
                    wait_ms = exc.error.retry_after_ms or 1000
                    await self._sleep(min(wait_ms / 1000, MAX_RATE_WAIT_S))
                elif code in RETRY_CODES:
                    await self._sleep(self.options.backoff.delay(attempt))
                    attempt += 1
                else:
                    raise SendFailed(exc.error) from None
                continue
            return GroupReceipt(
                id=ok.id,
                delivered={u.user: u.delivered for u in ok.users},
                stored={u.user: u.stored for u in ok.users},
            )
        assert last is not None
        raise SendFailed(last)

    def _own(self) -> tuple[str, int]:
        assert self.state.account is not None
        return self.state.account.user, self.state.account.device

    async def _prepare(self, conn: WireConnection, message: _Message) -> None:
        """An entry for every known device of every member that has none yet."""
        own_user, own_device = self._own()
        for user in message.members:
            devices = dict(self.peers.devices(user))
            if user == own_user:
                devices.pop(own_device, None)
            elif not devices and not message.prepared.get(user):
                await self._fetch(conn, user, None)
                devices = dict(self.peers.devices(user))
            entries = message.prepared.setdefault(user, {})
            for device in sorted(devices):
                if device not in entries:
                    entries[device] = self._encrypt(user, device, message)
            for device in [d for d in entries if d not in devices]:
                del entries[device]

    def _encrypt(self, user: str, device: int, message: _Message) -> MultiDevice:
        if message.key is None:
            copy = self.peers.encrypt(user, device, Kind.MESSAGE, message.plaintext, None)
            body, msg_type = copy.body, copy.type
        else:
            copy = self.peers.encrypt(user, device, Kind.GROUP_KEY, message.key, None)
            body, msg_type = header(copy.type, copy.body), GROUP_TYPE
        return MultiDevice(
            device=device,
            type=msg_type,
            body=body,
            registration_id=copy.registration_id or None,
        )

    async def _fix(
        self, conn: WireConnection, message: _Message, problems: Sequence[UserDevicesProblem]
    ) -> None:
        """Every user's extra and stale devices dropped, the missing and stale fetched."""
        for problem in problems:
            entries = message.prepared.setdefault(problem.user, {})
            for device in (*problem.extra, *problem.stale):
                entries.pop(device, None)
                self.state.forget_device(problem.user, device)
            for device in (*problem.missing, *problem.stale):
                await self._fetch(conn, problem.user, device)

    async def _fetch(self, conn: WireConnection, user: str, device: int | None) -> None:
        await fetch_sessions(
            conn,
            user,
            device,
            own=self._own(),
            peers=self.peers,
            options=self.options,
            sleep=self._sleep,
        )
