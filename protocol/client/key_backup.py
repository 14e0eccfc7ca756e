"""`client.backup`: save and delete this user's key backup on the relay (docs/client.md,
"Key backup and restore"). The contents and their sealing are `protocol.client.backup`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from protocol.client.backup import BackupContents, RecoveryKey, seal_backup
from protocol.client.errors import BackupConflict, ClientError, ConnectionLost, RequestRefused
from protocol.errors import ErrorCode
from protocol.frames import BackupDelete, BackupGet, BackupOk, BackupPut, BackupPutOk, EmptyOk

if TYPE_CHECKING:
    from protocol.client.client import Client

__all__ = ["KeyBackup"]


class KeyBackup:
    """The user's one backup on the relay, replaced by compare-and-set: a save names the
    version this device last saved or restored, so it never overwrites another device's
    newer backup without being told (BackupConflict)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def version(self) -> int:
        """The version this device last saved or restored (0: none)."""
        return self._client.state.backup_version

    async def save(
        self, recovery_key: RecoveryKey | str, *, expected_version: int | None = None
    ) -> int:
        """Seal this device's identity key pair and the contact list with `recovery_key` (a
        :class:`RecoveryKey` or its 64-character code) and store it on the relay; the new
        version. Raises BackupConflict when the backup is not at `expected_version`
        (default: :attr:`version`)."""
        key = RecoveryKey.from_code(recovery_key) if isinstance(recovery_key, str) else recovery_key
        client = self._client
        state = client.state
        contents = BackupContents(
            user=client.user,
            device=client.device,
            identity=client.peers.keys.identity,
            contacts=state.contact_keys(client.user),
            saved_ms=int(time.time() * 1000),
        )
        blob = seal_backup(key, contents)
        access_key = key.access_key_pair().public_key
        expected = state.backup_version if expected_version is None else expected_version
        while True:
            conn = await client._wait_connection()
            frame = BackupPut(
                rid=conn.next_rid(), version=expected, blob=blob, access_key=access_key
            )
            try:
                version = (await conn.request(frame, BackupPutOk)).version
                break
            except ConnectionLost:
                # The put may have landed: our blob (its nonce is random) says so for sure.
                await client._stop_or(conn.wait_closed())
                landed = await self._stored_version_of(blob)
                if landed is not None:
                    version = landed
                    break
            except RequestRefused as exc:
                current = exc.error.version
                if exc.code is ErrorCode.CONFLICT and current is not None:
                    raise BackupConflict(current) from None
                raise
        state.save_backup_version(version)
        return version

    async def delete(self, *, expected_version: int | None = None) -> None:
        """Delete the backup (at `expected_version`, default :attr:`version`). Raises
        BackupConflict when it is at another version; a backup already gone is no error."""
        expected = self.version if expected_version is None else expected_version
        if expected < 1:
            raise ClientError("this device knows no backup version: pass expected_version")
        try:
            await self._client._retrying(
                lambda rid: BackupDelete(rid=rid, version=expected), EmptyOk
            )
        except RequestRefused as exc:
            if exc.code is ErrorCode.CONFLICT and exc.error.version is not None:
                raise BackupConflict(exc.error.version) from None
            if exc.code is not ErrorCode.NOT_FOUND:
                raise
        self._client.state.save_backup_version(0)

    async def _stored_version_of(self, blob: bytes) -> int | None:
        """The version of the stored backup if it is `blob`, else None (spends a read)."""
        try:
            stored = await self._client._retrying(lambda rid: BackupGet(rid=rid), BackupOk)
        except RequestRefused as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return None
            raise
        return stored.version if stored.blob == blob else None
