"""The key backup through the SDK, against real relays on both stores: `client.backup.save`
on one device, `Client.restore` on a brand-new device that links itself into the account,
gets the contact list back and decrypts a message sent to the user after the restore;
compare-and-set between devices; a wrong recovery key; the blob sealed so that neither the
relay's store nor the wire shows the identity key or the contacts."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import pytest

from protocol.client import (
    BackupConflict,
    BackupUnreadable,
    Client,
    ClientError,
    RecoveryKey,
    RequestRefused,
)
from protocol.client.backup import BackupContents, open_backup, seal_backup
from protocol.errors import ErrorCode
from protocol.signatures import IdentityKeyPair, KeyScheme

from .scan import scan_relay
from .sdk import FAST, PASSPHRASE, WAIT, Inbox, device, distinctive


def restore(
    url: str, key: RecoveryKey | str, store: Path, inbox: Inbox
) -> contextlib.AbstractAsyncContextManager[Client]:
    return Client.restore(
        url,
        key,
        store=store,
        passphrase=PASSPHRASE,
        on_message=inbox.handler,
        on_identity_change=inbox.on_identity_change,
        options=FAST,
    )


async def test_save_restore_and_decrypt_after_restore(relay, tmp_path: Path) -> None:
    alice_inbox, bob_inbox, new_inbox = Inbox(), Inbox(), Inbox()
    key = RecoveryKey.generate()
    async with (
        device(relay.url, tmp_path / "alice", alice_inbox) as alice,
        device(relay.url, tmp_path / "bob", bob_inbox) as bob,
    ):
        await alice.register()
        await bob.register()
        hello = distinctive("hello")
        await asyncio.wait_for(bob.send(alice.user, hello), WAIT)
        await alice_inbox.wait_for(1)
        assert await alice.backup.save(key) == 1
        assert alice.backup.version == 1
        alice_user, alice_identity = alice.user, alice.identity_key
        alice_private = alice.peers.keys.identity.private_bytes
        bob_user, bob_identity = bob.user, bob.identity_key

    # Every device of alice is gone; a brand-new one comes back with the code alone.
    async with (
        Client.restore(
            relay.url,
            key.grouped().upper(),
            store=tmp_path / "alice-new",
            passphrase=PASSPHRASE,
            on_message=new_inbox.handler,
            on_identity_change=new_inbox.on_identity_change,
            options=FAST,
        ) as restored,
        device(relay.url, tmp_path / "bob", bob_inbox) as bob,
    ):
        assert (restored.user, restored.device) == (alice_user, 2)
        assert restored.identity_key != alice_identity  # a fresh identity, linked in
        assert restored.contacts() == [bob_user]
        assert restored.state.trusted_identity(bob_user, 1) == bob_identity
        assert restored.backup.version == 1
        devices = await restored.devices()
        assert [d.device for d in devices] == [1, 2]

        after = distinctive("after the restore")
        await asyncio.wait_for(bob.send(alice_user, after), WAIT)
        received = await new_inbox.wait_for(1)
        assert [(m.sender_user, m.plaintext) for m in received] == [(bob_user, after)]
        assert new_inbox.texts() == [after]  # no history restored, only what came after

        # The restored device writes to its restored contact; the identity key it trusted
        # from the backup matches the one the relay hands out: no identity change.
        reply = distinctive("reply")
        await asyncio.wait_for(restored.send(bob_user, reply), WAIT)
        await bob_inbox.wait_for(1)
        assert bob_inbox.texts(sender=alice_user, device=2) == [reply]
        assert new_inbox.identity_changes == []
        # The relay's store shows neither the plaintexts nor the identity key the backup
        # holds (the blob is sealed by the client, then again at rest).
        findings, records = await scan_relay(relay, [hello, after, reply, alice_private])
        assert findings == [] and records > 0


async def test_compare_and_set_between_devices(relay, tmp_path: Path) -> None:
    key = RecoveryKey.generate()
    async with device(relay.url, tmp_path / "one") as one:
        await one.register()
        assert await one.backup.save(key) == 1
    async with restore(relay.url, key, tmp_path / "two", Inbox()) as restored:
        assert await restored.backup.save(key) == 2  # it restored version 1
        async with device(relay.url, tmp_path / "one") as one:
            with pytest.raises(BackupConflict) as conflict:
                await one.backup.save(key)  # it knows version 1 only
            assert conflict.value.version == 2
            # Replaced on purpose, naming the version it was told.
            assert await one.backup.save(key, expected_version=2) == 3
        with pytest.raises(BackupConflict):
            await restored.backup.delete()
        await restored.backup.delete(expected_version=3)
        assert restored.backup.version == 0
    # Nothing left to restore from.
    with pytest.raises(RequestRefused) as refused:
        async with restore(relay.url, key, tmp_path / "three", Inbox()):
            pass
    assert refused.value.code is ErrorCode.NOT_FOUND


async def test_a_wrong_recovery_key_restores_nothing(relay, tmp_path: Path) -> None:
    async with device(relay.url, tmp_path / "one") as one:
        await one.register()
        await one.backup.save(RecoveryKey.generate())
    with pytest.raises(RequestRefused) as refused:
        async with restore(relay.url, RecoveryKey.generate(), tmp_path / "two", Inbox()):
            pass
    assert refused.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ValueError):
        RecoveryKey.from_code("not a code")


async def test_restore_refuses_a_registered_store(relay, tmp_path: Path) -> None:
    key = RecoveryKey.generate()
    async with device(relay.url, tmp_path / "one") as one:
        await one.register()
        await one.backup.save(key)
    with pytest.raises(ClientError, match="holds an account"):
        async with restore(relay.url, key, tmp_path / "one", Inbox()):
            pass


# The sealing, without a relay


def contents(user: str) -> BackupContents:
    return BackupContents(
        user=user,
        device=3,
        identity=IdentityKeyPair.generate(KeyScheme.XEDDSA),
        contacts={str(uuid.uuid4()): {1: b"\x05" + bytes(32), 2: b"\x05" + bytes([1] * 32)}},
        saved_ms=1_700_000_000_000,
    )


def test_sealing_round_trip_and_binding() -> None:
    key = RecoveryKey.generate()
    assert len(key.code) == 64 and RecoveryKey.from_code(key.grouped()) == key
    user = str(uuid.uuid4())
    saved = contents(user)
    blob = seal_backup(key, saved)
    assert len(blob) % 512 == (1 + 24 + 16) % 512  # padded contents
    opened = open_backup(key, user, blob)
    assert opened.identity.private_bytes == saved.identity.private_bytes
    assert (opened.user, opened.device, opened.contacts) == (user, 3, saved.contacts)
    assert saved.identity.private_bytes not in blob
    with pytest.raises(BackupUnreadable):
        open_backup(RecoveryKey.generate(), user, blob)  # another key
    with pytest.raises(BackupUnreadable):
        open_backup(key, str(uuid.uuid4()), blob)  # handed out as another user's
    with pytest.raises(BackupUnreadable):
        open_backup(key, user, blob[:-1] + bytes([blob[-1] ^ 1]))  # changed
    # The access key is derived, not the recovery key; two keys give two access keys.
    assert key.access_key_pair().public_key != RecoveryKey.generate().access_key_pair().public_key
    assert key.key not in key.access_key_pair().public_key
