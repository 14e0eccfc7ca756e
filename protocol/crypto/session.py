"""Sessions with remote devices: start (initiator), accept (responder), encrypt, decrypt.

The initiator sends type-1 bodies (spec §7: the X3DH/PQXDH preamble, then a
ratchet message) until it has decrypted a first reply, and type-2 bodies after
that. The responder builds its session from the first type-1 body it can
decrypt; later type-1 bodies with the same base key (sent before the
initiator heard back, possibly out of order) decrypt with that session, and
one with another base key starts a new session (:class:`SessionMismatch` from
:meth:`Session.decrypt`, then :func:`accept_session`).

:func:`receive` does all of this for a client: it decrypts a body from one
remote device with the session it holds for that device (or none) and returns
the session to keep. When both devices start a session with each other at
the same time, the session with the smaller base key wins on both sides.
The caller still checks :func:`peek_identity` (or the returned session's
``remote_identity_key``) against the identity key it knows for the device.
"""

from __future__ import annotations

from typing import Final

from protocol.crypto import agreement, state
from protocol.crypto.bundle import RemoteBundle, verify_bundle
from protocol.crypto.device_keys import DeviceKeys
from protocol.crypto.errors import (
    CryptoError,
    DecryptError,
    SessionMismatch,
    StateError,
    UntrustedBundle,
)
from protocol.crypto.ratchet import RatchetState
from protocol.crypto.wire import (
    MAX_BODY_BYTES,
    PREKEY_MESSAGE_TYPE,
    RATCHET_MESSAGE_TYPE,
    PreKeyHeader,
    encode_preamble,
    parse_prekey_message,
    parse_ratchet_message,
)
from protocol.signatures import IDENTITY_KEY_LENGTH, KeyScheme, identity_key_x25519

__all__ = [
    "MAX_PLAINTEXT_BYTES",
    "MAX_RETIRED_BASE_KEYS",
    "CryptoError",
    "DecryptError",
    "RemoteBundle",
    "Session",
    "SessionMismatch",
    "StateError",
    "UntrustedBundle",
    "accept_session",
    "peek_base_key",
    "peek_identity",
    "peek_prekey_header",
    "receive",
    "start_session",
]

# Room for the largest preamble and the ratchet header and tag within MAX_BODY_BYTES.
MAX_PLAINTEXT_BYTES: Final = MAX_BODY_BYTES - 4096
_STATE_VERSION: Final = 1
_AD_BYTES: Final = 66
_MAX_PREAMBLE_BYTES: Final = 4096
MAX_RETIRED_BASE_KEYS: Final = 32


