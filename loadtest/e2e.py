"""Real end-to-end ciphertext for `--e2e`: the client SDK's X3DH/PQXDH and Double Ratchet.

Each simulated device holds `DeviceKeys` and one session per peer user (device 1
of each user). The initiator of a pair fetches its peer's bundle and starts the
session before the measured phase; when both sides of a pair send, a first
message is exchanged during setup so that both use the same session from `t0`
on (never two sessions started at once). Bodies are then sealed when first
written and opened when delivered; a body that does not open is counted as a
`decrypt_failed` connection error.
"""

from __future__ import annotations

import time

from protocol.client.peers import remote_bundle
from protocol.crypto.device_keys import DeviceKeys
from protocol.crypto.errors import CryptoError
from protocol.crypto.session import Session, receive, start_session
from protocol.frames import KeysFetchOk, KeysUpload, PqPreKey, PreKey, SignedPreKey
from protocol.signatures import KeyScheme

__all__ = ["Cipher", "CryptoError"]


class Cipher:
    """One device's keys and sessions."""

    def __init__(self, prekeys: int) -> None:
        self.keys = DeviceKeys.generate(
            KeyScheme.ED25519, prekeys=prekeys, pq_prekeys=0, now_ms=int(time.time() * 1000)
        )
        self.sessions: dict[str, Session] = {}

    def upload(self, rid: int) -> KeysUpload:
        """The first `keys.upload`: signed pre-key, last-resort PQ key, one-time pre-keys."""
        spk, pq = self.keys.signed_prekey, self.keys.pq_last_resort
        return KeysUpload(
            rid=rid,
            signed_prekey=SignedPreKey(id=spk.id, key=spk.public, signature=spk.signature),
            prekeys=tuple(PreKey(id=k.id, key=k.public) for k in self.keys.prekeys.values())
            or None,
            pq_last_resort=PqPreKey(id=pq.id, key=pq.public, signature=pq.signature),
        )

    def start(self, peer: str, fetched: KeysFetchOk) -> None:
        """Start a session with device 1 of `peer` from a `keys.fetch` answer."""
        bundle = next(b for b in fetched.devices if b.device == 1)
        self.sessions[peer] = start_session(self.keys, remote_bundle(bundle))

    def seal(self, peer: str, plaintext: bytes) -> tuple[int, bytes]:
        """`(type, body)` for `peer`; raises KeyError when no session was started."""
        return self.sessions[peer].encrypt(plaintext)

    def open(self, peer: str, msg_type: int, body: bytes) -> bytes:
        """The plaintext of a body from `peer` (a first message starts the session)."""
        session, plaintext = receive(self.keys, self.sessions.get(peer), msg_type, body)
        self.sessions[peer] = session
        return plaintext
