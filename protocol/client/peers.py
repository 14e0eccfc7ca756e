"""Sessions with other devices: building them from bundles, encrypting, decrypting, trust.

Identity keys are trusted on first use: the first key seen for a (user,
device) is recorded; a different one later (a fetched bundle or a pre-key
message) is reported to the application through `on_identity_change` and then
replaces the old one, as messengers do when a contact reinstalls.

Decryption changes nothing, neither the store nor the device's keys in memory:
it returns a :class:`Decrypted` that the client commits once the application's
handler has returned, so a message the application did not take is decrypted
again when the relay redelivers it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from protocol.client.content import Content, Kind
from protocol.client.state import ClientState, PeerDevice, PreparedCopy
from protocol.crypto.device_keys import DeviceKeys
from protocol.crypto.errors import DecryptError
from protocol.crypto.session import (
    RemoteBundle,
    Session,
    peek_base_key,
    receive,
    start_session,
)
from protocol.frames import Bundle

__all__ = ["Decrypted", "IdentityChange", "Peers", "remote_bundle"]

log = logging.getLogger("relay.client")

PREKEY_MESSAGE = 1
SESSION_MESSAGE = 2


@dataclass(frozen=True, slots=True)
class IdentityChange:
    """A device's identity key differs from the one first seen for it."""

    user: str
    device: int
    old_key: bytes
    new_key: bytes


@dataclass(slots=True)
class Decrypted:
    user: str
    device: int
    content: Content
    session: Session
    peer: PeerDevice
    # One-time pre-keys (EC, PQ) that the new session used: removed from the keys at commit.
    used_prekeys: frozenset[int] = frozenset()
    used_pq_prekeys: frozenset[int] = frozenset()


def remote_bundle(bundle: Bundle) -> RemoteBundle:
    """A `keys.fetch` entry in the crypto module's terms."""
    return RemoteBundle(
        device=bundle.device,
        registration_id=bundle.registration_id,
        identity_key=bundle.identity_key,
        key_scheme=bundle.key_scheme,
        signed_prekey_id=bundle.signed_prekey.id,
        signed_prekey=bundle.signed_prekey.key,
        signed_prekey_signature=bundle.signed_prekey.signature,
        prekey_id=None if bundle.prekey is None else bundle.prekey.id,
        prekey=None if bundle.prekey is None else bundle.prekey.key,
        pq_prekey_id=None if bundle.pq_prekey is None else bundle.pq_prekey.id,
        pq_prekey=None if bundle.pq_prekey is None else bundle.pq_prekey.key,
        pq_prekey_signature=None if bundle.pq_prekey is None else bundle.pq_prekey.signature,
    )


class Peers:
    def __init__(
        self,
        state: ClientState,
        keys: DeviceKeys,
        on_identity_change: Callable[[IdentityChange], None],
    ) -> None:
        self.state = state
        self.keys = keys
        self._on_identity_change = on_identity_change

    def devices(self, user: str) -> dict[int, PeerDevice]:
        return self.state.book.get(user, {})

    def _trust(self, user: str, device: int, identity_key: bytes) -> None:
        known = self.state.trusted_identity(user, device)
        if known is not None and known != identity_key:
            self._on_identity_change(IdentityChange(user, device, known, identity_key))

    # --- sending -------------------------------------------------------------

    def add_bundle(self, user: str, bundle: Bundle) -> None:
        """Start a session from a fetched bundle (raises `UntrustedBundle`) and remember it."""
        session = start_session(self.keys, remote_bundle(bundle))
        self._trust(user, bundle.device, bundle.identity_key)
        old = self.state.book.get(user, {}).get(bundle.device)
        self.state.book.setdefault(user, {})[bundle.device] = PeerDevice(
            identity_key=bundle.identity_key,
            registration_id=bundle.registration_id,
            send_seq=0 if old is None else old.send_seq,
            recv_seq=0 if old is None else old.recv_seq,
        )
        self.state.save_session(user, bundle.device, session.to_bytes())
        self.state.save_book()

    def encrypt(
        self, user: str, device: int, kind: Kind, body: bytes, sent_to: str | None
    ) -> PreparedCopy:
        """Encrypt for one known device, with the next `seq`; persists the session and counter."""
        peer = self.state.book[user][device]
        data = self.state.load_session(user, device)
        if data is None:
            raise KeyError(f"no session with {user}/{device}")
        session = Session.from_bytes(data)
        peer.send_seq += 1
        content = Content(kind, peer.send_seq, body, sent_to)
        msg_type, ciphertext = session.encrypt(content.encode())
        self.state.save_session(user, device, session.to_bytes())
        self.state.save_book()
        return PreparedCopy(device, peer.registration_id, msg_type, ciphertext)

    # --- receiving -----------------------------------------------------------

    def decrypt(self, user: str, device: int, msg_type: int, body: bytes) -> Decrypted:
        """Open a delivered body; raises `DecryptError` (or `ContentError`). Nothing is saved."""
        data = self.state.load_session(user, device)
        existing = None if data is None else Session.from_bytes(data)
        used: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())
        if msg_type == SESSION_MESSAGE:
            if existing is None:
                raise DecryptError("a session message for no session")
            session = existing
            plain = session.decrypt(SESSION_MESSAGE, body)
        elif msg_type == PREKEY_MESSAGE:
            if (
                existing is not None
                and not existing.is_initiator
                and existing.base_key == peek_base_key(body, msg_type)
            ):
                session, plain = existing, existing.decrypt(PREKEY_MESSAGE, body)
            else:
                # A new session (or a replayed or losing first message, which `receive`
                # refuses or resolves the same way on both sides). On a scratch copy: the
                # device's keys change only when the message is kept.
                scratch = DeviceKeys.from_bytes(self.keys.to_bytes())
                session, plain = receive(scratch, existing, PREKEY_MESSAGE, body)
                used = (
                    frozenset(self.keys.prekeys) - frozenset(scratch.prekeys),
                    frozenset(self.keys.pq_prekeys) - frozenset(scratch.pq_prekeys),
                )
        else:
            raise DecryptError(f"message type {msg_type} is not one this client reads")
        identity_key = session.remote_identity_key
        known = self.state.book.get(user, {}).get(device)
        if known is None:
            peer = PeerDevice(identity_key, session.remote_registration_id)
        else:
            peer = PeerDevice(
                identity_key=identity_key,
                registration_id=known.registration_id,
                send_seq=known.send_seq,
                recv_seq=known.recv_seq,
            )
        return Decrypted(user, device, Content.decode(plain), session, peer, *used)

    def commit(self, decrypted: Decrypted) -> None:
        """Persist what a decryption changed: the session, the peer, used one-time keys."""
        user, device = decrypted.user, decrypted.device
        self._trust(user, device, decrypted.peer.identity_key)
        self.state.save_session(user, device, decrypted.session.to_bytes())
        current = self.state.book.setdefault(user, {}).get(device)
        if current is None:
            self.state.book[user][device] = decrypted.peer
        else:
            current.identity_key = decrypted.peer.identity_key
        if decrypted.used_prekeys or decrypted.used_pq_prekeys:
            for key_id in decrypted.used_prekeys:
                self.keys.prekeys.pop(key_id, None)
            for key_id in decrypted.used_pq_prekeys:
                self.keys.pq_prekeys.pop(key_id, None)
            self.state.save_keys(self.keys.to_bytes())