class Session:
    """The Double Ratchet state with one remote device."""

    __slots__ = (
        "_associated_data",
        "_initiator",
        "_pending_preamble",
        "_ratchet",
        "_retired_base_keys",
        "base_key",
        "remote_identity_key",
        "remote_key_scheme",
        "remote_registration_id",
    )

    def __init__(
        self,
        *,
        initiator: bool,
        remote_identity_key: bytes,
        remote_key_scheme: KeyScheme,
        remote_registration_id: int,
        base_key: bytes,
        associated_data: bytes,
        ratchet: RatchetState,
        pending_preamble: bytes | None,
        retired_base_keys: tuple[bytes, ...] = (),
    ) -> None:
        """Use :func:`start_session`, :func:`accept_session` or :meth:`from_bytes`."""
        self.remote_identity_key = remote_identity_key
        self.remote_key_scheme = remote_key_scheme
        self.remote_registration_id = remote_registration_id
        # The initiator's ephemeral X25519 key: names the session on both sides.
        self.base_key = base_key
        self._initiator = initiator
        self._associated_data = associated_data
        self._ratchet = ratchet
        self._pending_preamble = pending_preamble
        # Base keys of sessions this one replaced: their first messages must not come back.
        self._retired_base_keys = retired_base_keys[:MAX_RETIRED_BASE_KEYS]

    def __repr__(self) -> str:
        """Public parts only."""
        return (
            f"Session(remote_identity_key={self.remote_identity_key.hex()}, "
            f"base_key={self.base_key.hex()}, initiator={self._initiator}, "
            f"pending={self._pending_preamble is not None})"
        )

    @property
    def is_initiator(self) -> bool:
        """Whether this side started the session with :func:`start_session`."""
        return self._initiator

    @property
    def awaiting_reply(self) -> bool:
        """Whether :meth:`encrypt` still makes type-1 bodies (no reply decrypted yet)."""
        return self._pending_preamble is not None

    @property
    def retired_base_keys(self) -> tuple[bytes, ...]:
        """Base keys of earlier sessions with the device, newest first (bounded)."""
        return self._retired_base_keys

    def retire(self, base_key: bytes) -> None:
        """Remember ``base_key`` as a session that must never start again."""
        if base_key != self.base_key and base_key not in self._retired_base_keys:
            self._retired_base_keys = (base_key, *self._retired_base_keys)[:MAX_RETIRED_BASE_KEYS]

    @property
    def skipped_keys(self) -> int:
        """How many message keys of skipped messages are held (bounded)."""
        return self._ratchet.skipped_count

    def encrypt(self, plaintext: bytes) -> tuple[int, bytes]:
        """``(message type, body)``: type 1 until a reply has been decrypted, then type 2."""
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise ValueError(f"plaintext above {MAX_PLAINTEXT_BYTES} bytes")
        preamble = self._pending_preamble
        if preamble is None:
            return RATCHET_MESSAGE_TYPE, self._ratchet.encrypt(plaintext, self._associated_data)
        body = self._ratchet.encrypt(plaintext, self._associated_data + preamble)
        return PREKEY_MESSAGE_TYPE, preamble + body

    def decrypt(self, msg_type: int, body: bytes) -> bytes:
        """The plaintext of a body; any failure is :class:`DecryptError` and changes nothing."""
        if msg_type == RATCHET_MESSAGE_TYPE:
            try:
                message = parse_ratchet_message(body)
            except ValueError as exc:
                raise DecryptError(str(exc)) from exc
            trial = self._ratchet.copy()
            plaintext = trial.decrypt(message, self._associated_data)
            self._ratchet = trial
            self._pending_preamble = None
            return plaintext
        if msg_type == PREKEY_MESSAGE_TYPE:
            try:
                prekey_message = parse_prekey_message(body)
            except ValueError as exc:
                raise DecryptError(str(exc)) from exc
            header = prekey_message.header
            if self._initiator or header.base_key != self.base_key:
                raise SessionMismatch("pre-key message of another session")
            if header.identity_key != self.remote_identity_key:
                raise DecryptError("pre-key message from another identity")
            trial = self._ratchet.copy()
            plaintext = trial.decrypt(
                prekey_message.message, self._associated_data + prekey_message.preamble
            )
            self._ratchet = trial
            return plaintext
        raise DecryptError(f"message type {msg_type} is not a session message")

    def to_bytes(self) -> bytes:
        """The whole state as msgpack, for the client's encrypted local store."""
        return state.pack(
            {
                "v": _STATE_VERSION,
                "initiator": int(self._initiator),
                "remote_identity_key": self.remote_identity_key,
                "remote_key_scheme": self.remote_key_scheme.value,
                "remote_registration_id": self.remote_registration_id,
                "base_key": self.base_key,
                "ad": self._associated_data,
                "pending": self._pending_preamble,
                "retired": list(self._retired_base_keys),
                "ratchet": self._ratchet.to_record(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Session:
        """Read back :meth:`to_bytes`; malformed data is :class:`StateError`."""
        record = state.unpack(data, kind="session", version=_STATE_VERSION)
        try:
            scheme = KeyScheme(record.text("remote_key_scheme"))
        except ValueError as exc:
            raise StateError("session: unknown key scheme") from exc
        initiator = record.integer("initiator", high=1) == 1
        pending = record.optional_blob("pending")
        retired = record.value_list("retired", max_items=MAX_RETIRED_BASE_KEYS)
        if pending is not None and (not initiator or len(pending) > _MAX_PREAMBLE_BYTES):
            raise StateError("session: bad pending pre-key preamble")
        return cls(
            initiator=initiator,
            remote_identity_key=record.blob(
                "remote_identity_key", length=IDENTITY_KEY_LENGTH[scheme]
            ),
            remote_key_scheme=scheme,
            remote_registration_id=record.integer("remote_registration_id"),
            base_key=record.blob("base_key", length=32),
            associated_data=record.blob("ad", length=_AD_BYTES),
            ratchet=RatchetState.from_record(record.record("ratchet")),
            pending_preamble=pending,
            retired_base_keys=tuple(retired),
        )


def start_session(own: DeviceKeys, bundle: RemoteBundle) -> Session:
    """Start a session as initiator (PQXDH when the bundle has a PQ pre-key, else X3DH)."""
    verified = verify_bundle(bundle)
    try:
        agreed = agreement.initiate(own, verified)
        ratchet = RatchetState.initiator(agreed.secret, agreed.remote_signed_prekey)
    except ValueError as exc:
        raise UntrustedBundle("a bundle key is of small order") from exc
    return Session(
        initiator=True,
        remote_identity_key=bytes(bundle.identity_key),
        remote_key_scheme=KeyScheme(bundle.key_scheme),
        remote_registration_id=bundle.registration_id,
        base_key=agreed.header.base_key,
        associated_data=agreed.associated_data,
        ratchet=ratchet,
        pending_preamble=encode_preamble(agreed.header),
    )


def accept_session(own: DeviceKeys, body: bytes) -> tuple[Session, bytes]:
    """Build the responder's session from a type-1 body and decrypt it.

    On success the one-time EC and PQ pre-keys the body used are removed from
    ``own`` (never the last-resort PQ key), so the caller must persist ``own``
    with the new session. On failure ``own`` is unchanged.
    """
    try:
        message = parse_prekey_message(body)
        header = message.header
        initiator_x25519 = identity_key_x25519(header.key_scheme, header.identity_key)
        agreed = agreement.respond(own, header, initiator_x25519)
    except ValueError as exc:
        raise DecryptError(str(exc)) from exc
    ratchet = RatchetState.responder(
        agreed.secret, agreed.signed_prekey.private, agreed.signed_prekey.public[1:]
    )
    plaintext = ratchet.decrypt(message.message, agreed.associated_data + message.preamble)
    if header.prekey_id is not None:
        del own.prekeys[header.prekey_id]
    if header.pq_prekey_id is not None:
        own.pq_prekeys.pop(header.pq_prekey_id, None)
    session = Session(
        initiator=False,
        remote_identity_key=header.identity_key,
        remote_key_scheme=header.key_scheme,
        remote_registration_id=header.registration_id,
        base_key=header.base_key,
        associated_data=agreed.associated_data,
        ratchet=ratchet,
        pending_preamble=None,
    )
    return session, plaintext


def peek_prekey_header(body: bytes, msg_type: int) -> PreKeyHeader | None:
    """The X3DH/PQXDH header of a type-1 body (unauthenticated), else ``None``."""
    if msg_type != PREKEY_MESSAGE_TYPE:
        return None
    try:
        return parse_prekey_message(body).header
    except ValueError:
        return None


def peek_identity(body: bytes, msg_type: int) -> bytes | None:
    """The sender's identity key in a type-1 header, else ``None`` (unauthenticated)."""
    header = peek_prekey_header(body, msg_type)
    return None if header is None else header.identity_key


def peek_base_key(body: bytes, msg_type: int) -> bytes | None:
    """The base key naming the session of a type-1 body, else ``None`` (unauthenticated)."""
    header = peek_prekey_header(body, msg_type)
    return None if header is None else header.base_key


def receive(
    own: DeviceKeys, session: Session | None, msg_type: int, body: bytes
) -> tuple[Session, bytes]:
    """Decrypt a body from one remote device: ``(session to keep from now on, plaintext)``.

    A type-1 body with the base key of ``session`` (the responder's side)
    decrypts with it, so a duplicate fails; one with the base key of a session
    that ``session`` replaced is refused (a replayed first message must not
    roll the session back); another base key is a new session, which replaces
    ``session`` unless ``session`` is still waiting for its first reply and has
    the smaller base key (both devices started at once: the same session wins
    on both sides). ``own`` loses the one-time pre-keys a new session used;
    persist it with the session. Raises :class:`DecryptError`.
    """
    if msg_type == PREKEY_MESSAGE_TYPE:
        base_key = peek_base_key(body, msg_type)
        if base_key is None:
            raise DecryptError("malformed pre-key message")
        if session is None:
            return accept_session(own, body)
        if not session.is_initiator and session.base_key == base_key:
            return session, session.decrypt(msg_type, body)
        if base_key == session.base_key or base_key in session.retired_base_keys:
            raise DecryptError("first message of an earlier session")
        new_session, plaintext = accept_session(own, body)
        if session.awaiting_reply and session.base_key < base_key:
            session.retire(base_key)
            return session, plaintext
        for retired in (*reversed(session.retired_base_keys), session.base_key):
            new_session.retire(retired)
        return new_session, plaintext
    if session is None:
        raise DecryptError("no session with this device")
    return session, session.decrypt(msg_type, body)
