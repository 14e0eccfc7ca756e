"""Sessions and trust without a relay: bundles, encryption with `seq`, commit-after-handler."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from protocol.client import IdentityChange, LocalStore
from protocol.client.content import Kind
from protocol.client.peers import Peers
from protocol.client.state import ClientState
from protocol.client.store import KdfLimits
from protocol.crypto.device_keys import DeviceKeys
from protocol.crypto.errors import DecryptError
from protocol.frames import Bundle, PqPreKey, PreKey, SignedPreKey
from protocol.signatures import KeyScheme

from .sdk import PASSPHRASE


def keys() -> DeviceKeys:
    return DeviceKeys.generate(KeyScheme.XEDDSA, prekeys=2, pq_prekeys=2, now_ms=0)


def bundle(device: int, k: DeviceKeys) -> Bundle:
    """What `keys.fetch` would hand out for these keys."""
    otk = next(iter(k.prekeys.values()))
    pq = next(iter(k.pq_prekeys.values()))
    return Bundle(
        device=device,
        registration_id=k.registration_id,
        identity_key=k.identity.public_key,
        key_scheme=k.identity.scheme,
        signed_prekey=SignedPreKey(
            id=k.signed_prekey.id, key=k.signed_prekey.public, signature=k.signed_prekey.signature
        ),
        prekey=PreKey(id=otk.id, key=otk.public),
        pq_prekey=PqPreKey(id=pq.id, key=pq.public, signature=pq.signature),
    )


def peers(tmp_path: Path, name: str, k: DeviceKeys, changes: list[IdentityChange]) -> Peers:
    store = LocalStore.create(tmp_path / name, PASSPHRASE, limits=KdfLimits.minimal())
    state = ClientState(store, seen_capacity=10)
    state.save_keys(k.to_bytes())  # as the client does when it creates a device
    return Peers(state, k, changes.append)


def test_a_changed_identity_key_is_reported(tmp_path: Path) -> None:
    changes: list[IdentityChange] = []
    alice = peers(tmp_path, "alice", keys(), changes)
    bob_user = str(uuid.uuid4())
    first, second = keys(), keys()
    alice.add_bundle(bob_user, bundle(1, first))
    alice.add_bundle(bob_user, bundle(1, first))
    assert changes == []
    alice.add_bundle(bob_user, bundle(1, second))
    assert changes == [
        IdentityChange(bob_user, 1, first.identity.public_key, second.identity.public_key)
    ]
    assert alice.devices(bob_user)[1].identity_key == second.identity.public_key
    alice.state.store.close()


def test_decryption_is_kept_only_once_committed(tmp_path: Path) -> None:
    changes: list[IdentityChange] = []
    alice_user, bob_user = str(uuid.uuid4()), str(uuid.uuid4())
    alice = peers(tmp_path, "alice", keys(), changes)
    bob_keys = keys()
    bob = peers(tmp_path, "bob", bob_keys, changes)
    alice.add_bundle(bob_user, bundle(1, bob_keys))
    one = alice.encrypt(bob_user, 1, Kind.MESSAGE, b"one", None)
    two = alice.encrypt(bob_user, 1, Kind.SENT_COPY, b"two", alice_user)
    assert (one.type, two.type) == (1, 1)  # no reply yet: pre-key messages

    # Not committed (the handler failed): the same body decrypts again from the store.
    first_try = bob.decrypt(alice_user, 1, one.type, one.body)
    assert len(bob.keys.prekeys) == 2  # nothing used up yet
    again = bob.decrypt(alice_user, 1, one.type, one.body)
    assert first_try.content == again.content
    assert (again.content.seq, again.content.body) == (1, b"one")
    bob.commit(again)
    later = bob.decrypt(alice_user, 1, two.type, two.body)
    assert (later.content.kind, later.content.seq, later.content.sent_to) == (
        Kind.SENT_COPY,
        2,
        alice_user,
    )
    bob.commit(later)
    # Committed: a replay of the first body no longer decrypts.
    with pytest.raises(DecryptError):
        bob.decrypt(alice_user, 1, one.type, one.body)
    assert bob.devices(alice_user)[1].identity_key == alice.keys.identity.public_key
    # The one-time pre-key that the session used is gone from bob's stored keys.
    stored = DeviceKeys.from_bytes(bob.state.load_keys() or b"")
    assert len(stored.prekeys) == 1 and changes == []
    alice.state.store.close()
    bob.state.store.close()
